"""Points and parts (SPEC section 3): per family, with random weights and small inputs."""
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from equifast.points import PARTS, Point, Representations, representations, split
from equifast.points.layouts import _normalise

tv = pytest.importorskip("torchvision").models
timm = pytest.importorskip("timm")


def _timm(name, **kw):
    return lambda: timm.create_model(name, pretrained=False, num_classes=10, **kw)


def _sizes(points):
    return [sum(p.part == part for p in points) for part in PARTS]


# name: (builder, input size, points before pooling, first names, map/token layout of the blocks)
FAMILIES = {
    "resnet18": (lambda: tv.resnet18(num_classes=10), 64, 9, ["stem", "layer1.0", "layer1.1"], "NCHW"),
    "resnet50": (lambda: tv.resnet50(num_classes=10), 64, 17, ["stem", "layer1.0", "layer1.1"], "NCHW"),
    "vgg11": (lambda: tv.vgg11(num_classes=10), 64, 8, ["features.2", "features.5", "features.7"], "NCHW"),
    "mobilenet_v2": (lambda: tv.mobilenet_v2(num_classes=10), 64, 19, ["stem", "features.1", "features.2"], "NCHW"),
    "mobilenet_v3_small": (lambda: tv.mobilenet_v3_small(num_classes=10), 64, 13,
                           ["stem", "features.1", "features.2"], "NCHW"),
    "efficientnet_b0": (lambda: tv.efficientnet_b0(num_classes=10), 64, 18,
                        ["stem", "features.1.0", "features.2.0"], "NCHW"),
    "efficientnet_lite0": (_timm("efficientnet_lite0"), 64, 18, ["stem", "blocks.0.0", "blocks.1.0"], "NCHW"),
    "convnext_tiny_timm": (_timm("convnext_tiny"), 64, 19,
                           ["stem", "stages.0.blocks.0", "stages.0.blocks.1"], "NCHW"),
    "deit_tiny_distilled": (_timm("deit_tiny_distilled_patch16_224", img_size=64), 64, 13,
                            ["stem", "blocks.0", "blocks.1"], "NLC"),
    "mixer_s16": (_timm("mixer_s16_224", img_size=64), 64, 9, ["stem", "blocks.0", "blocks.1"], "NLC"),
}
SLOW_FAMILIES = {
    "inception_v3": (lambda: tv.inception_v3(num_classes=10, aux_logits=False, init_weights=False), 96, 16,
                     ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "maxpool1", "Conv2d_3b_1x1", "maxpool2", "Mixed_5b"],
                     "NCHW"),
    "convnext_tiny_tv": (lambda: tv.convnext_tiny(num_classes=10), 64, 19,
                         ["stem", "features.1.0", "features.1.1", "features.1.2", "features.3.0"], "NCHW"),
    "swin_tiny": (_timm("swin_tiny_patch4_window7_224", img_size=112), 112, 13,
                  ["stem", "layers.0.blocks.0", "layers.0.blocks.1", "layers.1.blocks.0"], "NHWC"),
    "vit_tiny": (_timm("vit_tiny_patch16_224", img_size=64), 64, 13, ["stem", "blocks.0", "blocks.1"], "NLC"),
}


def _check_family(builder, size, n_pre, first, layout):
    torch.manual_seed(0)
    model = builder().eval()
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every family traces with fx: no fallback warning
        points = split(model, x)
    names = [p.name for p in points]
    assert len(points) == n_pre + 2
    assert names[:len(first)] == first
    assert names[-2:] == ["pool", "final"]
    assert [p.index for p in points] == list(range(len(points)))
    want = [len(a) for a in np.array_split(np.arange(n_pre), 3)]
    assert _sizes(points) == want + [1, 1]
    assert all(p.node for p in points)  # traced
    assert all(p.layout == layout for p in points[1:n_pre])
    with torch.no_grad():
        reps = representations(model, points)(x)
        logits = model(x)
    assert list(reps) == names
    for p in points[:n_pre]:
        assert reps[p.name].dim() == 4 and reps[p.name].shape[0] == 2, p.name
        assert tuple(reps[p.name].shape[1:]) == p.shape
    assert reps["pool"].dim() == 2 and reps["pool"].shape[0] == 2
    torch.testing.assert_close(reps["final"], logits)
    # pool is the vector the classifier's (first) linear layer reads
    fc = model.get_submodule(points[-2].module)
    assert isinstance(fc, nn.Linear) and reps["pool"].shape[1] == fc.in_features
    return model, x, points, reps


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_points_parts_and_shapes(family):
    _check_family(*FAMILIES[family])


@pytest.mark.slow
@pytest.mark.parametrize("family", list(SLOW_FAMILIES))
def test_family_points_parts_and_shapes_slow(family):
    _check_family(*SLOW_FAMILIES[family])


def test_resnet50_parts_and_pool_match_the_model():
    model, x, points, reps = _check_family(*FAMILIES["resnet50"])
    assert _sizes(points) == [6, 6, 5, 1, 1]
    assert points[0].module == "maxpool" and points[0].part == "early"
    assert all(tuple(reps[f"layer1.{i}"].shape) == (2, 256, 16, 16) for i in range(3))
    assert tuple(reps["layer4.2"].shape) == (2, 2048, 2, 2)
    with torch.no_grad():
        m = model
        stem = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        l4 = m.layer4(m.layer3(m.layer2(m.layer1(stem))))
    torch.testing.assert_close(reps["stem"], stem)
    torch.testing.assert_close(reps["layer4.2"], l4)
    torch.testing.assert_close(reps["pool"], torch.flatten(m.avgpool(l4), 1))


@pytest.mark.parametrize("depth, n_pre", [(34, 17), (101, 34)])
def test_deeper_resnets_count_blocks(depth, n_pre):
    model = getattr(tv, f"resnet{depth}")(num_classes=10)
    points = split(model, torch.randn(1, 3, 32, 32))
    assert len(points) == n_pre + 2 and points[0].name == "stem"


@pytest.mark.slow
@pytest.mark.parametrize("name, n_pre", [("resnext101_32x8d", 34), ("wide_resnet50_2", 17), ("resnet152", 51)])
def test_big_resnets_count_blocks(name, n_pre):
    points = split(getattr(tv, name)(num_classes=10), torch.randn(1, 3, 32, 32), method="hooks")
    assert len(points) == n_pre + 2


def test_vit_drops_prefix_tokens_on_the_14x14_grid():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, depth=3).eval()
    x = torch.randn(1, 3, 224, 224)
    points = split(model, x)
    assert [p.name for p in points] == ["stem", "blocks.0", "blocks.1", "blocks.2", "pool", "final"]
    assert [p.prefix_tokens for p in points[:4]] == [0, 1, 1, 1]  # the stem has no class token yet
    with torch.no_grad():
        reps = representations(model, points)(x)
        tokens = model.blocks(model.norm_pre(model._pos_embed(model.patch_embed(x))))
        feats = model.forward_features(x)
        pre_logits = model.forward_head(feats, pre_logits=True)
    assert all(tuple(reps[n].shape) == (1, 192, 14, 14) for n in ["stem", "blocks.0", "blocks.2"])
    # token (i, j) of the patch grid is map position (i, j), the class token is gone
    torch.testing.assert_close(reps["blocks.2"][0, :, 3, 5], tokens[0, 1 + 3 * 14 + 5])
    torch.testing.assert_close(reps["pool"], pre_logits)
    torch.testing.assert_close(reps["final"], model(x))


def test_deit_distilled_drops_two_prefix_tokens():
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=10,
                              img_size=64, depth=2).eval()
    x = torch.randn(2, 3, 64, 64)
    points = split(model, x)
    assert [p.prefix_tokens for p in points[:3]] == [0, 2, 2]
    with torch.no_grad():
        reps = representations(model, points)(x)
        blocks = model.blocks(model.norm_pre(model._pos_embed(model.patch_embed(x))))
    assert blocks.shape[1] == 2 + 16
    torch.testing.assert_close(reps["blocks.1"].flatten(2).transpose(1, 2), blocks[:, 2:])
    torch.testing.assert_close(reps["final"], model(x))


@pytest.mark.slow
def test_swin_channels_last_is_permuted():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=10,
                              img_size=112).eval()
    x = torch.randn(1, 3, 112, 112)
    points = split(model, x)
    with torch.no_grad():
        reps = representations(model, points)(x)
        stem = model.patch_embed(x)  # [N, H, W, C]
    assert stem.shape[-1] == 96 and tuple(reps["stem"].shape) == (1, 96, 28, 28)
    torch.testing.assert_close(reps["stem"], stem.permute(0, 3, 1, 2))


@pytest.mark.parametrize("builder, size", [
    (lambda: tv.resnet18(num_classes=10), 64),
    (_timm("vit_tiny_patch16_224", img_size=32, depth=2), 32),
])
def test_fx_and_hooks_give_the_same_tensors(builder, size):
    torch.manual_seed(0)
    model = builder().eval()
    x = torch.randn(2, 3, size, size)
    fx_points = split(model, x, method="fx")
    hook_points = split(model, x, method="hooks")
    assert [p.name for p in fx_points] == [p.name for p in hook_points]
    assert all(p.node for p in fx_points) and not any(p.node for p in hook_points)
    fx_ext = representations(model, fx_points)
    hook_ext = representations(model, hook_points)
    assert isinstance(fx_ext, Representations) and fx_ext.method == "fx" and hook_ext.method == "hooks"
    with torch.no_grad():
        a, b = fx_ext(x), hook_ext(x)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


class _KeywordHead(nn.Module):
    """Calls its classifier with a keyword argument: fc(input=x)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(input=x.mean((2, 3)))


@pytest.mark.parametrize("method", ["hooks", "fx"])
def test_pool_point_of_a_head_called_with_a_keyword(method):
    # the pool point is the classifier's input: read by a pre-hook that saw only positional
    # arguments ("did not run"), and by fx from args only (no fx points at all)
    torch.manual_seed(0)
    model = _KeywordHead().eval()
    x = torch.randn(2, 3, 16, 16)
    points = split(model, x, method=method)
    assert [(p.name, p.module, p.take) for p in points][-2:] == [("pool", "fc", "input"),
                                                                  ("final", "", "output")]
    with torch.no_grad():
        reps = representations(model, points, method=method)(x)
        pooled = torch.relu(model.conv2(torch.relu(model.conv1(x)))).mean((2, 3))
    torch.testing.assert_close(reps["pool"], pooled, rtol=0, atol=0)
    torch.testing.assert_close(reps["final"], model.fc(pooled), rtol=0, atol=0)


def test_user_named_points_override():
    model = tv.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    # module names and an fx node name, in any order: sorted by execution; pool/final appended
    points = split(model, x, points=["layer4", "layer1", "layer2.1.relu_1", "layer3"])
    assert [p.name for p in points] == ["layer1", "layer2.1.relu_1", "layer3", "layer4", "pool", "final"]
    assert _sizes(points) == [2, 1, 1, 1, 1]
    assert points[1].module is None and points[1].node == "layer2.1.relu_1"
    with torch.no_grad():
        reps = representations(model, points)(x)
        l1 = model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))
    torch.testing.assert_close(reps["layer1"], l1)
    assert tuple(reps["layer2.1.relu_1"].shape) == (2, 128, 8, 8)
    # naming pool / final places exactly those
    points = split(model, x, points=["layer2", "final"], method="hooks")
    assert [(p.name, p.part) for p in points] == [("layer2", "early"), ("final", "final")]


@pytest.mark.parametrize("method", ["auto", "hooks"])
def test_a_splits_own_point_names_are_taken_back_as_points(method):
    # "stem" (the name of a stem of one layer) was refused as no module name: a report's points
    # could not be named back (report.points.point.unique())
    model = tv.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    auto = split(model, x, method=method)
    named = split(model, x, points=[p.name for p in auto], method=method)
    assert [(p.name, p.part) for p in named] == [(p.name, p.part) for p in auto]
    (stem,) = split(model, x, points=["stem", "final"], method=method)[:1]
    with torch.no_grad():
        got = representations(model, [stem])(x)["stem"]
        want = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    torch.testing.assert_close(got, want)
    # a model whose stem is several layers has no point of that name: still refused
    with pytest.raises(ValueError, match="Expected each of `points` to be .*, but got 'stem'"):
        split(tv.inception_v3(weights=None, aux_logits=False, init_weights=False).eval(),
              torch.randn(2, 3, 96, 96), points=["stem"], method=method)


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_a_reports_stem_is_taken_back_where_the_model_has_a_larger_module_named_stem(method):
    # timm's EfficientViT: module `stem` is in_conv then res0, the automatic stem point in_conv.
    # "stem" named back took the whole module: the output of res0 under the report's name
    # (with hooks also placed after stem.res0)
    model = timm.create_model("efficientvit_b0", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    auto = split(model, x, method=method)
    assert (auto[0].name, auto[0].module) == ("stem", "stem.in_conv")
    with pytest.warns(UserWarning, match="automatic split's stem point"):
        named = split(model, x, points=[p.name for p in auto], method=method)
    assert [(p.name, p.module) for p in named] == [(p.name, p.module) for p in auto]
    with torch.no_grad():
        got = representations(model, named[:1])(x)["stem"]
        want = model.stem.in_conv(x)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("names, method, late", [
    (["layer1", "fc"], "auto", "'fc'"),  # the logits
    (["layer4", "avgpool", "fc"], "auto", "'avgpool', 'fc'"),  # the pooled map [N, K, 1, 1]
    (["layer1", "flatten"], "fx", "'flatten'"),  # an fx node after pooling
    (["layer1", "avgpool"], "hooks", "'avgpool'"),
])
def test_user_named_points_after_pooling_are_refused(names, method, late):
    # they would be scored inside early/middle/late (`fc` was the `early` part beside `final`)
    model = tv.resnet18(num_classes=10).eval()
    with pytest.raises(ValueError, match=rf"before global pooling \('avgpool' in ResNet\), but {late} "):
        split(model, torch.randn(2, 3, 64, 64), points=names, method=method)


def test_user_named_token_points_before_pooling_stay_vit():
    # the final norm's tokens are a map on the patch grid (before the class token is taken);
    # the head's norm of the taken class token is a vector after pooling
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    points = split(model, x, points=["blocks.0", "norm"])
    assert [(p.name, p.part, p.shape) for p in points[:2]] == [
        ("blocks.0", "early", (192, 4, 4)), ("norm", "middle", (192, 4, 4))]
    with pytest.raises(ValueError, match=r"but 'head' is a vector"):
        split(model, x, points=["blocks.0", "head"])


def test_plain_sequential_cnn_has_one_point_per_conv_layer():
    def layer(c_in, pool=False):
        return [nn.Conv2d(c_in, 20, 3), nn.BatchNorm2d(20), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])

    mods = layer(1) + layer(20, pool=True)
    for _ in range(5):
        mods += layer(20)
    model = nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(20, 6)).eval()
    x = torch.randn(2, 1, 28, 28)
    points = split(model, x)
    assert [p.name for p in points] == ["2", "6", "9", "12", "15", "18", "21", "pool", "final"]
    assert _sizes(points) == [3, 2, 2, 1, 1]
    with torch.no_grad():
        reps = representations(model, points)(x)
    assert [tuple(reps[p.name].shape[1:]) for p in points] == [
        (20, 26, 26), (20, 12, 12), (20, 10, 10), (20, 8, 8), (20, 6, 6), (20, 4, 4), (20, 2, 2), (20,), (6,)]
    torch.testing.assert_close(reps["pool"], model[:-1](x))


class _SharedReLU(nn.Module):
    """One ReLU module after every conv: hooks see its last call, fx its first."""

    def __init__(self, tied=False):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = (nn.Conv2d(c, 8, 3, padding=1) for c in (3, 8, 8))
        if tied:
            self.conv3 = self.conv2
        self.relu, self.fc = nn.ReLU(), nn.Linear(8, 4)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


def test_a_module_run_several_times_is_not_a_point():
    torch.manual_seed(0)
    model, x = _SharedReLU().eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        conv1 = model.conv1(x)
        conv2 = model.conv2(model.relu(conv1))
    for method in ("fx", "hooks"):
        points = split(model, x, method=method)
        assert [p.name for p in points] == ["conv1", "conv2", "conv3", "pool", "final"], method
        with torch.no_grad():
            reps = representations(model, points)(x)
        torch.testing.assert_close(reps["conv1"], conv1, rtol=0, atol=0)
        torch.testing.assert_close(reps["conv2"], conv2, rtol=0, atol=0)
    # its first call is fx's node `relu`: it was refused too, so no name reached it
    with pytest.warns(UserWarning, match=r"'relu' runs 3 times .* point 'relu' is its first call"):
        points = split(model, x, points=["relu", "relu_2"])
    assert [(p.name, p.module, p.node) for p in points[:2]] == [("relu", None, "relu"), ("relu_2", None, "relu_2")]
    with torch.no_grad():
        reps = representations(model, points)(x)
        torch.testing.assert_close(reps["relu"], model.relu(conv1), rtol=0, atol=0)
        torch.testing.assert_close(reps["relu_2"], model.relu(model.conv3(model.relu(conv2))), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"'relu' to run once .* runs 3 times.*method='fx' or 'auto'.*relu_1"):
        split(model, x, points=["relu"], method="hooks")  # which call is the point is unknown
    # a tied weight layer: which call is the point cannot be guessed
    with pytest.warns(UserWarning, match=r"run more than once in one forward pass are not "
                                         r"points: 'conv2' \(2 times\)") as ws:
        points = split(_SharedReLU(tied=True).eval(), x)
    assert [p.name for p in points] == ["conv1", "pool", "final"]
    import equifast as ef

    # attributed to the caller's line, called directly or through measure (stacklevel=4
    # named a line of equifast's measurement.py there)
    assert [w.filename for w in ws] == [__file__]
    with pytest.warns(UserWarning, match="run more than once") as ws:
        ef.measure(_SharedReLU(tied=True).eval(), x, transforms="rotation:90", progress=False)
    assert {w.filename for w in ws if "run more than once" in str(w.message)} == {__file__}
    with pytest.warns(UserWarning, match="using forward hooks") as ws:
        split(_Untraceable().eval(), torch.randn(2, 3, 16, 16))
    assert {w.filename for w in ws} == {__file__}
    # fx names each call
    points = split(model, x, points=["relu_1"], method="fx")
    with torch.no_grad():
        torch.testing.assert_close(representations(model, points)(x)["relu_1"], model.relu(conv2))


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        self.conv = nn.Sequential(nn.Conv2d(8, 8, 3), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            x = x * 1.0
        return self.fc(self.conv(x).mean((2, 3)))


def test_untraceable_model_falls_back_to_hooks():
    model, x = _Untraceable().eval(), torch.randn(2, 3, 16, 16)
    with pytest.warns(UserWarning, match="using forward hooks"):
        points = split(model, x)
    assert [p.name for p in points] == ["stem", "conv", "pool", "final"]
    assert not any(p.node for p in points)
    with torch.no_grad():
        reps = representations(model, points)(x)
    torch.testing.assert_close(reps["final"], model(x))
    with pytest.raises(ValueError, match="method='hooks'"):
        split(model, x, method="fx")


def test_unsupported_model_error_says_how_to_name_points():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))  # no pooling, no classifier
    with pytest.raises(ValueError, match=r"points=\[\.\.\.\]") as err:
        split(model, torch.randn(1, 3, 16, 16))
    assert "get_graph_node_names" in str(err.value)
    with pytest.raises(ValueError, match="get_graph_node_names"):
        split(tv.resnet18(num_classes=10), torch.randn(1, 3, 32, 32), points=["layer9"])


def test_split_leaves_the_model_untouched():
    model = tv.resnet18(num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    split(model, torch.randn(2, 3, 32, 32))
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_split_and_representations_by_fx_leave_every_modules_mode_as_it_was():
    # fine-tuning with frozen batch norms: torchvision's feature extractor set every module to the
    # model's own mode while tracing, so the norms trained (updating their statistics) after
    model = tv.resnet18(num_classes=10).train()
    frozen = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in frozen:
        m.eval()
    modes = {m: m.training for m in model.modules()}
    x = torch.randn(2, 3, 32, 32)
    points = split(model, x, points=["layer1.0.relu_1", "layer2"], method="fx")  # an fx node: traced
    assert {m: m.training for m in model.modules()} == modes
    extract = representations(model, points, method="fx")
    assert {m: m.training for m in model.modules()} == modes
    before = {k: v.clone() for k, v in model.state_dict().items()}
    extract(x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no statistics moved
    # the extractor follows the model to eval mode and back to training: its own graph only
    model.eval()
    extract(x)
    model.train()
    for m in frozen:
        m.eval()
    extract(x)
    assert {m: m.training for m in model.modules()} == modes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_point_is_frozen_and_argument_errors():
    p = Point("stem", "early", 0)
    with pytest.raises(Exception):
        p.name = "x"
    model = tv.resnet18(num_classes=10)
    with pytest.raises(ValueError, match="method"):
        split(model, torch.randn(1, 3, 32, 32), method="magic")
    with pytest.raises(ValueError, match="example_input"):
        split(model, torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="points"):
        representations(model, ["stem"])


@pytest.mark.parametrize("name", ["efficientnet_b3", "efficientnet_b7"])
def test_efficientnet_family_points_are_stem_blocks_and_head(name):
    from torchvision.models.efficientnet import MBConv

    model = getattr(tv, name)(num_classes=10).eval()
    blocks = sum(isinstance(m, MBConv) for m in model.modules())  # counted another way
    pts = split(model, torch.rand(1, 3, 64, 64))
    before = [p for p in pts if p.part in ("early", "middle", "late")]
    assert len(before) == blocks + 2  # stem, every MBConv, the 1x1 conv head
    assert before[0].name == "stem" and before[-1].name == "features.8"
    sizes = [sum(p.part == part for p in before) for part in ("early", "middle", "late")]
    assert sizes == [len(a) for a in np.array_split(np.arange(len(before)), 3)]


# ------------------------------------------------------------------ coverage of more families
def _measure_channel(model, x, transforms, points=None):
    from equifast import measure

    rep = measure(model, x, transforms=transforms, batch_size=len(x), device="cpu", points=points)
    return rep.points.groupby("point", sort=False).channel.min()


def test_torchvision_swin_maps_are_channels_last():
    """swin_t keeps [N, H, W, C] through `features` with no output_fmt marker: the LayerNorm /
    Linear width on the last axis says NHWC; a 4-px circular shift moves the patch grid by one
    patch, so the stem (4x4 stride-4 conv + LayerNorm) scores exactly 1."""
    torch.manual_seed(0)
    model = tv.swin_t(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    points = split(model, x)
    assert len(points) == 15 and [p.name for p in points[:3]] == ["stem", "features.1.0", "features.1.1"]
    assert all(p.layout == "NHWC" for p in points[:13])
    assert points[0].shape == (96, 16, 16) and points[12].shape == (768, 2, 2)
    with torch.no_grad():
        reps = representations(model, points)(x)
        stem = model.features[0](x)  # [N, H, W, C]
    torch.testing.assert_close(reps["stem"], stem.permute(0, 3, 1, 2))
    from equifast import Translation

    scores = _measure_channel(model, x, [Translation(4, 4), Translation(8, 4)], points=["features.0"])
    assert scores["features.0"] > 1 - 1e-4


def test_tiny_vit_stages_are_channels_last_after_a_conv_stage():
    torch.manual_seed(0)
    model = timm.create_model("tiny_vit_5m_224", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    points = split(model, x)
    layouts = {p.name: p.layout for p in points}
    assert len(points) == 18
    assert layouts["stages.0.blocks.0"] == "NCHW" and layouts["stages.1.blocks.0"] == "NHWC"
    with torch.no_grad():
        reps = representations(model, points)(x)
        s1 = model.stages[1](model.stages[0](model.patch_embed(x)))  # the stage permutes back: NCHW
    torch.testing.assert_close(reps["stages.1.blocks.1"], s1)


def _beit_no_positions():
    return timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=10, img_size=64, depth=3,
                             embed_dim=64, num_heads=2, use_abs_pos_emb=False, use_rel_pos_bias=False)


def test_iterated_blocks_are_points_beit():
    """BEiT runs `for blk in self.blocks`: the ModuleList is never called, its blocks are. Without
    position terms, attention commutes with a whole-patch circular shift: every block scores 1."""
    torch.manual_seed(0)
    model = _beit_no_positions().eval()
    x = torch.randn(2, 3, 64, 64)
    points = split(model, x)
    assert [p.name for p in points] == ["stem", "blocks.0", "blocks.1", "blocks.2", "pool", "final"]
    assert [p.prefix_tokens for p in points[:4]] == [0, 1, 1, 1] and points[3].shape == (64, 4, 4)
    from equifast import Translation

    scores = _measure_channel(model, x, [Translation(16, 16), Translation(16, 32)])
    assert (scores[["stem", "blocks.0", "blocks.1", "blocks.2"]] > 1 - 1e-4).all(), scores


@pytest.mark.parametrize("name, kw, size, n_pre, first, absent", [
    ("poolformer_s12", {}, 32, 13, ["stem", "stages.0.blocks.0"], []),  # head is iterated too
    ("xcit_nano_12_p16_224", {"img_size": 32, "depth": 2}, 32, 5,
     ["patch_embed", "blocks.0", "blocks.1", "cls_attn_blocks.0"], ["pos_embed"]),
    ("cait_xxs24_224", {"img_size": 32, "depth": 2}, 32, 3, ["stem", "blocks.0", "blocks.1"],
     ["blocks_token_only.0", "blocks_token_only.1"]),  # 1-token class attention: not chained
    ("fastvit_t8", {}, 64, 16, ["stem.0", "stem.1", "stages.0.blocks.0"], []),
])
def test_iterated_containers_are_opened_only_when_chained(name, kw, size, n_pre, first, absent):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()
    x = torch.randn(2, 3, size, size)
    points = split(model, x)
    names = [p.name for p in points]
    assert len(points) == n_pre + 2 and names[:len(first)] == first and names[-2:] == ["pool", "final"]
    assert not set(absent) & set(names)
    with torch.no_grad():
        reps = representations(model, points)(x)
    assert all(reps[n].dim() == 4 and reps[n].shape[0] == 2 for n in names[:-2])
    torch.testing.assert_close(reps["final"], model(x))


def test_a_maxvit_block_is_one_point_not_its_mbconv_and_attention_layers():
    # torchvision's MaxVitBlock holds MBconv, window_attention and grid_attention in one
    # nn.Sequential; two attention layers of one class do not make it a stage (timm's MaxViT
    # gives one point per block too)
    from torchvision.models.maxvit import MaxVit

    torch.manual_seed(0)
    model = MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16],
                   block_layers=[2, 2], head_dim=4, stochastic_depth_prob=0.0, num_classes=10).eval()
    points = split(model, torch.randn(2, 3, 32, 32))
    assert [p.name for p in points] == ["stem.0", "stem.1", "blocks.0.layers.0", "blocks.0.layers.1",
                                        "blocks.1.layers.0", "blocks.1.layers.1", "pool", "final"]
    assert [p.shape for p in points[2:6]] == [(8, 8, 8)] * 2 + [(16, 4, 4)] * 2


@pytest.mark.slow
def test_iterated_blocks_are_points_maxvit_and_hrnet_heads_stay_out():
    torch.manual_seed(0)
    model = tv.maxvit_t(num_classes=10).eval()
    points = split(model, torch.randn(1, 3, 224, 224))
    assert len(points) == 2 + 11 + 2  # stem convs, one point per MaxViT block (as timm's)
    assert points[2].name == "blocks.0.layers.0" and points[-2].module == "classifier.3"
    model = timm.create_model("hrnet_w18_small", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    points = split(model, x)
    assert [p.name for p in points] == ["act1", "act2", "layer1.0", "stage2.0", "stage3.0", "stage4.0",
                                        "final_layer", "pool", "final"]
    # a stage returns a list of branches: the point is branch 0 (hooks), the shape split reports
    with torch.no_grad():
        reps = representations(model, points)(x)
    assert all(tuple(reps[p.name].shape[1:]) == p.shape == (16, 16, 16) and not p.node for p in points[3:6])


def test_points_have_the_images_on_their_first_axis_tnt():
    torch.manual_seed(0)
    model = timm.create_model("tnt_s_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match=r"not have the 2 images on its first axis .*'pixel_embed' \(8, 16, 24\)"):
        points = split(model, x)
    assert [p.name for p in points] == ["stem", "blocks.0", "blocks.1", "pool", "final"]
    assert points[1].prefix_tokens == 1 and points[1].shape == (384, 2, 2)
    with torch.no_grad():
        reps = representations(model, points)(x)
    assert reps["blocks.1"].shape == (2, 384, 2, 2)
    with pytest.raises(ValueError, match=r"'pixel_embed' to have the 2 images on its first axis"):
        split(model, x, points=["pixel_embed"])


def test_mobilevit_transformer_inside_a_block_is_not_opened():
    torch.manual_seed(0)
    model = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        points = split(model, x)
    names = [p.name for p in points]
    assert len(points) == 14 and not any("transformer" in n for n in names)
    assert names[6:8] == ["stages.2.1", "stages.3.0"] and points[6].shape == (48, 8, 8)


def test_squeezenet_has_no_pool_point_and_says_why():
    torch.manual_seed(0)
    model = tv.squeezenet1_1(num_classes=10).eval()
    x = torch.randn(2, 3, 48, 48)
    with pytest.warns(UserWarning, match=r"No weight layer of SqueezeNet runs after its global pooling "
                                         r"\('classifier.3'\).*no `pool` point"):
        points = split(model, x)
    names = [p.name for p in points]
    assert names[0] == "stem" and names[-2:] == ["classifier.2", "final"] and len(points) == 11
    assert _sizes(points) == [4, 3, 3, 0, 1] and points[-2].shape == (10, 2, 2)
    with torch.no_grad():
        reps = representations(model, points)(x)
        feats = model.features(x)
    torch.testing.assert_close(reps["features.12"], feats)
    torch.testing.assert_close(reps["final"], model(x))


def test_densenet_points_are_the_maps_each_dense_layer_adds():
    # as the split's table says: the growth-rate maps of each dense layer (the concatenation
    # the next layer reads holds the earlier layers' maps, measured at their own points);
    # the transitions between dense blocks are no points
    torch.manual_seed(0)
    model = tv.densenet121(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    points = split(model, x)
    layers = [f"features.denseblock{b}.denselayer{j}"
              for b, n in enumerate((6, 12, 24, 16), 1) for j in range(1, n + 1)]
    assert [p.name for p in points] == ["stem", *layers, "pool", "final"]
    assert {p.shape[0] for p in points[1:-2]} == {32}  # the growth rate
    with torch.no_grad():
        reps = representations(model, points)(x)
        block = model.features.denseblock1
        stem = model.features[:4](x)
        added = block.denselayer1([stem])
    torch.testing.assert_close(reps["stem"], stem)
    torch.testing.assert_close(reps["features.denseblock1.denselayer1"], added)


def test_dla_classifier_is_a_1x1_conv_on_the_pooled_map():
    torch.manual_seed(0)
    model = timm.create_model("dla46_c", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    points = split(model, x)
    assert points[-2].name == "pool" and points[-2].module == "fc" and points[-2].layout == "NC"
    with torch.no_grad():
        reps = representations(model, points)(x)
        pooled = model.global_pool(model.forward_features(x))
    assert reps["pool"].shape == (2, model.num_features)
    torch.testing.assert_close(reps["pool"], pooled.flatten(1))
    torch.testing.assert_close(reps["final"], model(x))


def test_small_input_downsampled_to_1x1_is_not_global_pooling():
    # At 32 px DLA's last stage max-pools a 2x2 map to 1x1, then runs 3x3 convs on it: the split
    # must be the one at 64 px (the same points, pool = the 512-vector fc reads), not stop there.
    model = timm.create_model("dla34", pretrained=False, num_classes=10).eval()
    big, small = split(model, torch.randn(1, 3, 64, 64)), split(model, torch.randn(1, 3, 32, 32))
    assert [p.name for p in small] == [p.name for p in big]
    assert small[-2].module == "fc" and small[-2].shape == (model.num_features,)
    assert small[-3].shape == (model.num_features, 1, 1)
    with pytest.raises(ValueError, match=r"failed on an example input of shape \(1, 3, 16, 16\)"):
        split(model, torch.randn(1, 3, 16, 16))  # its stage max-pool cannot halve a 1x1 map


@pytest.mark.parametrize("name, prefix", [("pit_ti_224", 1), ("pit_ti_distilled_224", 2)])
def test_pit_prefix_tokens_from_its_class_token(name, prefix):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, img_size=(64, 96)).eval()
    assert getattr(model, "num_prefix_tokens", None) is None
    x = torch.randn(1, 3, 64, 64 + 32)
    points = split(model, x)
    blocks = [p for p in points if ".blocks." in p.name]
    assert len(blocks) == 12 and all(p.prefix_tokens == prefix for p in blocks)
    assert [p.grid for p in blocks[::4]] == [(7, 11), (4, 6), (2, 3)]
    # the pooling layers return (map, class token): no fx node (fx would pick the class token)
    assert points[3].name == "transformers.1.pool" and not points[3].node
    with torch.no_grad():
        reps = representations(model, points)(x)
    assert all(tuple(reps[p.name].shape[1:]) == p.shape for p in points)
    assert reps["transformers.2.blocks.3"].shape == (1, 256, 2, 3)


def test_levit_token_grid_after_downsampling_on_a_non_square_input():
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", pretrained=False, num_classes=10, img_size=(64, 96)).eval()
    x = torch.randn(1, 3, 64, 96)
    points = split(model, x)
    grids = {p.name: p.grid for p in points}
    assert len(points) == 17
    assert grids["stages.0.blocks.0"] == (4, 6) and grids["stages.1.downsample"] == (2, 3)
    assert grids["stages.2.blocks.3"] == (1, 2)
    with torch.no_grad():
        reps = representations(model, points)(x)
    assert reps["stages.1.blocks.0"].shape == (1, 256, 2, 3)


def test_coat_stages_carry_a_class_token_each():
    """CoaT's serial blocks (iterated) hold a class token of their own (cls_token1..4, no
    num_prefix_tokens) on the patch grid or its stride-2 downsamplings."""
    torch.manual_seed(0)
    model = timm.create_model("coat_lite_tiny", pretrained=False, num_classes=10).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its convolutional position encodings run twice
        points = split(model, torch.randn(1, 3, 224, 224))
    grids = {p.name: (p.prefix_tokens, p.grid) for p in points}
    assert grids["serial_blocks1.0"] == (1, (56, 56)) and grids["serial_blocks2.1"] == (1, (28, 28))
    assert grids["serial_blocks4.1"] == (1, (7, 7)) and _sizes(points) == [3, 3, 3, 1, 1]


class _ConvThen(nn.Module):
    """A channels-first block whose last layer is a LayerNorm over the whole map, or a Linear
    along the width (a spatial MLP): neither makes the map channels-last."""

    def __init__(self, c, w, last):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.last = nn.LayerNorm([c, w, w]) if last == "layernorm" else nn.Linear(w, w)

    def forward(self, x):
        return x + self.last(torch.relu(self.conv(x)))


class _Net(nn.Module):
    def __init__(self, blocks, c=8, keywords=False):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList(blocks)
        self.keywords = keywords
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        for i, blk in enumerate(self.blocks):
            x = blk(x=x) if self.keywords and i < 2 else blk(x)
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("last", ["layernorm", "linear"])
def test_a_last_layer_across_the_width_does_not_make_a_map_channels_last(last):
    model = _Net([_ConvThen(8, 16, last) for _ in range(3)]).eval()
    points = split(model, torch.randn(2, 3, 16, 16))
    blocks = [p for p in points if p.name.startswith("blocks.")]
    assert len(blocks) == 3 and all(p.layout == "NCHW" and p.shape == (8, 16, 16) for p in blocks)


def test_blocks_called_with_keywords_are_points():
    model = _Net([_ConvThen(8, 16, "layernorm") for _ in range(3)], keywords=True).eval()
    names = [p.name for p in split(model, torch.randn(2, 3, 16, 16))]
    assert names[:4] == ["stem", "blocks.0", "blocks.1", "blocks.2"]


def test_a_map_with_as_many_channels_as_columns_takes_the_layout_of_its_own_kind():
    """TinyViT at a size where stage 1 has 32 channels on a 32x32 map: the width cannot tell,
    and its nearest decided point (the conv stage, NCHW) is of another kind than its NHWC blocks."""
    torch.manual_seed(0)
    model = timm.create_model("tiny_vit_5m_224", pretrained=False, num_classes=10,
                              embed_dims=(16, 32, 64, 128), num_heads=(1, 1, 2, 4)).eval()
    x = torch.randn(1, 3, 256, 256)
    layouts = {p.name: p.layout for p in split(model, x)}
    assert layouts["stages.0.blocks.0"] == "NCHW"
    assert layouts["stages.1.blocks.0"] == layouts["stages.2.blocks.0"] == "NHWC"


@pytest.mark.parametrize("name, size, kw, point, true", [
    ("pvt_v2_b0", (128, 128), {}, "stem", "NHWC"),
    ("gcvit_xxtiny", (256, 256), {"img_size": 256}, "stem", "NCHW"),
    # not square: as many channels as rows only, or as columns only (read as the other layout:
    # 0.004-0.03 where the true maps score 0.97-0.999)
    ("pvt_v2_b0", (128, 192), {}, "stem", "NHWC"),
    ("gcvit_xxtiny", (384, 256), {"img_size": (384, 256)}, "stem", "NCHW"),
    ("samvit_base_patch16", (256, 384), dict(img_size=(256, 384), depth=2, embed_dim=16, num_heads=2,
                                             global_attn_indexes=()), "blocks.0", "NHWC"),
])
def test_a_map_either_layout_could_be_is_read_by_its_aspect_or_how_it_moves(name, size, kw, point, true):
    """PVT-v2's stem permutes to channels-last before its LayerNorm, GCViT's stays channels-first
    before its blocks permute: at square sizes each is [N, C, C, C], the width cannot tell, and
    the other points' layout had been guessed (both wrong: scores of 0.004-0.02 for 0.97-0.98);
    it is read by how it moves when the image rolls. Where the last layer's width is both dim 1
    and the last axis of a map of a non-square image, the reading with the image's aspect wins."""
    import equifast as ef
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()
    x = torch.randn(2, 3, *size)
    found = {p.name: p for p in split(model, x)}[point]
    assert found.layout == true
    got = {}
    model.get_submodule(found.module).register_forward_hook(lambda m, a, o: got.__setitem__("v", o))
    t = ef.Translation(16, 32)
    maps = []
    for images in (x, t(x)):
        with torch.no_grad():
            model(images)
        maps.append((got["v"] if true == "NCHW" else got["v"].permute(0, 3, 1, 2)).double())
    expected = ef.reference.equivariance_scores(*maps, t, input_size=size).channel.nanmean()
    points = ef.measure(model, x, transforms=[t], batch_size=2).points
    measured = points.loc[points["point"] == found.name, "channel"].item()
    assert measured == pytest.approx(float(expected), abs=1e-5) and measured > 0.9


class _ChannelsLastMlp(nn.Module):
    """A patch embedding, then an MLP on channels-last maps ([N, H, W, C]), its layers opened."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 12, 4, 4)
        self.mlp = nn.Sequential(nn.LayerNorm(12), nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 12))
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)
        return self.fc((x + self.mlp(x)).mean((1, 2)))


class _ChannelsLastConvLast(nn.Module):
    """A channels-last block ([N, H, W, C] in and out) whose last layer is a depthwise
    convolution, run channels-first between two permutes."""

    def __init__(self, c):
        super().__init__()
        self.norm, self.fc = nn.LayerNorm(c), nn.Linear(c, c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)

    def forward(self, x):
        return x + self.dw(self.fc(self.norm(x)).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class _ChannelsLastConvNet(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, 2)
        self.blocks = nn.Sequential(*[_ChannelsLastConvLast(c) for _ in range(3)])
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x).permute(0, 2, 3, 1)).mean((1, 2)))


@pytest.mark.parametrize("channels, size", [(12, (16, 24)), (12, (16, 16)), (8, (32, 32))])
def test_a_channels_last_block_whose_last_layer_is_a_convolution_is_read_channels_last(channels, size):
    """Its convolution's width is the last axis: it said nothing, and the map was read as
    NCHW, [N, 8, 12, 12] for 12 channels of an 8x12 map."""
    import equifast as ef
    torch.manual_seed(0)
    model = _ChannelsLastConvNet(channels).eval()
    x = torch.randn(2, 3, *size)
    blocks = [p for p in split(model, x) if p.name.startswith("blocks.")]
    assert [(p.layout, p.shape) for p in blocks] == [("NHWC", (channels, size[0] // 2, size[1] // 2))] * 3
    t = ef.Translation(4, 4)
    with torch.no_grad():
        by_hand = [model.blocks[0](model.stem(images).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
                   for images in (x, t(x))]
    assert torch.equal(representations(model, blocks)(x)["blocks.0"], by_hand[0])
    expected = ef.reference.equivariance_scores(*by_hand, t, input_size=size).channel.nanmean()
    points = ef.measure(model, x, transforms=[t], batch_size=2).points
    measured = points.loc[points["point"] == "blocks.0", "channel"].item()
    assert measured == pytest.approx(float(expected), abs=1e-5)


class _Conv1dBlock(nn.Module):
    """A residual block of Conv1d on a flattened map: tokens with their channels first [N, C, L]."""

    def __init__(self, c):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(c, c, 3, padding=1), nn.Conv1d(c, c, 1)

    def forward(self, x):
        return x + self.c2(torch.relu(self.c1(x)))


class _Conv1dNet(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, 2)
        self.blocks = nn.Sequential(*[_Conv1dBlock(c) for _ in range(3)])
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x).flatten(2)).mean(-1))


@pytest.mark.parametrize("channels, size", [(16, (16, 16)), (12, (16, 16)), (16, (16, 24))])
def test_tokens_a_convolution_made_channels_first_lie_on_the_grid_of_their_last_axis(channels, size):
    """[N, C, L] sequences (Conv1d blocks on ``x.flatten(2)``) were read as [N, L, C]: 16
    channels of an 8x8 map as 64 channels on a 4x4 grid; 12 as 64 channels on a 2x2 grid after
    8 "prefix tokens" dropped."""
    import equifast as ef
    torch.manual_seed(0)
    model = _Conv1dNet(channels).eval()
    x = torch.randn(2, 3, *size)
    h, w = size[0] // 2, size[1] // 2
    blocks = [p for p in split(model, x) if p.name.startswith("blocks.")]
    assert [p.shape for p in blocks] == [(channels, h, w)] * 3
    with torch.no_grad():
        by_hand = [model.blocks[0](model.stem(images).flatten(2)).reshape(2, channels, h, w)
                   for images in (x, ef.Translation(4, 4)(x))]
    assert torch.equal(representations(model, blocks)(x)["blocks.0"], by_hand[0])
    expected = ef.reference.equivariance_scores(*by_hand, ef.Translation(4, 4), input_size=size)
    points = ef.measure(model, x, transforms=[ef.Translation(4, 4)], batch_size=2).points
    measured = points.loc[points["point"] == "blocks.0", "channel"].item()
    assert measured == pytest.approx(float(expected.channel.nanmean()), abs=1e-5)


def test_an_activation_after_a_linear_takes_the_linears_layout():
    """A weightless point (an activation, in its own module) has no layer of its own to read its
    layout off: the one whose output it carries on says it. The GELU of torchvision Swin's MLP was
    read as NCHW and refused as no map of the image; that of a channels-last MLP at 32x48,
    [N, 8, 12, 24], was read as 8 channels of a 12x24 map."""
    torch.manual_seed(0)
    for model, x, name in ((tv.swin_t(num_classes=10).eval(), torch.randn(2, 3, 64, 64), "features.1.0.mlp.1"),
                           (_ChannelsLastMlp().eval(), torch.randn(2, 3, 32, 48), "mlp.2")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            points = split(model, x, points=[name])
        assert points[0].layout == "NHWC", name
        raw = _hooked(model, name, x)
        assert torch.equal(representations(model, points)(x)[name], raw.permute(0, 3, 1, 2)), name
    auto = {p.name: p for p in split(_ChannelsLastMlp().eval(), torch.randn(2, 3, 32, 48))}
    assert auto["mlp.2"].layout == "NHWC" and auto["mlp.2"].shape == (24, 8, 12)


def test_hiera_tokens_are_put_back_in_grid_order():
    """Hiera keeps its tokens unrolled (window by window) until its last stages: read row by row,
    its early maps were scrambled (blocks.0 scored 0.03 where its true map scores 0.94)."""
    import equifast as ef
    torch.manual_seed(0)
    model = timm.create_model("hiera_tiny_224", pretrained=False, num_classes=10, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    t = ef.Translation(8, 8)
    points = {p.name: p for p in split(model, x)}
    # the stem is the patch embedding, in raster order: the position embedding and the unroll
    # come after it (the unroll was the stem, by its shape, with the embedding added)
    assert points["stem"].module == "patch_embed" and points["stem"].token_order is None
    assert points["blocks.0"].token_order is not None
    got = {}
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(i, o))
    model.patch_embed.register_forward_hook(lambda m, a, o: got.__setitem__("stem", o))
    maps = []
    for images in (x, t(x)):
        with torch.no_grad():
            model(images)  # timm's own reroll puts each block's tokens back in raster order
        stem = got.pop("stem")
        maps.append({f"blocks.{i}": model.reroll(f, i).permute(0, 3, 1, 2).double() for i, f in got.items()})
        maps[-1]["stem"] = stem.reshape(2, 16, 16, -1).permute(0, 3, 1, 2).double()
    measured = ef.measure(model, x, transforms=[t], batch_size=2).points.set_index("point")["channel"]
    for name in ("stem", "blocks.0", "blocks.2", "blocks.5", "blocks.11"):  # unrolled at 16x16 and 8x8,
        # in raster order from 4x4 on
        expected = ef.reference.equivariance_scores(maps[0][name], maps[1][name], t, input_size=(64, 64))
        assert measured[name] == pytest.approx(float(expected.channel.nanmean()), abs=1e-5)
    assert measured["blocks.0"] > 0.8
    with pytest.raises(ValueError, match="has 1024 tokens, not the 256 of its grid"):
        _normalise(torch.zeros(1, 1024, 96), points["blocks.0"])  # Hiera takes one size only


def test_coat_parallel_blocks_are_the_scales_they_update_and_its_aggregate_is_no_point():
    """CoaT's parallel blocks return (x1, x2, x3, x4) with x1 as they got it: their points were
    six copies of serial_blocks1.1; its `aggregate` of three class tokens [N, 1, C] was a late
    1x1 map with the pooled vector's score."""
    import equifast as ef
    torch.manual_seed(0)
    model = timm.create_model("coat_tiny", pretrained=False, num_classes=10, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(ef.EquifastWarning, match=r"'aggregate' of CoaT hold a single token \[N, 1, C\]"):
        points = split(model, x, method="hooks")
    names = [p.name for p in points]
    assert "aggregate" not in names and names[-2:] == ["pool", "final"]
    block = next(p for p in points if p.name == "parallel_blocks.2")
    assert block.shape == (152, 8, 8)  # x2, the 8x8 scale, not x1's 16x16
    got = {}
    model.parallel_blocks[2].register_forward_hook(lambda m, a, o: got.__setitem__("v", o[1]))
    t = ef.Rotation(1)
    maps = []
    for images in (x, t(x)):
        with torch.no_grad():
            model(images)
        maps.append(got["v"][:, 1:].transpose(1, 2).reshape(2, 152, 8, 8).double())  # class token first
    expected = ef.reference.equivariance_scores(*maps, t, input_size=(64, 64))
    measured = ef.measure(model, x, transforms=[t], batch_size=2,
                          points=[p.module for p in points[:-2]]).points
    assert measured.loc[measured["point"] == "parallel_blocks.2", "layer"].item() == \
        pytest.approx(float(expected.layer.nanmean()), abs=1e-5)
    with pytest.raises(ValueError, match="hold a single token"):
        split(model, x, points=["serial_blocks1.0", "aggregate"], method="hooks")


def test_timm_mobilenetv3_pool_is_the_pooled_vector_like_torchvision():
    # timm runs a 1x1 conv_head (576 -> 1024) after global pooling where torchvision runs the
    # classifier's first Linear (576 -> 1024): in both the pool point is the pooled 576-vector.
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    pools = {}
    for lib, model in [("timm", timm.create_model("mobilenetv3_small_100", num_classes=10)),
                       ("torchvision", tv.mobilenet_v3_small(num_classes=10))]:
        model.eval()
        points = split(model, x)
        assert [p.name for p in points][-2:] == ["pool", "final"]
        with torch.no_grad():
            reps = representations(model, points)(x)
            last_map = reps[points[-3].name]
        torch.testing.assert_close(reps["pool"], last_map.mean((2, 3)))
        pools[lib] = points[-2]
    assert pools["timm"].module == "conv_head" and pools["torchvision"].module == "classifier.0"
    assert pools["timm"].shape == pools["torchvision"].shape == (576,)


@pytest.mark.parametrize("name", ["efficientvit_b0", "efficientvit_m0"])
def test_blocks_of_residual_wrappers_are_blocks_efficientvit(name):
    # An EfficientViT block is a sequence of Residual(m) wrappers (context + local modules, or
    # ffn / mixer / ffn): it is one block, not a stage whose wrappers are the blocks.
    # the M variants' attention biases are built for the size given (timm 1.0.9: 224 only)
    size = {"img_size": 96} if name == "efficientvit_m0" else {}
    model = timm.create_model(name, pretrained=False, num_classes=10, **size).eval()
    points = split(model, torch.randn(1, 3, 96, 96))
    names = [p.name for p in points]
    blocks = [f"stages.{i}.blocks.{j}" for i, s in enumerate(model.stages) for j in range(len(s.blocks))]
    inside = [n for n in names if n.startswith("stages.") and ".blocks." in n]
    assert inside == [b for b in blocks if b in names] and len(inside) >= len(blocks) - 1
    if name == "efficientvit_b0":  # its head convolves the map before pooling: that is a point
        assert names[-3:] == ["head.in_conv", "pool", "final"]
        assert points[-3].shape[0] == points[-2].shape[0] == model.head.in_conv.conv.out_channels


def test_blocks_after_a_prepended_class_token_are_points_convit():
    # ConViT puts its class token in front of the patch tokens before block 10: block 10 reads
    # block 9's tokens with one token prepended, which still chains the iterated blocks
    torch.manual_seed(0)
    model = timm.create_model("convit_tiny", pretrained=False, num_classes=10, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        points = split(model, x)
    assert [p.name for p in points] == ["stem"] + [f"blocks.{i}" for i in range(12)] + ["pool", "final"]
    assert [p.prefix_tokens for p in points[1:13]] == [0] * 10 + [1, 1]
    assert all(p.layout == "NLC" and p.shape == (192, 2, 2) for p in points[1:13])
    with torch.no_grad():
        reps = representations(model, points)(x)
    torch.testing.assert_close(reps["final"], model(x))


class _Parallel(nn.Module):
    """Blocks in a ModuleList that each read the stem's map (not the previous block's)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                                  nn.Conv2d(8, 8, 3, padding=1)) for _ in range(3))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = sum(blk(x) for blk in self.blocks)
        return self.fc(x.mean((2, 3)))


def test_iterated_blocks_that_give_no_point_are_named_in_a_warning():
    with pytest.warns(UserWarning, match=r"without chaining them.*are not points: 'blocks'"):
        points = split(_Parallel().eval(), torch.randn(2, 3, 16, 16))
    assert [p.name for p in points] == ["stem", "pool", "final"]


@pytest.mark.parametrize("name, kw, size, blocks", [
    # the stage returns its last block's NHWC output permuted to NCHW
    ("swinv2_cr_tiny_224", {"img_size": 64, "depths": (2, 2, 2, 2)}, 64, [2, 2, 2, 2]),
    # the stage normalises its last block's tokens and reshapes them to a map
    ("pvt_v2_b0", {}, 32, [2, 2, 2, 2]),
])
def test_a_stage_that_permutes_or_normalises_its_last_block_is_opened(name, kw, size, blocks):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()
    x = torch.randn(2, 3, size, size)
    points = split(model, x)
    inside = [f"stages.{i}.blocks.{j}" for i, n in enumerate(blocks) for j in range(n)]
    assert [p.name for p in points] == ["stem"] + inside + ["pool", "final"]
    with torch.no_grad():
        reps = representations(model, points)(x)
        feats = model.forward_features(x)
    if name == "pvt_v2_b0":  # the last block's tokens, before the stage's norm
        assert points[-3].layout == "NLC" and points[-3].shape == (256, 1, 1)
    else:  # the stage's NCHW output is the last block's NHWC output, permuted
        assert points[-3].layout == "NHWC"
        torch.testing.assert_close(reps[points[-3].name], feats)


def test_a_block_whose_residual_sum_follows_two_modules_of_a_class_is_one_block_ghostnet():
    # GhostBottleneck: ghost1, ghost2 (two GhostModules), then its shortcut added in place
    torch.manual_seed(0)
    model = timm.create_model("ghostnet_100", pretrained=False, num_classes=10).eval()
    names = [p.name for p in split(model, torch.randn(1, 3, 32, 32))]
    assert names[:4] == ["stem", "blocks.0.0", "blocks.1.0", "blocks.2.0"] and len(names) == 20
    assert not [n for n in names if "ghost" in n]


@pytest.mark.parametrize("size", [64, 224])
def test_nest_levels_are_points_not_its_blocked_tokens(size):
    # NesT's blocks return [N, blocks, tokens, C]: at 64 px level 0 has 16 blocks of 16 tokens,
    # which a 16x16 map would also be; its levels un-block them into NCHW maps
    torch.manual_seed(0)
    model = timm.create_model("nest_tiny_jx", pretrained=False, num_classes=10, img_size=size).eval()
    points = split(model, torch.randn(1, 3, size, size))
    assert [p.name for p in points] == ["stem", "levels.0", "levels.1", "levels.2", "pool", "final"]
    side = size // 4
    assert [p.shape for p in points[1:4]] == [(96, side, side), (192, side // 2, side // 2),
                                               (384, side // 4, side // 4)]
    assert all(p.layout == "NCHW" for p in points[1:4])


def test_a_named_nest_block_is_refused_where_its_blocks_and_tokens_fit_as_a_square_map():
    # at 64 px level 0 has 16 blocks of 16 tokens: [N, 16, 16, C] fits a 64x64 image as a map
    # (the size test lets it through), but a block read as a map is a row of it
    torch.manual_seed(0)
    model = timm.create_model("nest_tiny_jx", pretrained=False, num_classes=10, img_size=64).eval()
    x = torch.randn(1, 3, 64, 64)
    for name in ("levels.0.transformer_encoder.1", "levels.0.transformer_encoder.0",
                 "levels.0.transformer_encoder", "levels.0.transformer_encoder.0.mlp"):
        with pytest.raises(ValueError, match=rf"hold blocks of tokens .*'{re.escape(name)}' "
                                             r"\(1, 16, 16, 96\) \(rearranged into a map by 'levels.0'\)"):
            split(model, x, points=["patch_embed", name])
    points = split(model, x, points=["patch_embed", "levels.0", "levels.1.pool"])  # maps
    assert [p.shape for p in points[:3]] == [(96, 16, 16), (96, 16, 16), (192, 8, 8)]


class _Blocked(nn.Module):
    """A block on NesT-like blocked tokens [N, blocks, tokens, C]."""

    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, c), nn.Linear(c, c)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class _BlockedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)  # 32 px -> 8x8
        self.blk1, self.blk2 = _Blocked(8), _Blocked(8)
        self.head = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        n, c, h, w = x.shape
        t = x.reshape(n, c, 2, 4, 2, 4).permute(0, 2, 4, 3, 5, 1).reshape(n, 4, 16, c)  # 4 blocks of 4x4
        t = self.blk2(self.blk1(t))
        x = t.reshape(n, 2, 2, 4, 4, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, h, w)
        return self.fc(self.head(x).mean((2, 3)))


def test_a_4d_value_that_is_no_map_of_the_image_is_no_point():
    model = _BlockedNet().eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match=r"no map of the 32x32 image.*'blk1' \(4x16 read as NHWC\), "
                                         r"'blk2' \(4x16 read as NHWC\)"):
        points = split(model, x)
    assert [p.name for p in points] == ["stem", "head", "pool", "final"]
    with pytest.raises(ValueError, match=r"'blk1' \(4x16 read as NHWC\) cannot both come from it"):
        split(model, x, points=["stem", "blk1"])


def test_a_model_of_one_input_size_says_which_at_another():
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8,
                              mlp_dim=8, num_classes=3).eval()
    with pytest.raises(ValueError, match=r"shape \(1, 3, 48, 48\); this model takes only 32x32 images"):
        split(model, torch.randn(1, 3, 48, 48))
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32,
                              depth=1).eval()
    with pytest.raises(ValueError, match=r"shape \(1, 3, 48, 48\); this model takes only 32x32 images"):
        split(model, torch.randn(1, 3, 48, 48))


@pytest.mark.parametrize("name, width", [
    ("vit_tiny_patch16_224", 192),
    ("vit_base_patch16_siglip_224", 768),  # pools by attention: its weights are no head (was refused)
])
def test_a_model_without_a_classifier_says_final_is_its_pooled_features(name, width):
    model = timm.create_model(name, pretrained=False, num_classes=0, img_size=32, depth=2).eval()
    with pytest.warns(UserWarning, match=r"VisionTransformer has no classifier \(num_classes=0\): "
                                         r"`final` is its pooled features"):
        points = split(model, torch.randn(2, 3, 32, 32))
    assert [p.name for p in points] == ["stem", "blocks.0", "blocks.1", "final"]
    assert points[-1].shape == (width,)


class _Overwrites(nn.Module):
    """Points whose tensors later ops overwrite in place: a module, a function with
    inplace=True, an augmented assignment and a method through a view."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1)
                                          for i in range(4))
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        a = self.a(x)
        b = self.b(self.act(a))
        c = self.c(nn.functional.relu(b, inplace=True))
        d = self.d(c)
        c += 1.0
        d.view(d.shape[0], -1).relu_()
        return self.head(d.mean((2, 3)) + c.mean((2, 3)))


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_points_that_later_ops_overwrite_in_place_are_their_own_values(method):
    # the extractor returned the very tensor, read after the pass: a named resnet `bn1` (which
    # feeds ReLU(inplace=True)) came back as the ReLU's output, and was scored as such
    torch.manual_seed(0)
    model = _Overwrites().eval()
    x = torch.randn(2, 3, 8, 8)
    names = ["a", "b", "c", "d"]
    with torch.no_grad():
        want = {}
        want["a"] = model.a(x)
        want["b"] = model.b(torch.relu(want["a"]))
        want["c"] = model.c(torch.relu(want["b"]))
        want["d"] = model.d(want["c"])
        reps = representations(model, split(model, x, points=names, method=method), method=method)
        for _ in range(2):  # hooks find the overwrite on the first pass and copy from then on
            got = reps(x)
            for n in names:
                torch.testing.assert_close(got[n], want[n], atol=0, rtol=0, msg=n)
        resnet = tv.resnet18(num_classes=5).eval()
        y = torch.randn(2, 3, 32, 32)
        reps = representations(resnet, split(resnet, y, points=["bn1", "layer1"], method=method),
                               method=method)
        bn1 = reps(y)["bn1"]
        torch.testing.assert_close(bn1, resnet.bn1(resnet.conv1(y)), atol=0, rtol=0)
        assert bn1.min() < 0  # before the ReLU
        if method == "hooks":  # only what is overwritten is copied, on every later batch
            assert reps._copy == {("bn1", "output")}


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x))) + x


class _PassThenReLU(nn.Module):
    """Blocks whose output passes a weightless module that hands it back (dropout in eval, an
    identity) or a view of it, then an in-place ReLU: ``x = relu_(drop(block(x)))``."""

    def __init__(self, between, functional=False):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1, self.b2, self.b3 = _Block(8), _Block(8), _Block(8)
        self.between, self.functional = between, functional
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.b1(self.stem(x))
        x = nn.functional.dropout(x, 0.1, self.training) if self.functional else self.between(x)
        x = self.b2(self.act(x.view(x.shape)))
        return self.fc(self.b3(x).mean((2, 3)))


@pytest.mark.parametrize("method", ["fx", "hooks"])
@pytest.mark.parametrize("between, functional", [(nn.Dropout(0.1), False), (nn.Identity(), False),
                                                 (nn.Flatten(0, 0), False), (None, True)])
def test_points_overwritten_in_place_through_a_module_that_hands_them_back(method, between, functional):
    # with fx, the in-place ReLU after the dropout was not seen to write into b1's output:
    # b1 was scored as ReLU(b1), 2.2 from its own values
    torch.manual_seed(0)
    model = _PassThenReLU(between, functional).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model.b1(model.stem(x))
        got = representations(model, split(model, x, method=method), method=method)(x)["b1"]
    assert want.min() < 0
    torch.testing.assert_close(got, want, atol=0, rtol=0)


class _Trunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1, self.b2, self.b3 = _Block(8), _Block(8), _Block(8)

    def forward(self, x):
        return self.b3(self.b2(self.b1(self.stem(x))))


class _TrunkNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk, self.fc = _Trunk(), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.trunk(x).mean((2, 3)))


@pytest.mark.parametrize("build, compiled", [
    (_TrunkNet, "trunk"),
    (lambda: tv.resnet18(num_classes=5), "layer2"),  # an nn.Sequential
    (lambda: tv.resnet18(num_classes=5), "layer2.0"),  # one block
])
def test_a_compiled_submodule_is_split_as_the_module_it_runs(build, compiled):
    # a torch.compile'd trunk was one block (its blocks no points): the model's only point
    # before pooling; a compiled nn.Sequential of blocks was too
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = split(model, x)
        want = {p.name: _normalise(_hooked(model, p.module, x), p) for p in plain[:-2]}
        parent, _, attr = compiled.rpartition(".")
        setattr(model.get_submodule(parent), attr, torch.compile(model.get_submodule(compiled), backend="eager"))
        points = split(model, x)
    inside = compiled + "."
    names = [p.name.replace(inside + "_orig_mod.", inside) for p in points]
    assert names == [p.name for p in plain]
    for name, p in zip(names, points[:-2]):  # each on its own: the hooks change between passes
        torch.testing.assert_close(representations(model, [p])(x)[p.name], want[name])


def test_hooks_on_the_model_itself_run_where_points_are_read():
    # fx traces model.forward, without the model's own hooks: with method="auto" an input
    # flipped by a pre-hook and logits scaled by a hook were read as if neither were there
    torch.manual_seed(0)
    model = _TrunkNet().eval()
    model.register_forward_pre_hook(lambda m, args: (args[0].flip(-1),))
    model.register_forward_hook(lambda m, args, out: out * 10)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = {"stem": model.trunk.stem(x.flip(-1)), "final": model(x)}
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        points = split(model, x)
    got = representations(model, points)(x)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=0, rtol=0, msg=name)
    assert any("forward hooks of its own" in str(w.message) for w in said)
    with pytest.raises(ValueError, match="forward hooks of its own") as refused:
        split(model, x, method="fx")
    # the one way out: leaves (the advice for code fx cannot trace) put no hook in a graph
    assert str(refused.value).endswith("Use method='hooks'.")
    assert len(model._forward_pre_hooks) == len(model._forward_hooks) == 1  # left in place


def test_a_wrapped_model_splits_as_the_module_it_wraps():
    # DataParallel's points were "module.layer1.0", ...: the report of one model under two names
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    plain = split(model, x)
    for wrapped in (nn.DataParallel(model), torch.compile(model, backend="eager")):
        assert split(wrapped, x) == plain
        assert representations(wrapped, plain)(x)["layer2.0"].equal(representations(model, plain)(x)["layer2.0"])
    named = split(nn.DataParallel(model), x, points=["module.layer1", "layer3"])
    assert [p.name for p in named] == ["layer1", "layer3", "pool", "final"]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated
def test_torchscript_and_a_dtype_mismatch_are_said_so():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(TypeError, match="TorchScript module .* Pass the nn.Module"):
        split(torch.jit.script(model), x)
    with pytest.raises(TypeError, match="TorchScript module"):
        representations(torch.jit.trace(model, x), split(model, x))
    # it asked whether the image was too small
    with pytest.raises(ValueError, match=r"its weights are torch.float64 and the input "
                                         r"torch.float32: cast the input \(x.to\(torch.float64\)\)"):
        split(model.double(), x)
    # images as bytes (0..255): it asked whether the image was too small, or of another channel count
    with pytest.raises(ValueError, match=r"the input is torch.uint8 and its weights torch.float32: "
                                         r"pass images as floating point"):
        split(model.float(), (x * 255).to(torch.uint8))


def _hooked(model, module, x):
    """The raw output of ``module`` (the first tensor of a tuple) on ``x``, read by a hook."""
    got = []
    h = model.get_submodule(module).register_forward_hook(
        lambda m, a, o: got.append((o[0] if isinstance(o, tuple) else o).clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return got[0]


def _twins():
    return timm.create_model("twins_svt_small", pretrained=False, num_classes=5, img_size=64,
                             depths=(1, 1, 1, 2), embed_dims=(16, 32, 32, 64), num_heads=(1, 1, 2, 2),
                             wss=(4, 2, 2, 1))


def _volo():
    from timm.models.volo import VOLO
    return VOLO(layers=(1, 1, 2, 1), img_size=64, num_classes=5, embed_dims=(16, 32, 32, 32),
                num_heads=(1, 2, 2, 2), stem_hidden_dim=8)


def _gcvit():
    from timm.models.gcvit import GlobalContextVit
    return GlobalContextVit(img_size=64, num_classes=5, depths=(2, 2, 1, 2), embed_dim=24,
                            num_heads=(1, 1, 2, 2), window_size=(4, 4, 2, 2))


def _tokens_on_grid(t):  # [N, L, C] on its square grid
    side = int(t.shape[1] ** 0.5)
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)


def _nhwc(t):
    return t.permute(0, 3, 1, 2)


@pytest.mark.parametrize("build, names, layout, to_map", [
    # Twins loops over parallel ModuleLists (patch_embeds, pos_drops, blocks, pos_block)
    # together; each stage's first block is followed by a position conv (a transition). Was: "no
    # convolution or block runs on a feature map"
    (_twins, ["stem", "blocks.0.0", "blocks.1.0", "blocks.2.0", "blocks.3.0", "blocks.3.1"], "NLC",
     _tokens_on_grid),
    # VOLO adds its position embedding between the stages of its iterated `network`; its
    # class-attention blocks (post_network) change only the class token. Was: patch_embed,
    # post_network.0, post_network.1
    (_volo, ["patch_embed", "network.0.0", "network.2.0", "network.3.0", "network.3.1", "network.4.0"],
     "NHWC", _nhwc),
    # GCViT's stages iterate their blocks beside a downsampling and a global-query block
    # (transitions); a stage of one block is one block. Was: stem, stages.0, ..., stages.3
    (_gcvit, ["stem", "stages.0.blocks.0", "stages.0.blocks.1", "stages.1.blocks.0", "stages.1.blocks.1",
              "stages.2", "stages.3.blocks.0", "stages.3.blocks.1"], "NHWC", _nhwc),
])
def test_blocks_iterated_in_parallel_containers_or_beside_other_blocks_are_points(build, names, layout, to_map):
    import equifast as ef
    from equifast import reference

    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # VOLO: its class-attention blocks are no points
        points = split(model, x)
        got = ef.measure(model, x, transforms=[ef.Rotation(1)]).points.set_index("point")
    assert [p.name for p in points] == names + ["pool", "final"]
    assert all(p.layout == layout for p in points if p.name.count(".") >= 2)  # GCViT's stages.2 is NCHW
    t = ef.Rotation(1)
    for name in (names[1], names[len(names) // 2], names[-1]):
        s = reference.equivariance_scores(to_map(_hooked(model, name, x)), to_map(_hooked(model, name, t(x))),
                                          t, input_size=(64, 64))
        assert np.isclose(got.loc[name, "channel"], s.channel.nanmean().item(), atol=1e-5), name
        assert np.isclose(got.loc[name, "layer"], s.layer.nanmean().item(), atol=1e-5), name


def test_tokens_downsampled_by_flooring_are_laid_out_on_their_own_grid():
    # Twins' patch embeddings (kernel 2, stride 2) floor odd grids: at 72 px its 18x18 patch grid
    # becomes 9x9, then 4x4 and 2x2. The 16 tokens of the third stage were read as the 3x3 grid
    # (9x9 halved upwards) after 7 prefix tokens: a false map of the last 9 tokens, scored silently
    model = _twins().eval()
    x = torch.randn(2, 3, 72, 72)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        points = {p.name: p for p in split(model, x)}
        got = representations(model, list(points.values()))(x)
    for name, side in (("blocks.1.0", 9), ("blocks.2.0", 4), ("blocks.3.0", 2)):
        tokens = _hooked(model, name, x)
        assert tokens.shape[1] == side * side  # Twins has no prefix tokens
        assert points[name].prefix_tokens == 0 and points[name].grid == (side, side), name
        assert torch.equal(got[name], _tokens_on_grid(tokens)), name


class _MapThenLogits(nn.Module):
    """Returns (feature map, logits): the map was taken as `final`, the logits unseen."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        m = self.conv(x)
        return m, self.fc(self.pool(m).flatten(1))


def test_an_output_that_is_a_map_is_no_final_point():
    import timm

    with pytest.raises(ValueError, match=r"output of _MapThenLogits \(the `final` point: its logits\) "
                                         r"to be a vector \[N, K\], but it is a map \(1, 8, 16, 16\) "
                                         r"\(the first tensor of the tuple it returns\)"):
        split(_MapThenLogits(), torch.rand(1, 3, 16, 16))
    # timm without its pooling: `final` was the 512x1x1 map, said to be "its pooled features"
    with pytest.raises(ValueError, match=r"output of ResNet .* but it is a map \(1, 512, 1, 1\)"):
        split(timm.create_model("resnet18", num_classes=0, global_pool=""), torch.rand(1, 3, 32, 32))


def _measured_against_hook(ef, model, module, x, t, to_map, point):
    """The channel score ``measure`` gives ``point`` and the reference's on ``module``'s
    output, hooked and laid out by ``to_map``."""
    got = {}
    module.register_forward_hook(lambda m, a, o: got.__setitem__("v", o))
    maps = []
    for images in (x, t(x)):
        with torch.no_grad():
            model(images)
        maps.append(to_map(got["v"]).double())
    expected = ef.reference.equivariance_scores(*maps, t, input_size=tuple(x.shape[-2:]))
    measured = ef.measure(model, x, transforms=[t], batch_size=2).points.set_index("point")["channel"]
    return measured[point], float(expected.channel.nanmean())


@pytest.mark.parametrize("build, stem", [
    # rotary_emb reads the patch tokens and returns the rotary tables; the blocks read the tokens
    (lambda: timm.create_model("gemma4_vit_167m", depth=2, embed_dim=64, num_heads=2, head_dim=32,
                               intermediate_size=128, num_classes=10), "encoder.patch_embed"),
    # pos_drop reads the patch tokens plus pos_embed: the stem is the patch embedding, as with a
    # class token
    (lambda: timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2, class_token=False,
                               global_pool="avg", num_classes=10), "patch_embed"),
    # pos_drop hands the NHWC patch embedding on as it got it: the stem keeps its layout
    (lambda: timm.create_model("samvit_base_patch16_224", img_size=64, depth=2, embed_dim=96,
                               num_heads=2, num_classes=10), "patch_embed"),
])
def test_the_stem_is_the_layer_a_weightless_module_does_not_carry_on(build, stem):
    """A weightless module joined the stem layer by its input's shape alone: Gemma 4's stem was its
    rotary tables (independent of the image), a ViT without a class token's had the position
    embedding added, SAM-ViT's NHWC stem was read as NCHW and dropped."""
    import equifast as ef
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ef.EquifastWarning)  # fx cannot trace Gemma 4
        points = split(model, x)
    assert points[0].name == "stem" and points[0].module == stem
    nhwc = points[0].layout == "NHWC"
    def to_map(v):
        v = v[0] if isinstance(v, tuple) else v  # Gemma 4's patch embedding: (tokens, positions)
        return v.permute(0, 3, 1, 2) if nhwc else v.transpose(1, 2).reshape(2, -1, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ef.EquifastWarning)
        got, expected = _measured_against_hook(ef, model, model.get_submodule(stem), x, ef.Rotation(1),
                                               to_map, "stem")
    assert got == pytest.approx(expected, abs=1e-5)


def test_stages_that_return_several_maps_chain_efficientvim():
    """EfficientViM's stages return (their map, it downsampled for the next stage, the hidden
    state), and the next stage reads the second: its blocks were dropped as not chained."""
    import equifast as ef
    torch.manual_seed(0)
    model = timm.create_model("efficientvim_m1", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ef.EquifastWarning)
        names = [p.name for p in split(model, x)]
    assert names[:4] == ["patch_embed", "stages.0.blocks.0", "stages.0.blocks.1", "stages.0.downsample"]
    assert "stages.2.blocks.1" in names and names[-2:] == ["pool", "final"]
    got, expected = _measured_against_hook(ef, model, model.stages[0].blocks[1], x, ef.Rotation(1),
                                           lambda v: v[0], "stages.0.blocks.1")  # (map, hidden state)
    assert got == pytest.approx(expected, abs=1e-5)


def test_tokens_of_a_linear_patch_embedding_lie_on_the_image_over_the_patch_size_naflexvit():
    """NaFlexViT embeds its patches with a Linear, so no conv map gives the grid: at 128x192 its
    96 patches and 4 prefix tokens were read as a 10x10 square (a silent wrong number)."""
    import equifast as ef
    torch.manual_seed(0)
    model = timm.create_model("naflexvit_base_patch16_gap", depth=2, embed_dim=64, num_heads=2,
                              num_classes=10).eval()
    x = torch.randn(2, 3, 128, 192)
    points = split(model, x)
    assert [(p.grid, p.prefix_tokens) for p in points[:3]] == [((8, 12), 4)] * 3
    got, expected = _measured_against_hook(
        ef, model, model.blocks[0], x, ef.Translation(16, 32),
        lambda v: v[:, 4:].transpose(1, 2).reshape(2, 64, 8, 12), "blocks.0")
    assert got == pytest.approx(expected, abs=1e-5)


def _named_blocks(last: str):
    """A small CNN whose top-level modules are named as a user may: one of them `last`."""
    from collections import OrderedDict

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU())

    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(stem=block(3, 8), down=nn.MaxPool2d(2), block=block(8, 8),
                                     **{last: block(8, 8)}, gap=nn.AdaptiveAvgPool2d(1),
                                     flat=nn.Flatten(), fc=nn.Linear(8, 5))).eval()


@pytest.mark.parametrize("reserved", ["pool", "final"])
def test_a_block_named_pool_or_final_is_a_point_of_its_own(reserved):
    # its point took the reserved name: a conv block's maps in part `final` and two points of
    # one name (measure's "Expected distinct point names"), or, named, the logits measured
    # in its place without a word
    import equifast as ef

    model, x = _named_blocks(reserved), torch.rand(2, 3, 16, 16)
    points = split(model, x)
    names = [p.name for p in points]
    assert names[-2:] == ["pool", "final"] and f"{reserved} (module)" in names
    mine = points[names.index(f"{reserved} (module)")]
    assert mine.part == "late" and mine.shape == (8, 8, 8)
    # named as the reserved point, it is that point (as before), with a word on the block
    with pytest.warns(UserWarning, match=rf"Point '{reserved}' is the .*; the block Sequential names "
                                         rf"'{reserved}' is the point '{reserved} \(module\)'"):
        kept = split(model, x, points=["stem", "block", reserved])
    assert [p.name for p in kept] == ["stem", "block", reserved]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # split's own names given back: no word
        assert [p.name for p in split(model, x, points=names)] == names
    named = split(model, x, points=["stem", "block", f"{reserved} (module)"])
    assert [(p.name, p.part) for p in named] == [("stem", "early"), ("block", "middle"),
                                                 (f"{reserved} (module)", "late"), ("pool", "pool"),
                                                 ("final", "final")]
    auto = ef.measure(model, x, transforms=[ef.Rotation(1)]).points.set_index("point")
    chosen = ef.measure(model, x, transforms=[ef.Rotation(1)],
                        points=["block", f"{reserved} (module)"]).points.set_index("point")
    row = f"{reserved} (module)"
    assert auto.loc[row, "channel"] == chosen.loc[row, "channel"]
    assert auto.loc[row, "layer"] == chosen.loc[row, "layer"]


def test_reserved_names_of_models_whose_pool_or_final_module_is_no_block():
    # split's own points given back were refused where a top-level `pool` (global pooling,
    # then a LayerNorm) or a classifier `final` (its output scaled) made another value
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.ReLU())

    class NormedHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.layer1 = block(3, 8), block(8, 8)
            self.pool, self.norm, self.fc = nn.AdaptiveAvgPool2d(1), nn.LayerNorm(8), nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.norm(torch.flatten(self.pool(self.layer1(self.stem(x))), 1)))

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.layer1 = block(3, 8), block(8, 8)
            self.pool, self.final = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 10)

        def forward(self, x):
            return self.final(self.pool(self.layer1(self.stem(x))).flatten(1)) / 2.0

    class Twice(nn.Module):  # a block named `final` run twice (shared weights)
        def __init__(self):
            super().__init__()
            self.stem, self.final, self.fc = block(3, 8), block(8, 8), nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.final(self.final(self.stem(x))).mean((2, 3)))

    x = torch.rand(2, 3, 16, 16)
    for model in (NormedHead().eval(), Scaled().eval()):
        names = [p.name for p in split(model, x)]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert [p.name for p in split(model, x, points=names)] == names
    with pytest.raises(ValueError, match=r"Expected point 'final \(module\)' to run once in the "
                                         r"forward pass, but module 'final' runs 2 times"):
        split(Twice().eval(), x, points=["stem", "final (module)"])


def test_a_classifier_named_final_is_the_final_point():
    # the reserved name and the module make one value: no ambiguity to refuse
    from collections import OrderedDict

    model = nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 4, 3), gap=nn.AdaptiveAvgPool2d(1),
                                      flat=nn.Flatten(), final=nn.Linear(4, 3))).eval()
    points = split(model, torch.rand(2, 3, 8, 8), points=["stem", "final"])
    assert [p.name for p in points] == ["stem", "final"] and points[-1].shape == (3,)


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (96, 64)])
def test_mambaouts_channels_last_stem_is_read_channels_last_at_every_size(size):
    """MambaOut's stem (conv 24 -> LayerNorm -> conv 48 -> LayerNorm, channels-last out): at
    96 px its map is 24 high, its first convolution's width, and was read as NCHW ((24, 24, 48)
    at 96x96; at 96x64 the stem was dropped with a warning as no map of the image)."""
    torch.manual_seed(0)
    model = timm.create_model("mambaout_femto", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, *size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        points = split(model, x)
    stem = points[0]
    assert stem.name == "stem" and stem.layout == "NHWC"
    with torch.no_grad():
        want = model.stem(x).permute(0, 3, 1, 2)
        got = representations(model, points)(x)["stem"]
    assert stem.shape == tuple(want.shape[1:]) and torch.equal(got, want)


def test_csatv2s_blocks_at_a_1x1_map_are_channels_first():
    """CSATv2's blocks end in a 1-channel spatial gate (a Linear of width 1): at 96 px their
    map is 1x1, and a last-layer width of 1 says nothing of the layout."""
    torch.manual_seed(0)
    model = timm.create_model("csatv2", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 96, 96)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        points = split(model, x)
    last = [p for p in points if p.name.startswith("stages.3.")]
    assert [p.name for p in last] == [f"stages.3.{i}" for i in range(1, 7)]
    assert all(p.layout == "NCHW" and p.shape == (386, 1, 1) for p in last)
