"""pytest-benchmark groups: the fused operator vs the reference vs ``torch.bmm``.

Run with ``pytest benchmarks/bench_ops.py --benchmark-enable`` (the unit suite's
``testpaths`` is ``tests/`` only, and ``addopts`` disables benchmarks by default). Each group
is one (K, map) shape at N = 64 images; ``torch.bmm`` multiplies operands of the same shapes
(``[N, K, P] x [N, P, K]``), the GEMM at the operator's core, as the speed-of-light baseline.
Achieved GFLOP/s (``2 N K^2 P / t``) is stored in each benchmark's ``extra_info``.

``--device cuda`` is not an option: the device follows ``EQUIFAST_BENCH_DEVICE`` (default
``cpu``).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

from equifast import ops, reference
from equifast.transforms import Translation

sys.path.insert(0, os.path.dirname(__file__))
from results import sync  # noqa: E402

N = 64
SHAPES = [(64, 56), (256, 28), (512, 14), (2048, 7)]  # (K, map side)
DEVICE = os.environ.get("EQUIFAST_BENCH_DEVICE", "cpu")
TRANSFORM = Translation(1, 1)  # one pixel on a 224 input: a shift of 0 on these maps
SHIFT = Translation(32, 32)     # 32 pixels: shifts of 8, 4, 2, 1 on the maps (fx gathered)
INPUT = (224, 224)

pytestmark = pytest.mark.skipif(not ops.available(), reason="equifast._C not built")


def _inputs(k, side, transform=TRANSFORM):
    g = torch.Generator().manual_seed(0)
    fx = torch.randn(N, k, side, side, generator=g).to(DEVICE)
    ftx = torch.randn(N, k, side, side, generator=g).to(DEVICE)
    a, b = transform.index_map((side, side), INPUT, device=DEVICE)
    return fx, ftx, a, b


def _record(benchmark, k, p):
    benchmark.extra_info["flops"] = 2 * N * k * k * p
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["gflops"] = 2 * N * k * k * p / stats.stats.min / 1e9


@pytest.mark.parametrize("transform", [TRANSFORM, SHIFT], ids=["identity-map", "shifted"])
@pytest.mark.parametrize("k,side", SHAPES, ids=[f"K{k}-{s}x{s}" for k, s in SHAPES])
def test_operator(benchmark, k, side, transform):
    benchmark.group = f"K={k} map={side}x{side} N={N}"
    fx, ftx, a, b = _inputs(k, side, transform)

    def run():
        out = ops.equivariance_scores(fx, ftx, a, b, True, reference.TOLERANCE,
                                      check_indices=False)  # as measure calls it
        sync(DEVICE)
        return out

    benchmark(run)
    _record(benchmark, k, a.numel())


@pytest.mark.parametrize("k,side", SHAPES, ids=[f"K{k}-{s}x{s}" for k, s in SHAPES])
def test_bmm(benchmark, k, side):
    benchmark.group = f"K={k} map={side}x{side} N={N}"
    p = TRANSFORM.index_map((side, side), INPUT)[0].numel()
    x = torch.randn(N, k, p, device=DEVICE)
    y = torch.randn(N, p, k, device=DEVICE)
    out = torch.empty(N, k, k, device=DEVICE)  # the GEMM alone, not a fresh N x K x K output

    def run():
        torch.bmm(x, y, out=out)
        sync(DEVICE)
        return out

    benchmark(run)
    _record(benchmark, k, p)


@pytest.mark.parametrize("k,side", SHAPES, ids=[f"K{k}-{s}x{s}" for k, s in SHAPES])
def test_reference(benchmark, k, side):
    benchmark.group = f"K={k} map={side}x{side} N={N}"
    fx, ftx, a, _ = _inputs(k, side)
    benchmark.pedantic(reference.equivariance_scores, args=(fx, ftx, TRANSFORM),
                       kwargs={"metric": "correlation", "input_size": INPUT},
                       rounds=2, iterations=1)
    _record(benchmark, k, a.numel())
