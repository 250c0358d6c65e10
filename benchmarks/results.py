"""``benchmarks/RESULTS.md`` holds one section per benchmark script (and device), each
between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``: a script rewrites its own section
and keeps the others, so CPU and GPU figures sit side by side."""
from __future__ import annotations

import platform
from pathlib import Path

import torch

from equifast._io import write_text_atomic

RESULTS = Path(__file__).with_name("RESULTS.md")


def sync(device) -> None:
    """Wait for ``device`` (a name or torch.device) when it is a GPU, before reading a clock."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section ``name`` of ``path`` with ``body``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    write_text_atomic(path, text)  # a killed run leaves the other sections whole
