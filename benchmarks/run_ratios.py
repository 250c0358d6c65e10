"""Time the fused operator against ``torch.bmm`` and the reference; write RESULTS.md.

For each shape (N = 64 images; (K, map) = (64, 56x56), (256, 28x28), (512, 14x14),
(2048, 7x7); Translation(1, 1) on a 224x224 input) it prints and records:

- ``op/bmm``: the operator's time over ``torch.bmm`` on operands of the same shapes
  (``[N, K, P] x [N, P, K]``), the GEMM at its core (target: at most 1.3);
- ``ref/op``: the float64 reference's time over the operator's (target: at least 3);
- the operator's achieved GFLOP/s, ``2 N K^2 P / t``.

The operator and ``torch.bmm`` are timed in alternation (op, bmm, op, bmm, ...) and each is
given the median of its runs, so that load from other processes, which comes and goes,
weighs on both sides of the ratio alike; the load average before and after the run is
recorded beside the table. On a shared machine, compare ratios from one run only.

Usage::

    python benchmarks/run_ratios.py            # full: median of 9 (reference: best of 2)
    python benchmarks/run_ratios.py --quick    # N = 16, median of 5 (reference: once)
    python benchmarks/run_ratios.py --device cuda --output benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from equifast import ops, reference
from equifast.transforms import Translation

sys.path.insert(0, os.path.dirname(__file__))
from results import write_section  # noqa: E402

SHAPES = [(64, 56), (256, 28), (512, 14), (2048, 7)]
TRANSFORM = Translation(1, 1)
INPUT = (224, 224)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _alternating_medians(fns, repeat: int, device: str):
    """Median time of each function, running them in turn ``repeat`` times (after a warm-up)."""
    for fn in fns:  # warm up (and first-touch the buffers)
        fn()
    _sync(device)
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def _best(fn, repeat: int, device: str) -> float:
    fn()  # warm up (and first-touch the buffers)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(n: int, k: int, side: int, device: str, repeat: int, ref_repeat: int) -> dict:
    g = torch.Generator().manual_seed(0)
    fx = torch.randn(n, k, side, side, generator=g).to(device)
    ftx = torch.randn(n, k, side, side, generator=g).to(device)
    a, b = TRANSFORM.index_map((side, side), INPUT, device=device)
    p = a.numel()
    x = torch.randn(n, k, p, generator=g).to(device)
    y = torch.randn(n, p, k, generator=g).to(device)
    t_op, t_bmm = _alternating_medians(
        [lambda: ops.equivariance_scores(fx, ftx, a, b, True, reference.TOLERANCE),
         lambda: torch.bmm(x, y)], repeat, device)
    t_ref = _best(lambda: reference.equivariance_scores(fx, ftx, TRANSFORM, "correlation",
                                                        INPUT), ref_repeat, device)
    flops = 2 * n * k * k * p
    return dict(n=n, k=k, map=f"{side}x{side}", p=p, op=t_op, bmm=t_bmm, ref=t_ref,
                op_bmm=t_op / t_bmm, ref_op=t_ref / t_op, gflops=flops / t_op / 1e9,
                bmm_gflops=flops / t_bmm / 1e9)


def _load() -> str:
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return "%.1f, %.1f, %.1f" % os.getloadavg()


def machine(device: str, load_before: str) -> str:
    parts = [f"CPU: {_cpu_model()}, {os.cpu_count()} logical cores, "
             f"{torch.get_num_threads()} torch threads",
             f"torch {torch.__version__}, Python {platform.python_version()}"]
    # other work on the machine skews every number: say how much there was
    parts.append(f"load average (1, 5, 15 min) before the run: {load_before}; "
                 f"after: {_load()}")
    if device.startswith("cuda"):
        parts.append(f"GPU: {torch.cuda.get_device_name()}")
    return "; ".join(parts)


def table(rows) -> str:
    head = ("| N | K | map | P | op (ms) | bmm (ms) | reference (ms) | op/bmm | ref/op "
            "| op GFLOP/s | bmm GFLOP/s |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['n']} | {r['k']} | {r['map']} | {r['p']} | {1e3 * r['op']:.2f} | "
        f"{1e3 * r['bmm']:.2f} | {1e3 * r['ref']:.1f} | {r['op_bmm']:.2f} | "
        f"{r['ref_op']:.1f} | {r['gflops']:.1f} | {r['bmm_gflops']:.1f} |\n" for r in rows)
    return head + body


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=16, fewer repeats")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--output", default=str(Path(__file__).with_name("RESULTS.md")),
                        help="markdown file to write (default: benchmarks/RESULTS.md)")
    args = parser.parse_args(argv)
    if not ops.available():
        parser.error(f"the compiled operator is not available: {ops.load_error()}")
    n, repeat, ref_repeat = (16, 5, 1) if args.quick else (64, 9, 2)
    load_before = _load()
    rows = []
    for k, side in SHAPES:
        r = measure(n, k, side, args.device, repeat, ref_repeat)
        rows.append(r)
        print(f"N={n} K={k:5d} map={r['map']:>5}  op {1e3 * r['op']:8.2f} ms  "
              f"bmm {1e3 * r['bmm']:8.2f} ms  ref {1e3 * r['ref']:9.1f} ms  "
              f"op/bmm {r['op_bmm']:5.2f}  ref/op {r['ref_op']:6.1f}  "
              f"{r['gflops']:6.1f} GFLOP/s", flush=True)
    text = (f"## Operator benchmark ({'quick' if args.quick else 'full'} run, "
            f"device {args.device})\n\n"
            f"{machine(args.device, load_before)}\n\n"
            f"Correlation, Translation(1, 1) on a 224x224 input; op and bmm times are the "
            f"medians of {repeat} alternated runs, the reference's the best of {ref_repeat}. "
            f"`op/bmm` compares with torch.bmm on "
            f"operands of the same shapes ([N, K, P] x [N, P, K]); `ref/op` is the speed-up "
            f"over the float64 reference. Generated by `python benchmarks/run_ratios.py"
            f"{' --quick' if args.quick else ''}`.\n\n" + table(rows))
    write_section(f"operator-{args.device.split(':')[0]}", text, Path(args.output))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
