"""Tile sizes for the Triton kernels (``equifast/ops_triton.py``) at the benchmark shapes.

For each shape, every candidate ``(BM, BN, BK, warps, stages)``, in the single pass and in the
two passes, is run through ``EQUIFAST_TRITON_TILES`` and ``EQUIFAST_TRITON_SINGLE_PASS``, checked against the default tiles' scores and timed (CUDA events
around ``--calls`` back-to-back calls, so launches overlap the kernels as in ``measure``); the
table gives the default's time, the best candidate's, and both against the roofline of
``run_ratios.py``. Written for the first GPU the Triton kernels meet: one run says which tiles
``tiles_for`` should pick.

    python benchmarks/tune_triton.py                    # CUDA; writes the triton-tuning section
    python benchmarks/tune_triton.py --budget 60 --no-write

``--compare`` times instead, at the same shapes, the compiled WMMA kernels (``csrc/cuda``) and
the Triton kernels at their default tiles, each on tensor cores and in float32: per call over
back-to-back calls and as kernel time (torch.profiler), against the roofline; it writes the
kernels-compare section (``benchmarks/gpu_check.sh`` runs it first, in its short budget).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from equifast import reference
from equifast.devices import resolve_device
from equifast.transforms import Translation

sys.path.insert(0, os.path.dirname(__file__))
from results import setting, sync, write_section  # noqa: E402
from run_ratios import INPUT, device_times, gpu_peaks, roofline  # noqa: E402

# (K, map side, layout): the operator benchmark's shapes, NCHW, and both ends channels-last
SHAPES = [(64, 56, "NCHW"), (256, 28, "NCHW"), (512, 14, "NCHW"), (2048, 7, "NCHW"),
          (64, 56, "channels-last"), (2048, 7, "channels-last")]
CANDIDATES = [(16, 64, 32, 4, 3), (16, 64, 64, 4, 4), (32, 64, 32, 4, 3), (32, 32, 32, 4, 4),
              (64, 64, 32, 4, 3), (64, 64, 32, 8, 3), (64, 64, 64, 4, 3), (64, 128, 32, 8, 3),
              (128, 64, 32, 8, 3), (128, 64, 16, 8, 4), (128, 128, 16, 8, 3)]


def tiles(config):
    """EQUIFAST_TRITON_TILES set to ``config`` (None: the default tiles) for the block."""
    return setting("EQUIFAST_TRITON_TILES", None if config is None else ",".join(map(str, config)))


def way(name):
    """EQUIFAST_TRITON_SINGLE_PASS for the ``"single"`` pass or the ``"two"`` passes (None: K's own)."""
    return setting("EQUIFAST_TRITON_SINGLE_PASS", {"single": "1", "two": "0", None: None}[name])


def per_call(fn, calls: int, device) -> float:
    """Seconds per call of ``fn`` over ``calls`` back-to-back calls (median of three runs)."""
    fn()
    sync(device)
    runs = []
    for _ in range(3):
        if torch.device(device).type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            runs.append(start.elapsed_time(end) * 1e-3 / calls)
        else:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            runs.append((time.perf_counter() - t0) / calls)
    return statistics.median(runs)


def _max_difference(x, y) -> float:
    """The largest difference of two score tensors, NaN where exactly one of them is NaN."""
    if not torch.equal(torch.isnan(x), torch.isnan(y)):
        return float("nan")
    return float((x - y).nan_to_num(0.0).abs().max())


def tune_shape(fx, ftx, a, b, candidates, calls: int, deadline: float = float("inf")):
    """The default's row (K's own way and tiles), then one per way (single pass, two passes)
    and candidate that fits ``K`` (until ``deadline``, a ``time.monotonic()``): way, config,
    seconds per call, and the largest difference of its channel and layer scores from the
    default's (NaN when their undefined entries differ)."""
    from equifast import ops_triton

    def call():
        return ops_triton.equivariance_scores(fx, ftx, a, b, True, reference.TOLERANCE)

    device, k = fx.device, fx.shape[1]
    with tiles(None), way(None):
        base = call()
        default = ("single" if ops_triton.single_pass(k) else "two",
                   ops_triton.tiles_for(k, a.numel(), fx.dtype, True, ops_triton.single_pass(k)))
        rows = [dict(way=default[0], config=default[1], default=True,
                     seconds=per_call(call, calls, device), difference=0.0)]
    for name in ("single", "two"):
        for config in candidates:
            if config[0] > max(16, 2 * k) or (name, config) == default:
                continue  # row tiles far wider than K only mask rows out
            if time.monotonic() > deadline:
                print(f"  {name} {config}: skipped (time budget)")
                continue
            with tiles(config), way(name):
                try:
                    got = call()
                    difference = max(_max_difference(got[0], base[0]),
                                     _max_difference(got[1], base[1]))
                    seconds = per_call(call, calls, device)
                except Exception as e:  # noqa: BLE001 (a tile the compiler or the device refuses)
                    print(f"  {name} {config}: failed: {e!r}")
                    continue
            rows.append(dict(way=name, config=config, default=False, seconds=seconds,
                             difference=difference))
    return rows


# (label, EQUIFAST_CUDA_KERNEL, tensor_cores) of --compare; the first one is the reference
KERNELS = [("wmma tf32", "cuda", True), ("wmma float32", "cuda", False),
           ("triton tf32", "triton", True), ("triton float32", "triton", False)]


def compare_shape(fx, ftx, a, b, calls: int, deadline: float = float("inf")) -> dict:
    """{label: (seconds per call, kernel seconds per call, largest score difference from the
    first of KERNELS)} for each of KERNELS (NaNs for one that fails, or past ``deadline``)."""
    from equifast import ops

    nan = (float("nan"),) * 3
    out, base = {}, None
    for label, kernel, tensor_cores in KERNELS:
        if time.monotonic() > deadline:
            print(f"  {label}: skipped (time budget)")
            out[label] = nan
            continue

        def call():
            return ops.equivariance_scores(fx, ftx, a, b, True, reference.TOLERANCE, tensor_cores,
                                           check_indices=False)

        with setting("EQUIFAST_CUDA_KERNEL", kernel):
            try:
                got = call()  # compiles the Triton kernels
                base = got if base is None else base
                difference = max(_max_difference(got[0], base[0]), _max_difference(got[1], base[1]))
                seconds = per_call(call, calls, fx.device)
                kernel_seconds, parts = device_times(call)
            except Exception as e:  # noqa: BLE001 (one failing way must not lose the others)
                print(f"  {label}: failed: {e!r}")
                out[label] = nan
                continue
        print(f"  {label}: {1e6 * seconds:.1f} us a call, {1e6 * kernel_seconds:.1f} us of kernels ("
              + "; ".join(f"{name[:50]} {1e6 * v:.1f}" for name, v in
                          sorted(parts.items(), key=lambda kv: -kv[1])[:4])
              + f"), scores within {difference:.1e} of {KERNELS[0][0]}", flush=True)
        out[label] = (seconds, kernel_seconds, difference)
    return out


def compare(args, device, peaks) -> str:
    """--compare: the table of compare_shape at every shape, within args.budget seconds."""
    deadline = time.monotonic() + args.budget
    g = torch.Generator().manual_seed(0)
    head = ["K", "map", "layout", "roofline (us)"]
    for label, _, _ in KERNELS:
        head += [f"{label} call (us)", f"{label} kernels (us)", f"{label}: of roofline"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, side, layout in SHAPES:
        if time.monotonic() > deadline:
            print(f"K={k} {side}x{side} {layout}: skipped (time budget)")
            continue
        fmt = torch.channels_last if layout == "channels-last" else torch.contiguous_format
        fx = torch.randn(args.n, k, side, side, generator=g).to(device, memory_format=fmt)
        ftx = torch.randn(args.n, k, side, side, generator=g).to(device, memory_format=fmt)
        a, b = Translation(1, 1).index_map((side, side), INPUT, device=device)
        print(f"K={k} {side}x{side} {layout}:", flush=True)
        times = compare_shape(fx, ftx, a, b, args.calls, deadline)
        roof = roofline(fx, a.numel(), peaks) if peaks else float("nan")
        cells = [k, f"{side}x{side}", layout, f"{1e6 * roof:.1f}"]
        for label, _, _ in KERNELS:
            seconds, kernel_seconds, _ = times[label]
            cells += [f"{1e6 * seconds:.1f}", f"{1e6 * kernel_seconds:.1f}",
                      f"{100 * roof / kernel_seconds:.0f}%"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=64, help="images (default 64)")
    ap.add_argument("--calls", type=int, default=20, help="calls per timing (default 20)")
    ap.add_argument("--budget", type=float, default=150,
                    help="seconds for all the candidates, shared out among the shapes")
    ap.add_argument("--compare", action="store_true",
                    help="time the WMMA and the Triton kernels instead (budget: for everything)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--output", default=None, help="markdown file (default: benchmarks/RESULTS.md)")
    args = ap.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        ap.error(str(err))
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        ap.error("the Triton kernels need a CUDA device (or TRITON_INTERPRET=1, very slowly)")
    peaks = gpu_peaks(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    if args.compare:
        if device.type != "cuda":
            ap.error("--compare times the compiled CUDA kernels: it needs a CUDA device")
        table = compare(args, device, peaks)
        print(table)
        if not args.no_write:
            write_section("kernels-compare", f"## WMMA and Triton kernels at the benchmark shapes "
                          f"({torch.cuda.get_device_name(device)})\n\nWritten by `benchmarks/"
                          f"tune_triton.py --compare` on {time.strftime('%Y-%m-%d')}: N = {args.n}, "
                          f"correlation, Translation(1, 1) on a 224x224 input, index maps "
                          f"unchecked; `call`: per call over {args.calls} calls back to back "
                          f"(median of 3), `kernels`: their device time (torch.profiler), "
                          f"against the roofline of `run_ratios.py`.\n\n{table}",
                          *([args.output] if args.output else []))
        return 0
    deadline = time.monotonic() + args.budget
    g = torch.Generator().manual_seed(0)
    lines = ["| K | map | layout | default tiles | default (us) | best tiles | best (us) | "
             "roofline (us) | default: of roofline | best: of roofline | tried |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, (k, side, layout) in enumerate(SHAPES):
        fmt = torch.channels_last if layout == "channels-last" else torch.contiguous_format
        fx = torch.randn(args.n, k, side, side, generator=g).to(device, memory_format=fmt)
        ftx = torch.randn(args.n, k, side, side, generator=g).to(device, memory_format=fmt)
        a, b = Translation(1, 1).index_map((side, side), INPUT, device=device)
        # each shape its share of what is left, so that a short budget still tries every shape
        share = time.monotonic() + (deadline - time.monotonic()) / (len(SHAPES) - i)
        rows = tune_shape(fx, ftx, a, b, CANDIDATES, args.calls, share)
        for r in rows:
            print(f"K={k} {side}x{side} {layout}: {r['way']} {r['config']}"
                  f"{' (default)' if r['default'] else ''}"
                  f" {1e6 * r['seconds']:.1f} us, scores within {r['difference']:.1e} of the default",
                  flush=True)
        # a candidate whose scores differ from the default's by more than TF32 rounding is wrong
        fair = [r for r in rows if r["difference"] <= 4e-3]
        bad = [(r["way"], r["config"]) for r in rows if not r["difference"] <= 4e-3]
        if bad:
            print(f"  scores differ from the default's: {bad}")
        best = min(fair, key=lambda r: r["seconds"])
        roof = roofline(fx, a.numel(), peaks) if peaks else None
        cells = [k, f"{side}x{side}", layout, f"{rows[0]['way']} {rows[0]['config']}",
                 f"{1e6 * rows[0]['seconds']:.1f}", f"{best['way']} {best['config']}",
                 f"{1e6 * best['seconds']:.1f}",
                 f"{1e6 * roof:.1f}" if roof else "-",
                 f"{100 * roof / rows[0]['seconds']:.0f}%" if roof else "-",
                 f"{100 * roof / best['seconds']:.0f}%" if roof else "-", len(rows)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.no_write:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        write_section("triton-tuning", f"## Triton kernels: tiles at the benchmark shapes ({name})\n\n"
                      f"Written by `benchmarks/tune_triton.py` on {time.strftime('%Y-%m-%d')}: N = "
                      f"{args.n}, correlation, Translation(1, 1) on a 224x224 input, TF32; each "
                      f"time is per call over {args.calls} calls back to back (median of 3). Tiles "
                      f"are the way (single pass or two) and (BM, BN, BK, warps, stages).\n\n{table}",
                      *([args.output] if args.output else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
