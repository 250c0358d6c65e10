"""pytest-benchmark group ``end-to-end``: ``equifast.measure`` vs the forward passes it runs.

Run with ``pytest benchmarks/bench_measure.py --benchmark-enable``. The model is a
randomly initialised ResNet-18 at 112x112 (CPU) or ResNet-50 at 224x224 (when
``EQUIFAST_BENCH_DEVICE=cuda``), batch 32/64, diagonal shifts 1..32; the forward-only
baseline is :func:`run_end_to_end.forward_only` (the same batches, model and memory format).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

import equifast as ef
from equifast.models import load_model

sys.path.insert(0, os.path.dirname(__file__))
from run_end_to_end import forward_only  # noqa: E402

DEVICE = torch.device(os.environ.get("EQUIFAST_BENCH_DEVICE", "cpu"))
MODEL, SIZE, BATCH = ("resnet50", 224, 64) if DEVICE.type == "cuda" else ("resnet18", 112, 32)
TRANSFORMS = ef.diagonal_shifts(1, 32)


@pytest.fixture(scope="module")
def setup():
    model, _ = load_model(MODEL, weights=None)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    return model, x


@pytest.mark.benchmark(group="end-to-end")
def test_forward_passes_only(benchmark, setup):
    model, x = setup
    benchmark.extra_info.update(model=MODEL, size=SIZE, batch=BATCH, passes=BATCH * (1 + len(TRANSFORMS)))
    benchmark.pedantic(forward_only, args=(model, x, TRANSFORMS, BATCH, DEVICE), rounds=2, warmup_rounds=1)


@pytest.mark.benchmark(group="end-to-end")
def test_measure(benchmark, setup):
    model, x = setup
    benchmark.extra_info.update(model=MODEL, size=SIZE, batch=BATCH, backend=ef.backend())
    benchmark.pedantic(lambda: ef.measure(model, x, transforms=TRANSFORMS, batch_size=BATCH, device=DEVICE),
                       rounds=2, warmup_rounds=1)
