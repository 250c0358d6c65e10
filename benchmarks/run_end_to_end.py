"""End-to-end throughput: what ``equifast.measure`` adds to the model's own forward passes.

The baseline is the forward passes ``measure`` itself must run: ``x`` and every transformed
batch, through the same model at the same batch size and memory format. The ratio
``measure / forward`` - 1 is the overhead of the scores, the transforms and the bookkeeping
(issue target: at most 25%).

The forward passes and ``measure`` are timed in alternation, ``--rounds`` times (forward,
measure, forward, measure, ..., after one warm-up call of each), so that load from other
processes, which comes and goes, weighs on both alike. Each round gives one overhead, its
``measure`` time over its forward time, less 1; the table gives the median of those and every
round's (in order: on a shared machine a single round moves by tens of per cent), the median
times, and images per second from the median ``measure`` time.

    python benchmarks/run_end_to_end.py                    # ResNet-18 at 112x112 on CPU, 7 rounds
    python benchmarks/run_end_to_end.py --model resnet50 --size 224 --batch 64 --images 64 --device cuda

Writes its table into the ``end-to-end-<machine kind>`` section of ``benchmarks/RESULTS.md``
for the issue's rows (the two commands above, any ``--rounds``); another model, size, number
of images, batch or shifts writes a section of its own, so a smoke run never replaces them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

import equifast as ef
from equifast.models import load_model
from equifast.devices import resolve_device

sys.path.insert(0, os.path.dirname(__file__))
from results import (alternating_medians, check_output, cpu_model, machine_kind, positive,  # noqa: E402
                     sync, write_section)


def forward_only(model, x, transforms, batch_size, device, channels_last=True):
    """Time the forward passes that measure runs: x, then the transformed batches stacked."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    with torch.no_grad():
        sync(device)
        t0 = time.perf_counter()
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device).contiguous(memory_format=fmt)
            model(xb)
            per = max(1, batch_size // len(xb))
            for s in range(0, len(transforms), per):
                model(torch.cat([t(xb) for t in transforms[s:s + per]]).contiguous(memory_format=fmt))
        sync(device)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=positive(int), default=112)
    ap.add_argument("--images", type=positive(int), default=32)
    ap.add_argument("--batch", type=positive(int), default=32)
    ap.add_argument("--shifts", type=positive(int), default=32)
    ap.add_argument("--device", default="cpu", help="cpu (the issue's CPU row) or cuda")
    ap.add_argument("--rounds", type=int, default=7,
                    help="alternated rounds of forward passes and measure (default 7: about two "
                         "minutes on 2 CPU cores at the defaults)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--output", default=None, help="markdown file to write (default: benchmarks/RESULTS.md)")
    ap.add_argument("--profile", action="store_true",
                    help="after timing, print torch.profiler's top operators for one measure call")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    check_output(ap, None if args.no_write else args.output)
    if args.shifts >= args.size:  # measure refuses it, after the forward passes were timed
        ap.error(f"--shifts {args.shifts} must be below --size {args.size} (a shift as large as "
                 "the image moves it onto itself)")
    try:
        device = resolve_device(args.device)
        model, _ = load_model(args.model, weights=None)
    except ValueError as err:  # a device or model name
        ap.error(str(err))
    x = torch.randn(args.images, 3, args.size, args.size)
    try:  # a model of a fixed input size (ViT): torch's assertion, mid-run
        with torch.no_grad():
            model.eval().to(device)(x[:1].to(device))
    except (AssertionError, RuntimeError, ValueError) as err:
        ap.error(f"--model {args.model} does not take {args.size}x{args.size} images: {err}")
    transforms = ef.diagonal_shifts(1, args.shifts)
    load_before = os.getloadavg()[0]
    (f, m), (fwd, meas) = alternating_medians(
        [lambda: forward_only(model, x, transforms, args.batch, device),
         lambda: ef.measure(model, x, transforms=transforms, batch_size=args.batch, device=device)],
        args.rounds, device)
    # one overhead per round (its forward passes and measure ran back to back), and their median
    rounds = [100 * (b / a - 1) for a, b in zip(fwd, meas)]
    for i, (a, b, r) in enumerate(zip(fwd, meas, rounds), 1):
        print(f"round {i}: forward {a:.3f} s, measure {b:.3f} s, overhead {r:+.0f}%")
    passes = args.images * (1 + len(transforms))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    row = (f"| {args.model} | {args.size}x{args.size} | {args.images} | {args.batch} | 1..{args.shifts} | "
           f"{device.type} ({name}, {os.cpu_count()} cores, load {load_before:.1f}-{os.getloadavg()[0]:.1f}) | "
           f"{args.rounds} | {f:.2f} | {m:.2f} | {statistics.median(rounds):+.0f}% | "
           f"{', '.join(f'{r:+.0f}%' for r in rounds)} | {args.images / m:.1f} | {passes / m:.0f} |")
    header = ("| model | input | images | batch | shifts | device | rounds | forward s | measure s | "
              "overhead | overhead per round | images/s | forward passes/s |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(header)
    print(row)
    print(f"backend: {_backend(device)}, torch {torch.__version__}")
    if args.profile:
        _profile(lambda: ef.measure(model, x, transforms=transforms, batch_size=args.batch, device=device),
                 device)
    if not args.no_write:
        _write(header, row, device, args, args.output)


def _profile(fn, device):
    """Print where one call's time goes, by operator (device time first on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))
    if device.type == "cuda":
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15,
                                        max_name_column_width=60))


def _backend(device) -> str:
    """What scored: the operator or the reference, and on CUDA which kernels."""
    return ef.backend() + (f" ({ef.ops.cuda_kernel()} kernels)" if device.type == "cuda" else "")


# the issue's rows (model, size, images, batch, shifts): the CPU one and the GPU one
_ISSUE_ROWS = {"cpu": ("resnet18", 112, 32, 32, 32), "cuda": ("resnet50", 224, 64, 64, 32)}


def section_name(args, device) -> str:
    """The section a run writes: one per machine kind for the issue's rows, and one per
    configuration for others (a smoke run at 32 pixels replaced the recorded row)."""
    config = (args.model, args.size, args.images, args.batch, args.shifts)
    name = f"end-to-end-{machine_kind(device)}"
    if config != _ISSUE_ROWS.get(device.type):
        name += f"-{args.model}-{args.size}px-{args.images}img-b{args.batch}-s{args.shifts}"
    return name


def _write(header, row, device, args, output=None):
    # CPU and GPU rows sit side by side: each machine kind has its own section.
    name = section_name(args, device)
    write_section(name, f"## End to end ({device.type}): `equifast.measure` vs the model's own forward "
                  f"passes\n\nWritten by `benchmarks/run_end_to_end.py` on {time.strftime('%Y-%m-%d')}, torch "
                  f"{torch.__version__}, backend {_backend(device)}. The forward passes and `measure` "
                  f"ran in alternation, `rounds` times after a warm-up; `forward s` and `measure s` are "
                  f"the medians of their times, `overhead` the median of the rounds' overheads "
                  f"(`overhead per round`, in order: a round's measure time over its forward passes' "
                  f"time, less 1), images/s and forward passes/s from the median measure time; `load`: "
                  f"the 1-minute load average before and after.\n\n{header}\n{row}",
                  *([output] if output else []))


if __name__ == "__main__":
    main()
