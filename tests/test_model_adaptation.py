"""Models as a researcher hands them over: in training, with gradients on, returning dicts or
output objects, failing mid-measure, or a full checkpoint asked for its pooled features."""
import copy
import warnings
import math
from dataclasses import dataclass

import pytest
import timm
import torch
from torch import nn

import equifast as ef
from equifast import reference
from equifast.models import load_model


def _hand_scores(feature, x, t):
    """Mean channel and layer scores of ``feature`` under ``t``, features taken by hand."""
    with torch.no_grad():
        s = reference.equivariance_scores(feature(x), feature(t(x)), t, input_size=tuple(x.shape[-2:]))
    return s.channel.nanmean().item(), s.layer.nanmean().item()


class _Net(nn.Module):
    """A small CNN whose forward returns what ``wrap`` makes of its features and logits."""

    def __init__(self, wrap):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(6, 4)
        self.wrap = wrap

    def forward(self, x):
        features = self.body(x)
        return self.wrap(features, self.fc(features))


@dataclass
class _Output:  # a Hugging Face style output, not a dict
    hidden: torch.Tensor
    logits: torch.Tensor


@pytest.mark.parametrize("wrap", [lambda f, y: {"features": f, "logits": y},  # `final` was the features
                                  lambda f, y: _Output(f, y),  # "did not produce a tensor"
                                  lambda f, y: (y, f)], ids=["dict", "output object", "tuple"])
def test_final_is_the_logits_of_a_dict_an_output_object_or_a_tuple(wrap):
    model = _Net(wrap).eval()
    x = torch.rand(3, 3, 12, 12)
    t = ef.Rotation(1)
    got = ef.measure(model, x, transforms=[t]).points.set_index("point")
    logits = lambda z: model.fc(model.body(z))  # noqa: E731
    channel, layer = _hand_scores(logits, x, t)
    assert math.isclose(got.loc["final", "channel"], channel, abs_tol=1e-5)
    assert math.isclose(got.loc["final", "layer"], layer, abs_tol=1e-5)
    points = ef.split(model, x)
    with torch.no_grad():
        torch.testing.assert_close(ef.representations(model, points)(x)["final"], logits(x))
    assert points[-1].shape == (4,)


def test_a_dict_output_without_logits_is_refused_not_guessed():
    model = _Net(lambda f, y: {"features": f, "scores": y}).eval()
    with pytest.raises(ValueError, match=r"dict of 2 tensors \['features', 'scores'\].*Wrap the model"):
        ef.split(model, torch.rand(2, 3, 12, 12))
    one = _Net(lambda f, y: {"scores": y}).eval()  # one tensor: that is the output
    assert ef.split(one, torch.rand(2, 3, 12, 12))[-1].shape == (4,)


def test_a_training_model_with_gradients_on_is_measured_as_in_eval_mode_and_left_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Dropout(0.5), nn.Linear(6, 4))
    model(torch.rand(8, 3, 12, 12) * 3)  # running statistics of their own, not 0 and 1
    model.train()
    evaluated = copy.deepcopy(model).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 3, 12, 12, requires_grad=True)
    saved = []  # every tensor autograd saves for a backward pass: none, no graph is built
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        got = [ef.measure(model, x, transforms=[ef.Translation(2, 2)]).points.set_index("point")
               for _ in range(2)]
    assert not saved and x.grad is None and all(p.grad is None for p in model.parameters())
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BN stats too
    t = ef.Translation(2, 2)
    for point, upto in (("2", 3), ("4", 5), ("final", 9)):  # dropout off: the same each time
        channel, layer = _hand_scores(evaluated[:upto], x.detach(), t)
        for g in got:
            assert math.isclose(g.loc[point, "channel"], channel, abs_tol=1e-5), point
            assert math.isclose(g.loc[point, "layer"], layer, abs_tol=1e-5), point


class _Fails(nn.Module):
    """Fails on any input but ``ok``'s images, as its traced graph does too."""

    def __init__(self, ok):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act, self.fc = nn.ReLU(inplace=True), nn.Linear(4, 2)
        self.register_buffer("ok", ok)

    def forward(self, x):
        torch._assert(torch.equal(x, self.ok), "boom")
        return self.fc(self.b(self.act(self.a(x))).mean((2, 3)))


@pytest.mark.parametrize("method", ["fx", "hooks"])
@pytest.mark.parametrize("where", ["split", "transformed pass"])
def test_no_hook_is_left_on_a_model_that_fails_mid_measure(method, where):
    x = torch.rand(2, 3, 8, 8)
    model = _Fails(x.clone() if where == "transformed pass" else torch.zeros_like(x)).train()
    with pytest.raises((AssertionError, ValueError), match="boom"):
        ef.measure(model, x, transforms=[ef.Rotation(1)], split_method=method, points=["a", "b"])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert all(m.training for m in model.modules())
    model.ok = x
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.fc(model.b(torch.relu(model.a(x))).mean((2, 3))))


@pytest.mark.parametrize("name,classifier", [("resnet10t", "fc"), ("convnext_atto", "head.fc")])
def test_num_classes_0_leaves_out_a_full_checkpoints_classifier_as_timm_does(tmp_path, name, classifier):
    # it was refused: "its entries do not fit that model (Unexpected key(s) ... fc.weight)"
    torch.manual_seed(0)
    full = timm.create_model(name, pretrained=False, num_classes=7).eval()
    torch.save(full.state_dict(), tmp_path / "full.pt")
    model, _ = load_model(name, weights=str(tmp_path / "full.pt"), num_classes=0)
    assert model.num_classes == 0 and not any(k.startswith(classifier + ".") for k in model.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():  # the checkpoint's pooled features (convnext: its head's norm too)
        want = full.forward_head(full.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model(x), want, atol=0, rtol=0)
    # the rest still loads strictly: a checkpoint of another model is refused as before
    torch.save({**full.state_dict(), "extra.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"do not fit that model \(1 unexpected: extra\.weight\)"):
        load_model(name, weights=str(tmp_path / "other.pt"), num_classes=0)


class _NormalisesInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act, self.fc = nn.ReLU(inplace=True), nn.Linear(4, 2)

    def forward(self, x):
        x -= 0.5  # into the caller's tensor
        x *= 4
        return self.fc(self.b(self.act(self.a(x))).mean((2, 3)))


@pytest.mark.parametrize("method", ["fx", "hooks"])
@pytest.mark.parametrize("split_first", [False, True])
def test_a_model_that_writes_into_its_input_is_measured_on_the_images_given(method, split_first):
    # T(x) was taken from the images the model had normalised in place (then normalised again),
    # and the caller's images came back changed (by the split's pass already; with points from
    # split, by the hooks' second pass on the example, which copies the overwritten point `a`)
    model = _NormalisesInPlace().eval()
    x = torch.rand(2, 3, 8, 8)
    given = x.clone()
    t = ef.Rotation(1)
    points = ef.split(model, given.clone(), points=["a", "b"], method=method) if split_first else ["a", "b"]
    got = ef.measure(model, x, transforms=[t], points=points, split_method=method).points
    assert torch.equal(x, given)
    a = lambda z: model.a((z - 0.5) * 4)  # noqa: E731
    for point, feature in (("a", a), ("b", lambda z: model.b(torch.relu(a(z))))):
        channel, layer = _hand_scores(feature, given, t)
        row = got.set_index("point").loc[point]
        assert math.isclose(row["channel"], channel, abs_tol=1e-5), point
        assert math.isclose(row["layer"], layer, abs_tol=1e-5), point


def test_batch_norm_without_running_statistics_is_said_to_make_scores_depend_on_the_batch():
    # eval mode leaves it normalising by each pass' own batch: scores moved with batch_size, silently
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False),
                          nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2))
    x = torch.rand(8, 3, 12, 12)
    ts = [ef.Translation(1, 1, mode="zero"), ef.Translation(2, 2, mode="zero")]
    got = []
    for batch_size in (8, 16):
        with pytest.warns(ef.EquifastWarning, match=r"Sequential's '1' \(BatchNorm with "
                                                    r"track_running_stats=False\).*batch_size") as ws:
            got.append(ef.measure(model, x, transforms=ts, batch_size=batch_size).points.channel)
        assert {w.filename for w in ws} == {__file__}
    assert (got[0] - got[1]).abs().max() > 1e-3  # what the warning says
    model[1] = nn.BatchNorm2d(4).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ef.measure(model, x, transforms=ts)


class _Separable(nn.Module):
    """A repeated unit of two weight layers (Xception's separable convolution)."""

    def __init__(self, c):
        super().__init__()
        self.dw, self.pw = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.Conv2d(c, c, 1)

    def forward(self, x):
        return self.pw(self.dw(torch.relu(x)))


class _Module(nn.Module):
    """A container of repeated units, then what ``how`` makes of its output."""

    def __init__(self, c, how):
        super().__init__()
        self.stack = nn.Sequential(_Separable(c), _Separable(c))
        self.proj = nn.Conv2d(c, c, 1) if how == "conv" else None
        self.how = how

    def forward(self, x):
        y = self.stack(x)
        if self.how == "sum":  # timm Xception's module
            return y + x
        if self.how == "in place":  # timm legacy Xception's block: x += skip
            y += x
            return y
        return self.proj(y) if self.how == "conv" else y  # CSPNet's stage: a conv on it


class _Aggregated(nn.Module):
    """Repeated units it iterates, then a layer on all their outputs (HGNetV2's block)."""

    def __init__(self, c):
        super().__init__()
        self.layers = nn.ModuleList([_Separable(c), _Separable(c)])
        self.aggregation = nn.Sequential(nn.Conv2d(3 * c, c, 1), nn.Conv2d(c, c, 1))

    def forward(self, x):
        outs = [x]
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return self.aggregation(torch.cat(outs, 1))


class _Xception(nn.Module):
    def __init__(self, how):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.b0, self.b1 = ((_Aggregated(4), _Aggregated(4)) if how == "aggregated"
                            else (_Module(4, how), _Module(4, how)))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.b1(self.b0(self.stem(x))).mean((2, 3)))


@pytest.mark.parametrize("how", ["sum", "in place", "conv", "aggregated"])
def test_a_module_of_repeated_units_that_returns_more_than_their_output_is_one_block(how):
    # it was a stage of its units: the points were its separable convolutions inside the
    # residual sum (timm xception41: 36 of them, not its 12 residual modules) or under the layer
    # on them (HGNetV2: the first block of its third stage, the only one with no shortcut)
    model = _Xception(how).eval()
    x = torch.rand(2, 3, 16, 16)
    t = ef.Rotation(1)
    for method in ("fx", "hooks"):
        assert [p.name for p in ef.split(model, x, method=method)] == ["stem", "b0", "b1", "pool", "final"]
    got = ef.measure(model, x, transforms=[t]).points.set_index("point")
    for point, feature in (("b0", lambda z: model.b0(model.stem(z))),
                           ("b1", lambda z: model.b1(model.b0(model.stem(z))))):
        channel, layer = _hand_scores(feature, x, t)
        assert math.isclose(got.loc[point, "channel"], channel, abs_tol=1e-5), point
        assert math.isclose(got.loc[point, "layer"], layer, abs_tol=1e-5), point


def test_a_module_returning_its_repeated_units_output_is_still_a_stage():
    model = _Xception("none").eval()  # returns the stack's output: a stage of its two units
    names = [p.name for p in ef.split(model, torch.rand(2, 3, 16, 16))]
    assert names == ["stem", "b0.stack.0", "b0.stack.1", "b1.stack.0", "b1.stack.1", "pool", "final"]


def test_timm_xceptions_blocks_are_their_residual_modules():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    t = ef.Rotation(1)
    for name, blocks, want in (("xception41", "blocks.{}", [f"blocks.{i}" for i in range(12)]),
                               ("legacy_xception", "block{}", [f"block{i}" for i in range(1, 13)])):
        model = timm.create_model(name, pretrained=False, num_classes=5).eval()
        names = [p.name for p in ef.split(model, x)]
        assert [n for n in names if n.startswith(blocks.format(""))][:12] == want, name
        got = ef.measure(model, x, transforms=[t]).points.set_index("point")
        block = model.get_submodule(want[5])  # a middle one: its shortcut is the identity
        inputs = {}
        hook = block.register_forward_pre_hook(lambda m, a: inputs.setdefault(len(inputs), a[0].clone()))
        try:
            with torch.no_grad():
                model(x), model(t(x))
        finally:
            hook.remove()
        with torch.no_grad():  # the block's own output, from its input (it writes into it)
            fx, ftx = block(inputs[0].clone()), block(inputs[1].clone())
        s = reference.equivariance_scores(fx, ftx, t, input_size=(64, 64))
        assert math.isclose(got.loc[want[5], "channel"], s.channel.nanmean().item(), abs_tol=1e-5), name
        assert math.isclose(got.loc[want[5], "layer"], s.layer.nanmean().item(), abs_tol=1e-5), name


def test_torchvision_maxvit_at_another_size_says_which_size_it_takes():
    # it said "is the image too small for it, or of another channel count? The model said:
    # shape '[2, 64, 2, 7, 2, 7]' is invalid ..."
    import torchvision

    for size in (224, 448):  # built for one size (its input_size), run at 64 px
        model = torchvision.models.maxvit_t(input_size=(size, size), num_classes=3).eval()
        with pytest.raises(ValueError, match=rf"this model takes only {size}x{size} images"):
            ef.measure(model, torch.rand(2, 3, 64, 64), transforms=[ef.Rotation(1)])


class _Conv3dBlock(nn.Module):
    """A block with a 5-D weight, as timm's LambdaLayer (lambda_resnet26t) holds one."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3d = nn.Conv3d(1, 1, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x):
        return self.conv3d(self.conv(x).unsqueeze(1)).squeeze(1)


def test_a_model_with_a_5d_weight_is_measured_channels_last():
    # Module.to(memory_format=channels_last) raised "required rank 4 tensor to use
    # channels_last format" on the Conv3d weight: lambda_resnet26t could not be measured
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), _Conv3dBlock(), _Conv3dBlock(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x, rot = torch.randn(2, 3, 12, 12), ef.Rotation(1)
    weight = model[2].conv3d.weight
    report = ef.measure(model, x, transforms=rot)
    rows = report.points.set_index("point")
    block = nn.Sequential(*model[:3])
    channel, layer = _hand_scores(block, x, rot)
    assert rows.loc["2", "channel"] == pytest.approx(channel, abs=1e-5)
    assert rows.loc["2", "layer"] == pytest.approx(layer, abs=1e-5)
    assert model[2].conv3d.weight is weight and weight.is_contiguous()  # given back as it came
    assert model[0].weight.is_contiguous()
