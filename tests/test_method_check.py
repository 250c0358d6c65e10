"""Thesis section 4.1.2 and Fig. 5a: the method gives the known perfect scores."""
import torch

import equifast as ef
from equifast import method_check as mc


def test_gaussian_filters_give_channel_equivariance_one():
    x = torch.rand(4, 3, 24, 24)
    for row in mc.layer_scores(mc.gaussian_cnn(), x, ef.rotations()):
        assert abs(row["channel"] - 1) < 1e-5 and abs(row["layer_score"] - 1) < 1e-5
        assert row["undefined_fraction"] == 0  # every channel counts, none dead


def test_rotated_copies_give_layer_one_and_channel_below_one():
    x = torch.rand(4, 3, 24, 24)
    for row in mc.layer_scores(mc.rotated_copies_cnn(), x, ef.rotations()):
        assert abs(row["layer_score"] - 1) < 1e-5
        assert row["channel"] < 0.99
        assert row["undefined_fraction"] == 0


def test_gaussian_kernel_is_rotation_invariant():
    g = mc.gaussian_kernel(5, 1.3)
    assert torch.allclose(torch.rot90(g, 1), g) and abs(float(g.sum()) - 1) < 1e-6


def test_metric_check_correlation_ignores_offset_cosine_does_not():
    out = mc.metric_check(0.5)
    assert abs(out["correlation"] - 1) < 1e-5
    assert out["cosine"] < 0.95


def test_main_runs(capsys):
    assert mc.main([]) == 0
    assert "layer 3" in capsys.readouterr().out
