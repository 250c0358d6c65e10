"""Tests of the fused operator ``equifast::equivariance_scores`` (``equifast/ops.py``, ``csrc/``).

The oracle is :mod:`equifast.reference` (float64): the operator must give what
``reference.equivariance_scores`` gives for every transform, metric, dtype and memory layout.
Maps of size 1x1 are vectors for the reference (SPEC section 1); there the operator is
checked against the reference's pairwise maths (``scores_from_similarity`` of
``similarity_matrix`` of ``compared_pairs``), which is what the operator computes for any map.

Tolerances. float32 inputs: 1e-5 (float32 dot products of unit vectors, float64 statistics).
float16 / bfloat16 inputs: also 1e-5 (``_HALF_ATOL``), because the operator widens every half
value exactly to float32 and the reference widens the very same half values exactly to
float64, so both compute on identical numbers; only the float32 accumulation differs. Arg-max
indices are compared where the two best defined similarities differ by more than 1e-4.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from equifast import functional, ops, reference
from equifast.transforms import Flip, Identity, Rotation, Transform, Translation

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.skipif(not ops.available(),
                                reason=f"equifast._C not built ({ops.load_error()})")

ATOL = 1e-5
_HALF_ATOL = 1e-5  # see the module docstring: identical inputs on both sides
# CUDA tensor cores round the normalised values (unit rows) to TF32 / float16 (2^-11) or
# bfloat16 (2^-8) before multiplying: a similarity moves by at most about twice that.
TENSOR_CORE_ATOL = {torch.float32: 2e-3, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
EPS = reference.TOLERANCE
METRICS = {"correlation": True, "cosine": False}

TRANSFORMS = [
    Identity(),
    Rotation(1), Rotation(2), Rotation(3),
    Flip("horizontal"), Flip("vertical"),
    Translation(1, 1), Translation(-2, 3), Translation(5, -7),
    Translation(1, 1, mode="zero"), Translation(-3, 2, mode="zero"),
    Translation(4, -6, mode="zero"),
    Translation(1, 1, mode="zero", rounding="nearest"),
]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def _run_op(fx, ftx, transform: Transform, metric: str, input_size, tensor_cores=False):
    a, b = transform.index_map(tuple(fx.shape[-2:]), input_size, device=fx.device)
    return ops.equivariance_scores(fx, ftx, a, b, METRICS[metric], EPS, tensor_cores)


def _oracle(fx, ftx, transform, metric, input_size):
    """Reference scores and the float64 similarity matrices they come from."""
    a, b = reference.compared_pairs(fx.cpu(), ftx.cpu(), transform, input_size)
    s = reference.similarity_matrix(a, b, metric, EPS)
    if reference.is_vector(fx):  # 1x1 maps: the reference scores them as vectors
        return reference.scores_from_similarity(s), s
    return reference.equivariance_scores(fx.cpu(), ftx.cpu(), transform, metric, input_size), s


def _assert_matches(got, fx, ftx, transform, metric, input_size, atol=ATOL):
    """``got`` equals the reference within ``atol``; arg-max indices where the best two
    similarities are further apart than ``max(1e-4, 2 * atol)``."""
    want, s = _oracle(fx, ftx, transform, metric, input_size)
    channel, layer, index = (t.cpu() for t in got)
    n, k = fx.shape[:2]
    for name, g in (("channel", channel), ("layer", layer), ("layer_index", index)):
        assert g.shape == (n, k), f"{name}: shape {tuple(g.shape)}"
    assert channel.dtype == layer.dtype == torch.float32 and index.dtype == torch.int64
    torch.testing.assert_close(channel, want.channel, atol=atol, rtol=0, equal_nan=True)
    torch.testing.assert_close(layer, want.layer, atol=atol, rtol=0, equal_nan=True)
    # -1 exactly where the layer score is NaN
    assert torch.equal(index == -1, torch.isnan(want.layer))
    # the arg-max where it is well separated from the runner-up
    filled = torch.nan_to_num(s, nan=float("-inf"))
    if k >= 2:
        top = filled.topk(2, dim=-1).values
        clear = (top[..., 0] - top[..., 1] > max(1e-4, 2 * atol)) & ~torch.isnan(want.layer)
    else:
        clear = ~torch.isnan(want.layer)
    assert torch.equal(index[clear], want.layer_index[clear])
    # wherever the index is given, it points at a column achieving the layer score
    ok = index >= 0
    if ok.any():
        picked = filled.gather(-1, index.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(picked[ok].clamp_min(0).float(), layer[ok], atol=max(1e-4, atol))


def _features(n, k, h, w, *, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    fx = torch.randn(n, k, h, w, generator=g)
    ftx = torch.randn(n, k, h, w, generator=g) + 0.5 * fx
    return fx.to(device=device, dtype=dtype), ftx.to(device=device, dtype=dtype)


def sample_inputs(device, *, requires_grad=False):
    """Argument tuples for the operator, as extension-cpp's tests do (used by opcheck)."""
    out = []
    for (n, k, h, w), transform, centered in [
        ((2, 3, 4, 4), Rotation(1), True),
        ((1, 5, 6, 6), Translation(1, -2, mode="zero"), False),
        ((3, 1, 1, 1), Identity(), False),
        ((2, 4, 3, 5), Flip("vertical"), True),
    ]:
        fx, ftx = _features(n, k, h, w, device=device)
        fx.requires_grad_(requires_grad), ftx.requires_grad_(requires_grad)
        a, b = transform.index_map((h, w), (h, w), device=device)
        out.append((fx, ftx, a, b, centered, EPS))
    out.append(out[0] + (False,))  # the optional `tensor_cores` argument
    out.append(out[1] + (True, False))  # and `check_indices`
    return out


def _test_correctness(device, tensor_cores=False, atol=ATOL):
    h = w = 8
    fx, ftx = _features(2, 6, h, w, device=device)
    fx[0, 1] = 0.0    # dead channel: undefined for both metrics
    ftx[1, 2] = 3.0   # constant channel: undefined for correlation only
    for transform in TRANSFORMS:
        for metric in METRICS:
            got = _run_op(fx, ftx, transform, metric, (16, 16), tensor_cores)
            assert all(t.device == fx.device for t in got)
            _assert_matches(got, fx, ftx, transform, metric, (16, 16), atol=atol)


# --------------------------------------------------------------------------------------
# correctness
# --------------------------------------------------------------------------------------

def test_cpu():
    _test_correctness("cpu")


def test_cpu_multiplies_in_float32_whatever_tensor_cores_says():
    fx, ftx = _features(3, 20, 9, 9, seed=13)
    a, b = Rotation(1).index_map((9, 9), (9, 9))
    for centered in (True, False):
        with_tc = ops.equivariance_scores(fx, ftx, a, b, centered, EPS, True)
        without = ops.equivariance_scores(fx, ftx, a, b, centered, EPS, False)
        for x, y in zip(with_tc, without):
            assert torch.equal(x.nan_to_num(-7.0), y.nan_to_num(-7.0))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("tensor_cores", [False, True], ids=["float32", "tensor-cores"])
def test_cuda(tensor_cores):
    _test_correctness("cuda", tensor_cores, TENSOR_CORE_ATOL[torch.float32] if tensor_cores else ATOL)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("tensor_cores", [False, True], ids=["float32", "tensor-cores"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_tiles_and_dtypes(tensor_cores, dtype, layout):
    # K = 150 and P = 23 x 23 = 529 span several 64 x 64 tiles, column splits and position
    # steps (with ragged edges), on both memory layouts and every input type; on sm_90 the
    # rotation's 17 steps are split over clusters of 2 blocks (9 and 8 steps).
    fx, ftx = _features(3, 150, 23, 23, device="cuda", dtype=dtype, seed=14)
    fx[0, 3] = 0.0
    if layout == "channels_last":
        fx = fx.to(memory_format=torch.channels_last)
        ftx = ftx.to(memory_format=torch.channels_last)
    atol = TENSOR_CORE_ATOL[dtype] if tensor_cores else ATOL
    for t in (Rotation(1), Translation(3, -2), Translation(2, 5, mode="zero")):
        for metric in METRICS:
            _assert_matches(_run_op(fx, ftx, t, metric, (23, 23), tensor_cores), fx, ftx, t,
                            metric, (23, 23), atol=atol)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_single_pass(dtype, layout, monkeypatch):
    # EQUIFAST_CUDA_SINGLE_PASS=1: each row shifted by its first value as it is staged, its
    # statistics from float32 sums of the staged values, the centring applied in the epilogue.
    # K = 150 on 23 x 23 maps spans tiles, column splits and ragged steps. The rows stress the
    # shift: a constant (undefined), a large mean with small variations, a first value far from
    # the mean, a ramp, zeros. An image with a NaN, and (float32) one whose squares overflow
    # float32 sums, are flagged and computed again by the two-pass kernels.
    monkeypatch.setenv("EQUIFAST_CUDA_SINGLE_PASS", "1")
    fx, ftx = _features(4, 150, 23, 23, seed=15)
    fx[0, 3] = 0.0
    fx[:, 4], ftx[:, 4] = 0.1, 0.1
    fx[:, 5] += 100.0
    fx[:, 6, 0, 0] = 8.0
    ftx[:, 6] = torch.linspace(-3.0, 5.0, 23 * 23).reshape(23, 23)
    fx[2, 7, 5, 5] = float("nan")
    if dtype == torch.float32:
        fx[3, 2] *= 1e30
    fx, ftx = fx.to("cuda", dtype), ftx.to("cuda", dtype)
    if layout == "channels_last":
        fx = fx.to(memory_format=torch.channels_last)
        ftx = ftx.to(memory_format=torch.channels_last)
    for t in (Rotation(1), Translation(3, -2), Translation(2, 5, mode="zero")):
        for metric in METRICS:
            _assert_matches(_run_op(fx, ftx, t, metric, (23, 23), True), fx, ftx, t, metric,
                            (23, 23), atol=TENSOR_CORE_ATOL[dtype])


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: t.name)
@pytest.mark.parametrize("metric", list(METRICS))
def test_transforms_scaled(transform, metric):
    # maps of 6x6 from a 16x16 input: shifts are scaled (and some round to 0)
    fx, ftx = _features(2, 7, 6, 6, seed=1)
    _assert_matches(_run_op(fx, ftx, transform, metric, (16, 16)), fx, ftx, transform, metric,
                    (16, 16))


@pytest.mark.parametrize("shift", [(1, 1), (3, -1), (-1, 3)])
def test_shift_that_scales_to_zero_is_identity(shift):
    fx, ftx = _features(2, 4, 4, 4, seed=2)
    t = Translation(*shift, mode="zero")
    a, b = t.index_map((4, 4), (32, 32))
    assert torch.equal(a, torch.arange(16)) and torch.equal(b, torch.arange(16))
    _assert_matches(_run_op(fx, ftx, t, "correlation", (32, 32)), fx, ftx, t, "correlation",
                    (32, 32))


def test_identity_scores_one():
    fx, _ = _features(3, 5, 4, 4, seed=3)
    channel, layer, index = _run_op(fx, fx, Identity(), "correlation", (4, 4))
    torch.testing.assert_close(channel, torch.ones(3, 5), atol=ATOL, rtol=0)
    torch.testing.assert_close(layer, torch.ones(3, 5), atol=ATOL, rtol=0)
    assert torch.equal(index, torch.arange(5).expand(3, 5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", list(METRICS))
def test_half_dtypes(dtype, metric):
    fx, ftx = _features(2, 9, 6, 6, dtype=dtype, seed=4)
    for t in (Rotation(1), Translation(2, -1, mode="zero")):
        _assert_matches(_run_op(fx, ftx, t, metric, (12, 12)), fx, ftx, t, metric, (12, 12),
                        atol=_HALF_ATOL)


def _misaligned(f):
    """``f`` contiguous, one element past a 16-byte boundary (a slice of a larger storage):
    vectorised loads that assume an aligned start would read the wrong values."""
    storage = torch.empty(f.numel() + 1, dtype=f.dtype, device=f.device)
    return storage[1:].view(f.shape).copy_(f)


@pytest.mark.parametrize("layout", ["sliced", "misaligned", "channels_last", "transposed_hw",
                                    "expanded"])
@pytest.mark.parametrize("device, tensor_cores", [
    ("cpu", False),
    pytest.param("cuda", False, marks=[pytest.mark.cuda, needs_cuda], id="cuda-float32"),
    pytest.param("cuda", True, marks=[pytest.mark.cuda, needs_cuda], id="cuda-tensor-cores")])
def test_memory_layouts(layout, device, tensor_cores):
    fx, ftx = _features(2, 16, 10, 10, device=device, seed=5)
    if layout == "sliced":  # storage offsets of 12 and 110 elements, odd strides
        fx, ftx = fx[:, ::2, 1:-1, 2:], ftx[:, 1::2, 1:-1, :-2]
    elif layout == "misaligned":
        fx, ftx = _misaligned(fx), _misaligned(ftx)
        assert fx.data_ptr() % 16 and ftx.data_ptr() % 16
    elif layout == "channels_last":
        fx = fx.to(memory_format=torch.channels_last)
        ftx = ftx.to(memory_format=torch.channels_last)
    elif layout == "transposed_hw":
        fx, ftx = fx.transpose(-1, -2), ftx.transpose(-1, -2)
    else:
        fx = fx[:1].expand(3, -1, -1, -1)
        ftx = ftx[:1].expand(3, -1, -1, -1)
    assert layout == "misaligned" or not (fx.is_contiguous() and ftx.is_contiguous())
    size = tuple(fx.shape[-2:])
    atol = TENSOR_CORE_ATOL[torch.float32] if tensor_cores else ATOL
    for t in (Rotation(1) if size[0] == size[1] else Flip("horizontal"),
              Translation(1, -2), Translation(-1, 1, mode="zero")):
        for metric in METRICS:
            _assert_matches(_run_op(fx, ftx, t, metric, size, tensor_cores), fx, ftx, t, metric,
                            size, atol=atol)


@pytest.mark.parametrize("n,k,h,w", [(1, 1, 1, 1), (2, 1, 3, 3), (3, 4, 1, 1), (2, 3, 1, 5),
                                     (1, 70, 3, 3), (2, 2048, 2, 2), (5, 33, 7, 7)])
@pytest.mark.parametrize("metric", list(METRICS))
def test_shapes(n, k, h, w, metric):
    fx, ftx = _features(n, k, h, w, seed=6)
    t = Flip("horizontal")
    _assert_matches(_run_op(fx, ftx, t, metric, (h, w)), fx, ftx, t, metric, (h, w))


def test_many_images_path():
    # enough images that each thread takes whole images (the other CPU path)
    # (at least 6: image 5 is made constant below, whatever the number of threads)
    fx, ftx = _features(max(4 * torch.get_num_threads() + 1, 6), 12, 5, 5, seed=7)
    fx[3, 4] = 0.0
    ftx[5, :] = 1.0  # a whole image of constant channels: no defined k' at all
    for metric in METRICS:
        _assert_matches(_run_op(fx, ftx, Rotation(3), metric, (5, 5)), fx, ftx, Rotation(3),
                        metric, (5, 5))


@pytest.mark.parametrize("metric", list(METRICS))
def test_dead_and_constant_channels(metric):
    fx, ftx = _features(2, 5, 4, 4, seed=8)
    fx[0, 0] = 0.0
    ftx[0, 3] = 0.0
    fx[1, 2] = 7.0
    ftx[1, 4] = -2.0
    ftx[1, 1] = 1e3 + 1e-6 * torch.randn(4, 4)  # varies by far less than the tolerance
    channel, layer, index = got = _run_op(fx, ftx, Identity(), metric, (4, 4))
    _assert_matches(got, fx, ftx, Identity(), metric, (4, 4))
    assert torch.isnan(channel[0, 0]) and torch.isnan(layer[0, 0]) and index[0, 0] == -1
    assert torch.isnan(channel[0, 3]) and not torch.isnan(layer[0, 3])
    if metric == "correlation":
        assert torch.isnan(layer[1, 2]) and index[1, 2] == -1
        assert torch.isnan(channel[1, 4]) and torch.isnan(channel[1, 1])
    else:
        assert not torch.isnan(layer[1, 2])


def test_no_defined_column():
    fx, _ = _features(1, 3, 3, 3)
    ftx = torch.zeros(1, 3, 3, 3)
    channel, layer, index = _run_op(fx, ftx, Identity(), "cosine", (3, 3))
    assert torch.isnan(channel).all() and torch.isnan(layer).all()
    assert (index == -1).all()


@pytest.mark.parametrize("device, tensor_cores", [
    ("cpu", False),
    pytest.param("cuda", False, marks=[pytest.mark.cuda, needs_cuda], id="cuda-float32"),
    pytest.param("cuda", True, marks=[pytest.mark.cuda, needs_cuda], id="cuda-tensor-cores")])
def test_ties_take_smallest_index(device, tensor_cores):
    fx, _ = _features(1, 4, 3, 3, device=device)
    ftx = fx[:, [1, 1, 0, 0]].clone()  # k'=0 and 1 equal, 2 and 3 equal
    _, layer, index = _run_op(fx, ftx, Identity(), "correlation", (3, 3), tensor_cores)
    assert index[0, 0].item() == 2 and index[0, 1].item() == 0
    # equal columns in both halves of a 64-wide tile and in another tile (CUDA: the epilogue's
    # halves and column splits merge by index, not by the order they are walked in)
    fx, _ = _features(2, 150, 6, 6, device=device, seed=34)
    ftx = fx[:, [j % 37 for j in range(150)]].clone()  # column j equals j - 37, j - 74, ...
    _, _, index = _run_op(fx, ftx, Identity(), "correlation", (6, 6), tensor_cores)
    assert torch.equal(index[:, :37].cpu(), torch.arange(37).expand(2, 37))


@pytest.mark.parametrize("metric", list(METRICS))
def test_long_contiguous_rows(metric):
    # Identity on 20x20 maps: each row is one contiguous run of P = 400 floats, read in place
    # by the fast float32 path (sums in one streaming read, normalisation from cache), with
    # enough images for the per-image schedule. Rows with a large mean and a small (but
    # defined) spread check the centring keeps float64 accuracy.
    fx, ftx = _features(max(2 * torch.get_num_threads() + 1, 4), 40, 20, 20, seed=9)
    fx[0, 1] = 1e3 + 0.1 * torch.randn(20, 20)
    ftx[0, 1] = 1e3 + 0.1 * (fx[0, 1] - 1e3) + 0.05 * torch.randn(20, 20)
    ftx[1, 2] = -5e2 + 1e-2 * torch.randn(20, 20)
    fx[2, 3] = 0.0
    ftx[3, 4] = 2.5
    for layout in ("contiguous", "channels_last"):
        if layout == "channels_last":
            fx = fx.to(memory_format=torch.channels_last)
            ftx = ftx.to(memory_format=torch.channels_last)
        _assert_matches(_run_op(fx, ftx, Identity(), metric, (20, 20)), fx, ftx, Identity(),
                        metric, (20, 20))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("n", [1, 2 * torch.get_num_threads()], ids=["shared-b", "per-image"])
@pytest.mark.parametrize("transform", [Rotation(1), Translation(3, -2)], ids=str)
def test_b_read_in_place_or_packed(transform, n, layout):
    # ftx's compared positions are the identity map, so the operator reads B where it lies,
    # unnormalised, unless a row has f = ||v|| / ||v - mean|| above 16 (csrc: kMaxInPlaceGrowth)
    # in that image, which then packs B centred. Rows just under and over the limit, a row
    # far over it in one image only, and K = 300 on 32x32 maps (two row tiles, so the in-place
    # statistics come after the first tile's GEMM) must all match the reference.
    fx, ftx = _features(n, 300, 32, 32, seed=12)
    sd = ftx.std(dim=(-2, -1), keepdim=True)
    for img, row, ratio in [(0, 5, 15.8), (0, 150, 16.2), (n - 1, 299, 1e4), (n - 1, 7, 3.0)]:
        ftx[img, row] += ratio * sd[img, row] + 0.01 * ftx[img, row].mean()
    if layout == "channels_last":
        fx = fx.to(memory_format=torch.channels_last)
        ftx = ftx.to(memory_format=torch.channels_last)
    for metric in METRICS:
        _assert_matches(_run_op(fx, ftx, transform, metric, (32, 32)), fx, ftx, transform,
                        metric, (32, 32))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("metric", list(METRICS))
@pytest.mark.parametrize("device, tensor_cores", [
    ("cpu", False),
    pytest.param("cuda", False, marks=[pytest.mark.cuda, needs_cuda], id="cuda-float32"),
    pytest.param("cuda", True, marks=[pytest.mark.cuda, needs_cuda], id="cuda-tensor-cores")])
@pytest.mark.parametrize("h", [12, 7])
def test_tiny_and_huge_rows(metric, layout, device, tensor_cores, h):
    # Rows near float32's underflow (1 / norm beyond float range) and near its top (values
    # whose centred value overflows float32): the normalisation must stay finite and accurate
    # at both ends, whether B is read in place (identity) or packed (a zero-padded shift: rows,
    # or columns for channels-last), and for channels-last images that are otherwise streamed
    # (7 x 7: streamed whole, as one chunk).
    fx, ftx = _features(max(2 * torch.get_num_threads(), 3), 6, h, h, seed=11)
    fx[0, 0] *= 1e-41  # subnormal floats: the centred norm is about 1e-40
    ftx[0, 0] = fx[0, 0] * 2.0 + 1e-42 * torch.randn(h, h)
    fx[1, 2] *= 1e30
    ftx[1, 3] = 3e30 + 1e29 * torch.randn(h, h)
    # near float32's top with one value of the other sign: the centred value (about -6e38)
    # overflows float32, so the normalisation must not be done in float32
    fx[2, 4] = 3e38 - 1e37 * torch.rand(h, h, generator=torch.Generator().manual_seed(5))
    fx[2, 4, 0, 0] = -3e38
    ftx[2, 5] = 0.5 * fx[2, 4]
    fx, ftx = fx.to(device), ftx.to(device)
    if layout == "channels_last":
        fx = fx.to(memory_format=torch.channels_last)
        ftx = ftx.to(memory_format=torch.channels_last)
    atol = TENSOR_CORE_ATOL[torch.float32] if tensor_cores else ATOL
    for t in (Identity(), Translation(1, -1, mode="zero")):
        _assert_matches(_run_op(fx, ftx, t, metric, (h, h), tensor_cores), fx, ftx, t, metric,
                        (h, h), atol=atol)


@pytest.mark.parametrize("k, h", [(70, 20), (70, 7), (300, 5), (300, 12)])
@pytest.mark.parametrize("eps", [EPS, 0.0], ids=["eps", "eps0"])
@pytest.mark.parametrize("metric", list(METRICS))
def test_streamed_channels_last(metric, eps, k, h, monkeypatch):
    # Channels-last float32 images with K <= 128 are streamed (any N): chunks of
    # positions shifted near their means (the first chunk's own, then the previous chunk's,
    # packed again when too far, as the ramps are), our GEMM, and the exact centring added
    # from the chunks' statistics. 20 x 20 maps span two chunks, K = 70 a partial panel. The channels
    # stress the correction: a constant (exactly undefined even at eps = 0, at a value whose
    # float32 sums round), ramps whose chunk means differ far more than the values within a
    # chunk, a large mean with small variations, zeros; and an image with a NaN, which the
    # normalised path computes instead. On AVX-512, maps of at most 62 positions are streamed
    # whole, any K, and with K > 128 maps of up to 1022 (one chunk, the correction's two
    # positions in the same panels, the row maxima taken in the GEMM's registers; 12 x 12: three
    # blocks of positions summed apart): 300 channels span panels of every width and a partial
    # group.
    monkeypatch.setitem(globals(), "EPS", eps)
    n = 2 * torch.get_num_threads() + 1
    fx, ftx = _features(n, k, h, h, seed=21)
    ramp = torch.linspace(-3.0, 5.0, h * h).reshape(h, h)
    fx[:, 0] = 0.1
    fx[:, 1] = ramp + 1e-3 * fx[:, 1]
    ftx[:, 2] = 2.0 * ramp + 1e-3 * ftx[:, 2]
    fx[:, 3] += 1e4
    ftx[:, 4] = 0.0
    fx[-1, 5, 3, 4] = float("nan")
    fx = fx.to(memory_format=torch.channels_last)
    ftx = ftx.to(memory_format=torch.channels_last)
    for t in (Identity(), Translation(min(5, h - 2), -3), Rotation(1)):
        got = _run_op(fx, ftx, t, metric, (h, h))
        _assert_matches(got, fx, ftx, t, metric, (h, h))
        if metric == "correlation":  # the constant channel: undefined, whatever eps
            assert torch.isnan(got[0][:, 0]).all() and torch.isnan(got[1][:, 0]).all()


@pytest.mark.parametrize("formats", [
    (torch.channels_last, torch.channels_last), (torch.contiguous_format, torch.contiguous_format),
    (torch.contiguous_format, torch.channels_last)], ids=["nhwc", "nchw", "mixed"])
@pytest.mark.parametrize("h", [6, 12])
@pytest.mark.parametrize("metric", list(METRICS))
def test_streamed_whole_images_score_alike_in_any_batch(metric, formats, h):
    # On AVX-512, float32 maps of at most 62 positions, and with K > 128 larger ones (12 x 12:
    # blocks of positions summed apart), are streamed whole (NCHW channels gathered while
    # packed; narrower instruction sets take the other paths, and the same asserts hold): with
    # fewer images than twice the threads, each image's rows are split among the threads (64 a
    # task); with more, a thread takes whole images. The scores of an image must not depend on
    # which (sharded sweeps merge exactly), and both match the reference: 200 channels span four
    # row tasks, the last partial; channel 5 is constant (undefined), and column 7 of every image
    # equals column 3, which row 9 matches (a tie: the first column wins); image 1 is out of
    # float32's range in one channel (the normalised path, also when alone).
    n = 2 * torch.get_num_threads() + 1
    fx, ftx = _features(n, 200, h, h, seed=31)
    fx[:, 5] = 0.25
    ftx[:, 7] = ftx[:, 3]
    fx[:, 9] = torch.roll(ftx[:, 3], (-2, 1), (-2, -1))  # translated below: ftx's channel 3
    fx[1, 11] *= 1e-41
    fx, ftx = fx.to(memory_format=formats[0]), ftx.to(memory_format=formats[1])
    t = Translation(2, -1)
    batch = _run_op(fx, ftx, t, metric, (h, h))
    _assert_matches(batch, fx, ftx, t, metric, (h, h))
    assert (batch[2][:, 9] == 3).all()
    for i in range(3):
        alone = _run_op(fx[i:i + 1], ftx[i:i + 1], t, metric, (h, h))
        for x, y in zip(batch, alone):
            assert torch.equal(x[i:i + 1].nan_to_num(2.0), y.nan_to_num(2.0)), i
    few = _run_op(fx[:2], ftx[:2], t, metric, (h, h))
    for x, y in zip(batch, few):
        assert torch.equal(x[:2].nan_to_num(2.0), y.nan_to_num(2.0))


@pytest.mark.parametrize("k, size", [(16, 32), (64, 32), (256, 7), (256, 14)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device, tensor_cores", [
    ("cpu", False),
    pytest.param("cuda", False, marks=[pytest.mark.cuda, needs_cuda], id="cuda-float32"),
    pytest.param("cuda", True, marks=[pytest.mark.cuda, needs_cuda], id="cuda-tensor-cores")])
def test_sparse_maps(k, size, layout, device, tensor_cores):
    # ReLU maps that are mostly zero (the usual features): after a large product, a float32
    # sum that keeps adding the small products of the background loses up to half an ulp a
    # term, all in one direction. The CPU's streamed path (channels-last, K <= 128) summed whole
    # chunks (up to 1024 positions) and was 2.4e-5 off here; it now sums blocks of positions.
    # The CUDA float32 kernel summed all positions in one register (2.8e-5 off in a float32
    # emulation of its order); it now sums steps of 16 positions, then groups of 16 steps.
    g = torch.Generator().manual_seed(3)
    z = torch.randn(16, k, size, size, generator=g, dtype=torch.float64)
    noisy = z + 0.05 * torch.randn(z.shape, generator=g, dtype=torch.float64)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    fx = (z - 3.0).clamp_min(0).float().to(device, memory_format=fmt)
    atol = TENSOR_CORE_ATOL[torch.float32] if tensor_cores else ATOL
    for t in (Identity(), Translation(3, 2)):
        ftx = t((noisy - 3.0).clamp_min(0).float()).to(device, memory_format=fmt)
        got = _run_op(fx, ftx, t, "correlation", (size, size), tensor_cores)
        assert got[0].nanmedian() > 0.99  # the noisy copies are found
        _assert_matches(got, fx, ftx, t, "correlation", (size, size), atol=atol)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("side", [4, 8])
def test_ties_across_lanes(layout, side):
    # Rows of +-1, half of each, normalise to +-1/side exactly, so every similarity is an exact
    # sum: ties are exact whatever the GEMM's summation order. With K = 80 they span the
    # vectorised arg-max's lanes and iterations (and its tail); the smallest k' must win, as in
    # the reference, and undefined columns must never win. 4x4 maps are streamed whole on
    # AVX-512 (the maxima kept per lane of the GEMM's tile), 8x8 ones normalised (NCHW) or
    # streamed in chunks (channels-last), each with its own arg-max.
    g = torch.Generator().manual_seed(10)
    n, k, p = 2 * torch.get_num_threads(), 80, side * side
    base = torch.tensor([1.0] * (p // 2) + [-1.0] * (p // 2))
    def rows():
        return torch.stack([torch.stack([base[torch.randperm(p, generator=g)] for _ in range(k)])
                            for _ in range(n)]).view(n, k, side, side)
    fx, ftx = rows(), rows()
    for dup in (3, 40, 72, 79):    # same lane (8) in different iterations, and the tail
        ftx[:, dup] = ftx[:, 3]
    for dup in (50, 65):           # different lanes
        ftx[:, dup] = ftx[:, 50]
    ftx[:, 20] = ftx[:, 2]
    ftx[:, 2] = 1.0                # an undefined column equal to nothing
    fx[:, 0], fx[:, 1], fx[:, 5] = ftx[:, 40], ftx[:, 65], ftx[:, 20]
    if layout == "channels_last":
        fx = fx.to(memory_format=torch.channels_last)
        ftx = ftx.to(memory_format=torch.channels_last)
    got = _run_op(fx, ftx, Identity(), "correlation", (side, side))
    want, _ = _oracle(fx, ftx, Identity(), "correlation", (side, side))
    assert torch.equal(got[2], want.layer_index)
    assert (got[2][:, 0] == 3).all() and (got[2][:, 1] == 50).all()
    assert (got[2][:, 5] == 20).all()
    torch.testing.assert_close(got[1], want.layer, atol=ATOL, rtol=0, equal_nan=True)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                                                       needs_cuda])])
def test_empty_batch_and_channels(device):
    for shape in [(0, 3, 4, 4), (2, 0, 4, 4)]:
        fx = torch.randn(shape, device=device)
        a, b = Rotation(1).index_map((4, 4), (4, 4), device=device)
        for tensor_cores in (False, True):
            got = ops.equivariance_scores(fx, fx, a, b, True, EPS, tensor_cores)
            assert all(t.shape == shape[:2] and t.device == fx.device for t in got)


# --------------------------------------------------------------------------------------
# index widths and grid limits (research-scale extents)
# --------------------------------------------------------------------------------------

def _gathered_scores(fx, ftx, a, b, metric):
    """The reference's scores of the values at flat positions a (fx) and b (ftx), read from the
    views themselves (no flattening copy of a huge or expanded map)."""
    w = fx.shape[-1]
    u, v = fx[..., a // w, a % w].cpu(), ftx[..., b // w, b % w].cpu()
    return reference.scores_from_similarity(reference.similarity_matrix(u, v, metric, EPS))


def _assert_gathered(got, fx, ftx, a, b, metric, atol=ATOL):
    want = _gathered_scores(fx, ftx, a, b, metric)
    for g, w in zip(got[:2], want[:2]):
        torch.testing.assert_close(g.cpu(), w, atol=atol, rtol=0, equal_nan=True)
    assert torch.equal(got[2].cpu(), want.layer_index)


@pytest.mark.parametrize("device, tensor_cores", [
    ("cpu", False),
    pytest.param("cuda", False, marks=[pytest.mark.cuda, needs_cuda], id="cuda-float32"),
    pytest.param("cuda", True, marks=[pytest.mark.cuda, needs_cuda], id="cuda-tensor-cores")])
def test_positions_past_2_31_of_an_expanded_map(device, tensor_cores):
    # a map expanded along its rows (stride 0): a few elements in memory, flat positions past
    # 2^31 (the Triton kernels read them in 32 bits, wrapped: tests/test_ops_triton.py)
    g = torch.Generator().manual_seed(21)
    h, w = 4, 2 ** 30 + 1
    fx, ftx = (torch.randn(2, 3, h, 1, generator=g).to(device).expand(2, 3, h, w)
               for _ in range(2))
    a = torch.tensor([0, 2, 3, 1, 2, 3, 0, 3]) * w + torch.tensor([5, 0, w - 1, 7, 123, 9, w - 2, 4])
    b = torch.tensor([3, 1, 2, 2, 0, 3, 1, 0]) * w + torch.tensor([1, w - 1, 3, 8, 0, 77, 2, w - 3])
    a, b = a.to(device), b.to(device)
    atol = TENSOR_CORE_ATOL[torch.float32] if tensor_cores else ATOL
    for metric, centered in METRICS.items():
        got = ops.equivariance_scores(fx, ftx, a, b, centered, EPS, tensor_cores)
        _assert_gathered(got, fx, ftx, a, b, metric, atol)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("tensor_cores", [False, True], ids=["float32", "tensor-cores"])
def test_more_images_than_a_cuda_grid_holds(tensor_cores):
    # gridDim.y <= 65535: the CUDA kernels launch the images in chunks, their pointers offset
    n = 65535 + 3
    fx, ftx = _features(n, 3, 3, 3, device="cuda", seed=23)
    fx[-1, 1] = 0.0  # undefined in the last chunk
    a, b = Rotation(1).index_map((3, 3), (3, 3), device="cuda")
    got = ops.equivariance_scores(fx, ftx, a, b, True, EPS, tensor_cores)
    atol = TENSOR_CORE_ATOL[torch.float32] if tensor_cores else ATOL
    for part in (slice(0, 4), slice(65530, n)):  # about each end of the first chunk
        _assert_matches(tuple(t[part] for t in got), fx[part], ftx[part], Rotation(1),
                        "correlation", (3, 3), atol=atol)
    # the last images score as they do alone (an image's scores do not depend on its batch)
    alone = ops.equivariance_scores(fx[-3:], ftx[-3:], a, b, True, EPS, tensor_cores)
    for x, y in zip(got, alone):
        assert torch.equal(x[-3:].nan_to_num(2.0), y.nan_to_num(2.0))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                                                       needs_cuda])])
def test_offsets_past_2_31(device, dtype):
    # Views of one storage of more than 2^31 elements (6-12 GB, mostly never touched on the
    # CPU): image and channel starts past 2^31, and a map of more than 2^31 positions read at
    # its end, against the reference on the same values.
    try:
        storage = torch.empty(3 * 2 ** 30, dtype=dtype, device=device)
    except (RuntimeError, MemoryError) as err:
        pytest.skip(f"no room for 3 * 2^30 values: {err}")
    g = torch.Generator().manual_seed(22)

    def filled(size, stride, offset=0):
        view = torch.as_strided(storage, size, stride, offset)
        view.copy_(torch.randn(size, generator=g))
        return view

    # channel 2 of image 1 starts past 2^31; ftx's maps are transposed, beside fx's
    fx = filled((2, 3, 8, 8), (2 ** 30 + 7, 2 ** 29 + 3, 8, 1))
    ftx = filled((2, 3, 8, 8), (2 ** 30 + 7, 2 ** 29 + 3, 1, 8), 64 * 3)
    assert fx.storage_offset() + fx.stride(0) + 2 * fx.stride(1) >= 2 ** 31
    a, b = (torch.randperm(64, generator=g)[:40].to(device) for _ in range(2))
    for metric, centered in METRICS.items():
        _assert_gathered(ops.equivariance_scores(fx, ftx, a, b, centered, EPS, False),
                         fx, ftx, a, b, metric)
        ident = torch.arange(64, device=device)  # B read in place on the CPU (float32)
        _assert_gathered(ops.equivariance_scores(fx, fx, ident.flip(0), ident, centered, EPS,
                                                 False), fx, fx, ident.flip(0), ident, metric)
    # one map of 2^31 + 64 positions per channel, compared at its last 5000
    w = 2 ** 31 + 64
    fx = torch.as_strided(storage, (1, 2, 1, w), (w, 2 ** 29, w, 1))
    ftx = torch.as_strided(storage, (1, 2, 1, w), (w, 2 ** 29 + 1000, w, 1), 77)
    a, b = (w - 1 - torch.randperm(5000, generator=g)[:300] for _ in range(2))
    for f, i in ((fx, a), (ftx, b)):
        f[0, :, 0, i.to(device)] = torch.randn(2, 300, generator=g).to(device, dtype)
    a, b = a.to(device), b.to(device)
    for metric, centered in METRICS.items():
        _assert_gathered(ops.equivariance_scores(fx, ftx, a, b, centered, EPS, False),
                         fx, ftx, a, b, metric)


# --------------------------------------------------------------------------------------
# properties (hypothesis)
# --------------------------------------------------------------------------------------

_T_STRATEGY = st.one_of(
    st.just(Identity()),
    st.builds(Rotation, st.integers(1, 3)),
    st.builds(Flip, st.sampled_from(["horizontal", "vertical"])),
    # no shift at all is the identity, not a translation (Translation refuses it)
    st.tuples(st.integers(-7, 7), st.integers(-7, 7)).filter(any).flatmap(
        lambda s: st.builds(Translation, st.just(s[0]), st.just(s[1]),
                            mode=st.sampled_from(["circular", "zero"]),
                            rounding=st.sampled_from(["down", "nearest"]))),
)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), k=st.integers(1, 40), size=st.integers(1, 9),
       scale=st.sampled_from([1, 2, 3]), transform=_T_STRATEGY,
       metric=st.sampled_from(list(METRICS)), seed=st.integers(0, 2**16),
       dead=st.booleans(), channels_last=st.booleans())
def test_property_matches_reference(n, k, size, scale, transform, metric, seed, dead,
                                    channels_last):
    # channels-last features take the CPU's column paths (statistics by position blocks of
    # 16-channel groups and a remainder, packing as columns); K >= P on NCHW, B's rows
    # transposed 8 x 8
    input_size = (size * scale, size * scale)
    try:  # what the public function and the reference take (a shift smaller than the image)
        transform.check_input(input_size)
        transform.index_map((size, size), input_size)
    except ValueError:
        assume(False)
    fx, ftx = _features(n, k, size, size, seed=seed)
    if dead:
        fx[0, 0] = 0.0
        ftx[-1, -1] = 2.0
    if channels_last:
        fx = fx.to(memory_format=torch.channels_last)
        ftx = ftx.to(memory_format=torch.channels_last)
    got = _run_op(fx, ftx, transform, metric, input_size)
    _assert_matches(got, fx, ftx, transform, metric, input_size)
    channel, layer, _ = got
    both = ~torch.isnan(channel) & ~torch.isnan(layer)
    assert (layer[both] >= channel[both]).all()          # l >= c where both are defined
    for score in (channel, layer):
        defined = score[~torch.isnan(score)]
        assert ((defined >= 0) & (defined <= 1)).all()   # scores in [0, 1]


# --------------------------------------------------------------------------------------
# PyTorch integration: opcheck, compile, export, TorchScript, meta
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", sample_inputs("cpu") + sample_inputs("cpu", requires_grad=True),
                         ids=lambda a: str(tuple(a[0].shape)) + ("-grad" if a[0].requires_grad else ""))
def test_opcheck(args):
    torch.library.opcheck(torch.ops.equifast.equivariance_scores.default, args)


def test_torch_compile_fullgraph():
    (fx, ftx, a, b, centered, eps) = sample_inputs("cpu")[0]

    def f(fx, ftx, a, b):
        channel, layer, index = ops.equivariance_scores(fx, ftx, a, b, True, eps)
        return channel.nanmean(), layer, index

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(fx, ftx, a, b), f(fx, ftx, a, b)):
        torch.testing.assert_close(got, want, equal_nan=True)


def test_scores_carry_no_gradient_in_eager_and_compiled_runs():
    (fx, ftx, a, b, centered, eps) = sample_inputs("cpu")[0]
    want = ops.equivariance_scores(fx, ftx, a, b, centered, eps)
    fx, ftx = fx.requires_grad_(), ftx.requires_grad_()

    def f(fx, ftx):
        return ops.equivariance_scores(fx, ftx, a, b, centered, eps)

    for run in (f, torch.compile(f, fullgraph=True, backend="aot_eager")):
        got = run(fx, ftx)
        assert not any(t.requires_grad for t in got)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, equal_nan=True)
    # the features' other uses still back-propagate; the scores add nothing
    loss = torch.compile(lambda x, y: (3 * x).sum() + f(x, y)[0].nansum(), backend="aot_eager")(fx, ftx)
    loss.backward()
    torch.testing.assert_close(fx.grad, torch.full_like(fx, 3.0))
    assert ftx.grad is None


def test_torch_export():
    class Scores(torch.nn.Module):
        def forward(self, fx, ftx, a, b):
            return ops.equivariance_scores(fx, ftx, a, b, False, EPS)

    args = sample_inputs("cpu")[1][:4]
    exported = torch.export.export(Scores(), args)
    assert any("equivariance_scores" in str(node.target) for node in exported.graph.nodes)
    for got, want in zip(exported.module()(*args), Scores()(*args)):
        torch.testing.assert_close(got, want, equal_nan=True)


def test_torchscript():
    def scores(fx: torch.Tensor, ftx: torch.Tensor, a: torch.Tensor, b: torch.Tensor):
        return torch.ops.equifast.equivariance_scores(fx, ftx, a, b, True, 1e-5)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated since 2.14, still supported
        scripted = torch.jit.script(scores)
    args = sample_inputs("cpu")[0][:4]
    for got, want in zip(scripted(*args), scores(*args)):
        torch.testing.assert_close(got, want, equal_nan=True)


def test_meta_shapes():
    fx = torch.empty(3, 7, 5, 5, device="meta", dtype=torch.bfloat16)
    a = torch.empty(20, device="meta", dtype=torch.int64)
    channel, layer, index = ops.equivariance_scores(fx, fx, a, a, True, EPS)
    assert channel.shape == layer.shape == index.shape == (3, 7)
    assert channel.dtype == torch.float32 and index.dtype == torch.int64


# --------------------------------------------------------------------------------------
# bad inputs: the C++ checks and their fake mirrors give the same messages
# --------------------------------------------------------------------------------------

def _good(device="cpu"):
    fx, ftx = _features(2, 3, 4, 4)
    a, b = Rotation(1).index_map((4, 4), (4, 4))
    return [x.to(device) for x in (fx, ftx, a, b)]


_BAD = [
    (lambda fx, ftx, a, b: (fx[0], ftx[0], a, b, EPS),
     r"Expected `fx` to be 4-D \[N, K, H, W\], but got shape \[3, 4, 4\]"),
    (lambda fx, ftx, a, b: (fx, ftx[:, :2], a, b, EPS),
     r"Expected `fx` and `ftx` to have the same shape, but got \[2, 3, 4, 4\] and \[2, 2, 4, 4\]"),
    (lambda fx, ftx, a, b: (fx.double(), ftx.double(), a, b, EPS),
     r"Expected `fx` to be float32, float16 or bfloat16, but got torch.float64"),
    (lambda fx, ftx, a, b: (fx, ftx.half(), a, b, EPS),
     r"Expected `fx` and `ftx` to have the same dtype, but got torch.float32 and torch.float16"),
    (lambda fx, ftx, a, b: (fx, ftx, a.view(4, 4), b, EPS),
     r"Expected `a_index` and `b_index` to be 1-D \[P\], but got shapes \[4, 4\] and \[16\]"),
    (lambda fx, ftx, a, b: (fx, ftx, a.int(), b, EPS),
     r"Expected `a_index` and `b_index` to be torch.int64, but got torch.int32 and torch.int64"),
    (lambda fx, ftx, a, b: (fx, ftx, a[:5], b, EPS),
     r"Expected `a_index` and `b_index` to have the same length P, but got 5 and 16"),
    (lambda fx, ftx, a, b: (fx, ftx, a[:0], b[:0], EPS),
     r"Expected at least one compared position \(P >= 1\), but got P = 0"),
    (lambda fx, ftx, a, b: (fx, ftx, a, b, -1.0),
     r"Expected `eps` to be a finite number >= 0, but got -1"),
    (lambda fx, ftx, a, b: (fx, ftx, a, b, math.nan),
     r"Expected `eps` to be a finite number >= 0, but got nan"),
]


@pytest.mark.parametrize("make,message", _BAD, ids=[f"bad{i}" for i in range(len(_BAD))])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bad_inputs(make, message, device):
    fx, ftx, a, b, eps = make(*_good(device))
    with pytest.raises(RuntimeError, match=message):
        ops.equivariance_scores(fx, ftx, a, b, True, eps)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_vectors_are_sent_to_the_functional(device):
    # The message advised "flatten vectors to [N, K, 1, 1]": there each channel has one
    # position, so every correlation the operator gives is undefined, where a vector's is not.
    fx, ftx = _features(3, 6, 1, 1)
    a, b = Identity().index_map((1, 1), (1, 1))
    with pytest.raises(RuntimeError, match=r"score vectors \[N, K\] with "
                                           r"equifast\.functional\.equivariance_scores"):
        ops.equivariance_scores(*(t.to(device) for t in (fx.flatten(1), ftx.flatten(1), a, b)),
                                True, EPS)
    if device == "meta":
        return
    assert ops.equivariance_scores(fx, ftx, a, b, True, EPS)[0].isnan().all()
    got = functional.equivariance_scores(fx.flatten(1), ftx.flatten(1))
    for n in range(3):  # one correlation per image over its K entries (SPEC section 1)
        r = torch.corrcoef(torch.stack([fx[n].flatten(), ftx[n].flatten()]))[0, 1].clamp_min(0)
        torch.testing.assert_close(got.channel[n], r.expand(6), atol=ATOL, rtol=0)


@pytest.mark.parametrize("which", ["a_index", "b_index"])
@pytest.mark.parametrize("value", [-1, 16])
def test_index_out_of_range(which, value):
    fx, ftx, _, _ = _good()
    a, b = torch.arange(16), torch.arange(16)
    (a if which == "a_index" else b)[3] = value
    lo, hi = (value, 15) if value < 0 else (0, value)
    with pytest.raises(RuntimeError, match=(
            rf"Expected `{which}` values to be flat positions in \[0, H\*W\) = \[0, 16\), "
            rf"but got values in \[{lo}, {hi}\]")):
        ops.equivariance_scores(fx, ftx, a, b, True, EPS)


def test_cpu_checks_indices_even_when_told_not_to():
    # check_indices=False only spares CUDA a host sync; the CPU check costs none.
    fx, ftx, _, _ = _good()
    a = torch.arange(16)
    a[3] = 16
    with pytest.raises(RuntimeError, match=r"Expected `a_index` values to be flat positions"):
        ops.equivariance_scores(fx, ftx, a, torch.arange(16), True, EPS, check_indices=False)


@pytest.mark.cuda
@needs_cuda
def test_cuda_scores_without_host_sync():
    # What measure calls per (point, transform, metric): with the index map cached and the
    # finiteness checked per pass, nothing may wait for the device.
    fx, ftx = _features(4, 32, 14, 14, device="cuda")
    t = Translation(2, 2)
    expected = functional.equivariance_scores(fx, ftx, t, input_size=(56, 56))  # caches the map
    a, b = t.index_map((14, 14), (56, 56), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = functional.equivariance_scores(fx, ftx, t, input_size=(56, 56), check=False)
        with pytest.raises(RuntimeError, match="synchroniz"):  # the default checks the bounds
            ops.equivariance_scores(fx, ftx, a, b, True, EPS)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("tensor_cores", [False, True], ids=["float32", "tensor-cores"])
def test_cuda_graph_capture(tensor_cores):
    # Captured in a CUDA graph, on the capturing (non-default) stream: a kernel launched on the
    # legacy default stream, or a host sync, fails the capture; replays on new values (also
    # copied in on the capturing stream) must score as eager calls do.
    size = 24  # 18 steps of 32 positions: clusters of 2 on sm_90
    fx, ftx = _features(3, 70, size, size, device="cuda", seed=31)
    fx[1, 4] = 0.0
    a, b = Translation(2, -1).index_map((size, size), (size, size), device="cuda")

    def call():
        return ops.equivariance_scores(fx, ftx, a, b, True, EPS, tensor_cores,
                                       check_indices=False)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()  # warm up (the Triton kernels compile) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call()
    new_fx, new_ftx = _features(3, 70, size, size, device="cuda", seed=32)
    fx.copy_(new_fx)
    ftx.copy_(new_ftx)
    graph.replay()
    torch.cuda.synchronize()
    eager = call()
    for g, e in zip(captured, eager):
        assert torch.equal(g.nan_to_num(2.0), e.nan_to_num(2.0))
    atol = TENSOR_CORE_ATOL[torch.float32] if tensor_cores else ATOL
    _assert_matches(captured, fx, ftx, Translation(2, -1), "correlation", (size, size), atol=atol)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("tensor_cores", [False, True], ids=["float32", "tensor-cores"])
def test_cuda_runs_on_the_inputs_device(tensor_cores):
    # inputs on cuda:1 while cuda:0 is current: the kernels run there, on its current stream
    fx, ftx = _features(2, 70, 12, 12, device="cuda:1", seed=33)
    a, b = Rotation(1).index_map((12, 12), (12, 12), device="cuda:1")
    with torch.cuda.device(0):
        got = ops.equivariance_scores(fx, ftx, a, b, True, EPS, tensor_cores)
    assert all(t.device == fx.device for t in got)
    atol = TENSOR_CORE_ATOL[torch.float32] if tensor_cores else ATOL
    _assert_matches(got, fx, ftx, Rotation(1), "correlation", (12, 12), atol=atol)


def test_mixed_devices_message():
    fx, ftx, a, b = _good()
    with pytest.raises(RuntimeError, match=r"Expected all inputs on the same device, but got "
                                           r"fx on meta, ftx on meta, a_index on cpu"):
        ops.equivariance_scores(fx.to("meta"), ftx.to("meta"), a, b, True, EPS)


# The CPU kernels' instruction sets, widest first (EQUIFAST_CPU_ISA; csrc/cpu/scores_cpu.cpp).
CPU_ISAS = ["x86-64-v4", "x86-64-v3", "baseline"]
_ISA_FLAGS = {"x86-64-v4": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
              "x86-64-v3": {"avx2", "fma", "bmi2"}, "baseline": set()}


def _cpu_isa_available(isa, monkeypatch) -> bool:
    monkeypatch.setenv("EQUIFAST_CPU_ISA", isa)
    fx, ftx, a, b = _good()
    try:
        ops.equivariance_scores(fx, ftx, a, b, True, EPS)
    except RuntimeError as e:
        if "is not available on this CPU or build" not in str(e):
            raise
        return False
    return True


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f
                         if line.startswith("flags")), None)
    except OSError:
        return None


def test_cpu_isa_choice(monkeypatch):
    available = [_cpu_isa_available(isa, monkeypatch) for isa in CPU_ISAS]
    # The baseline runs everywhere, and a CPU that has an instruction set has the narrower ones.
    assert available[-1] and available == sorted(available), dict(zip(CPU_ISAS, available))
    flags = _cpu_flags()
    if flags is not None:  # one the CPU lacks is refused, not silently run
        for isa, ok in zip(CPU_ISAS, available):
            assert not ok or _ISA_FLAGS[isa] <= flags, (isa, _ISA_FLAGS[isa] - flags)
    monkeypatch.setenv("EQUIFAST_CPU_ISA", "avx9")
    with pytest.raises(RuntimeError, match=r"EQUIFAST_CPU_ISA='avx9' is not an instruction set "
                                           r"equifast builds: use baseline, x86-64-v3"):
        ops.equivariance_scores(*_good(), True, EPS)


@pytest.mark.parametrize("isa", CPU_ISAS[1:])
def test_narrower_cpu_isa_passes_these_tests(isa, monkeypatch):
    """The kernels older or non-x86 CPUs run (an instruction set narrower than this CPU's widest)
    pass every CPU test of this module, run again with EQUIFAST_CPU_ISA set."""
    if os.environ.get("EQUIFAST_CPU_ISA"):
        pytest.skip("this run already has its instruction set forced")
    env = {**os.environ, "EQUIFAST_CPU_ISA": isa}
    available = [i for i in CPU_ISAS if _cpu_isa_available(i, monkeypatch)]
    if isa not in available[1:]:
        pytest.skip(f"{isa} is this CPU's widest instruction set (the other tests run it) "
                    "or one it lacks")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          "-m", "not cuda", __file__], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1], run.stdout[-500:]


@pytest.mark.skipif(not ops.available(), reason="equifast._C not built")
def test_an_input_that_is_no_tensor_gets_the_schemas_error():
    # the wrapper read fx.device first: AttributeError: 'numpy.ndarray' object has no attribute
    # 'device'
    fx = torch.randn(1, 2, 4, 4)
    a, b = Flip("vertical").index_map((4, 4), (4, 4))
    with pytest.raises(RuntimeError, match="Expected a value of type 'Tensor' for argument 'fx'"):
        ops.equivariance_scores(fx.numpy(), fx, a, b, True, EPS)
    c, _, _ = ops.equivariance_scores(fx, torch.flip(fx, dims=(-2,)), a, b, True, EPS)
    want = reference.equivariance_scores(fx, torch.flip(fx, dims=(-2,)), Flip("vertical"))
    torch.testing.assert_close(c, want.channel)


@pytest.mark.parametrize("name", ["centered", "tensor_cores", "check_indices"])
@pytest.mark.parametrize("value", ["cosine", None, 2, 0.5])
def test_a_flag_that_is_no_bool_is_refused(name, value):
    # the wrapper took bool() of anything: centered="cosine" (a metric's name) scored the
    # correlation, and None scored the cosine
    fx, ftx, a, b = _good()
    kwargs = {"centered": True, "tensor_cores": True, "check_indices": True, name: value}
    with pytest.raises(TypeError, match=rf"Expected `{name}` to be a bool, but got {value!r}"):
        ops.equivariance_scores(fx, ftx, a, b, eps=EPS, **kwargs)


@pytest.mark.parametrize("centered", [False, 0, np.False_, True, 1, np.True_])
def test_flags_as_numpy_bools_and_integers(centered):
    fx, ftx, a, b = _good()
    got = ops.equivariance_scores(fx, ftx, a, b, centered, np.float64(EPS))
    _assert_matches(got, fx, ftx, Rotation(1), "correlation" if centered else "cosine", (4, 4))


@pytest.mark.parametrize("eps", [None, "1e-5", True, torch.tensor([EPS, 1.0]), torch.tensor([]),
                                 torch.tensor(EPS + 1j), torch.tensor(EPS, device="meta")],
                         ids=["None", "str", "bool", "two-values", "no-value", "complex", "meta"])
def test_an_eps_that_is_no_number_is_refused(eps):
    fx, ftx, a, b = _good()  # float(None), or of a tensor of two values, failed with no word of `eps`
    with pytest.raises(TypeError, match=r"Expected `eps` to be a finite number >= 0, but got "):
        ops.equivariance_scores(fx, ftx, a, b, True, eps)


def test_an_eps_tensor_of_one_value_is_that_value():
    fx, ftx, a, b = _good()
    got = ops.equivariance_scores(fx, ftx, a, b, True, torch.tensor([EPS], dtype=torch.float64))
    _assert_matches(got, fx, ftx, Rotation(1), "correlation", (4, 4))
