"""Tests of the operator's Triton kernels (``equifast/ops_triton.py``, ``EQUIFAST_CUDA_KERNEL=triton``).

On a CUDA machine they run on the GPU. Elsewhere ``test_under_interpreter`` runs this file
again in a child process under Triton's interpreter (``TRITON_INTERPRET=1``: the kernels'
own code on CPU tensors, with NumPy for the arithmetic), so the kernels' indexing, masks,
statistics, running arg-max and split merging are checked on every machine. The oracle is
``equifast.reference`` through ``tests/test_ops.py``'s ``_assert_matches``. What the
interpreter cannot show (the GPU's own rounding, speed) is left to ``benchmarks/gpu_check.sh``;
``test_compiles_for_gpus`` checks that every tile choice compiles for sm_80 and sm_90.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

from equifast import ops, reference  # noqa: E402
from equifast.transforms import Flip, Identity, Rotation, Translation  # noqa: E402
from test_ops import METRICS, TENSOR_CORE_ATOL, _assert_matches, _features  # noqa: E402

try:
    from equifast import ops_triton
    TOO_OLD = None
except ImportError as err:  # a Triton older than the kernels need
    ops_triton, TOO_OLD = None, str(err)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
GPU = torch.cuda.is_available() and not INTERPRETED
DEVICE = "cuda" if GPU else "cpu"
usable = pytest.mark.skipif(TOO_OLD is not None, reason=str(TOO_OLD))
kernels = pytest.mark.skipif(TOO_OLD is not None or not (INTERPRETED or GPU),
                             reason=TOO_OLD or "runs on a GPU, or under the interpreter "
                                               "(test_under_interpreter)")
EPS = reference.TOLERANCE


# A loop bounded by a scalar argument, as every kernel has: the interpreters of Triton 3.2-3.6
# fail on it with NumPy >= 2.4 (int() of a one-element array), before any of our code runs.
_INTERPRETER_PROBE = """
import torch, triton, triton.language as tl
@triton.jit
def count(out, n, B: tl.constexpr):
    total = 0
    for _ in range(0, tl.cdiv(n, B)):
        total += 1
    tl.store(out, total)
out = torch.zeros(1, dtype=torch.int32)
count[(1,)](out, 100, 16)
assert out.item() == 7, out
"""


@usable
@pytest.mark.skipif(INTERPRETED or GPU, reason="the kernels run directly here")
def test_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    probe = subprocess.run([sys.executable, "-c", _INTERPRETER_PROBE], env=env,
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        import numpy
        pytest.skip(f"Triton {triton.__version__}'s interpreter cannot run a scalar-bounded loop "
                    f"with NumPy {numpy.__version__}: {probe.stderr.strip().splitlines()[-1]}")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


@pytest.fixture(params=["single", "two"])
def passes(request, monkeypatch):
    """Both ways of the kernels: the single pass (K <= 256 by default) and the two passes."""
    monkeypatch.setenv("EQUIFAST_TRITON_SINGLE_PASS", "1" if request.param == "single" else "0")
    return request.param


def _triton(fx, ftx, transform, metric, input_size, tensor_cores=False, splits=None):
    a, b = transform.index_map(tuple(fx.shape[-2:]), input_size, device=fx.device)
    ops._check_inputs(fx, ftx, a, b, EPS)
    return ops_triton.equivariance_scores(fx, ftx, a, b, METRICS[metric], EPS, tensor_cores,
                                          splits=splits)


def _atol(dtype, tensor_cores):
    # the interpreter multiplies exactly; a half value is widened exactly (test_ops' docstring)
    return TENSOR_CORE_ATOL[dtype] if tensor_cores else 1e-5


@kernels
@pytest.mark.parametrize("metric", ["correlation", "cosine"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("transform", [Identity(), Rotation(1), Flip("vertical"), Translation(-2, 3),
                                       Translation(1, 2, mode="zero")], ids=lambda t: t.name)
def test_matches_reference(transform, layout, metric, passes):
    # K = 70: two column tiles of 64 and five row tiles of 16, the last ones partial
    fx, ftx = _features(3, 70, 9, 9, device=DEVICE, seed=1)
    if layout == "channels_last":
        fx = fx.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        fx, ftx = (torch.cat([f, f], dim=1)[:, ::2] for f in (fx, ftx))
    ftx[:, :5] = transform(fx)[:, :5]  # a few channels equivariant exactly
    got = _triton(fx, ftx, transform, metric, (9, 9))
    _assert_matches(got, fx, ftx, transform, metric, (9, 9))


@kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tensor_cores", [False, True])
@pytest.mark.parametrize("k", [3, 130])
def test_types_and_tiles(k, tensor_cores, dtype, passes):
    if INTERPRETED and tensor_cores and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter has no bfloat16 products (NumPy has no bfloat16)")
    # K = 3 (one partial tile) and 130 (three 64-wide column tiles); a map that is not square
    fx, ftx = _features(2, k, 6, 10, device=DEVICE, dtype=dtype, seed=2)
    t = Flip("horizontal")
    got = _triton(fx, ftx, t, "correlation", (6, 10), tensor_cores)
    _assert_matches(got, fx, ftx, t, "correlation", (6, 10), atol=_atol(dtype, tensor_cores))


@kernels
def test_undefined_rows(passes):
    fx, ftx = _features(2, 20, 5, 5, device=DEVICE, seed=3)
    fx[0, 1] = 2.5                     # constant: undefined for correlation, not for cosine
    ftx[0, 4] = -1.0                   # a constant column never wins
    fx[1, 2] = 0.0                     # zero: undefined for both
    ftx[1, :] = ftx[1, 7:8]            # image 1: every column the same, ties everywhere
    for metric in METRICS:
        got = _triton(fx, ftx, Rotation(2), metric, (5, 5))
        _assert_matches(got, fx, ftx, Rotation(2), metric, (5, 5))
        assert torch.isnan(got[1][1, 2]) and got[2][1, 2] == -1
    # a row of one image that is all NaN is undefined alone (the public API refuses NaN input)
    fx[1, 3] = float("nan")
    got = _triton(fx, ftx, Identity(), "correlation", (5, 5))
    assert torch.isnan(got[0][1, 3]) and got[2][1, 3] == -1
    # the other rows as if that row were zero (undefined too)
    want = reference.equivariance_scores(fx.cpu().nan_to_num(0.0), ftx.cpu(), Identity())
    for x, y in zip(got[:2], want[:2]):
        torch.testing.assert_close(x.cpu(), y, atol=1e-5, rtol=0, equal_nan=True)
    assert torch.equal(got[2].cpu() == -1, want.layer_index == -1)


def _plus_minus_maps(n, k, seed):
    """[n, k, 4, 4] maps of eight +1 and eight -1: mean 0 and norm 4 exactly, so that every
    similarity is an exact sum whatever the order of the products (ties stay ties)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([1.0] * 8 + [-1.0] * 8)
    return torch.stack([torch.stack([base[torch.randperm(16, generator=g)] for _ in range(k)])
                        for _ in range(n)]).view(n, k, 4, 4)


@kernels
def test_ties_take_the_smallest_channel_across_splits(monkeypatch):
    # Columns 10, 75 and 140 are the same map and every eighth row matches it exactly: their
    # best column is 10, the smallest, whether the three column tiles run in one program or in
    # splits merged afterwards, and in the single pass.
    fx, ftx = (_plus_minus_maps(2, 150, seed).to(DEVICE) for seed in (4, 5))
    ftx[:, 75] = ftx[:, 10]
    ftx[:, 140] = ftx[:, 10]
    fx[:, :150:8] = ftx[:, 10:11]
    monkeypatch.setenv("EQUIFAST_TRITON_SINGLE_PASS", "0")
    results = [_triton(fx, ftx, Identity(), "correlation", (4, 4), splits=s) for s in (1, 2, 3)]
    monkeypatch.setenv("EQUIFAST_TRITON_SINGLE_PASS", "1")
    results.append(_triton(fx, ftx, Identity(), "correlation", (4, 4)))
    for got in results:
        assert (got[2][:, :150:8] == 10).all() and (got[1][:, :150:8] == 1).all()
        _assert_matches(got, fx, ftx, Identity(), "correlation", (4, 4))
    for got in results[1:3]:
        for x, y in zip(got, results[0]):
            assert torch.equal(x, y)  # the splits change nothing, bit for bit


@kernels
@pytest.mark.parametrize("k", [40, 150])
def test_an_image_scores_the_same_in_any_batch(k, passes, monkeypatch):
    # With room for 8 programs, the two passes split K = 150's three column tiles three ways
    # for one image and not at all for five: the scores must not change.
    monkeypatch.setattr(ops_triton, "_device_programs", lambda device: 8)
    fx, ftx = _features(5, k, 7, 7, device=DEVICE, seed=5)
    whole = _triton(fx, ftx, Translation(1, 1), "correlation", (7, 7), tensor_cores=True)
    alone = _triton(fx[3:4], ftx[3:4], Translation(1, 1), "correlation", (7, 7), tensor_cores=True)
    for x, y in zip(whole, alone):
        assert torch.equal(x[3:4], y)


@kernels
def test_scores_stay_within_0_and_1(passes):
    # identical maps: similarities a rounding above 1 are scored 1, as scores.h clamps them
    fx, _ = _features(3, 30, 8, 8, device=DEVICE, seed=10)
    for metric in METRICS:
        got = _triton(fx, fx.clone(), Identity(), metric, (8, 8), tensor_cores=True)
        for scores in got[:2]:
            assert (scores <= 1).all() and (scores > 0.998).all()


def _off_sample(side, values, seed=0):
    """A [side, side] map that is 0 at the single pass's 64 sampled positions and ``values``
    (a function of a generator and a count) elsewhere."""
    p = side * side
    row = values(torch.Generator().manual_seed(seed), p)
    row[ops_triton.sample_positions(p)] = 0.0
    return row.view(side, side)


@kernels
@pytest.mark.parametrize("case", ["overflow", "underflow", "tiny-constant", "far-from-sample"])
def test_rows_beyond_their_sample_are_scored_again(case):
    # A row that is 0 where the single pass samples it keeps a scale of 1, whatever its values
    # elsewhere: products of 1e25 overflow float32, squares of 1e-25 underflow, even in +-v
    # pairs that sum to 0, and a sample of zeros far from a row of 16s loses 128 times float32
    # in the centring. Each such image is flagged, and the two passes score it (the reference's
    # scores), while an image of ordinary maps is not.
    side = 128 if case == "far-from-sample" else 16
    values = {
        "overflow": lambda g, p: 1e25 * torch.randn(p, generator=g),
        "underflow": lambda g, p: 1e-25 * torch.tensor([0.0, 1.0, -1.0, 0.0] * (p // 4)),
        "tiny-constant": lambda g, p: torch.full((p,), 4.57e-23),
        "far-from-sample": lambda g, p: 16 + torch.randn(p, generator=g),
    }[case]
    fx, ftx = _features(2, 6, side, side, device=DEVICE, seed=11)
    fx[1, 3] = _off_sample(side, values).to(DEVICE)
    ftx[1, 5] = fx[1, 3] + 0.01 * fx[1, 3].abs().max() * (fx[1, 3] != 0) * torch.randn(
        side, side, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    flags = []
    got = ops_triton.equivariance_scores(
        fx, ftx, *Identity().index_map((side, side), (side, side), device=DEVICE), True, EPS, False,
        _flags=flags)
    assert (flags[0] > 0).tolist() == [False, True]
    assert got[2][1, 3] == 5 and got[1][1, 3] > 0.99
    _assert_matches(got, fx, ftx, Identity(), "correlation", (side, side))


@kernels
def test_ordinary_maps_and_dead_channels_are_not_scored_again():
    fx, ftx = _features(4, 20, 12, 12, device=DEVICE, seed=13)
    fx[1, 2] = 0.0      # a dead ReLU channel
    ftx[2] = 0.0        # an image of dead channels
    fx[3] = (fx[3] - 1).clamp_min(0)  # sparse maps
    for metric in METRICS:
        flags = []
        ops_triton.equivariance_scores(
            fx, ftx, *Rotation(1).index_map((12, 12), (12, 12), device=DEVICE), METRICS[metric], EPS,
            True, _flags=flags)
        assert flags[0].tolist() == [0, 0, 0, 0]


@triton.jit
def _store_plane(out, N, K):
    triton.language.store(out, ops_triton._plane(N, K))


@kernels
def test_positions_past_2_31_of_an_expanded_map(passes):
    # A map expanded along its rows (stride 0) spans a few elements in memory, but its flat
    # positions run past 2^31: they were read in 32 bits there (the extent alone chose the
    # offsets' width), wrapped, and gave NaN and 1.0 for these scores.
    g = torch.Generator().manual_seed(21)
    h, w = 4, 2 ** 30 + 1  # rows 2 and 3 start past 2^31
    fx, ftx = (torch.randn(2, 3, h, 1, generator=g).to(DEVICE).expand(2, 3, h, w)
               for _ in range(2))
    row_a, row_b = torch.tensor([0, 2, 3, 1, 2, 3, 0, 3]), torch.tensor([3, 1, 2, 2, 0, 3, 1, 0])
    a = (row_a * w + torch.tensor([5, 0, w - 1, 7, 123, 9, w - 2, 4])).to(DEVICE)
    b = (row_b * w + torch.tensor([1, w - 1, 3, 8, 0, 77, 2, w - 3])).to(DEVICE)
    assert int(a.max()) >= 2 ** 31 and int(b.max()) >= 2 ** 31
    for metric, centered in METRICS.items():
        got = ops_triton.equivariance_scores(fx, ftx, a, b, centered, EPS, False)
        s = reference.similarity_matrix(fx[..., a // w, a % w].cpu(), ftx[..., b // w, b % w].cpu(),
                                        metric, EPS)
        want = reference.scores_from_similarity(s)
        for x, y in zip(got[:2], want[:2]):
            torch.testing.assert_close(x.cpu(), y, atol=1e-5, rtol=0, equal_nan=True)
        assert torch.equal(got[2].cpu(), want.layer_index)
        assert not torch.isnan(want.layer).any()


@kernels
@pytest.mark.parametrize("splits", [1, 2])
def test_images_in_chunks_of_the_grid(splits, passes, monkeypatch):
    # a launch holds 65535 images (the grid's second dimension): here chunks of 2, so that every
    # kernel's image offset (n0) and the flags of the single pass's fallback cross chunks
    fx, ftx = _features(5, 70, 9, 9, device=DEVICE, seed=24)
    fx[3, 5] = 0.0
    ftx[4, 1] = 2.0
    # image 2 (the second chunk) beyond its sample: the single pass flags it for the two passes
    fx[2, 7] = _off_sample(9, lambda g, p: 1e25 * torch.randn(p, generator=g)).to(DEVICE)
    a, b = Identity().index_map((9, 9), (9, 9), device=DEVICE)  # the sample's positions
    whole = ops_triton.equivariance_scores(fx, ftx, a, b, True, EPS, False, splits)
    monkeypatch.setattr(ops_triton, "_MAX_IMAGES", 2)
    flags = []
    chunked = ops_triton.equivariance_scores(fx, ftx, a, b, True, EPS, False, splits,
                                             _flags=flags)
    if passes == "single":
        assert (flags[0] > 0).tolist() == [False, False, True, False, False]
    for x, y in zip(whole, chunked):
        assert torch.equal(x.nan_to_num(2.0), y.nan_to_num(2.0))
    _assert_matches(chunked, fx, ftx, Identity(), "correlation", (9, 9))


@kernels
def test_buffer_planes_are_64_bit():
    # the [side, ..., N, K] buffers' planes past 2^31 values (millions of images in one call):
    # int32 products of N and K wrapped there
    out = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    _store_plane[(1,)](out, 70_000, 40_000)
    assert out.item() == 2_800_000_000


@usable
def test_the_way_depends_on_k_alone(monkeypatch):
    monkeypatch.delenv("EQUIFAST_TRITON_SINGLE_PASS", raising=False)
    assert ops_triton.single_pass(256) and not ops_triton.single_pass(257)
    monkeypatch.setenv("EQUIFAST_TRITON_SINGLE_PASS", "0")
    assert not ops_triton.single_pass(3)
    monkeypatch.setenv("EQUIFAST_TRITON_SINGLE_PASS", "1")
    assert ops_triton.single_pass(2048)
    monkeypatch.setenv("EQUIFAST_TRITON_SINGLE_PASS", "yes")
    with pytest.raises(ValueError, match="EQUIFAST_TRITON_SINGLE_PASS"):
        ops_triton.single_pass(64)
    # one in each run of P / 64 positions, not all in the map's first column
    positions = ops_triton.sample_positions(64 * 64)
    assert len(set(positions)) == 64 and len({q % 64 for q in positions}) > 1
    assert ops_triton.sample_positions(5) == [0, 1, 2, 3, 4]


@kernels
def test_indices_out_of_the_map_are_refused_as_the_compiled_operator_refuses_them():
    fx, ftx = _features(2, 5, 4, 4, seed=14)  # the CPU: the compiled operator's own message
    a, b = Rotation(1).index_map((4, 4), (4, 4))
    with pytest.raises(RuntimeError) as compiled:
        ops.equivariance_scores(fx, ftx, a, b + 3, True, EPS)
    with pytest.raises(RuntimeError) as triton_route:
        ops._triton_scores(fx.to(DEVICE), ftx.to(DEVICE), a.to(DEVICE), b.to(DEVICE) + 3, True,
                           EPS, True, True)
    assert str(triton_route.value) == str(compiled.value).splitlines()[0]


@kernels
def test_empty_batches_and_strided_indices(passes):
    fx, ftx = _features(3, 20, 5, 5, device=DEVICE, seed=12)
    a, b = Rotation(1).index_map((5, 5), (5, 5), device=DEVICE)
    empty = ops_triton.equivariance_scores(fx[:0], ftx[:0], a, b, True, EPS)
    assert [tuple(t.shape) for t in empty] == [(0, 20)] * 3
    strided = ops_triton.equivariance_scores(fx, ftx, torch.stack([a, a], 1)[:, 0],
                                             torch.stack([b, b], 1)[:, 0], True, EPS)
    for x, y in zip(strided, ops_triton.equivariance_scores(fx, ftx, a, b, True, EPS)):
        assert torch.equal(x, y)


@kernels
def test_sparse_maps(passes):
    # mostly-zero ReLU maps, where one float32 sum over every position drifts (test_ops):
    # the exact path sums groups of positions apart
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 16, 40, 40, generator=g, dtype=torch.float64)
    noisy = z + 0.05 * torch.randn(z.shape, generator=g, dtype=torch.float64)
    fx = (z - 3.0).clamp_min(0).float().to(DEVICE)
    ftx = (noisy - 3.0).clamp_min(0).float().to(DEVICE)
    got = _triton(fx, ftx, Identity(), "correlation", (40, 40))
    assert got[0].nanmedian() > 0.99
    _assert_matches(got, fx, ftx, Identity(), "correlation", (40, 40))


@kernels
def test_tile_override(monkeypatch, passes):
    fx, ftx = _features(2, 24, 5, 6, device=DEVICE, seed=6)
    default = _triton(fx, ftx, Flip("vertical"), "cosine", (5, 6))
    monkeypatch.setenv("EQUIFAST_TRITON_TILES", "32,16,16,4,2")
    other = _triton(fx, ftx, Flip("vertical"), "cosine", (5, 6))
    torch.testing.assert_close(other[1], default[1], atol=1e-6, rtol=0, equal_nan=True)
    assert torch.equal(other[2], default[2])
    monkeypatch.setenv("EQUIFAST_TRITON_TILES", "32,16")
    with pytest.raises(ValueError, match="EQUIFAST_TRITON_TILES"):
        _triton(fx, ftx, Flip("vertical"), "cosine", (5, 6))


def test_cuda_kernel_setting(monkeypatch):
    monkeypatch.delenv("EQUIFAST_CUDA_KERNEL", raising=False)
    assert ops.cuda_kernel() == "cuda"
    monkeypatch.setenv("EQUIFAST_CUDA_KERNEL", "triton")
    assert ops.cuda_kernel() == "triton"
    monkeypatch.setenv("EQUIFAST_CUDA_KERNEL", "trition")
    with pytest.raises(ValueError, match="EQUIFAST_CUDA_KERNEL"):
        ops.cuda_kernel()


def test_an_older_triton_is_refused_with_the_version_it_needs(monkeypatch):
    import equifast
    monkeypatch.setattr(triton, "__version__", "3.2.0")
    monkeypatch.delitem(sys.modules, "equifast.ops_triton", raising=False)
    monkeypatch.delattr(equifast, "ops_triton", raising=False)
    fx, ftx = _features(1, 4, 5, 5, device="cpu", seed=0)
    a, b = Identity().index_map((5, 5), (5, 5))
    with pytest.raises(RuntimeError, match=r"need Triton >= 3\.3, found 3\.2\.0"):
        ops._triton_scores(fx, ftx, a, b, True, EPS, True, True)


@usable
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
def test_operator_takes_the_triton_kernels(monkeypatch):
    fx, ftx = _features(4, 96, 14, 14, device="cuda", seed=7)
    a, b = Rotation(1).index_map((14, 14), (14, 14), device="cuda")
    cuda = ops.equivariance_scores(fx, ftx, a, b, True, EPS)
    monkeypatch.setenv("EQUIFAST_CUDA_KERNEL", "triton")
    tri = ops.equivariance_scores(fx, ftx, a, b, True, EPS)
    torch.testing.assert_close(tri[1], cuda[1], atol=4e-3, rtol=0, equal_nan=True)
    with pytest.raises(RuntimeError, match="flat positions"):
        ops.equivariance_scores(fx, ftx, a + 1000, b, True, EPS)


@usable
@pytest.mark.skipif(not GPU or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_kernels_run_on_the_inputs_device():
    # called directly (equifast.ops sets the device itself) with cuda:0 current: Triton launches
    # on the current device, so the kernels must make fx's device current
    fx, ftx = _features(2, 70, 9, 9, device="cuda:1", seed=10)
    with torch.cuda.device(0):
        got = _triton(fx, ftx, Rotation(1), "correlation", (9, 9))
        torch.cuda.synchronize(1)
    assert all(t.device == fx.device for t in got)
    _assert_matches(got, fx, ftx, Rotation(1), "correlation", (9, 9))


@usable
@pytest.mark.skipif(INTERPRETED, reason="compiles the kernels, not their interpreted copies")
@pytest.mark.parametrize("arch", [80, 90])
def test_compiles_for_gpus(arch):
    # Every tile choice of tiles_for, for every input type, compiled ahead of time for the GPU
    # (no device needed); on sm_90 the TF32 and half tiles of 64 rows and more use wgmma.
    dtypes = (torch.float32, torch.float16, torch.bfloat16) if arch == 90 else (torch.float32,)
    for name, ptx in ops_triton.compile_kernels(arch, dtypes):
        assert ".entry" in ptx, name
        if arch == 90 and "tensor-cores" in name and " 16x" not in name:
            assert "wgmma.mma_async" in ptx, name


@kernels
def test_tuning_candidates_give_the_default_scores():
    # benchmarks/tune_triton.py's loop: every candidate's tiles give the default's scores
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tune_triton.py"
    spec = importlib.util.spec_from_file_location("tune_triton", path)
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    fx, ftx = _features(2, 40, 6, 6, device=DEVICE, seed=8)
    a, b = Translation(1, 1).index_map((6, 6), (6, 6), device=DEVICE)
    candidates = [(32, 32, 16, 4, 2), (128, 64, 16, 8, 3), (16, 64, 32, 4, 3)]
    rows = tune.tune_shape(fx, ftx, a, b, candidates, calls=1)
    assert rows[0]["default"] and (rows[0]["way"], rows[0]["config"]) == ("single", (16, 64, 16, 4, 3))
    # 128 rows for K = 40 only mask rows out; each way takes the others
    assert [(r["way"], r["config"]) for r in rows[1:]] == [
        ("single", (32, 32, 16, 4, 2)), ("single", (16, 64, 32, 4, 3)),
        ("two", (32, 32, 16, 4, 2)), ("two", (16, 64, 32, 4, 3))]
    # TF32 (rounded in the kernels, so under the interpreter too): within its rounding
    assert all(r["seconds"] > 0 and r["difference"] <= 4e-3 for r in rows)
    assert max(r["difference"] for r in rows) > 0  # the ways and tiles do round differently
    assert "EQUIFAST_TRITON_TILES" not in os.environ
    assert "EQUIFAST_TRITON_SINGLE_PASS" not in os.environ


@kernels
@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_values_far_from_one(scale, passes):
    # the statistics are float64 sums (squares of 1e-30 underflow float32), and the values are
    # normalised in float32 around a mean split in two floats, offset here by 3 spreads
    fx, ftx = _features(2, 10, 6, 6, device=DEVICE, seed=9)
    fx, ftx = fx.double() * scale + 3 * scale, ftx.double() * scale
    fx, ftx = fx.float(), ftx.float()
    got = _triton(fx, ftx, Rotation(1), "correlation", (6, 6))
    _assert_matches(got, fx, ftx, Rotation(1), "correlation", (6, 6))
