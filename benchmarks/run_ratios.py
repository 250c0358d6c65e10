"""Time the fused operator against ``torch.bmm`` and the reference; write RESULTS.md.

For each shape (N = 64 images; (K, map) = (64, 56x56), (256, 28x28), (512, 14x14),
(2048, 7x7)) and two translations on a 224x224 input, Translation(1, 1) (a shift that rounds
to 0 on these maps: the identity map on both sides) and Translation(32, 32) (shifts of 8, 4,
2 and 1 on the maps: ``fx`` is gathered), with features in NCHW and channels-last memory
(``equifast.measure`` runs models channels-last), it prints and records:

- ``op/bmm``: the operator's time over ``torch.bmm`` on operands of the same shapes
  (``[N, K, P] x [N, P, K]``, both contiguous: MKL's fastest layout), the GEMM at its core
  (target: at most 1.3);
- ``op/bmm(fx, ftx)``: the same against ``torch.bmm`` of the operator's own inputs,
  ``fx.flatten(2) @ ftx.flatten(2).transpose(1, 2)`` (the layout the features come in);
- ``ref/op``: the float64 reference's time over the operator's (target: at least 3);
- the operator's achieved GFLOP/s, ``2 N K^2 P / t``;
- on CUDA, the roofline: the larger of the tensor-core time (``2 N K^2 P`` at the device's
  dense TF32 peak) and the time to read both inputs once (at its memory bandwidth), and the
  fraction of it the operator reaches (target: at least 70%); the float32 kernel
  (``tensor_cores=False``), the opt-in single pass (``EQUIFAST_CUDA_SINGLE_PASS=1``), the
  tensor-core kernels without clusters (``EQUIFAST_CUDA_MAX_CLUSTER=1``) and the Triton kernels
  (``EQUIFAST_CUDA_KERNEL=triton``, :mod:`equifast.ops_triton`) are timed beside it,
  each also by the GPU time of its kernels (torch.profiler), which leaves out launches and
  host syncs. Peaks come from a table of known GPUs, or ``--peak-tflops`` / ``--peak-gbs``.

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
import collections
import os
import platform
import sys
import time
from pathlib import Path

import torch

from equifast import ops, reference
from equifast.transforms import Translation
from equifast.devices import resolve_device

sys.path.insert(0, os.path.dirname(__file__))
from results import (alternating_medians, check_output, cpu_model, machine_kind, positive,  # noqa: E402
                     setting, sync, write_section)

SHAPES = [(64, 56), (256, 28), (512, 14), (2048, 7)]
TRANSFORMS = [Translation(1, 1), Translation(32, 32)]
LAYOUTS = ["NCHW", "channels-last"]
INPUT = (224, 224)

# Dense TF32 tensor-core TFLOP/s and memory GB/s of known GPUs (vendor datasheets).
# First match wins: the more specific names come first (GH200 before H200, the 80 GB A100s
# before the 40 GB ones).
GPU_PEAKS = [("GH200", 494.7, 4000.0), ("H200", 494.7, 4800.0), ("H100 SXM", 494.7, 3350.0),
             ("H100 PCIe", 378.0, 2000.0), ("H100 NVL", 417.5, 3900.0), ("H100", 494.7, 3350.0),
             ("A100-SXM4-80GB", 156.0, 2039.0), ("A100 80GB PCIe", 156.0, 1935.0),
             ("A100", 156.0, 1555.0)]


def gpu_peaks(name: str):
    """(TF32 TFLOP/s, GB/s) for a device name, or None when it is not in GPU_PEAKS."""
    for key, tflops, gbs in GPU_PEAKS:
        if key.lower() in name.lower():
            return tflops, gbs
    return None


def roofline(fx, p: int, peaks) -> float:
    """Seconds at the roofline for features ``fx`` [N, K, ...] compared over ``p`` positions:
    the larger of the TF32 products (2 N K^2 P at ``peaks[0]`` TFLOP/s) and one read of both
    inputs (at ``peaks[1]`` GB/s)."""
    n, k = fx.shape[:2]
    tflops, gbs = peaks
    return max(2 * n * k * k * p / (tflops * 1e12), 2 * fx.numel() * fx.element_size() / (gbs * 1e9))


def _best(fn, repeat: int, device: str) -> float:
    fn()  # warm up (and first-touch the buffers)
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def device_times(fn, calls: int = 5):
    """CUDA: (device seconds per call, {kernel name: device seconds per call}) from the profiler.

    Wall-clock medians of single calls include launches and host syncs, which at these sizes
    (tens of microseconds) can outweigh the kernels; the roofline compares with the kernels.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync("cuda")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        sync("cuda")
    per_kernel = {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            us = e.time_range.elapsed_us()
            per_kernel[e.name] = per_kernel.get(e.name, 0.0) + us * 1e-6 / calls
    if not per_kernel:
        raise RuntimeError("the profiler recorded no device events")
    return sum(per_kernel.values()), per_kernel


def _with_env(name, value, fx, ftx, a, b):
    """The operator with one of its CUDA switches set (``EQUIFAST_CUDA_SINGLE_PASS=1``: the
    single pass; ``EQUIFAST_CUDA_MAX_CLUSTER=1``: no position split over clusters;
    ``EQUIFAST_CUDA_KERNEL=triton``: the Triton kernels)."""
    with setting(name, value):
        return ops.equivariance_scores(fx, ftx, a, b, True, reference.TOLERANCE,
                                       check_indices=False)


def _guarded(fn, label):
    """``fn`` for an experimental path whose failure must not lose the run: its first error is
    printed and it does nothing after that (``.failed`` set; its times are then NaN)."""
    def call():
        if call.failed:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 (any failure of the experiment)
            call.failed = True
            print(f"{label} failed: {e!r}")
            return None
    call.failed = False
    return call


def measure(n: int, k: int, side: int, transform, device: str, repeat: int, ref_repeat: int,
            peaks=None, layout: str = "NCHW") -> dict:
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if layout == "channels-last" else torch.contiguous_format
    fx = torch.randn(n, k, side, side, generator=g).to(device, memory_format=fmt)
    ftx = torch.randn(n, k, side, side, generator=g).to(device, memory_format=fmt)
    a, b = transform.index_map((side, side), INPUT, device=device)
    p = a.numel()
    shift = transform.map_shift((side, side), INPUT)[0]
    x = torch.randn(n, k, p, generator=g).to(device)
    y = torch.randn(n, p, k, generator=g).to(device)
    # the GEMM alone: into an output allocated once (a fresh N x K x K output each call, 1 GB at
    # K = 2048, timed the allocator's page faults beside it); the maps unchecked, as measure
    # calls the operator (Transform.index_map checked them; on CUDA a check is a host sync)
    out = torch.empty(n, k, k, device=device)
    fns = [lambda: ops.equivariance_scores(fx, ftx, a, b, True, reference.TOLERANCE,
                                           check_indices=False),
           lambda: torch.bmm(x, y, out=out),
           lambda: torch.bmm(fx.flatten(2), ftx.flatten(2).transpose(1, 2), out=out)]
    if device.startswith("cuda"):
        fns.append(lambda: ops.equivariance_scores(fx, ftx, a, b, True, reference.TOLERANCE,
                                                   False, check_indices=False))
        fns.append(lambda: _with_env("EQUIFAST_CUDA_SINGLE_PASS", "1", fx, ftx, a, b))
        fns.append(lambda: _with_env("EQUIFAST_CUDA_MAX_CLUSTER", "1", fx, ftx, a, b))
        fns.append(_guarded(lambda: _with_env("EQUIFAST_CUDA_KERNEL", "triton", fx, ftx, a, b),
                            "the Triton kernels"))
    times, rounds = alternating_medians(fns, repeat, device)
    t_op, t_bmm, t_own = times[:3]
    # the spread of op/bmm round by round (op and bmm ran back to back): on a shared machine
    # one median alone does not say whether 1.27 and 1.33 differ
    pairs = [a / b for a, b in zip(rounds[0], rounds[1])]
    t_ref = _best(lambda: reference.equivariance_scores(fx, ftx, transform, "correlation",
                                                        INPUT), ref_repeat, device)
    flops = 2 * n * k * k * p
    row = dict(n=n, k=k, map=f"{side}x{side}", shift=shift, layout=layout, p=p, op=t_op, bmm=t_bmm, ref=t_ref,
               op_bmm=t_op / t_bmm, op_bmm_lo=min(pairs), op_bmm_hi=max(pairs),
               op_own=t_op / t_own, ref_op=t_ref / t_op,
               gflops=flops / t_op / 1e9, bmm_gflops=flops / t_bmm / 1e9)
    if len(times) > 3:
        row["op_fp32"], row["op_single"], row["op_no_cluster"], row["op_triton"] = times[3:7]
        try:
            kernels = [device_times(fn) for fn in fns[:-1]]
            # the Triton kernels: NaN when they failed (nothing ran to profile)
            kernels.append((float("nan"), {}) if fns[-1].failed else device_times(fns[-1]))
        except Exception as e:  # the profiler is a diagnostic: its failure must not lose the run
            print(f"profiler failed: {e!r}")
        else:
            (row["dev_op"], row["dev_bmm"], _, row["dev_fp32"], row["dev_single"],
             row["dev_no_cluster"], row["dev_triton"]) = (t for t, _ in kernels)
            for label, (t, parts) in zip(["op", "bmm", "bmm(fx, ftx)", "op float32", "single pass",
                                          "no clusters", "triton"], kernels):
                print(f"  {label:>12}: {1e6 * t:8.1f} us on the device: " + "; ".join(
                    f"{name[:60]} {1e6 * v:.1f}" for name, v in sorted(parts.items(),
                                                                     key=lambda kv: -kv[1])))
    for key in ("op_triton", "dev_triton"):  # NaN, not the time of a failing call
        if key in row and fns[-1].failed:
            row[key] = float("nan")
    if peaks is not None:
        row["roofline"] = roofline(fx, p, peaks)
        row["of_roofline"] = row["roofline"] / t_op
        if "dev_op" in row:
            row["dev_of_roofline"] = row["roofline"] / row["dev_op"]
            row["dev_single_of_roofline"] = row["roofline"] / row["dev_single"]
            row["dev_triton_of_roofline"] = row["roofline"] / row["dev_triton"]
    return row


def _load() -> str:
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return "%.1f, %.1f, %.1f" % os.getloadavg()


def machine(device: str, load_before: str) -> str:
    parts = [f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, "
             f"{torch.get_num_threads()} torch threads",
             f"torch {torch.__version__}, Python {platform.python_version()}"]
    # other work on the machine skews every number: say how much there was
    parts.append(f"load average (1, 5, 15 min) before the run: {load_before}; "
                 f"after: {_load()}")
    if device.startswith("cuda"):
        parts.append(f"GPU: {torch.cuda.get_device_name()}")
    return "; ".join(parts)


def table(rows) -> str:
    # a column where any row has it (the profiler may fail on one row): "n/a" where one has not
    gpu = any("op_fp32" in r for r in rows)
    roof = any("roofline" in r for r in rows)
    cols = ["N", "K", "map", "shift", "layout", "P", "op (ms)", "bmm (ms)", "reference (ms)", "op/bmm",
            "op/bmm per round", "op/bmm(fx, ftx)", "ref/op", "op GFLOP/s", "bmm GFLOP/s"]
    cols += ["op float32 (ms)", "op single pass (ms)", "op no clusters (ms)",
             "op triton (ms)"] if gpu else []
    cols += ["roofline (ms)", "of roofline", "single pass: of roofline",
             "triton: of roofline"] if roof else []
    dev = any("dev_op" in r for r in rows)
    cols += ["op kernels (ms)", "bmm kernels (ms)", "float32 kernels (ms)",
             "single pass kernels (ms)", "no clusters kernels (ms)", "triton kernels (ms)"] if dev else []
    cols += ["kernels: of roofline", "single pass kernels: of roofline",
             "triton kernels: of roofline"] if dev and roof else []

    def cells(row):
        r = collections.defaultdict(lambda: float("nan"), row)
        out = [r["n"], r["k"], r["map"], r["shift"], r["layout"], r["p"], f"{1e3 * r['op']:.3f}",
               f"{1e3 * r['bmm']:.3f}", f"{1e3 * r['ref']:.1f}", f"{r['op_bmm']:.2f}",
               f"{r['op_bmm_lo']:.2f}-{r['op_bmm_hi']:.2f}", f"{r['op_own']:.2f}", f"{r['ref_op']:.1f}", f"{r['gflops']:.1f}", f"{r['bmm_gflops']:.1f}"]
        out += [f"{1e3 * r[c]:.3f}" for c in ("op_fp32", "op_single", "op_no_cluster",
                                                "op_triton")] if gpu else []
        out += [f"{1e3 * r['roofline']:.3f}", f"{100 * r['of_roofline']:.0f}%",
                f"{100 * r['roofline'] / r['op_single']:.0f}%",
                f"{100 * r['roofline'] / r['op_triton']:.0f}%"] if roof else []
        out += [f"{1e3 * r[c]:.3f}" for c in ("dev_op", "dev_bmm", "dev_fp32", "dev_single",
                                                "dev_no_cluster", "dev_triton")] if dev else []
        out += [f"{100 * r['dev_of_roofline']:.0f}%", f"{100 * r['dev_single_of_roofline']:.0f}%",
                f"{100 * r['dev_triton_of_roofline']:.0f}%"] if dev and roof else []
        return out

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(c) for c in cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=16, fewer repeats")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--output", default=str(Path(__file__).with_name("RESULTS.md")),
                        help="markdown file to write (default: benchmarks/RESULTS.md)")
    parser.add_argument("--peak-tflops", type=positive(float), default=None,
                        help="CUDA: dense TF32 TFLOP/s for the roofline (default: GPU table)")
    parser.add_argument("--peak-gbs", type=positive(float), default=None,
                        help="CUDA: memory bandwidth in GB/s for the roofline (default: GPU table)")
    args = parser.parse_args(argv)
    check_output(parser, args.output)
    try:
        args.device = str(resolve_device(args.device))
    except ValueError as err:
        parser.error(str(err))
    if not ops.available():
        parser.error(f"the compiled operator is not available: {ops.load_error()}")
    n, repeat, ref_repeat = (16, 5, 1) if args.quick else (64, 9, 2)
    peaks = None
    if args.device.startswith("cuda"):
        known = gpu_peaks(torch.cuda.get_device_name(args.device))
        tflops = args.peak_tflops or (known[0] if known else None)
        gbs = args.peak_gbs or (known[1] if known else None)
        if (tflops is None) != (gbs is None):
            parser.error("this GPU is not in the peak table: give both --peak-tflops and --peak-gbs")
        peaks = (tflops, gbs) if tflops is not None else None
    load_before = _load()
    rows = []
    for layout, transform in [(lay, t) for lay in LAYOUTS for t in TRANSFORMS]:
        for k, side in SHAPES:
            r = measure(n, k, side, transform, args.device, repeat, ref_repeat, peaks, layout)
            rows.append(r)
            print(f"N={n} K={k:5d} map={r['map']:>5} shift={r['shift']} {layout:>13}  "
                  f"op {1e3 * r['op']:8.2f} ms  bmm {1e3 * r['bmm']:8.2f} ms  "
                  f"ref {1e3 * r['ref']:9.1f} ms  op/bmm {r['op_bmm']:5.2f} "
                  f"({r['op_bmm_lo']:.2f}-{r['op_bmm_hi']:.2f})  "
                  f"op/bmm(fx, ftx) {r['op_own']:5.2f}  "
                  f"ref/op {r['ref_op']:6.1f}  {r['gflops']:6.1f} GFLOP/s"
                  + (f"  {100 * r['of_roofline']:.0f}% of roofline (single pass "
                     f"{100 * r['roofline'] / r['op_single']:.0f}%)" if peaks else "")
                  + (f"; kernels {100 * r['dev_of_roofline']:.0f}% (single pass "
                     f"{100 * r['dev_single_of_roofline']:.0f}%)" if "dev_of_roofline" in r else ""),
                  flush=True)
    text = (f"## Operator benchmark ({'quick' if args.quick else 'full'} run, "
            f"device {args.device}, {machine_kind(args.device)}, {time.strftime('%Y-%m-%d')})\n\n"
            f"{machine(args.device, load_before)}\n\n"
            f"Correlation; Translation(1, 1) and Translation(32, 32) on a 224x224 input "
            f"(`shift`: the shift on the map, 0 = identity map); op and bmm times are the "
            f"medians of {repeat} alternated runs (`op/bmm per round`: the least and largest "
            f"ratio of a round's back-to-back op and bmm), the reference's the best of {ref_repeat}. "
            f"`op/bmm` compares with torch.bmm on "
            f"contiguous operands of the same shapes ([N, K, P] x [N, P, K]), `op/bmm(fx, ftx)` "
            f"with torch.bmm of the operator's own inputs (fx.flatten(2) @ "
            f"ftx.flatten(2).transpose(1, 2)), each into an output allocated once (the GEMM "
            f"alone); the operator reads index maps unchecked, as `measure` calls it. `ref/op` "
            f"is the speed-up over the float64 reference. Generated by "
            f"`{' '.join(['python benchmarks/run_ratios.py'] + list(argv if argv is not None else sys.argv[1:]))}`"
            f".\n\n" + table(rows))
    # a section per machine kind, and quick runs (N = 16) apart from full ones
    write_section(f"operator-{machine_kind(args.device)}{'-quick' if args.quick else ''}", text,
                  Path(args.output))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
