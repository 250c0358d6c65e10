"""The oracle against hand-made cases with known answers."""
import math

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
