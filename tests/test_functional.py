"""The public function: input checks, dispatch, and agreement of the backends."""
import warnings

import numpy as np
import pytest
import torch

import equifast as ef
from equifast import reference as R
from equifast.functional import check_all_finite, equivariance_scores

BACKENDS = ["reference"] + (["operator"] if ef.ops.available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_scores_one(backend):
    x = torch.randn(2, 6, 7, 7)
    s = equivariance_scores(x, x, None, backend=backend)
    assert torch.allclose(s.channel, torch.ones(2, 6), atol=1e-5)
    assert (s.layer >= s.channel - 1e-6).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_reference_on_scaled_translation(backend):
    fx, ftx = torch.randn(3, 8, 16, 16), torch.randn(3, 8, 16, 16)
    t = ef.Translation(5, -3)
    got = equivariance_scores(fx, ftx, t, input_size=(32, 32), backend=backend)
    want = R.equivariance_scores(fx, ftx, t, input_size=(32, 32))
    torch.testing.assert_close(got.channel, want.channel, atol=1e-5, rtol=0, equal_nan=True)
    torch.testing.assert_close(got.layer, want.layer, atol=1e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_compared_position_warns_under_correlation(backend):
    # 6 * 4 / 8 = 3 on a 4x4 map: a 1x1 overlap, so every centred vector is zero
    fx, ftx, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), ef.Translation(6, 6, mode="zero")
    with pytest.warns(ef.EquifastWarning, match=r"translation\(6,6,zero\) leaves one position to compare "
                                         r"on a 4x4 map \(input 8x8\)"):
        s = equivariance_scores(fx, ftx, t, input_size=(8, 8), backend=backend)
    assert s.channel.isnan().all() and (s.layer_index == -1).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cosine is defined on one position; two positions are fine
        cos = equivariance_scores(fx, ftx, t, input_size=(8, 8), metric="cosine", backend=backend)
        equivariance_scores(fx, ftx, ef.Translation(4, 6, mode="zero"), input_size=(8, 8), backend=backend)
    assert torch.allclose(cos.channel, (fx[..., 0, 0] * ftx[..., 3, 3]).sign().clamp(min=0))


def test_backend_is_reported():
    assert ef.backend() in ("operator", "reference")
    assert ef.backend() == ("operator" if ef.ops.available() else "reference")


@pytest.mark.parametrize("fx,ftx,kwargs,err,match", [
    (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5), {}, ValueError, "same shape"),
    (torch.randn(2, 3, 4), torch.randn(2, 3, 4), {}, ValueError, "patch grid"),
    (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), {"metric": "l2"}, ValueError, "`metric`"),
    (torch.randn(2, 3), torch.randn(2, 3), {"vector_mode": "all"}, ValueError, "`vector_mode`"),
    (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), {"backend": "gpu"}, ValueError, "`backend`"),
    (torch.zeros(2, 3, 4, 4, dtype=torch.int64), torch.zeros(2, 3, 4, 4, dtype=torch.int64), {}, TypeError, "floating"),
    ([1.0], torch.randn(2, 3), {}, TypeError, "torch.Tensor"),
    (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), {"transform": "rotation"}, TypeError,
     "equifast transform"),
    (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), {"input_size": (0, 0)}, ValueError,
     r"`input_size` to be \(H, W\), two positive ints, but got \(0, 0\)"),
    (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), {"input_size": 32}, ValueError, "`input_size`"),
    # a shift as large as the image would wrap around to another shift's scores
    (torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8),
     {"transform": ef.Translation(40, 40), "input_size": (32, 32)}, ValueError, "larger than the 32x32"),
    (torch.randn(2, 3), torch.randn(2, 3),
     {"transform": ef.Translation(4, 0), "input_size": (4, 4)}, ValueError, "larger than the 4x4"),
])
def test_bad_inputs(fx, ftx, kwargs, err, match):
    with pytest.raises(err, match=match):
        equivariance_scores(fx, ftx, **kwargs)


def test_nan_input_is_a_clear_error():
    fx = torch.randn(2, 3, 4, 4)
    fx[0, 1, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        equivariance_scores(fx, fx)


@pytest.mark.parametrize("backend", ["operator", "reference"])
@pytest.mark.parametrize("name", ["check", "tensor_cores"])
@pytest.mark.parametrize("value", [None, "False", 0.5])
def test_a_flag_that_is_no_bool_is_refused(backend, name, value):
    # bool() of anything was taken: check=None skipped the finiteness check (NaN was scored),
    # tensor_cores="False" multiplied on tensor cores
    fx = torch.randn(2, 3, 4, 4)
    fx[0, 1, 2, 2] = float("nan")
    with pytest.raises(TypeError, match=rf"Expected `{name}` to be a bool, but got {value!r}"):
        equivariance_scores(fx, torch.randn(2, 3, 4, 4), backend=backend, **{name: value})
    # numpy bools and the integers 0 and 1 are flags as before
    s = equivariance_scores(fx, fx, backend=backend, check=np.bool_(False), tensor_cores=0)
    assert torch.isnan(s.channel[0, 1]) and not torch.isnan(s.channel[1]).any()


def test_check_all_finite_names_the_broken_tensor():
    # one transfer for all; a finite tensor whose float32 sum overflows is not an error, nor are
    # float64 values past float32's range
    overflowing = torch.full((4, 4), 3e38)
    broken = torch.randn(3, 3)
    broken[1, 1] = float("inf")
    check_all_finite({"a": overflowing, "b": torch.randn(2, dtype=torch.float16),
                      "c": torch.full((2,), 1e300, dtype=torch.float64)})
    for bad in (float("inf"), float("-inf"), float("nan")):
        broken[1, 1] = bad
        with pytest.raises(ValueError, match="`b`"):
            check_all_finite({"a": overflowing, "b": broken, "c": torch.randn(2)})
    half = torch.randn(5, dtype=torch.bfloat16)
    half[0] = float("nan")
    with pytest.raises(ValueError, match="`h`"):
        check_all_finite({"h": half})


def test_non_square_rotation_and_empty_overlap():
    fx = torch.randn(1, 2, 4, 6)
    with pytest.raises(ValueError, match="square"):
        equivariance_scores(fx, fx, ef.Rotation(1))
    with pytest.raises(ValueError, match="overlap"):
        equivariance_scores(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4),
                            ef.Translation(7, 0, mode="zero", rounding="nearest"), input_size=(8, 8))


@pytest.mark.parametrize("error,another_torch", [
    ("ImportError: /x/equifast/_C.abi3.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev", True),
    ("ModuleNotFoundError: No module named 'equifast._C'", False)])
def test_the_fallback_to_the_reference_says_why(error, another_torch, monkeypatch):
    # it said "rebuild" alone: a build against another torch looked like no build at all
    from equifast import functional, ops
    monkeypatch.setattr(ops, "_loaded", False)
    monkeypatch.setattr(ops, "_error", error)
    functional._warn_fallback.cache_clear()
    fx = torch.rand(2, 3, 6, 6)
    t = ef.Rotation(1)
    with pytest.warns(ef.EquifastWarning, match="compiled operator") as caught:
        got = equivariance_scores(fx, t(fx), t)
    functional._warn_fallback.cache_clear()
    (said,) = [str(w.message) for w in caught]
    assert f"({error})" in said and ("built against another torch" in said) == another_torch
    assert torch.allclose(got.channel, torch.ones(2, 3), atol=1e-6)  # from the reference


def test_half_precision_inputs():
    x = torch.randn(2, 4, 6, 6)
    t = ef.Rotation(2)
    for dtype in (torch.float16, torch.bfloat16):
        s = equivariance_scores(x.to(dtype), t(x).to(dtype), t)
        assert s.channel.dtype == torch.float32
        assert torch.allclose(s.channel, torch.ones(2, 4), atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_compare_in_the_wider_one(backend):
    # float32 values past float16's range: narrowing ftx to fx's float16 would make them inf
    fx = torch.randn(2, 3, 4, 4).half()
    ftx = torch.flip(fx.float(), dims=(-1,)) * 1e5
    s = equivariance_scores(fx, ftx, ef.Flip("horizontal"), backend=backend)
    assert torch.allclose(s.channel, torch.ones(2, 3), atol=1e-5)
    # float32 with float64, and a float64 pair (a model.double()): float64 scores them
    for a, b in ((fx.float(), ftx.double()), (fx.double(), ftx.double())):
        if backend == "operator":
            with pytest.raises(TypeError, match="float16 or bfloat16 maps for backend='operator'"):
                equivariance_scores(a, b, ef.Flip("horizontal"), backend=backend)
            continue
        s = equivariance_scores(a, b, ef.Flip("horizontal"), backend=backend)
        assert s.channel.dtype == torch.float32
        assert torch.allclose(s.channel, torch.ones(2, 3), atol=1e-5)


def test_float64_maps_are_scored_in_float64():
    # the operator's float32 cast made finite 1e39 maps "not finite", underflowed 1e-50 maps
    # to zero (undefined) and rounded rows offset by 1e6 (3.7e-5 off the reference)
    # Correlation does not change when a map is scaled or shifted by a constant: each case
    # must score as the plain maps r, T(r) + noise do in float32
    g = torch.Generator().manual_seed(0)
    r = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    t = ef.Translation(1, 2)
    rt = t(r) + 0.3 * torch.randn(r.shape, generator=g, dtype=torch.float64)
    want = equivariance_scores(r.float(), rt.float(), t)
    assert not torch.isnan(want.channel).any()
    for scale, offset in ((1e39, 0.0), (1e-50, 0.0), (30.0, 1e6)):
        got = equivariance_scores(offset + scale * r, offset + scale * rt, t)  # "auto"
        torch.testing.assert_close(got.channel, want.channel, atol=2e-6, rtol=0)
        torch.testing.assert_close(got.layer, want.layer, atol=2e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_carry_no_gradient_in_any_backend(backend):
    # the operator returned outputs that required grad but gave fx no gradient, the reference
    # a real one: the backend decided
    fx = torch.randn(2, 3, 5, 5, requires_grad=True)
    s = equivariance_scores(fx, torch.flip(fx, dims=(-1,)), ef.Flip("horizontal"), backend=backend)
    assert not s.channel.requires_grad and not s.layer.requires_grad


@pytest.mark.skipif(not ef.ops.available(), reason="equifast._C not built")
def test_the_operators_scores_carry_no_gradient_to_go_back_through():
    fx = torch.randn(1, 2, 4, 4, requires_grad=True)
    a, b = ef.Identity().index_map((4, 4), (4, 4))
    channel, _, _ = ef.ops.equivariance_scores(fx, fx.detach(), a, b, True, ef.TOLERANCE)
    assert not channel.requires_grad  # as the functional's and the reference's
    with pytest.raises(RuntimeError, match="does not require grad"):
        channel.nansum().backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_eps_must_be_a_finite_number_at_least_zero(backend):
    # the operator refused NaN and -1 from C++, the reference and vectors took them: NaN made
    # every score undefined, -1 made constant channels defined
    for fx in (torch.randn(2, 3, 4, 4), torch.randn(2, 3)):
        for eps in (float("nan"), -1.0, float("inf"), "1e-5", True, 10 ** 400):
            with pytest.raises(ValueError, match="`eps` to be a finite number >= 0"):
                equivariance_scores(fx, fx, None, eps=eps, backend=backend)
    with pytest.raises(ValueError, match="`eps` to be a finite number >= 0"):
        R.equivariance_scores(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), eps=-1.0)
    with pytest.raises(ValueError, match="`eps` to be a finite number >= 0"):
        ef.measure(torch.nn.Conv2d(3, 4, 3), torch.rand(2, 3, 8, 8), transforms=[ef.Rotation(1)],
                   eps=float("nan"))


@pytest.mark.skipif(not ef.ops.available(), reason="equifast._C not built")
def test_backends_agree_on_non_finite_rows_below_the_check():
    fx = torch.randn(2, 4, 5, 5)
    ftx = fx.clone()
    fx[0, 1, 2, 2] = float("nan")
    ftx[1, 2, 0, 0] = float("inf")
    a, b = ef.Identity().index_map((5, 5), (5, 5))
    channel, layer, index = ef.ops.equivariance_scores(fx, ftx, a, b, True, ef.TOLERANCE)
    want = R.equivariance_scores(fx, ftx)
    torch.testing.assert_close(channel, want.channel, equal_nan=True)
    torch.testing.assert_close(layer, want.layer, equal_nan=True)
    assert torch.isnan(channel[0, 1]) and index[0, 1] == -1 and torch.isnan(channel[1, 2])
    assert index[1, 2] != 2  # the inf column is left out of the max


def test_finite_marker_is_finite_exactly_when_the_tensor_is():
    from equifast.functional import finite_marker

    for big in (torch.full((1000,), 3e38), torch.full((1000,), 65504.0).half(),
                torch.full((1000,), 3e38).bfloat16(), torch.full((1000,), 1e308, dtype=torch.float64)):
        assert torch.isfinite(finite_marker(big))  # large sums must not overflow into a false alarm
        for bad in (float("nan"), float("inf"), -float("inf")):
            t = big.clone()
            t[7] = bad
            assert not torch.isfinite(finite_marker(t))
    # any layout (read in memory order) and a strided view, holding the bad value or not
    for view in (lambda m: m.contiguous(memory_format=torch.channels_last),
                 lambda m: m.transpose(2, 3), lambda m: m[:, ::2, 1:]):
        maps = torch.randn(2, 5, 4, 3)
        assert torch.isfinite(finite_marker(view(maps)))
        for bad in (float("nan"), float("inf"), -float("inf")):
            m = maps.clone()
            m[1, 2, 2, 1] = bad  # inside each view
            assert not torch.isfinite(finite_marker(view(m))), bad
    assert finite_marker(torch.empty(0, 3)).item() == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["correlation", "cosine"])
def test_backend_matches_hand_computed_metric(backend, metric):
    # an offset makes the two metrics differ; each is checked against its definition by hand
    g = torch.Generator().manual_seed(4)
    fx = torch.randn(2, 3, 5, 5, generator=g) + 2.0
    ftx = torch.randn(2, 3, 5, 5, generator=g) + fx
    s = equivariance_scores(fx, ftx, metric=metric, backend=backend)
    u, v = fx.double().flatten(2), ftx.double().flatten(2)
    if metric == "correlation":
        u, v = u - u.mean(-1, keepdim=True), v - v.mean(-1, keepdim=True)
    sim = u @ v.transpose(-1, -2) / (u.norm(dim=-1).unsqueeze(-1) * v.norm(dim=-1).unsqueeze(-2))
    torch.testing.assert_close(s.channel, sim.diagonal(dim1=-2, dim2=-1).clamp_min(0).float(),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(s.layer, sim.max(-1).values.clamp_min(0).float(), atol=1e-5, rtol=0)
    other = equivariance_scores(fx, ftx, metric=({"correlation", "cosine"} - {metric}).pop(),
                                backend=backend)
    assert (other.channel - s.channel).abs().max() > 1e-2  # the metric really changes the answer


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (3, 4)], ids=["map", "vector"])
def test_eps_is_the_relative_tolerance_in_every_backend(backend, shape):
    # one compared vector varies by about 1e-3 of its size (channel 0 of a map; image 0's [K]
    # vector): defined under the default tolerance (1e-5), undefined with eps=1e-2; the rule
    # (undefined when ||u - mean|| <= eps ||u||) is evaluated here by hand
    g = torch.Generator().manual_seed(5)
    fx = torch.randn(*shape, generator=g)
    if len(shape) == 4:
        fx[:, 0] = 1.0 + 1e-3 * torch.randn(3, 5, 5, generator=g)
        rows = fx.double().flatten(2)  # [N, K, P]: each (n, k) is one compared vector
    else:
        fx[0] = 1.0 + 1e-3 * torch.randn(4, generator=g)
        rows = fx.double()  # [N, K]: per image, one vector over the K entries
    ratio = (rows - rows.mean(-1, keepdim=True)).norm(dim=-1) / rows.norm(dim=-1)
    for eps in (ef.TOLERANCE, 1e-2):
        s = equivariance_scores(fx, fx.clone(), eps=eps, backend=backend)
        want_defined = ratio > eps
        if len(shape) == 2:
            want_defined = want_defined.unsqueeze(-1).expand(3, 4)
        assert torch.equal(~torch.isnan(s.channel), want_defined), eps
    assert not (ratio > 1e-2).all() and (ratio > ef.TOLERANCE).all()  # both cases occur


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_by_one_maps_are_scored_as_vectors(backend):
    # T_l is the identity on 1x1 maps, and they are scored like [N, K] vectors (per image)
    g = torch.Generator().manual_seed(6)
    f, ftx = torch.randn(3, 5, 1, 1, generator=g), torch.randn(3, 5, 1, 1, generator=g)
    got = equivariance_scores(f, ftx, ef.Rotation(1), backend=backend, input_size=(8, 8))
    want = equivariance_scores(f[..., 0, 0], ftx[..., 0, 0], backend=backend)
    torch.testing.assert_close(got.channel, want.channel, atol=1e-6, rtol=0)
    assert not torch.isnan(got.channel).any()


@pytest.mark.parametrize("metric", ["correlation", "cosine"])
def test_vector_modes_against_hand_computed_similarities(metric):
    g = torch.Generator().manual_seed(7)
    fx = torch.randn(6, 4, generator=g) + 1.0
    ftx = -fx + 0.5 * torch.randn(6, 4, generator=g)  # anti-correlated: the ReLU matters
    ftx[:, 3] = fx[:, 0] + 0.1 * torch.randn(6, generator=g)  # channel 3 of f(Tx) follows channel 0

    def sim(a, b):  # rows of a with rows of b
        a, b = a.double(), b.double()
        if metric == "correlation":
            a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
        return a @ b.T / (a.norm(dim=-1).unsqueeze(-1) * b.norm(dim=-1).unsqueeze(-2))

    per_image = sim(fx, ftx).diagonal().clamp_min(0).float()  # one score per image
    s = equivariance_scores(fx, ftx, metric=metric)
    torch.testing.assert_close(s.channel, per_image.unsqueeze(1).expand(6, 4), atol=1e-6, rtol=0)
    assert torch.equal(s.layer_index, torch.arange(4).expand(6, 4))
    across = sim(fx.T, ftx.T)  # [K, K] over the images
    s = equivariance_scores(fx, ftx, metric=metric, vector_mode="across_images")
    torch.testing.assert_close(s.channel[0], across.diagonal().clamp_min(0).float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.layer[0], across.max(-1).values.clamp_min(0).float(), atol=1e-6, rtol=0)
    assert torch.equal(s.layer_index[0], across.argmax(-1)) and s.layer_index[0, 0] == 3
    assert (s.channel[0, :3] == 0).all()  # negative similarities are 0, not negative


def test_input_size_accepts_whole_floats_only():
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t = ef.Translation(5, 3)
    want = equivariance_scores(x, y, t, input_size=(16, 16))
    got = equivariance_scores(x, y, t, input_size=(16.0, 16.0))  # e.g. from a float config
    assert torch.equal(got.channel, want.channel)
    for bad in ((16.5, 16), (8, 0), (0, 8), (16,), (16, 16, 3)):
        with pytest.raises(ValueError, match="`input_size`"):
            equivariance_scores(x, y, t, input_size=bad)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (0, 3), (2, 0)])
def test_empty_batch_or_channels_is_a_clear_error(shape):
    with pytest.raises(ValueError, match="at least one image and one channel"):
        equivariance_scores(torch.randn(*shape), torch.randn(*shape))


@pytest.mark.skipif(not ef.ops.available(), reason="equifast._C not built")
@pytest.mark.parametrize("shape,channels_last", [
    ((5, 40, 12, 12), True),    # channels-last, K <= 128: streamed, a thread an image
    ((5, 40, 12, 12), False),   # NCHW: normalised tiles
    ((3, 300, 9, 9), False),    # few images, many channels: threads share B (image, row tile)
    ((3, 200, 8, 8), True),     # channels-last beyond the streamed width
    ((5, 24), False),           # vectors, per image
])
def test_an_images_scores_do_not_depend_on_its_batch_order_or_threads(shape, channels_last):
    # the operator picks its way by N and the thread count (threads take whole images, or share
    # an image's B); an image's scores must be the same bits in a batch of any size, at any
    # place in it and on any number of threads, so that batches, shards and machines agree
    g = torch.Generator().manual_seed(sum(shape))
    fx = torch.randn(shape, generator=g)
    ftx = fx + 0.3 * torch.randn(shape, generator=g)
    # constant channels (a constant vector): undefined (NaN, index -1) the same way everywhere
    fx[1, :3 if len(shape) == 4 else None] = 2.0
    if channels_last:
        fx, ftx = (t.contiguous(memory_format=torch.channels_last) for t in (fx, ftx))
    perm = torch.randperm(shape[0], generator=g)
    threads = torch.get_num_threads()
    for t in ([ef.Rotation(1), ef.Translation(3, -5, mode="zero"), ef.Flip("vertical")]
              if len(shape) == 4 else [ef.Rotation(1)]):
        def scores(a, b):
            s = equivariance_scores(a, b, t, input_size=(36, 36), backend="operator")
            return torch.stack([s.channel.double(), s.layer.double(), s.layer_index.double()])

        want = scores(fx, ftx)
        assert want[0].isnan().any()
        alone = torch.cat([scores(fx[i:i + 1], ftx[i:i + 1]) for i in range(shape[0])], 1)
        shuffled = scores(fx[perm], ftx[perm])[:, torch.argsort(perm)]
        pairs = torch.cat([scores(fx[i:i + 2], ftx[i:i + 2]) for i in range(0, shape[0], 2)], 1)
        try:
            torch.set_num_threads(1)
            one_thread = scores(fx, ftx)
        finally:
            torch.set_num_threads(threads)
        for got in (alone, shuffled, pairs, one_thread):
            assert torch.equal(got.nan_to_num(-2.0), want.nan_to_num(-2.0)), t.name


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_vector_of_one_entry_warns_that_it_has_no_per_image_correlation(backend):
    # a binary classifier's one logit scored NaN for every image, silently (a map of one
    # compared position warned); across images it is the logit's Pearson correlation
    fx = torch.randn(6, 1)
    ftx = 0.5 * fx + 0.3 * torch.randn(6, 1)
    with pytest.warns(ef.EquifastWarning, match=r"vector of one entry .* undefined \(NaN\); use "
                                                r"vector_mode='across_images'"):
        s = equivariance_scores(fx, ftx, backend=backend)
    assert torch.isnan(s.channel).all() and (s.layer_index == -1).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        across = equivariance_scores(fx, ftx, vector_mode="across_images", backend=backend)
        equivariance_scores(fx, ftx, metric="cosine", backend=backend)
        equivariance_scores(fx.view(6, 1, 1, 1).expand(6, 2, 1, 1), ftx.view(6, 1, 1, 1).expand(6, 2, 1, 1),
                            backend=backend)  # two entries: no warning
    want = max(0.0, float(np.corrcoef(fx[:, 0].double(), ftx[:, 0].double())[0, 1]))
    torch.testing.assert_close(across.channel, torch.full((6, 1), want), atol=1e-6, rtol=0)


def test_index_map_cache_is_bounded_by_bytes(monkeypatch):
    # 4096 entries of 4 MiB maps (a 1024-pixel input) could pin 16 GiB: the bytes bound it too
    import gc
    import weakref

    from equifast import functional

    one = 2 * 32 * 32 * 8  # a circular shift of a 32x32 map: two int64 [1024] index tensors
    monkeypatch.setattr(functional, "INDEX_MAP_CACHE_BYTES", 3 * one + one // 2)
    functional._map_cache.clear()
    try:
        shifts = [ef.Translation(s, s) for s in range(1, 7)]
        refs = []
        for t in shifts:
            a, b = functional._index_map(t, (32, 32), (32, 32), torch.device("cpu"))
            fresh = t.index_map((32, 32), (32, 32))  # what the cache hands out is the map itself
            assert torch.equal(a, fresh[0]) and torch.equal(b, fresh[1])
            refs.append((weakref.ref(a), weakref.ref(b)))
            del a, b, fresh
        gc.collect()
        held = [i for i, (ra, rb) in enumerate(refs) if ra() is not None or rb() is not None]
        assert held == [3, 4, 5]  # the three most recent, the bytes the bound allows
        assert functional._map_cache.bytes == sum(
            ra().nbytes + rb().nbytes for ra, rb in (refs[i] for i in held)) == 3 * one
        # a hit is the kept tensor itself, and moves it to the end: the next eviction is shift 5
        assert functional._index_map(shifts[3], (32, 32), (32, 32), torch.device("cpu"))[0] is refs[3][0]()
        functional._index_map(shifts[0], (32, 32), (32, 32), torch.device("cpu"))
        gc.collect()
        assert refs[4][0]() is None and refs[3][0]() is not None and refs[5][0]() is not None
        # a map larger than the whole bound is built, right, and not kept
        a, b = functional._index_map(shifts[0], (64, 64), (64, 64), torch.device("cpu"))
        assert torch.equal(a, shifts[0].index_map((64, 64), (64, 64))[0])
        assert len(functional._map_cache) == 3 and functional._map_cache.bytes == 3 * one
    finally:
        functional._map_cache.clear()


def test_index_maps_are_cached_once_per_device_whatever_its_name():
    # Measurer checks the maps on its device ('cuda', 'cpu:0'), the operator reads them on the
    # features' ('cuda:0', 'cpu'): one map, not one for each name (twice the maps on a GPU)
    from equifast import functional

    t = ef.Rotation(1)
    a, b = functional._index_map(t, (8, 8), (16, 16), torch.device("cpu", 0))
    again = functional._index_map(t, (8, 8), (16, 16), torch.zeros(1, device="cpu:0").device)
    assert again[0] is a and again[1] is b
    assert torch.equal(a, t.index_map((8, 8), (16, 16))[0])


def test_an_index_map_held_elsewhere_is_found_again_not_built_again(monkeypatch):
    # a run whose maps exceed the bound (2048-pixel inputs) would rebuild each of them every
    # batch: the maps a Measurer holds are found again however full the cache is
    import gc
    import weakref

    from equifast import functional

    monkeypatch.setattr(functional, "INDEX_MAP_CACHE_BYTES", 0)  # the cache keeps nothing
    functional._map_cache.clear()
    try:
        t, cpu = ef.Translation(2, 3), torch.device("cpu")
        held = functional._index_map(t, (16, 16), (16, 16), cpu)
        assert len(functional._map_cache) == 0
        again = functional._index_map(t, (16, 16), (16, 16), cpu)
        assert again[0] is held[0] and again[1] is held[1]
        old = weakref.ref(held[0])
        del held, again
        gc.collect()
        assert old() is None  # let go by everyone: gone, and built anew when asked again
        rebuilt = functional._index_map(t, (16, 16), (16, 16), cpu)
        assert torch.equal(rebuilt[0], t.index_map((16, 16), (16, 16))[0])
    finally:
        functional._map_cache.clear()


def test_meta_tensors_are_a_clear_error_and_the_operator_gives_their_shapes():
    # the public function failed in its finiteness check ("Cannot copy out of meta tensor") or,
    # with check=False, in the index maps (Tensor.item() on a meta tensor)
    x = torch.randn(2, 3, 6, 6, device="meta")
    for check in (True, False):
        with pytest.raises(ValueError, match="`fx` and `ftx` to hold data .* meta tensors"):
            equivariance_scores(x, x, ef.Rotation(1), check=check)
    if ef.ops.available():  # what the message points to works: the fake's shapes
        a, b = ef.Rotation(1).index_map((6, 6), (6, 6))
        c, l, i = ef.ops.equivariance_scores(x, x, a.to("meta"), b.to("meta"), True, 1e-5)
        assert c.shape == l.shape == i.shape == (2, 3) and c.device.type == "meta"
