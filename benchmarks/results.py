"""``benchmarks/RESULTS.md`` holds one section per benchmark script (and device), each
between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``: a script rewrites its own section
and keeps the others, so CPU and GPU figures sit side by side."""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from equifast._io import write_text_atomic

RESULTS = Path(__file__).with_name("RESULTS.md")


def positive(kind):
    """An argparse ``type``: ``kind`` (int, float) of a value > 0 (0 and negatives failed deep
    inside a run, or were taken as they were)."""
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise ValueError(text)
        return value
    parse.__name__ = f"positive {kind.__name__}"  # argparse's "invalid positive int value"
    return parse


def check_output(parser, path) -> None:
    """``parser.error`` before a run when ``--output`` cannot be written as a file (a folder):
    it failed after the whole benchmark had run."""
    if path is not None and Path(path).is_dir():
        parser.error(f"--output {str(path)!r} is a folder; name the markdown file to write")


@contextlib.contextmanager
def setting(name: str, value) -> None:
    """Environment variable ``name`` set to ``value`` (None: unset) for the block, then as it was
    (the operator's switches: EQUIFAST_CUDA_KERNEL, EQUIFAST_TRITON_TILES, ...)."""
    old = os.environ.pop(name, None)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)
        if old is not None:
            os.environ[name] = old


def sync(device) -> None:
    """Wait for ``device`` (a name or torch.device) when it is a GPU, before reading a clock."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternating_medians(fns, repeat: int, device: str):
    """Median time of each function, running them in turn ``repeat`` times (after a warm-up),
    and every time of each (round by round)."""
    for fn in fns:  # warm up (and first-touch the buffers)
        fn()
    sync(device)
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            sync(device)
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times], times


def _cpu() -> tuple:
    """The CPU's model name and its widest vector extension: ``"AVX-512"``, ``"AVX2"`` or
    ``None`` (``/proc/cpuinfo``; the CPU kernels run AVX-512, AVX2 or baseline code by it),
    else what ``platform`` knows."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first CPU's
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return name, "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None


def cpu_model() -> str:
    """The CPU's model name and widest vector extension, with the instruction set
    ``EQUIFAST_CPU_ISA`` forces, if any."""
    name, isa = _cpu()
    forced = os.environ.get("EQUIFAST_CPU_ISA")
    return name + (f" ({isa})" if isa else "") + (f", kernels forced to {forced}" if forced else "")


def machine_kind(device) -> str:
    """A short name of the machine kind whose figures a section holds (``cpu-avx512``,
    ``cpu-avx2``, ``cuda-nvidia-h200``): a run on another kind gets its own section rather
    than replacing that one's."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        isa = _cpu()[1]
        name = (isa or "baseline").replace("-", "")  # avx512, avx2
        forced = os.environ.get("EQUIFAST_CPU_ISA")
        own = {"AVX-512": "x86-64-v4", "AVX2": "x86-64-v3", None: "baseline"}[isa]
        if forced and forced != own:  # AVX2 kernels on an AVX-512 machine replaced its figures
            name += f" forced {forced}"
    slug = "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())
    return f"{device.type}-{slug}"


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section ``name`` of ``path`` with ``body``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"{begin}\n{body.strip()}\n{end}"
    counts = (text.count(begin), text.count(end))
    if counts != (0, 0) and (counts != (1, 1) or text.index(begin) > text.index(end)):
        # a marker lost by hand: the next write replaced all from one section's begin to the
        # other's end, the notes and sections between them too
        raise ValueError(f"Expected {str(path)!r} to hold section {name!r} between one {begin} "
                         f"and one {end} after it, but it has {counts[0]} and {counts[1]}; "
                         "mend the markers by hand (nothing was written).")
    if counts == (1, 1):
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    write_text_atomic(path, text)  # a killed run leaves the other sections whole
