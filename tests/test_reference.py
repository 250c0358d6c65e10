"""The oracle against hand-made cases with known answers."""
import math
import re

import pytest
import torch

import equifast as ef
from equifast import reference as R


def test_exact_rotation_scores_one_and_index_is_identity():
    x = torch.randn(3, 5, 8, 8)
    t = ef.Rotation(1)
    s = R.equivariance_scores(x, t(x), t)
    assert torch.allclose(s.channel, torch.ones(3, 5)) and torch.allclose(s.layer, torch.ones(3, 5))
    assert torch.equal(s.layer_index, torch.arange(5).expand(3, 5))


def test_permuted_channels_layer_one_channel_not():
    x = torch.randn(2, 4, 6, 6)
    t = ef.Flip("horizontal")
    perm = torch.tensor([2, 0, 3, 1])
    ftx = t(x)[:, perm]  # channel perm[k'] of f(T x) holds T(f^k)
    s = R.equivariance_scores(x, ftx, t)
    assert torch.allclose(s.layer, torch.ones(2, 4))
    assert (s.channel < 0.9).all()
    inverse = torch.argsort(perm)
    assert torch.equal(s.layer_index, inverse.expand(2, 4))


def test_hand_computed_correlation_and_cosine():
    u = torch.tensor([1.0, 2.0, 3.0, 4.0])
    v = torch.tensor([1.0, 3.0, 2.0, 5.0])
    fx, ftx = u.view(1, 1, 2, 2), v.view(1, 1, 2, 2)
    uc, vc = u - u.mean(), v - v.mean()
    corr = float(uc @ vc / (uc.norm() * vc.norm()))
    cos = float(u @ v / (u.norm() * v.norm()))
    assert math.isclose(float(R.equivariance_scores(fx, ftx).channel), corr, rel_tol=1e-6)
    assert math.isclose(float(R.equivariance_scores(fx, ftx, metric="cosine").channel), cos, rel_tol=1e-6)


def test_negative_similarity_is_relu_zero():
    x = torch.randn(1, 1, 4, 4)
    s = R.equivariance_scores(x, -x)
    assert float(s.channel) == 0.0 and float(s.layer) == 0.0


def test_constant_and_dead_channels_are_undefined():
    x = torch.randn(2, 3, 5, 5)
    x[:, 1] = 0.0          # dead
    x[:, 2] = 7.25         # constant: undefined for correlation only
    s = R.equivariance_scores(x, x.clone())
    assert torch.isnan(s.channel[:, 1:]).all() and torch.isnan(s.layer[:, 1:]).all()
    assert (s.layer_index[:, 1:] == -1).all()
    assert torch.allclose(s.channel[:, 0], torch.ones(2))
    c = R.equivariance_scores(x, x.clone(), metric="cosine")
    assert torch.isnan(c.channel[:, 1]).all() and torch.allclose(c.channel[:, 2], torch.ones(2))


def test_layer_max_skips_undefined_targets():
    fx = torch.randn(1, 2, 4, 4)
    ftx = fx.clone()
    ftx[:, 1] = 0.0
    s = R.equivariance_scores(fx, ftx)
    assert torch.isnan(s.channel[0, 1]) and not torch.isnan(s.layer[0, 1])
    assert s.layer_index[0, 1] == 0


def test_zero_mode_compares_only_the_overlap():
    x = torch.randn(2, 3, 8, 8)
    t = ef.Translation(2, 3, mode="zero")
    ftx = t(x) + 0.0
    ftx[..., :2, :] = 100.0  # the vacated band is never compared
    ftx[..., :, :3] = -5.0
    s = R.equivariance_scores(x, ftx, t)
    assert torch.allclose(s.channel, torch.ones(2, 3))


def test_vectors_per_image_and_across_images():
    fx = torch.randn(6, 4)
    s = R.equivariance_scores(fx, 2 * fx + 1)  # correlation ignores scale and offset
    assert torch.allclose(s.channel, torch.ones(6, 4)) and torch.equal(s.channel, s.layer)
    swapped = fx[:, [1, 0, 3, 2]]
    a = R.equivariance_scores(fx, swapped, vector_mode="across_images")
    assert torch.allclose(a.layer, torch.ones(6, 4))
    assert torch.equal(a.layer_index[0], torch.tensor([1, 0, 3, 2]))
    with pytest.raises(ValueError, match="at least two images"):
        R.equivariance_scores(fx[:1], fx[:1], vector_mode="across_images")


def test_vector_scores_stay_on_the_inputs_device():
    # 'meta' stands in for a GPU here: a tensor made on the CPU inside the reference would
    # meet the inputs' device and fail, as it did on CUDA.
    fx = torch.randn(6, 4, device="meta")
    for mode in ("per_image", "across_images"):
        s = R.equivariance_scores(fx, fx, vector_mode=mode)
        assert {t.device.type for t in s} == {"meta"} and s.layer_index.shape == (6, 4)


def test_one_by_one_maps_are_vectors():
    f = torch.randn(3, 5, 1, 1)
    t = ef.Rotation(1)
    assert torch.equal(R.equivariance_scores(f, f, t).channel, R.equivariance_scores(f[..., 0, 0], f[..., 0, 0]).channel)


def test_undefined_is_at_or_below_the_tolerance():
    # with cosine, v = u: ||v|| <= eps ||u|| holds with equality for eps = 1, so every pair is
    # undefined there, and none is just below it
    x = torch.randn(2, 3, 4, 4)
    at = R.equivariance_scores(x, x.clone(), metric="cosine", eps=1.0)
    assert torch.isnan(at.channel).all() and torch.isnan(at.layer).all() and (at.layer_index == -1).all()
    below = R.equivariance_scores(x, x.clone(), metric="cosine", eps=1.0 - 1e-9)
    assert torch.allclose(below.channel, torch.ones(2, 3))


def test_tolerance_is_relative_to_the_vectors_size():
    # scores do not depend on the scale of the features (tiny activations are compared), and a
    # vector that varies by 1e-7 of its size is constant up to the tolerance (1e-5): undefined
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 5, generator=g)
    y = x + 0.5 * torch.randn(2, 3, 5, 5, generator=g)
    s = R.equivariance_scores(x, y)
    tiny = R.equivariance_scores(1e-12 * x, 1e-12 * y)
    torch.testing.assert_close(tiny.channel, s.channel) and torch.testing.assert_close(tiny.layer, s.layer)
    flat = x.double().clone()
    flat[:, 1] = 1e3 * (1.0 + 1e-7 * torch.randn(2, 5, 5, generator=g, dtype=torch.float64))
    u = flat[:, 1].flatten(1)
    assert ((u - u.mean(-1, keepdim=True)).norm(dim=-1) < R.TOLERANCE * u.norm(dim=-1)).all()
    f = R.equivariance_scores(flat, flat.clone())
    assert torch.isnan(f.channel[:, 1]).all() and not torch.isnan(f.channel[:, [0, 2]]).any()


@pytest.mark.parametrize("metric", ["correlation", "cosine"])
def test_float64_maps_of_any_magnitude_score_as_at_unit_scale(metric):
    # their squares overflowed beyond about 1e154 and underflowed below 1e-160: every channel
    # was undefined (NaN), read as dead, without a word; functional sends float64 here for it
    g = torch.Generator().manual_seed(3)
    fx = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    t = ef.Rotation(1)
    ftx = t(fx) + 0.3 * torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    unit = ef.functional.equivariance_scores(fx, ftx, t, metric=metric)
    assert not torch.isnan(unit.channel).any()
    for scale in (1e160, 1e300, 1e-170, 1e-300):
        s = ef.functional.equivariance_scores(scale * fx, scale * ftx, t, metric=metric)
        torch.testing.assert_close(s.channel, unit.channel, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(s.layer, unit.layer, rtol=1e-6, atol=1e-7)
        assert torch.equal(s.layer_index, unit.layer_index)


def test_undefined_vector_per_image_has_index_minus_one():
    fx = torch.randn(3, 4)
    fx[1] = 2.5  # a constant vector: undefined for correlation
    s = R.equivariance_scores(fx, fx.clone())
    assert torch.isnan(s.channel[1]).all() and (s.layer_index[1] == -1).all()
    assert torch.equal(s.layer_index[[0, 2]], torch.arange(4).expand(2, 4))


def test_across_images_index_points_at_the_transformed_channel():
    # not an involution: f(Tx) channel k' holds f(x) channel perm[k'], so l[k] is found at argsort(perm)[k]
    fx = torch.randn(10, 4)
    perm = torch.tensor([1, 2, 3, 0])
    s = R.equivariance_scores(fx, fx[:, perm], vector_mode="across_images")
    assert torch.allclose(s.layer, torch.ones(10, 4))
    assert torch.equal(s.layer_index, torch.argsort(perm).expand(10, 4))


def test_one_row_or_one_column_maps_are_maps():
    # only a 1x1 map is a vector: a 1xW strip is a map that a flip moves
    x = torch.randn(2, 3, 1, 6)
    t = ef.Flip("horizontal")
    s = R.equivariance_scores(x, t(x), t)
    assert torch.allclose(s.channel, torch.ones(2, 3))
    xt = x.transpose(-1, -2)
    v = ef.Flip("vertical")
    assert torch.allclose(R.equivariance_scores(xt, v(xt), v).channel, torch.ones(2, 3))


def test_reference_rejects_unknown_metric_and_mode():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="`metric`"):
        R.equivariance_scores(x, x, metric="l2")
    with pytest.raises(ValueError, match="`vector_mode`"):
        R.equivariance_scores(x[..., 0, 0], x[..., 0, 0], vector_mode="all")


def test_reference_scores_carry_no_gradient():
    # the functional path detached its inputs, ef.reference did not: its scores required grad
    fx = torch.randn(2, 3, 5, 5, requires_grad=True)
    for t, ftx in ((ef.Flip("horizontal"), torch.flip(fx, dims=(-1,))), (None, fx[:, :, 0, 0])):
        x = fx if t is not None else fx[:, :, 0, 0]
        s = R.equivariance_scores(x, ftx, t)
        assert not s.channel.requires_grad and not s.layer.requires_grad
        want = R.equivariance_scores(x.detach(), ftx.detach(), t)
        assert torch.equal(s.channel, want.channel) and torch.equal(s.layer, want.layer)
        if t is not None:  # a map compared with its own flip: 1 exactly
            torch.testing.assert_close(s.channel, torch.ones(2, 3), atol=1e-12, rtol=0)


@pytest.mark.parametrize("ftx_shape", [(1, 3, 4, 4), (2, 1, 4, 4), (2, 4, 4, 4), (1, 3)],
                         ids=["one-image", "one-channel", "more-channels", "vector-of-one"])
def test_reference_refuses_inputs_of_another_shape(ftx_shape):
    # a batch or channel of one broadcast: every image of fx was scored against ftx's first
    fx = torch.randn(2, 3, 4, 4) if len(ftx_shape) == 4 else torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"`fx` and `ftx` to have the same shape, but got "
                                         rf"{re.escape(str(tuple(fx.shape)))} and "
                                         rf"{re.escape(str(ftx_shape))}"):
        R.equivariance_scores(fx, torch.randn(ftx_shape), ef.Flip("vertical"))


def test_reference_and_functional_refuse_inputs_on_two_devices():
    fx = torch.randn(1, 2, 4, 4)
    for score in (R.equivariance_scores, ef.functional.equivariance_scores):
        with pytest.raises(ValueError, match="`fx` and `ftx` on the same device, but got cpu and meta"):
            score(fx, fx.to("meta"), ef.Flip("vertical"))


def test_reference_checks_its_inputs_as_the_public_function_does():
    # the oracle took what equivariance_scores refuses: a shift as large as the map rolled it
    # back onto itself (scored as the identity), no channel crashed in the layer max, a 0xW map
    # was NaN everywhere, complex maps lost their imaginary part, a bad input_size divided by 0
    x = torch.randn(2, 3, 8, 8)
    for score in (R.equivariance_scores, ef.functional.equivariance_scores):
        for shift in (ef.Translation(8, 0), ef.Translation(0, -9)):
            with pytest.raises(ValueError, match="as large as or larger than the 8x8 image"):
                score(x, shift(torch.randn(2, 3, 16, 16))[..., :8, :8], shift)
        with pytest.raises(ValueError, match="as large as or larger than the 4x4 image"):
            score(x[..., :1, :1], x[..., :1, :1], ef.Translation(4, 4), input_size=(4, 4))
        for shape in ((2, 0, 8, 8), (2, 3, 0, 8), (2, 3, 8, 0), (3, 0)):
            with pytest.raises(ValueError, match=re.escape(f"but got shape {shape}")):
                score(torch.randn(shape), torch.randn(shape))
        with pytest.raises(TypeError, match="floating tensor, but got torch.complex64"):
            score(x.to(torch.complex64), x.to(torch.complex64))
        with pytest.raises(TypeError, match="floating tensor, but got torch.int64"):
            score(x.long(), x.long())
        with pytest.raises(TypeError, match="an equifast transform"):
            score(x, x, "rotation:90")
        for bad in ((0, 8), 8, (8, 8, 3)):
            with pytest.raises(ValueError, match="`input_size`"):
                score(x, x, ef.Translation(1, 1), input_size=bad)
    # what stays allowed agrees with the public function: a shift scaled down to the map
    t, y = ef.Translation(12, 4), torch.randn(2, 3, 8, 8)
    want = ef.functional.equivariance_scores(x, y, t, input_size=(16, 16), backend="reference")
    got = R.equivariance_scores(x, y, t, input_size=(16, 16))
    assert torch.equal(got.channel, want.channel) and torch.equal(got.layer, want.layer)
    rolled = torch.roll(x, (6, 2), (-2, -1))  # 12 * 8 / 16 = 6, 4 * 8 / 16 = 2
    torch.testing.assert_close(R.equivariance_scores(x, rolled, t, input_size=(16, 16)).channel,
                               torch.ones(2, 3))


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr", "mkldnn"])
def test_sparse_and_mkldnn_maps_are_refused_with_the_fix(layout):
    # their layouts passed the checks, then reshape (sparse) or as_strided (mkldnn) raised deep
    # inside the backends
    x, y = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    if layout == "sparse_csr":  # 2-D only: as vectors [N, K]
        x, y = x.flatten(1)[:, :8], y.flatten(1)[:, :8]
    make = {"sparse_coo": torch.Tensor.to_sparse, "sparse_csr": torch.Tensor.to_sparse_csr,
            "mkldnn": torch.Tensor.to_mkldnn}[layout]
    for score in (R.equivariance_scores, ef.functional.equivariance_scores):
        for fx, ftx, name in ((make(x), y, "fx"), (x, make(y), "ftx")):
            with pytest.raises(TypeError, match=re.escape(
                    f"Expected `{name}` to be a dense (strided) tensor, but got layout "
                    f"{make(x).layout}; make it dense (`{name}.to_dense()`)")):
                score(fx, ftx, ef.Flip() if x.dim() == 4 else None)
    # the fix it names: the dense maps' scores, computed the plain way
    got = ef.functional.equivariance_scores(make(x).to_dense(), y)
    want = R.scores_from_similarity(R.similarity_matrix(x.flatten(2).double(), y.flatten(2).double())) \
        if x.dim() == 4 else R.vector_scores(x.double(), y.double(), "correlation", "per_image")
    torch.testing.assert_close(got.channel, want.channel, atol=1e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_maps_are_refused_with_the_fix(dtype):
    # torch has no aminmax (the finiteness check) or flip for float8: a raw NotImplementedError
    x, y = torch.randn(2, 3, 4, 4).to(dtype), torch.randn(2, 3, 4, 4).to(dtype)
    for score in (R.equivariance_scores, ef.functional.equivariance_scores):
        for fx, ftx, name in ((x, y, "fx"), (y.float(), x, "ftx")):
            with pytest.raises(TypeError, match=re.escape(
                    f"Expected `{name}` to be float16, bfloat16, float32 or float64, but got "
                    f"{dtype}; widen it (`{name}.float()`")):
                score(fx, ftx, ef.Flip())
    # the fix it names: float8 values widen exactly, so the scores are those of the float64 maps
    got = ef.functional.equivariance_scores(x.float(), y.float(), ef.Flip())
    want = R.equivariance_scores(x.double(), y.double(), ef.Flip())
    torch.testing.assert_close(got.channel, want.channel, atol=1e-5, rtol=0, equal_nan=True)
    torch.testing.assert_close(got.layer, want.layer, atol=1e-5, rtol=0, equal_nan=True)
