"""End to end on small real models: exact cases, batch independence, merges, errors."""
import copy
import math
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

import equifast as ef
from equifast.measurement import Measurer, MeasureState, weights_fingerprint
from equifast.models import default_preprocess, load_model


def circular_net(channels=6, classes=5):
    """Stride-1 circularly padded convs: exactly equivariant to circular translations."""
    torch.manual_seed(0)
    conv = lambda i, o: nn.Conv2d(i, o, 3, padding=1, padding_mode="circular")
    return nn.Sequential(
        nn.Sequential(conv(3, channels), nn.GELU()),
        nn.Sequential(conv(channels, channels), nn.BatchNorm2d(channels), nn.GELU()),
        nn.Sequential(conv(channels, channels), nn.GELU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)).eval()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                              reason="needs a CUDA device"))]


@pytest.mark.parametrize("device,tensor_cores,tol", [
    ("cpu", True, 1e-5),  # the CPU multiplies in float32 either way
    pytest.param("cuda", False, 1e-5, marks=DEVICES[1].marks),
    pytest.param("cuda", True, 2e-3, marks=DEVICES[1].marks),  # TF32 (tests/test_ops.py)
])
def test_circular_net_scores_one_at_every_point_under_circular_shifts(device, tensor_cores, tol):
    t0 = time.perf_counter()
    rep = ef.measure(circular_net(), torch.rand(6, 3, 16, 16), transforms=ef.diagonal_shifts(1, 5),
                     batch_size=6, device=device, tensor_cores=tensor_cores)
    elapsed = time.perf_counter() - t0
    # the measurement's own clock: within the call's, and the rate it gives
    assert 0 < rep.meta["seconds"] <= elapsed
    assert rep.meta["images_per_second"] == pytest.approx(6 / rep.meta["seconds"], rel=1e-3)
    pts = rep.points
    assert list(rep.parts.part.astype(str)) == ["early", "middle", "late", "pool", "final"]
    assert (pts.channel > 1 - tol).all() and (pts.layer > 1 - tol).all(), pts[["point", "channel"]]
    assert (pts.undefined_fraction == 0).all()
    assert rep.meta["tensor_cores"] is (tensor_cores and device == "cuda"
                                        and torch.cuda.get_device_capability()[0] >= 8)


def _waits_for_the_device(measurer, x, y):
    """How often ``measurer.update`` waits for the GPU (torch's sync debug mode)."""
    import warnings

    measurer.update(x, y)  # the index maps are built (and cached) in the first batch
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            measurer.update(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_waits_for_the_device_a_fixed_few_times():
    # not once per point, transform or score: the checks and sums come back together
    x, y = torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.long)
    one = Measurer(circular_net(), x, [ef.Rotation(1)], device="cuda", batch_size=4)
    six = Measurer(circular_net(), x, ef.diagonal_shifts(1, 3) + ef.rotations(), device="cuda",
                   batch_size=8)
    waits = _waits_for_the_device(one, x, y)
    assert waits == _waits_for_the_device(six, x, y) and waits <= 4


def test_identity_scores_one_and_layer_at_least_channel():
    model = torchvision.models.resnet18(num_classes=10).eval()
    rep = ef.measure(model, torch.rand(4, 3, 48, 48), transforms=[ef.Identity(), ef.Rotation(1)], batch_size=8)
    ident = rep.points[rep.points["transform"] == "identity"]
    assert (ident.channel > 1 - 1e-5).all() and (ident.layer > 1 - 1e-5).all()
    assert (rep.points.layer >= rep.points.channel - 1e-7).all()
    rot = rep.points[rep.points["transform"] == "rotation(90)"]
    assert (rot.channel < 0.999).any()  # a random ResNet is not rotation equivariant


@pytest.mark.parametrize("device", DEVICES)
def test_one_batch_or_many_give_identical_results(device):
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(10, 3, 32, 32)
    ts = ef.diagonal_shifts(1, 3) + [ef.Rotation(2)]
    # On CUDA the model's own features depend on the batch: cuDNN picks its convolution
    # algorithm per batch shape, and they round differently (with TF32, cuDNN's default, an
    # H200 gave scores up to 5e-5 apart from the fourth point on). The operator's sums do not
    # depend on the batch; the tolerance covers the model's float32 rounding.
    atol = 1e-6 if device == "cpu" else 1e-4
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True,
                                    allow_tf32=False):
        whole = ef.measure(model, x, transforms=ts, batch_size=10, device=device)
        many = ef.measure(model, x, transforms=ts, batch_size=3, device=device)
    cols = ["channel", "layer", "undefined_fraction", "n_images"]
    pd.testing.assert_frame_equal(whole.points[cols], many.points[cols], check_exact=False, atol=atol, rtol=0)


def test_shards_merge_into_the_single_process_result():
    model = circular_net()
    x = torch.rand(9, 3, 12, 12)
    ts = [ef.Translation(1, 2, mode="zero"), ef.Flip("vertical")]
    whole = ef.measure(model, x, transforms=ts, batch_size=9, return_state=True)
    a = ef.measure(model, x[:4], transforms=ts, batch_size=9, return_state=True)
    b = ef.measure(model, x[4:], transforms=ts, batch_size=9, return_state=True)
    merged = a.merge(b)
    assert merged.n_images == 9
    for key, st in whole.scores.items():
        assert math.isclose(st.compute()["channel"], merged.scores[key].compute()["channel"], abs_tol=1e-6)


def test_each_score_is_its_own_point_and_transform():
    # measure fetches the sums of every (point, transform) of a batch at once; each must still
    # be the mean of that point's scores under that transform, computed here directly from the
    # network's own stages with equifast.functional (distinct values: no symmetry to hide a mix-up)
    torch.manual_seed(3)
    x = torch.rand(4, 3, 12, 12)
    ts = [ef.Rotation(1), ef.Translation(3, -2, mode="zero"), ef.Flip("horizontal")]
    net = circular_net()
    got = ef.measure(net, x, transforms=ts, batch_size=2).points.set_index(["point", "transform"])
    with torch.no_grad():
        for depth in range(3):
            stages = net[:depth + 1]
            for t in ts:
                s = ef.functional.equivariance_scores(stages(x), stages(t(x)), t)
                row = got.loc[(str(depth), t.name)]
                assert math.isclose(row["channel"], s.channel.nanmean().item(), abs_tol=1e-5)
                assert math.isclose(row["layer"], s.layer.nanmean().item(), abs_tol=1e-5)


def test_accuracy_from_labels():
    model = circular_net()
    x = torch.rand(8, 3, 12, 12)
    with torch.no_grad():
        pred = model(x).argmax(-1)
    labels = pred.clone()
    labels[:3] = (labels[:3] + 1) % 5
    rep = ef.measure(model, x, labels=labels, transforms=[ef.Rotation(1)], batch_size=4)
    assert rep.accuracy == pytest.approx(5 / 8)
    one = ef.measure(model, x, labels=labels, transforms=ef.Rotation(1), batch_size=4)  # not a list
    pd.testing.assert_frame_equal(one.points, rep.points)


def test_accuracy_is_the_logits_whatever_the_order_of_the_named_points():
    model = circular_net()
    x = torch.rand(8, 3, 12, 12)
    with torch.no_grad():
        labels = model(x).argmax(-1)
    rep = ef.measure(model, x, labels=labels, transforms=[ef.Rotation(1)], batch_size=4,
                     points=["0", "final", "pool"])
    assert rep.accuracy == 1.0
    rep = ef.measure(model, x, labels=labels, transforms=[ef.Rotation(1)], points=["0", "pool"])
    assert rep.accuracy is None  # no logits measured: no accuracy rather than a wrong one


def test_merged_shards_are_left_as_they_were():
    model = circular_net()
    x = torch.rand(4, 3, 12, 12)
    a, b = (ef.measure(model, x[i:i + 2], transforms=[ef.Rotation(1)], return_state=True)
            for i in (0, 2))
    empty = MeasureState(a.points, a.transforms, a.metrics, a.vector_mode)
    key = next(iter(a.scores))
    before = a.scores[key].n_images
    empty.merge(a).merge(b)
    assert a.scores[key].n_images == before and empty.scores[key].n_images == 4


def test_measure_leaves_a_training_model_in_train_mode():
    model = circular_net().train()
    ef.measure(model, torch.rand(2, 3, 12, 12), transforms=[ef.Rotation(1)])
    assert all(m.training for m in model.modules())
    model.eval()
    ef.measure(model, torch.rand(2, 3, 12, 12), transforms=[ef.Rotation(1)])
    assert not any(m.training for m in model.modules())


def test_folder_of_some_imagenet_classes_gives_real_accuracy(tmp_path):
    # the embedded EfficientNet-Lite0 classifies these two real photos correctly, surely (0.94
    # and 0.95; chelsea is a tabby, a tiger cat or an Egyptian cat to it, 0.17 to 0.39 each)
    import skimage.data
    from PIL import Image

    for wnid, photo in (("n04485082", "camera"), ("n07920052", "coffee")):  # tripod, espresso
        (tmp_path / wnid).mkdir()
        Image.fromarray(getattr(skimage.data, photo)()).save(tmp_path / wnid / f"{photo}.png")
    rep = ef.measure("efficientnet_lite0", str(tmp_path), transforms=[ef.Rotation(2)])
    assert rep.accuracy == 1.0
    # the same folder read by a DataLoader, a ConcatDataset or torchvision's ImageFolder: their
    # labels are folder indices too, not the model's classes (accuracy 0 when taken as such)
    model, preprocess = load_model("efficientnet_lite0")
    files = ef.data.ImageFiles(tmp_path, transform=preprocess)
    for images in (torch.utils.data.DataLoader(files, batch_size=2),
                   torch.utils.data.ConcatDataset([files]),
                   torchvision.datasets.ImageFolder(str(tmp_path), transform=preprocess)):
        assert ef.measure(model, images, transforms=[ef.Rotation(2)]).accuracy == 1.0
    # a ConcatDataset of the two synset folders read one by one: each labels its photo 0, which
    # scored both against class 0 (accuracy 0.0, silently); it has no accuracy, and says so
    apart = torch.utils.data.ConcatDataset([ef.data.ImageFiles(tmp_path / w, transform=preprocess)
                                            for w in ("n04485082", "n07920052")])
    with pytest.warns(UserWarning, match="No accuracy: the datasets joined in the ConcatDataset are "
                                         "class folders of different classes"):
        assert ef.measure(model, apart, transforms=[ef.Rotation(2)]).accuracy is None
    # one folder beside a dataset of the model's own labels: those taken as they are, as before
    x = torch.stack([preprocess(Image.open(tmp_path / "n04485082" / "camera.png").convert("RGB"))])
    beside = torch.utils.data.ConcatDataset([ef.data.ImageFiles(tmp_path / "n07920052", transform=preprocess),
                                             torch.utils.data.TensorDataset(x, torch.tensor([872]))])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ef.EquifastWarning)
        assert ef.measure(model, beside, transforms=[ef.Rotation(2)]).accuracy == 0.5
    # an image beside the class folders has no label: left out of the accuracy, and said so
    Image.fromarray(skimage.data.astronaut()).save(tmp_path / "stray.png")
    with pytest.warns(UserWarning, match=r"1 image\(s\) lie beside the class folders.*stray.png"):
        rep = ef.measure(model, str(tmp_path), transforms=[ef.Rotation(2)], preprocess=preprocess)
    assert rep.accuracy == 1.0 and rep.meta["n_images"] == 3
    (tmp_path / "stray.png").unlink()
    # class folders that are not synsets, fewer than the model's classes: no accuracy at all
    (tmp_path / "n04485082").rename(tmp_path / "tripods")
    (tmp_path / "n07920052").rename(tmp_path / "cups")
    with pytest.warns(UserWarning, match="No accuracy: which of the model's 1000 classes the 2 "):
        rep = ef.measure("efficientnet_lite0", str(tmp_path), transforms=[ef.Rotation(2)])
    assert rep.accuracy is None


def test_images_without_a_label_are_left_out_of_the_accuracy_in_any_batching():
    torch.manual_seed(0)
    model, x = circular_net(), torch.rand(8, 3, 12, 12)
    with torch.no_grad():
        right = model(x).argmax(-1)
    labels = torch.where(torch.arange(8) % 2 == 0, right, (right + 1) % 5)  # odd ones wrong
    labels[:3] = -1  # no label: 0, 1, 2; labelled: 3 (wrong), 4, 5 (wrong), 6, 7 (wrong)
    for batch_size in (1, 3, 8):
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels),
                                             batch_size=batch_size)
        for images in ((x, labels), loader):
            rep = ef.measure(model, images, transforms=[ef.Rotation(1)], batch_size=batch_size)
            assert rep.accuracy == pytest.approx(2 / 5), (batch_size, type(images))


def test_loader_workers_read_a_folder_into_the_same_scores(tmp_path):
    # images decoded in two DataLoader worker processes: the same subset, order and scores
    import skimage.data
    from PIL import Image

    for i, photo in enumerate(("chelsea", "coffee", "astronaut", "rocket", "camera")):
        Image.fromarray(getattr(skimage.data, photo)()).save(tmp_path / f"{i}.png")
    model = torchvision.models.resnet18(num_classes=10)
    kw = dict(transforms=[ef.Rotation(1), ef.Translation(4, 4)], n_images=4, batch_size=2, seed=3,
              preprocess=default_preprocess(64))
    inline = ef.measure(model, str(tmp_path), **kw)
    workers = ef.measure(model, str(tmp_path), num_workers=2, **kw)
    pd.testing.assert_frame_equal(workers.points, inline.points, check_exact=True)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="`num_workers` to be an integer >= 0"):
            ef.measure(model, str(tmp_path), num_workers=bad, **kw)


class _Stream(torch.utils.data.IterableDataset):
    """``images`` and ``labels`` as a stream that does not shard itself among workers."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __iter__(self):
        return iter(zip(self.images, self.labels.tolist()))


def test_loader_workers_do_not_measure_a_stream_once_each():
    # torch gives each worker the whole IterableDataset: with num_workers=2 every image was
    # measured twice (n_images 12 of 6), and n_images=5 took images 0-3 and 0 again
    model, x = circular_net(), torch.rand(6, 3, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(-1)
    y[:2] = (y[:2] + 1) % 5  # 4 of 6 right
    kw = dict(transforms=[ef.Rotation(1), ef.Translation(2, 2)], batch_size=4)
    for n in (None, 5):
        tensor = ef.measure(model, x[:n], labels=y[:n], **kw)  # the same images, as a tensor
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            stream = ef.measure(model, _Stream(x, y), num_workers=2, n_images=n, **kw)
        assert stream.meta["n_images"] == len(x[:n]) and stream.accuracy == tensor.accuracy
        pd.testing.assert_frame_equal(stream.points, tensor.points, check_exact=True)
        assert [str(w.message)[:62] for w in said] == [
            "An IterableDataset is read by one loader process, not by num_w"]


def test_embedded_photos_are_cut_at_the_models_own_size():
    # resnet10t is trained at 176 pixels and evaluated (timm's validate.py, its published
    # accuracies) at its test size, 224: its first (stride 2) stage sees 224 / 2
    rep = ef.measure("resnet10t", None, weights=None, n_images=2, transforms=[ef.Rotation(1)])
    assert rep.points["shape"].iloc[0].endswith("x112x112")


def test_embedded_photos_are_cut_at_the_crop_of_a_transforms_v2_pipeline():
    # a torchvision.transforms.v2 pipeline's CenterCrop was not read: the photos were 224 pixels
    from PIL import Image
    from torchvision.transforms import v2

    for crop in (40, (24, 32)):
        pre = v2.Compose([v2.Resize(48), v2.CenterCrop(crop), v2.ToImage(),
                          v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.25] * 3)])
        want = pre(Image.new("RGB", (90, 60))).shape[-2:]  # what the pipeline makes of an image
        model, seen = circular_net(), []
        model[0].register_forward_pre_hook(
            lambda m, args: seen.append(args[0].shape[-2:]) if isinstance(args[0], torch.Tensor) else None)
        ef.measure(model, None, preprocess=pre, n_images=2, transforms=[ef.Translation(1, 1)])
        assert seen and set(seen) == {want}


def test_across_images_vector_mode_and_both_metrics():
    model = circular_net()
    x = torch.rand(8, 3, 12, 12)
    rep = ef.measure(model, x, transforms=[ef.Translation(2, 2)], metric=["correlation", "cosine"],
                     vector_mode="across_images", batch_size=3)
    vec = rep.points[rep.points.part.isin(["pool", "final"])]
    assert (vec.channel > 1 - 1e-6).all() and len(vec) == 4  # invariant across images too
    assert set(rep.points.metric) == {"correlation", "cosine"}



def test_across_images_of_one_image_is_refused_before_measuring(tmp_path):
    # the report's error came after every batch was measured (hours on a large sweep)
    from PIL import Image
    from torchvision import transforms as T

    model, x = circular_net(), torch.rand(3, 3, 8, 8)
    seen = []  # what entered the model: no rotated image, i.e. nothing was measured
    model[0].register_forward_pre_hook(  # fx traces with proxies: those are not images
        lambda m, args: seen.append(args[0].clone()) if isinstance(args[0], torch.Tensor) else None)
    Image.fromarray((x[0].permute(1, 2, 0) * 255).byte().numpy()).save(tmp_path / "only.png")
    for images, kwargs in ((x[:1], {}), (x, dict(n_images=1)), ((x[:1], torch.tensor([2])), {}),
                           (str(tmp_path), dict(preprocess=T.ToTensor()))):
        seen.clear()
        with pytest.raises(ValueError, match=r"Expected at least two images for vector_mode="
                                             r"'across_images', but got 1 \(its vectors: pool, "
                                             r"final\); measure more images, or use "):
            ef.measure(model, images, transforms=[ef.Rotation(1)], vector_mode="across_images",
                       **kwargs)
        assert seen and all(len(v) == 1 for v in seen)
        assert not any(torch.equal(v, torch.rot90(seen[0], 1, (-2, -1))) for v in seen)
    # a state of one image is a shard: merged with another, the whole set's result
    parts = [ef.measure(model, x[i:j], transforms=[ef.Rotation(1)], vector_mode="across_images",
                        return_state=True) for i, j in ((0, 1), (1, 3))]
    whole = ef.measure(model, x, transforms=[ef.Rotation(1)], vector_mode="across_images")
    merged = parts[0].merge(parts[1]).report().points
    pd.testing.assert_series_equal(merged.layer, whole.points.layer, atol=1e-5, rtol=0)
    # only maps to score: across_images does not apply, one image is enough
    maps = [p for p in ef.split(model, x) if p.name == "1"]
    rep = ef.measure(model, x[:1], transforms=[ef.Rotation(1)], vector_mode="across_images",
                     points=maps)
    assert list(rep.points.point) == ["1"] and rep.points.channel.notna().all()


def test_a_runs_test_images_are_its_recipes_whatever_the_seed(tmp_path):
    # a recipe.json without data_seed (the run trained and tested with Recipe's default) was
    # measured on turns drawn with measure's seed: another rotated test set for each --seed,
    # not the one the run was tested on
    import json

    from equifast.training import get_recipe, load_model, train
    from equifast.training.data import FASHION_MNIST_ROOT, measure_images

    if not os.path.isdir(FASHION_MNIST_ROOT):
        pytest.skip("no Fashion-MNIST")
    run = tmp_path / "run"
    recipe = get_recipe("cnn7-fmnist6-rot-inv", epochs=1, train_subset=32, test_subset=32,
                        data_root=FASHION_MNIST_ROOT, device="cpu")
    train(recipe, str(run))
    stored = json.loads((run / "recipe.json").read_text())
    del stored["data_seed"]
    (run / "recipe.json").write_text(json.dumps(stored))
    x, y = measure_images(recipe.dataset, FASHION_MNIST_ROOT, 4, recipe.data_seed, labels=True)
    want = ef.measure(load_model(str(run)), x, labels=y, transforms=[ef.Rotation(1)])
    for seed in (0, 5):
        got = ef.measure(str(run), transforms=[ef.Rotation(1)], n_images=4, seed=seed)
        pd.testing.assert_frame_equal(got.points, want.points, check_exact=True)
        assert got.accuracy == want.accuracy


def test_a_run_is_measured_by_default_on_its_recipes_measure_images(tmp_path):
    # 2000 test images were measured whatever the recipe's measure_images, the count its study
    # measures it on: a run's own report and the study's were over other images
    from equifast.training import get_recipe, load_model, train
    from equifast.training.data import FASHION_MNIST_ROOT, measure_images

    if not os.path.isdir(FASHION_MNIST_ROOT):
        pytest.skip("no Fashion-MNIST")
    run = tmp_path / "run"
    recipe = get_recipe("cnn7-fmnist6", epochs=1, train_subset=32, test_subset=32,
                        measure_images=12, data_root=FASHION_MNIST_ROOT, device="cpu")
    train(recipe, str(run))
    x, y = measure_images(recipe.dataset, FASHION_MNIST_ROOT, 12, recipe.data_seed, labels=True)
    want = ef.measure(load_model(str(run)), x, labels=y, transforms=[ef.Rotation(1)])
    got = ef.measure(str(run), transforms=[ef.Rotation(1)])
    assert got.meta["n_images"] == 12 and got.meta["accuracy_images"] == 12
    pd.testing.assert_frame_equal(got.points, want.points, check_exact=True)
    # an n_images given is taken as before
    assert ef.measure(str(run), transforms=[ef.Rotation(1)], n_images=5).meta["n_images"] == 5


def test_a_runs_missing_data_keeps_trainings_whole_advice_in_measures_options(tmp_path):
    # only its first sentence was kept: "It is in '/data/mnist': pass that folder ..." was lost
    import json

    from equifast.measurement import _run_images

    run = tmp_path / "run"
    run.mkdir()

    def error(dataset, root):
        (run / "recipe.json").write_text(json.dumps({"dataset": dataset, "data_root": None}))
        with pytest.raises(FileNotFoundError) as got:
            _run_images(str(run), root, 4)
        msg = str(got.value)
        assert msg.startswith(f"The run {str(run)!r} is measured on the test set of its recipe "
                              f"({dataset}), which could not be read from ")
        for train_only in ("--data-root", "download", "`root`", "root="):  # train's options
            assert train_only not in msg, msg
        return msg

    mnist = tmp_path / "data" / "mnist"
    mnist.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (mnist / name).write_bytes(b"")
    assert error("mnist6", str(tmp_path / "data")).endswith(
        f"without them. It is in {str(mnist)!r}: pass that folder as `images` (--data).")
    assert error("mnist6", str(tmp_path / "nope")).endswith(
        f"{str(tmp_path / 'nope')!r} does not exist. Put the files there and pass that folder as "
        "`images` (--data on the command line).")
    assert error("mnist6", None).endswith(": the folder that holds the idx files.")
    cifar = tmp_path / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)  # there, but empty: torchvision's own error advises download=True
    assert error("cifar10", str(cifar.parent)).endswith(
        "its files are incomplete or damaged. Extract them there again. Pass the folder that "
        "holds it as `images` (--data on the command line).")
    assert error("cifar10", str(tmp_path)).endswith(
        f"It is in {str(cifar.parent)!r}: pass that folder as `images` (--data).")


def test_bfloat16_autocast_is_close_to_float32():
    model = circular_net()
    x = torch.rand(4, 3, 12, 12)
    ts = [ef.Rotation(1)]
    f32 = ef.measure(model, x, transforms=ts, batch_size=4)
    bf16 = ef.measure(model, x, transforms=ts, batch_size=4, amp="bfloat16", device="cpu")
    assert (f32.points.channel - bf16.points.channel).abs().max() < 0.05


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match="Did you mean"):
        ef.measure("resnet5O", torch.rand(2, 3, 32, 32))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ef.measure(circular_net(), "/no/such/images", transforms=[ef.Rotation(1)])
    with pytest.raises(ValueError, match="larger than the 12x12 image"):
        ef.measure(circular_net(), torch.rand(2, 3, 12, 12), transforms=ef.diagonal_shifts(1, 16))
    with pytest.raises(ValueError, match="square"):
        ef.measure(circular_net(), torch.rand(2, 3, 12, 16), transforms=[ef.Rotation(1)])
    with pytest.raises(ValueError, match="`metric`"):
        ef.measure(circular_net(), torch.rand(2, 3, 12, 12), transforms=[ef.Rotation(1)], metric="l1")
    with pytest.raises(ValueError, match="distinct metrics"):  # each score would count twice
        ef.measure(circular_net(), torch.rand(2, 3, 12, 12), transforms=[ef.Rotation(1)],
                   metric=["correlation", "correlation"])
    x = torch.rand(2, 3, 12, 12)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        ef.measure(circular_net(), x, transforms=[ef.Rotation(1)])
    with pytest.raises(ValueError, match="a device like"):
        ef.measure(circular_net(), torch.rand(2, 3, 12, 12), transforms=[ef.Rotation(1)], device="tpu")
    # a GPU this machine does not have: no GPU at all, or an index past the last one
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    with pytest.raises(ValueError, match="CUDA device"):
        ef.measure(circular_net(), torch.rand(2, 3, 12, 12), transforms=[ef.Rotation(1)], device=missing)
    with pytest.raises(TypeError, match="nn.Module, a torchvision/timm name"):
        ef.measure(42, torch.rand(2, 3, 12, 12))
    # raw uint8 images would fail deep inside the first convolution
    with pytest.raises(TypeError, match=r"floating tensor.*torch.uint8.*float\(\) / 255"):
        ef.measure(circular_net(), torch.zeros(2, 3, 12, 12, dtype=torch.uint8), transforms=[ef.Rotation(1)])
    # labels that are not class indices of the logits would give a silent accuracy of 0
    with pytest.raises(TypeError, match="integer class indices"):
        ef.measure(circular_net(), x.nan_to_num(), labels=torch.tensor([0.0, 1.0]), transforms=[ef.Rotation(1)])
    for bad in ([0, 5], [-2, 0]):  # circular_net has 5 classes; -1 is "no label"
        with pytest.raises(ValueError, match=r"class indices in \[0, 5\)"):
            ef.measure(circular_net(), x.nan_to_num(), labels=torch.tensor(bad), transforms=[ef.Rotation(1)])
    # [N, 1] labels broadcast against [N] predictions: an accuracy above 1
    with pytest.raises(ValueError, match=r"\[N\] class indices, one per image \(2 in this batch\), "
                                         r"but got shape \(2, 1\)"):
        ef.measure(circular_net(), x.nan_to_num(), labels=torch.tensor([[0], [1]]),
                   transforms=[ef.Rotation(1)])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        x.nan_to_num(), torch.tensor([0.0, 1.0])), batch_size=2)  # float labels from a loader
    with pytest.raises(TypeError, match="integer class indices"):
        ef.measure(circular_net(), loader, transforms=[ef.Rotation(1)])
    # two batches in a list were read as (images, labels): "labels ... integer class indices"
    for pair in ([x.nan_to_num(), x.nan_to_num()], (x.nan_to_num(), x[:, :1].nan_to_num())):
        with pytest.raises(TypeError, match=r"pair in `images` to be \(images, labels\), but its "
                                            r"second item is a torch.float32 tensor of shape "
                                            rf"{re.escape(str(tuple(pair[1].shape)))}, not class indices"):
            ef.measure(circular_net(), pair, transforms=[ef.Rotation(1)])
    with pytest.raises(TypeError, match=r"`preprocess` to be a callable .* but got int 5\."):
        ef.measure(circular_net(), torch.utils.data.TensorDataset(x), preprocess=5,
                   transforms=[ef.Rotation(1)])  # was "'int' object is not callable", deep inside
    with pytest.raises(TypeError, match="integer class indices"):  # one-hot: its own advice
        ef.measure(circular_net(), (x.nan_to_num(), torch.eye(2)), transforms=[ef.Rotation(1)])
    # were ignored: the module was measured as it was, a missing checkpoint path included
    for kwargs, named in (({"weights": "/no/such.pt"}, "weights='/no/such.pt'"),
                          ({"weights": None}, "weights=None"), ({"num_classes": 7}, "num_classes=7")):
        with pytest.raises(ValueError, match=f"only with a model given by name, but got {named} "
                                             r"with a module \(Sequential\)"):
            ef.measure(circular_net(), x.nan_to_num(), transforms=[ef.Rotation(1)], **kwargs)


class _InfWhereTheCornerIsZero(nn.Module):
    def forward(self, x):
        return x / (x[:, :, :1, :1] != 0)


def test_a_non_finite_transformed_batch_is_named_and_adds_nothing():
    # f(x) is finite, f(T(x)) is not: the batch is refused whole, after its one host transfer
    torch.manual_seed(0)
    net = nn.Sequential(nn.Sequential(_InfWhereTheCornerIsZero(), nn.Conv2d(3, 4, 3, padding=1)),
                        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.GELU()),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(2, 3, 8, 8) + 0.1
    m = Measurer(net, x, [ef.Rotation(1), ef.Translation(1, 1, mode="zero")], batch_size=2)
    with pytest.raises(ValueError, match=r"`f\(T\(x\)\) at point '0'` to be finite"):
        m.update(x, torch.zeros(2, dtype=torch.long))
    st = m.state
    assert st.n_images == 0 and not st.scores and not st.activations and st.labelled == 0


def test_seeded_runs_repeat():
    kw = dict(transforms=[ef.Translation(4, 4)], n_images=6, batch_size=3, seed=5)
    a = ef.measure(circular_net(), None, **kw)
    b = ef.measure(circular_net(), None, **kw)
    pd.testing.assert_frame_equal(a.points, b.points)


def test_numpy_and_tensor_seeds_measure_as_their_int():
    # seed=np.int64(5) (from np.arange, a pandas table) failed in torch.manual_seed with "an
    # integer is required"; one out of torch's range with "Overflow when unpacking long long"
    import numpy as np

    kw = dict(transforms=[ef.Translation(4, 4)], n_images=2, batch_size=2)
    a = ef.measure(circular_net(), None, seed=5, **kw)
    for seed in (np.int64(5), torch.tensor(5)):
        b = ef.measure(circular_net(), None, seed=seed, **kw)
        pd.testing.assert_frame_equal(a.points, b.points)
        assert type(b.meta["seed"]) is int and b.meta["seed"] == 5  # JSON-able in Report.save
    for bad in (2 ** 64, -2 ** 63 - 1, -1, 1.5, None, True):
        with pytest.raises(ValueError, match=r"Expected `seed` to be an integer in "
                                             r"0\.\.18446744073709551615"):
            ef.measure(circular_net(), None, seed=bad, **kw)


@pytest.mark.skipif(not ef.ops.available(), reason="needs the compiled operator")
def test_operator_matches_reference_on_real_features():
    # Real weights (EfficientNet-Lite0, ImageNet) on real photos: post-ReLU6 maps with large
    # means, sparse and dead channels, channels-last, K from 16 to 1280 and maps from 48x48 to
    # 3x3. Every point's mean scores and arg-max agreement must match the float64 reference.
    from equifast.data import embedded_photos, normalise_like
    from equifast.models import load_model

    model, preprocess = load_model("efficientnet_lite0")
    x = normalise_like(embedded_photos(3, size=96, seed=1), preprocess)
    ts = [ef.Translation(8, 8), ef.Translation(-16, 8, mode="zero"), ef.Rotation(1)]
    got, want = (ef.measure(model, x, transforms=ts, batch_size=3, backend=b).points
                 .sort_values(["point", "transform"]).reset_index(drop=True)
                 for b in ("operator", "reference"))
    assert len(got) == len(want) > 40
    for col in ("channel", "layer", "undefined_fraction"):
        torch.testing.assert_close(torch.tensor(got[col].values), torch.tensor(want[col].values),
                                   atol=2e-5, rtol=0, equal_nan=True, msg=col)


def test_strided_maps_get_the_scaled_shift_and_each_metric_its_own_scores():
    # a stride-2 stage sees the 16x16 input's shift (2, 2) as (1, 1): measure must pass the input
    # size along; computed here directly with equifast.functional, for both metrics
    torch.manual_seed(4)
    net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.GELU()),
                        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.GELU()),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(4, 3, 16, 16) + 0.5  # a positive offset: cosine and correlation differ
    ts = [ef.Translation(2, 2), ef.Translation(3, -2, mode="zero")]
    got = (ef.measure(net, x, transforms=ts, metric=["correlation", "cosine"], batch_size=4,
                      channels_last=False)
           .points.set_index(["point", "transform", "metric"]))
    with torch.no_grad():
        for depth in range(2):
            stages = net[:depth + 1]
            for t in ts:
                for m in ("correlation", "cosine"):
                    s = ef.functional.equivariance_scores(stages(x), stages(t(x)), t, metric=m,
                                                          input_size=(16, 16))
                    row = got.loc[(str(depth), t.name, m)]
                    assert math.isclose(row["channel"], s.channel.nanmean().item(), abs_tol=1e-5)
                    assert math.isclose(row["layer"], s.layer.nanmean().item(), abs_tol=1e-5)
        unscaled = ef.functional.equivariance_scores(net[:1](x), net[:1](ts[0](x)), ts[0])
        assert abs(got.loc[("0", ts[0].name, "correlation")]["channel"]
                   - unscaled.channel.nanmean().item()) > 1e-3  # the input size matters here


def test_across_images_streams_the_whole_set():
    # vectors (pool, logits) are compared across all 8 images, not per batch of 3, with each
    # metric: the reference over the whole set, computed here in one go
    from equifast import reference as R

    model = circular_net()
    x = torch.rand(8, 3, 12, 12)
    t = ef.Rotation(1)  # a circular net is not rotation invariant: scores below 1
    # NCHW, as the features below: channels-last convolutions round otherwise (2.6e-6 on a
    # score on an AVX-512 CPU), which is not what this checks
    rep = ef.measure(model, x, transforms=[t], metric=["correlation", "cosine"],
                     vector_mode="across_images", batch_size=3, channels_last=False)
    pts = rep.points.set_index(["point", "metric"])
    with torch.no_grad():
        for name, stages in (("pool", model[:5]), ("final", model)):
            for m in ("correlation", "cosine"):
                want = R.equivariance_scores(stages(x), stages(t(x)), metric=m, vector_mode="across_images")
                row = pts.loc[(name, m)]
                assert math.isclose(row["channel"], want.channel[0].nanmean().item(), abs_tol=1e-6)
                assert math.isclose(row["layer"], want.layer[0].nanmean().item(), abs_tol=1e-6)
                assert row["n_images"] == 8
    assert (pts.channel < 0.999).any()


@pytest.mark.parametrize("vector_mode", ["per_image", "across_images"])
def test_eps_reaches_every_score(vector_mode):
    # with cosine, a vector is undefined when ||u|| <= eps ||u||: with eps = 1 every one is
    with pytest.warns(ef.EquifastWarning, match=r"Every score at point\(s\) '0' .* up to eps=1, "):
        rep = ef.measure(circular_net(), torch.rand(4, 3, 12, 12), transforms=[ef.Rotation(1)],
                         metric="cosine", vector_mode=vector_mode, eps=1.0, batch_size=2)
    assert (rep.points.undefined_fraction == 1).all() and rep.points.channel.isna().all()


def test_shards_with_labels_merge_into_the_single_process_accuracy_and_meta():
    model = circular_net()
    x = torch.rand(8, 3, 12, 12)
    with torch.no_grad():
        labels = model(x).argmax(-1)
    labels[[0, 5, 6]] = (labels[[0, 5, 6]] + 1) % 5  # wrong in both shards: accuracy 5/8
    ts = [ef.Rotation(1)]
    a, b = (ef.measure(model, x[s], labels=labels[s], transforms=ts, return_state=True)
            for s in (slice(0, 3), slice(3, 8)))
    empty = MeasureState(a.points, a.transforms, a.metrics, a.vector_mode)
    rep = empty.merge(a).merge(b).report()
    assert rep.accuracy == pytest.approx(5 / 8) and rep.meta["n_images"] == 8
    whole = ef.measure(model, x, labels=labels, transforms=ts)
    assert list(rep.points["shape"]) == list(whole.points["shape"]) == ["6x12x12"] * 3 + ["6", "5"]
    # the point's place in the model, which metric_bias orders its table by
    assert list(rep.points["order"]) == list(range(5))



def test_a_label_beyond_the_logits_in_the_last_batch_is_refused_before_measuring():
    # it was found when its batch came, after every batch before it was measured
    model, x = circular_net(), torch.rand(5, 3, 8, 8)
    seen = []
    model[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].clone()) if isinstance(args[0], torch.Tensor) else None)
    labels = torch.tensor([0, 1, 2, 3, 5])  # 5 classes: the last is no class index
    for images, kwargs in ((x, dict(labels=labels)), ((x, labels.tolist()), {})):
        seen.clear()
        with pytest.raises(ValueError, match=r"class indices in \[0, 5\) .* values in \[0, 5\]"):
            ef.measure(model, images, transforms=[ef.Rotation(1)], batch_size=2, **kwargs)
        assert not any(torch.equal(v, torch.rot90(x[:2], 1, (-2, -1))) for v in seen)
    # beyond n_images it is not measured, so not refused
    rep = ef.measure(model, x, labels=labels, n_images=4, transforms=[ef.Rotation(1)], batch_size=2)
    with torch.no_grad():
        want = (model(x[:4]).argmax(-1) == labels[:4]).double().mean().item()
    assert rep.accuracy == pytest.approx(want) and rep.meta["n_images"] == 4



def test_bad_options_are_refused_before_the_model_loads():
    # a name that is no model: its options are read first (they waited for the model to load
    # by name, or download, and for the first batch of images to be read)
    for kwargs, match in ((dict(vector_mode="across"), "Expected `vector_mode` to be one of"),
                          (dict(eps=-1.0), "Expected `eps` to be a finite number >= 0")):
        with pytest.raises(ValueError, match=match):
            ef.measure("no_such_model_at_all", **kwargs)



def test_labels_given_where_they_would_be_dropped_are_refused(tmp_path):
    # they were silently ignored (a folder's, a DataLoader's own were used), or dropped for
    # the labels of an (images, labels) pair: no accuracy, or another one, and no word
    from PIL import Image
    from torchvision import transforms as T

    model, x = circular_net(), torch.rand(2, 3, 8, 8)
    (tmp_path / "c").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "c" / "a.png")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=2)
    for images, kind in ((str(tmp_path), "ImageFiles"), (loader, "DataLoader"),
                         (torch.utils.data.TensorDataset(x), "TensorDataset")):
        with pytest.raises(ValueError, match=f"Expected `labels` only with a tensor of images, "
                                             f"but got them with images of type {kind}"):
            ef.measure(model, images, labels=torch.tensor([0, 1]), transforms=[ef.Rotation(1)],
                       preprocess=T.ToTensor() if kind == "ImageFiles" else None)
    with pytest.raises(ValueError, match=r"Expected labels once, but got `images` as \(images, "
                                         r"labels\) and `labels` too"):
        ef.measure(model, (x, torch.tensor([0, 1])), labels=torch.tensor([1, 0]),
                   transforms=[ef.Rotation(1)])
    with torch.no_grad():  # each alone: the accuracy of those labels
        y = model(x).argmax(-1)
    assert ef.measure(model, (x, y), transforms=[ef.Rotation(1)]).accuracy == 1.0
    assert ef.measure(model, x, labels=(y + 1) % 5, transforms=[ef.Rotation(1)]).accuracy == 0.0


class _Labelled(torch.utils.data.Dataset):
    """``images`` with ``label(i)`` as the label of item ``i``."""

    def __init__(self, images, label):
        self.images, self.label = images, label

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.label(i)


def test_labels_that_are_no_class_indices_are_named_in_every_input():
    # class names from a DataLoader's default collate, one-hot items of a Dataset, names or a
    # single number as `labels`: torch's "too many dimensions 'str'", "only integer tensors of a
    # single element ..." and "len() of a 0-d tensor", naming neither the labels nor the fix
    model, x = circular_net(), torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(-1)
    rot = [ef.Rotation(1)]
    names = _Labelled(x, lambda i: "cat")
    with pytest.raises(ValueError, match=r"the DataLoader's labels to be class indices of the "
                                         r"model \(ints, -1 for none\), but got 'cat'"):
        ef.measure(model, torch.utils.data.DataLoader(names, batch_size=2), transforms=rot)
    one_hot = _Labelled(x, lambda i: nn.functional.one_hot(y[i], 5))
    with pytest.raises(ValueError, match=r"the Dataset's labels .* but got a label of shape "
                                         r"\(5,\); for one-hot labels give label.argmax\(\)"):
        ef.measure(model, one_hot, transforms=rot, batch_size=2)
    for labels, said in ((["cat"] * 4, "but got 'cat'"), ([0, None, 1, 2], r"but got None"),
                         (torch.tensor(1), "but got one number, 1")):
        with pytest.raises(ValueError, match=f"Expected `labels` .*{said}"):
            ef.measure(model, x, labels=labels, transforms=rot)
    # class indices in each of those forms: the accuracy of the model's own predictions
    wrong = y.clone()
    wrong[0] = (y[0] + 1) % 5
    expected = float((y == wrong).float().mean())  # 3 of 4
    assert ef.measure(model, torch.utils.data.DataLoader(_Labelled(x, lambda i: wrong[i].tolist()),
                                                         batch_size=3), transforms=rot).accuracy == expected
    assert ef.measure(model, _Labelled(x, lambda i: wrong[i:i + 1]), transforms=rot,
                      batch_size=3).accuracy == expected
    assert ef.measure(model, x[:1], labels=[int(y[0])], transforms=rot).accuracy == 1.0
    # a NumPy object array of ints (a DataFrame column's .values): torch takes no object arrays
    objects = np.array(wrong.tolist(), dtype=object)
    assert ef.measure(model, x, labels=objects, transforms=rot).accuracy == expected
    assert ef.measure(model, (x, objects), transforms=rot, batch_size=3).accuracy == expected


def test_images_with_their_channels_last_in_the_shape_are_told_apart_from_the_memory_format():
    # [N, H, W, C] was measured as images 3 pixels wide: a rotation said the square images were
    # "16x3", no square; a loader's grey [N, H, W] batches were told to add a batch dim
    model, x = circular_net(), torch.rand(3, 3, 16, 16)
    rot = [ef.Rotation(1)]
    with pytest.raises(ValueError, match=re.escape("got shape (3, 16, 16, 3), which reads as "
                                                   "[N, H, W, C] (3 channels last); pass "
                                                   "images.permute(0, 3, 1, 2)")):
        ef.measure(model, x.permute(0, 2, 3, 1).contiguous(), transforms=rot)
    # the channels_last memory format of the [N, C, H, W] tensor is the same images
    plain = ef.measure(model, x, transforms=rot)
    strided = ef.measure(model, x.contiguous(memory_format=torch.channels_last), transforms=rot)
    pd.testing.assert_series_equal(plain.points.channel, strided.points.channel)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:, 0]), batch_size=2)
    with pytest.raises(ValueError, match=r"DataLoader's batches to be \[N, C, H, W\], but got shape "
                                         r"\(2, 16, 16\); give each image its channel dim"):
        ef.measure(model, loader, transforms=rot)


def test_accuracy_of_all_wrong_labels_is_zero_and_no_labels_none():
    model = circular_net()
    x = torch.rand(6, 3, 12, 12)
    with torch.no_grad():
        wrong = (model(x).argmax(-1) + 1) % 5
    rep = ef.measure(model, x, labels=wrong, transforms=[ef.Rotation(1)], batch_size=4)
    assert rep.accuracy == 0.0 and rep.meta["n_images"] == 6
    rep = ef.measure(model, x, transforms=[ef.Rotation(1)], batch_size=4)
    assert rep.accuracy is None and rep.meta["n_images"] == 6


def test_merge_refuses_states_of_other_settings():
    model = circular_net()
    x = torch.rand(2, 3, 12, 12)
    base = dict(transforms=[ef.Rotation(1)], return_state=True)
    a = ef.measure(model, x, **base)
    for other, what in ((dict(base, transforms=[ef.Rotation(2)]), "transforms"),
                        (dict(base, vector_mode="across_images"), "vector mode"),
                        (dict(base, metric="cosine"), "metrics"), (dict(base, points=["0", "final"]), "points"),
                        # merged silently: another tolerance, or other map sizes (another input
                        # size scales the shifts otherwise)
                        (dict(base, eps=0.5), "eps"), (dict(base, images=torch.rand(2, 3, 16, 16)), "map shapes")):
        with pytest.raises(ValueError, match=f"same points, transforms, metrics, vector mode, eps, "
                                             f"map shapes, precision and weights, but their {what} differ"):
            copy_of_a = ef.measure(model, x, **base)
            copy_of_a.merge(ef.measure(model, **{"images": x, **other}))
    # averaged in as the same model's: bfloat16 scores, or another initialisation's
    retrained = circular_net()
    with torch.no_grad():
        retrained[-1].bias += 1
    for other, what in ((dict(model=model, amp="bfloat16"), "precision"),
                        (dict(model=retrained), "weights")):
        with pytest.raises(ValueError, match=f"but their {what} differ"):
            ef.measure(**{"model": model, "images": x, **base}).merge(ef.measure(images=x, **{**base, **other}))
    # the same weights elsewhere (a channels-last copy) merge, as does a state built by hand
    same = ef.measure(copy.deepcopy(model).to(memory_format=torch.channels_last), x, **base)
    built = MeasureState(a.points, a.transforms, a.metrics, a.vector_mode)
    assert built.merge(same).merge(ef.measure(model, x, **base)).n_images == 4
    assert built.weights == ef.measure(model, x, **base).weights == weights_fingerprint(model)
    with pytest.raises(TypeError, match="Expected a MeasureState .* but got Report"):
        a.merge(ef.measure(model, x, transforms=[ef.Rotation(1)]))
    assert a.n_images == 2


def test_bad_settings_are_refused():
    x = torch.rand(2, 3, 12, 12)
    with pytest.raises(ValueError, match="one or more distinct metrics"):
        ef.measure(circular_net(), x, transforms=[ef.Rotation(1)], metric=[])
    with pytest.raises(ValueError, match="`vector_mode`"):
        ef.measure(circular_net(), x, transforms=[ef.Rotation(1)], vector_mode="all")
    with pytest.raises(ValueError, match="`amp`"):
        ef.measure(circular_net(), x, transforms=[ef.Rotation(1)], amp="float32")
    for n in (0, "5", 2.5):  # "5" failed comparing a str with 1, in a TypeError
        with pytest.raises(ValueError, match=rf"Expected `n_images` to be an integer >= 1 \(or None: "
                                             rf"all\), but got {re.escape(repr(n))}"):
            ef.measure(circular_net(), x, transforms=[ef.Rotation(1)], n_images=n)


def test_transformed_batches_are_stacked_up_to_batch_size():
    # 2 images, 4 transforms, batch_size 8: f(x) in one pass, the four T(x) stacked in one more
    x = torch.rand(2, 3, 12, 12)
    m = Measurer(circular_net(), x, ef.diagonal_shifts(1, 2) + [ef.Rotation(1), ef.Rotation(2)],
                 batch_size=8)
    sizes, forward = [], m._forward
    m._forward = lambda batch: sizes.append(len(batch)) or forward(batch)
    m.update(x)
    assert sizes == [2, 8]
    m.batch_size = 4  # two transforms a pass
    sizes.clear()
    m.update(x)
    assert sizes == [2, 4, 4] and m.state.n_images == 4


def test_default_images_are_the_seeded_embedded_photos_normalised():
    from equifast.data import embedded_photos, normalise_like
    from equifast.models import default_preprocess

    pre = default_preprocess(size=16)  # the photos are cut at 16 px, then ImageNet-normalised
    ts = [ef.Rotation(1)]
    got = ef.measure(circular_net(), None, transforms=ts, n_images=3, seed=7, preprocess=pre)
    want = ef.measure(circular_net(), normalise_like(embedded_photos(3, size=16, seed=7), pre),
                      transforms=ts)
    pd.testing.assert_frame_equal(got.points, want.points)
    assert got.meta["n_images"] == 3 and got.meta["seed"] == 7
    every = ef.measure(circular_net(), None, transforms=ts, preprocess=pre, batch_size=128)
    assert every.meta["n_images"] == 256  # the default set


def test_default_photos_are_cut_as_they_are_measured_not_all_at_once(monkeypatch):
    # every crop was cut before the first batch: [n_images, 3, S, S] at once (2000 at 224 px:
    # 1.2 GB), memory that grew with n_images
    from equifast import data
    from equifast.measurement import Measurer
    from equifast.models import default_preprocess

    cut, seen = [], []
    crop, update = data.EmbeddedPhotos.__getitem__, Measurer.update
    monkeypatch.setattr(data.EmbeddedPhotos, "__getitem__", lambda s, i: cut.append(i) or crop(s, i))
    monkeypatch.setattr(Measurer, "update", lambda s, x, y=None: seen.append(len(cut)) or update(s, x, y))
    rep = ef.measure(circular_net(), None, transforms=[ef.Rotation(1)], n_images=12, batch_size=4,
                     preprocess=default_preprocess(size=16))
    assert seen == [4, 8, 12] and cut == list(range(12)) and rep.meta["n_images"] == 12


def test_random_weights_by_name_follow_the_seed():
    from equifast.models import default_preprocess

    kw = dict(weights=None, n_images=2, transforms=[ef.Rotation(1)],
              preprocess=default_preprocess(size=32), points=["layer1", "final"])
    a, b = (ef.measure("resnet10t", None, seed=3, **kw).points for _ in range(2))
    pd.testing.assert_frame_equal(a, b)
    c = ef.measure("resnet10t", None, seed=4, **kw).points
    assert not a["channel"].equals(c["channel"])


def test_a_dataset_subset_is_the_seeded_one():
    from torch.utils.data import TensorDataset

    from equifast.data import seeded_subset

    x = torch.rand(10, 3, 12, 12)
    ds = TensorDataset(x, torch.zeros(10, dtype=torch.long))
    picked = {s: seeded_subset(ds, 3, s).indices for s in (0, 5)}
    assert picked[0] != picked[5]
    ts = [ef.Rotation(1)]
    got = ef.measure(circular_net(), ds, n_images=3, seed=5, transforms=ts).points
    want = ef.measure(circular_net(), x[picked[5]], transforms=ts).points
    pd.testing.assert_frame_equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_activation_is_each_points_own_mean(dtype):
    # the metric-bias input: the mean (and mean magnitude) of all activations at a point over
    # every image, streamed in batches of 3, against the network's own stages here; a float64
    # model too (its sums are float64 throughout)
    torch.manual_seed(5)
    net = circular_net().to(dtype)
    x = (torch.rand(7, 3, 12, 12) - 0.3).to(dtype)
    rep = ef.measure(net, x, transforms=[ef.Rotation(1)], batch_size=3)
    # float64 maps are scored by the reference (in float64), and the report says so
    assert rep.meta["backend"] == ("reference" if dtype == torch.float64 else ef.backend())
    got = rep.points.set_index("point")
    rel = 1e-5 if dtype == torch.float32 else 1e-12
    with torch.no_grad():
        for name, stages in (("0", net[:1]), ("1", net[:2]), ("2", net[:3]), ("pool", net[:5]),
                             ("final", net)):
            f = stages(x).double()
            assert math.isclose(got.loc[name, "mean_activation"], f.mean().item(), rel_tol=rel)
            assert math.isclose(got.loc[name, "mean_magnitude"], f.abs().mean().item(), rel_tol=rel)


class _Scaled(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


def _scale_free_net(scale):
    """Bias-free layers after a multiplication by ``scale``: every point is scaled by it."""
    torch.manual_seed(2)
    return nn.Sequential(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), _Scaled(scale)),
                         nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, bias=False), nn.ReLU()),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4, bias=False)).eval()


@pytest.mark.parametrize("vector_mode", ["per_image", "across_images"])
def test_activations_past_the_float32_range_of_their_sums_scale_every_number(vector_mode):
    # 2**120 (1.3e36): each image's float32 activation sum, and the squares behind every
    # norm, pass float32's 3.4e38; the measure is scale-invariant (SPEC section 1), so the
    # scores are those at scale 1 and the mean activations those times 2**120 (a power of two:
    # the features scale exactly). The float32 activation sums were infinite.
    x = torch.rand(5, 3, 24, 24)
    kw = dict(transforms=[ef.Rotation(1), ef.Translation(2, 2)], metric=["correlation", "cosine"],
              batch_size=5, vector_mode=vector_mode)
    want = ef.measure(_scale_free_net(1.0), x, **kw).points
    got = ef.measure(_scale_free_net(2.0 ** 120), x, **kw).points
    pd.testing.assert_frame_equal(got.drop(columns=["mean_activation", "mean_magnitude"]),
                                  want.drop(columns=["mean_activation", "mean_magnitude"]),
                                  check_exact=False, rtol=0, atol=1e-6)
    for column in ("mean_activation", "mean_magnitude"):
        assert got[column].map(math.isfinite).all(), got[column]
        pd.testing.assert_series_equal(got[column] / 2.0 ** 120, want[column], rtol=1e-6)


def test_transforms_as_specs_and_fewer_images_than_asked():
    import warnings

    x = torch.rand(3, 3, 12, 12)
    with pytest.warns(ef.EquifastWarning, match=r"^Measured 3 images, fewer than the n_images=5 asked for"):
        by_spec = ef.measure(circular_net(), x, transforms="translation:1-2,rotation:180", n_images=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all the images asked for: no warning
        by_object = ef.measure(circular_net(), x, n_images=3,
                               transforms=ef.diagonal_shifts(1, 2) + [ef.Rotation(2)])
    pd.testing.assert_frame_equal(by_spec.points, by_object.points)
    by_list = ef.measure(circular_net(), x, transforms=["translation:1-2", "rotation:180"])
    pd.testing.assert_frame_equal(by_list.points, by_object.points)
    assert by_spec.meta["n_images"] == 3


def test_the_model_and_the_random_stream_are_given_back_as_they_were():
    import torchvision

    model = torchvision.models.resnet18(num_classes=4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = [(p.data_ptr(), p.stride()) for p in model.parameters()]
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    ef.measure(model, x, transforms=ef.Rotation(1))
    assert torch.equal(torch.rand(3), want)  # not reseeded to `seed`
    # the same tensors, in their own memory format (it was left channels-last: views failed)
    assert [(p.data_ptr(), p.stride()) for p in model.parameters()] == tensors
    assert model.conv1.weight.is_contiguous() and model.training
    torch.nn.utils.parameters_to_vector(model.parameters())
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_given_back_gradients_lazy_modules_and_cuda_streams(monkeypatch):
    import torchvision

    model = torchvision.models.resnet18(num_classes=4)
    model(torch.rand(2, 3, 32, 32)).sum().backward()  # between two steps of training
    grads = [(p.grad.data_ptr(), p.grad.stride()) for p in model.parameters()]
    seeded = []  # the caller's CUDA generators are theirs (seeded lazily on a CPU machine)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    monkeypatch.setattr(torch.cuda, "manual_seed", seeded.append)
    ef.measure(model, torch.rand(2, 3, 32, 32), transforms=ef.Rotation(1), seed=7)
    assert [(p.grad.data_ptr(), p.grad.stride()) for p in model.parameters()] == grads and not seeded
    lazy = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.LazyLinear(2))
    ef.measure(lazy, torch.rand(2, 3, 12, 12), transforms=ef.Rotation(1), channels_last=False)
    assert lazy(torch.rand(2, 3, 12, 12)).shape == (2, 2)  # materialised, and left so


def test_a_repeated_transform_is_refused():
    # it would count twice in its family's mean
    with pytest.raises(ValueError, match="distinct transforms"):
        ef.measure(circular_net(), torch.rand(2, 3, 12, 12), transforms=[ef.Rotation(1), ef.Rotation(1)])


def test_a_flat_folder_has_no_labels_and_no_accuracy_warning(tmp_path):
    import warnings

    import torchvision.transforms as T

    torch.manual_seed(0)
    for i in range(2):  # not of one colour: constant maps would be warned of as undefined
        T.ToPILImage()(torch.rand(3, 12, 12)).save(tmp_path / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "which classes the folders are is unknown"
        rep = ef.measure(circular_net(), str(tmp_path), transforms=[ef.Rotation(1)],
                         preprocess=T.ToTensor())
    assert rep.accuracy is None and rep.meta["n_images"] == 2


def test_shifts_the_maps_scale_cannot_follow_lose_equivariance():
    # Thesis figure 8: on a map 2^j times smaller than the input, a circular net stays exactly
    # equivariant to the shifts that are multiples of 2^j, and loses it at the others, whose
    # scaled shift is rounded down
    torch.manual_seed(0)
    conv = lambda i, o: nn.Conv2d(i, o, 3, padding=1, padding_mode="circular")
    net = nn.Sequential(conv(3, 8), nn.ReLU(), nn.AvgPool2d(2), conv(8, 8), nn.ReLU(),
                        nn.AvgPool2d(2), conv(8, 8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4)).eval()
    rep = ef.measure(net, torch.rand(6, 3, 32, 32), transforms=ef.diagonal_shifts(1, 8),
                     points=["1", "4", "7"], batch_size=6)
    shifts = rep.shifts
    assert list(shifts.part.astype(str).unique()) == ["early", "middle", "late", "pool", "final"]
    for part, period in (("early", 1), ("middle", 2), ("late", 4)):
        d = shifts[shifts.part == part]
        assert list(d.dy) == list(range(1, 9)) and (d.n_points == 1).all()
        followed = d.dy % period == 0
        assert (d[followed].channel > 1 - 1e-5).all() and (d[followed].layer > 1 - 1e-5).all(), d
        assert (d[~followed].channel < 0.9).all(), d



def _quarter_turn_symmetric(w):
    """``w`` averaged over its 4 quarter turns: a 3x3 kernel that every rotation and flip
    leaves as it is (its corners, edges and centre are each one value)."""
    return sum(torch.rot90(w, q, (-2, -1)) for q in range(4)) / 4


class _SymmetricConv(nn.Conv2d):
    def forward(self, x):
        return nn.functional.conv2d(x, _quarter_turn_symmetric(self.weight), self.bias,
                                    self.stride, self.padding)


class _LiftingConv(nn.Module):
    """Two random 3x3 kernels at each quarter turn: channel ``2q + j`` is kernel ``j`` turned
    ``q`` times, so rotating the image by one turn rotates each map and moves it 2 channels on."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 3, 3, 3))

    def forward(self, x):
        w = torch.cat([torch.rot90(self.weight, q, (-2, -1)) for q in range(4)])
        return nn.functional.conv2d(x, w, padding=1)


class _SharedSymmetricDepthwise(nn.Module):
    """One symmetric kernel for every channel: commutes with rotations and with moving
    channels around."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, 1, 3, 3))

    def forward(self, x):
        w = _quarter_turn_symmetric(self.weight).expand(x.shape[1], 1, 3, 3)
        return torch.relu(nn.functional.conv2d(x, w, padding=1, groups=x.shape[1]))


def test_a_rotation_equivariant_net_scores_one_and_a_lifted_one_scores_one_in_other_channels():
    # Zero padding and symmetric kernels on square maps commute with every quarter turn and
    # flip (batch norm with running statistics and ReLU act per pixel): every point, pooled
    # vector and logit scores 1, channel and layer
    torch.manual_seed(0)
    block = lambda i, o: nn.Sequential(_SymmetricConv(i, o, 3, padding=1), nn.BatchNorm2d(o),
                                       nn.ReLU())
    net = nn.Sequential(block(3, 8), block(8, 8), block(8, 12), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(12, 5)).eval()
    for bn in (net[0][1], net[1][1], net[2][1]):  # statistics of their own, not 0 and 1
        bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 12, 12)
    pts = ef.measure(net, x, transforms=ef.rotations() + ef.flips(), batch_size=4).points
    assert len(pts) == 5 * 5
    defined = pts.undefined_fraction < 1  # ReLU leaves some channels dead: those are NaN
    assert defined.all() and (pts.channel > 1 - 1e-5).all() and (pts.layer > 1 - 1e-5).all(), pts

    # A lifting convolution: f^k(T x) is T(f^(k - 2)(x)), so each layer score is 1, found
    # at k' = k + 2q (mod 8), and a channel score is a correlation of two kernels' maps
    net = nn.Sequential(_LiftingConv(), _SharedSymmetricDepthwise(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 3)).eval()
    rep = ef.measure(net, x, transforms=ef.rotations(), points=["0", "1"], batch_size=4)
    maps = rep.points[rep.points.point.isin(["0", "1"])]
    assert (maps.layer > 1 - 1e-5).all() and (maps.offdiagonal_fraction == 1).all(), maps
    assert (maps.channel < 0.5).all(), maps
    fx = ef.representations(net, ef.split(net, x, points=["0", "1"]))
    with torch.no_grad():
        for q in (1, 2, 3):
            t = ef.Rotation(q)
            for name in ("0", "1"):
                s = ef.functional.equivariance_scores(fx(x)[name], fx(t(x))[name], t,
                                                      input_size=(12, 12))
                assert torch.equal(s.layer_index, ((torch.arange(8) + 2 * q) % 8).expand(4, 8))


def test_a_shift_and_its_opposite_score_alike_on_the_shifted_images():
    # On a circular net, corr(T_l f(x), f(T x)) with T a roll by t is, rolling both maps back,
    # corr(f(x'), T_l^-1 f(x')) with x' = T x: the channel score of -t on x' = roll(x, t)
    # (and of t on x is that of -t on roll(x, t)). The scaled shift of -t must then be minus
    # that of t: on the stride-2 maps, odd shifts round toward zero, not down (floor).
    torch.manual_seed(0)
    conv = lambda i, o, s=1: nn.Conv2d(i, o, 3, s, padding=1, padding_mode="circular")
    net = nn.Sequential(nn.Sequential(conv(3, 8), nn.ReLU()), nn.Sequential(conv(8, 8, 2), nn.ReLU()),
                        nn.Sequential(conv(8, 8), nn.ReLU()), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4)).eval()
    x = torch.randn(5, 3, 16, 16)
    for dy, dx, rounding in ((3, 3, "down"), (1, -5, "down"), (3, 1, "nearest")):
        t = ef.Translation(dy, dx, rounding=rounding)
        back = ef.Translation(-dy, -dx, rounding=rounding)
        a = ef.measure(net, x, transforms=[t], batch_size=5).points
        b = ef.measure(net, torch.roll(x, (dy, dx), (-2, -1)), transforms=[back], batch_size=5).points
        np.testing.assert_allclose(a.channel, b.channel, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(a.undefined_fraction, b.undefined_fraction)
        assert (a.channel[a.point == "1"] < 0.9).all()  # an odd shift on the stride-2 map is no exact one

class _WideMaps(nn.Module):
    """A square image gives a non-square map (stride 2 down, 1 across); counts its passes."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=(2, 1), padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)
        self.passes = 0

    def forward(self, x):
        self.passes += 1
        return self.fc(self.b(torch.relu(self.a(x))).mean((2, 3)))


def test_a_transform_a_map_point_cannot_take_is_refused_before_measuring():
    model = _WideMaps().eval()
    ef.split(model, torch.rand(2, 3, 16, 16))
    split_passes, model.passes = model.passes, 0  # fx's trace runs forward too
    with pytest.raises(ValueError, match=r"^Point 'a' \(8x16 map at a 16x16 input\) cannot take "
                                         r"rotation\(90\): Expected a square image or map"):
        ef.measure(model, torch.rand(2, 3, 16, 16), transforms=[ef.Translation(1, 1), ef.Rotation(1)])
    assert model.passes == split_passes  # the split's only: no image was measured
    report = ef.measure(model, torch.rand(2, 3, 16, 16), transforms=[ef.Translation(1, 1)])
    assert list(report.points.point) == ["a", "b", "pool", "final"]


def test_points_split_at_another_size_are_checked_at_the_measured_one():
    # split at 16x8 its maps are square (8x8); measured at 16x16 they are 8x16: the check of
    # every transform on every map took the split's shapes, so a rotation passed it and failed
    # inside the first batch
    model = _WideMaps().eval()
    points = ef.split(model, torch.rand(2, 3, 16, 8))
    assert points[0].shape == (4, 8, 8)
    model.passes = 0
    with pytest.raises(ValueError, match=r"^Point 'a' \(8x16 map at a 16x16 input\) cannot take "
                                         r"rotation\(90\): Expected a square image or map"):
        ef.measure(model, torch.rand(2, 3, 16, 16), transforms=[ef.Rotation(1)], points=points)
    assert model.passes <= 2  # the shapes' pass (and the hooks' probe): no image was measured
    # and the scores are those of points split at the measured size
    x = torch.rand(4, 3, 16, 16)
    shifts = [ef.Translation(1, 1), ef.Translation(3, 3)]
    got = ef.measure(model, x, transforms=shifts, points=points).points
    want = ef.measure(model, x, transforms=shifts, points=ef.split(model, x[:2])).points
    pd.testing.assert_frame_equal(got.drop(columns="shape"), want.drop(columns="shape"))
    assert list(got["shape"]) == list(want["shape"])


def test_a_preprocess_that_tensors_do_not_take_is_said_so():
    # it was dropped silently: tensors and a DataLoader's batches are taken as model-ready
    import warnings

    from torchvision import transforms as T

    x = torch.rand(2, 3, 12, 12)
    pre = T.Normalize([0.5] * 3, [0.5] * 3)
    # a Dataset's tensor items too (the README says so; they were dropped silently), not its PIL images
    for images in (x, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=2),
                   torch.utils.data.TensorDataset(x),
                   torch.utils.data.Subset(torch.utils.data.TensorDataset(x, torch.zeros(2, dtype=torch.long)), [0, 1])):
        with pytest.warns(UserWarning, match="`preprocess` is not applied to a tensor"):
            rep = ef.measure(circular_net(), images, transforms=[ef.Rotation(1)], preprocess=pre)
        plain = ef.measure(circular_net(), x, transforms=[ef.Rotation(1)])
        pd.testing.assert_frame_equal(rep.points, plain.points)
    pil = [T.functional.to_pil_image(image) for image in x]

    class Photos(torch.utils.data.Dataset):
        def __len__(self):
            return len(pil)

        def __getitem__(self, i):
            return pil[i], 0

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # applied to PIL images: nothing to say
        ef.measure(circular_net(), Photos(), transforms=[ef.Rotation(1)], preprocess=T.ToTensor())


def test_a_model_without_a_classifier_has_no_accuracy_rather_than_one_of_its_features(tmp_path):
    # timm's num_classes=0: `final` is the pooled features; their arg-max was scored against
    # the labels as if it were a class (a number in [0, 1] that means nothing), and class
    # folders were said to be "which of the model's 512 classes" (the feature width)
    import timm
    from PIL import Image

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        labels = model(x).argmax(-1)  # the features' arg-max: the old "accuracy" was 1.0
    for images, kw in ((x, {"labels": labels}), ((x, labels), {})):
        with pytest.warns(UserWarning, match=r"No accuracy: ResNet has no classifier "
                                             r"\(num_classes=0\)"):
            rep = ef.measure(model, images, transforms=[ef.Rotation(2)], **kw)
        assert rep.accuracy is None
    for i, name in enumerate(("cats", "dogs")):
        (tmp_path / name).mkdir()
        Image.new("RGB", (40, 40), (200 * i, 90, 30)).save(tmp_path / name / "a.png")
    with pytest.warns(UserWarning, match=r"has no classifier \(num_classes=0\)") as caught:
        rep = ef.measure(model, str(tmp_path), transforms=[ef.Rotation(2)])
    assert rep.accuracy is None
    assert not any("512 classes" in str(w.message) for w in caught)


def test_a_map_as_the_final_point_has_no_accuracy_rather_than_one_of_its_last_dim():
    # a fully convolutional model with named points: `final` is its [N, K, H, W] output, whose
    # arg-max over W was compared with the labels (an accuracy of 4.25 for 4 images 4 wide, a
    # torch broadcasting error for 5)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1)).eval()
    rot = [ef.Rotation(1)]
    for n in (4, 5):
        x, y = torch.rand(n, 3, 4, 4), torch.arange(n) % 4
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            plain = ef.measure(model, x, transforms=rot, points=["0", "2"])
            rep = ef.measure(model, x, labels=y, transforms=rot, points=["0", "2"])
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=n)
            state = ef.measure(model, loader, transforms=rot, points=["0", "2"], return_state=True)
        assert rep.accuracy is None and rep.meta["accuracy_images"] is None
        pd.testing.assert_frame_equal(rep.points, plain.points, check_exact=True)
        assert (state.labelled, state.correct, state.n_images) == (0, 0, n)
        # said once, where the labels were given with the images
        assert [str(w.message) for w in said if "accuracy" in str(w.message)] == [
            "No accuracy: Sequential's output (the `final` point) is a 5x4x4 map, not the class "
            "logits [N, K] that labels are compared with."]


def test_an_autocast_left_on_around_the_call_is_not_applied():
    # it ran the model in bfloat16 while the report said amp=None (scores ~1e-3 off float32)
    model = circular_net()
    x = torch.rand(4, 3, 12, 12)
    ts = [ef.Rotation(1), ef.Translation(1, 1)]
    plain = ef.measure(model, x, transforms=ts, batch_size=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        around = ef.measure(model, x, transforms=ts, batch_size=8)
        asked = ef.measure(model, x, transforms=ts, batch_size=8, amp="bfloat16")
        assert torch.is_autocast_enabled("cpu")  # the caller's is left on
    assert around.meta["amp"] is None
    assert (plain.points.channel - around.points.channel).abs().max() < 1e-6
    assert (plain.points.layer - around.points.layer).abs().max() < 1e-6
    bf16 = ef.measure(model, x, transforms=ts, batch_size=8, amp="bfloat16")
    assert (asked.points.channel - bf16.points.channel).abs().max() < 1e-6


@pytest.mark.parametrize("dtype,mixed", [(torch.float64, False), (torch.bfloat16, False),
                                         (torch.float16, False), (torch.bfloat16, True),
                                         (torch.float16, True)])
def test_float32_images_are_given_to_a_model_of_another_precision_at_its_own(dtype, mixed):
    # float32 images into a float64/bfloat16/float16 model failed in the split, asking
    # whether the image was too small; so did a model of that precision whose batch norm was
    # kept float32 (mixed), uncast
    model = circular_net().to(dtype)
    if mixed:
        model[1][1].float()
    x = torch.rand(4, 3, 12, 12)
    ts = [ef.Rotation(1), ef.Translation(1, 1)]
    got = ef.measure(model, x, transforms=ts, batch_size=8)
    want = ef.measure(model, x.to(dtype), transforms=ts, batch_size=8)
    pd.testing.assert_frame_equal(got.points, want.points)
    assert [p.dtype for p in model.parameters()].count(dtype) == 10 - 2 * mixed


@pytest.mark.parametrize("dtype,amp", [(torch.float64, "float16"), (torch.float64, "bfloat16"),
                                       (torch.float16, "bfloat16"), (torch.bfloat16, "float16")])
def test_amp_with_a_model_autocast_does_not_cast_is_refused(dtype, amp):
    # autocast casts float32 work only: a float64 model ran in float64 (the scores of amp=None)
    # under a report saying amp='float16'; a float16 model under bfloat16 failed in its batch
    # norm, asking whether the image was too small
    model = circular_net().to(dtype).train()
    x = torch.rand(4, 3, 12, 12)
    with pytest.raises(ValueError, match=f"Expected `amp` with a float32 model.*is {str(dtype)[6:]}"):
        ef.measure(model, x, transforms=[ef.Rotation(1)], amp=amp)
    assert model.training and all(p.dtype == dtype for p in model.parameters())
    # a float32 model, or one already at amp's precision, runs as before
    for taken in (circular_net(), circular_net().to(getattr(torch, amp))):
        assert ef.measure(taken, x, transforms=[ef.Rotation(1)], amp=amp).meta["amp"] == amp


def test_the_operator_asked_for_a_float64_model_is_refused_before_any_batch(monkeypatch):
    # it failed in the first batch's scores, after its passes, advising a cast (fx.float())
    # of maps the caller never had
    model = circular_net().double()
    x = torch.rand(4, 3, 12, 12)
    forward = Measurer._forward
    passes = []
    monkeypatch.setattr(Measurer, "_forward", lambda self, b: passes.append(len(b)) or forward(self, b))
    with pytest.raises(ValueError, match="backend='operator' with a float32.*model is float64"):
        ef.measure(model, x, transforms=[ef.Rotation(1)], backend="operator")
    assert passes == []
    # the float64 maps as the advice says: scored by the reference, as the float32 model by
    # the operator, to float32 rounding
    got = ef.measure(model, x, transforms=[ef.Rotation(1), ef.Translation(1, 2)], backend="auto")
    want = ef.measure(circular_net(), x, transforms=[ef.Rotation(1), ef.Translation(1, 2)],
                      backend="operator")
    assert got.meta["backend"] == "reference"
    assert (got.points.channel - want.points.channel).abs().max() < 1e-5


def test_wrapped_models_are_measured_as_the_module_they_wrap():
    # DataParallel's and torch.compile's points were named "module.1", "_orig_mod.1" (reports
    # of one model that did not line up) and the model "DataParallel"/"OptimizedModule"
    model = circular_net()
    x = torch.rand(4, 3, 12, 12)
    ts = [ef.Rotation(1)]
    plain = ef.measure(model, x, transforms=ts, batch_size=8)
    compiled = torch.compile(model, backend="eager")
    for wrapped in (nn.DataParallel(model), compiled, nn.DataParallel(compiled)):
        rep = ef.measure(wrapped, x, transforms=ts, batch_size=8)
        pd.testing.assert_frame_equal(rep.points, plain.points)
        assert rep.meta["model"] == "Sequential"
    named = ef.measure(nn.DataParallel(model), x, transforms=ts, points=["module.1", "2"])
    assert list(named.points.point.unique()) == ["1", "2", "pool", "final"]
    # the wrapper's own hooks (here doubling the logits) were skipped: scores of another model
    for wrapped, inner in ((nn.DataParallel(model), "module"),
                           (nn.DataParallel(torch.compile(model, backend="eager")), "module"),
                           (torch.compile(nn.DataParallel(model), backend="eager"), "_orig_mod")):
        wrapped.register_forward_hook(lambda module, args, out: out * 2)
        with pytest.raises(ValueError, match=rf"wrapper holds 1, which measuring would skip .* "
                                             rf"register them on model\.{inner} instead"):
            ef.measure(wrapped, x, transforms=ts)
    inner_hooked = nn.DataParallel(copy.deepcopy(model))
    inner_hooked.module.register_forward_hook(lambda module, args, out: out * 2)
    doubled = ef.measure(inner_hooked, x, transforms=ts, points=["final"])  # on the module: run
    once = plain.points.set_index("point").loc["final", "mean_magnitude"]
    assert doubled.points.set_index("point").loc["final", "mean_magnitude"] == pytest.approx(2 * once)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated
def test_torchscript_is_refused_naming_what_to_pass():
    # scripted: "register_forward_pre_hook is not supported on ScriptModules"; traced: "Could
    # not find the stem or any block"
    model = circular_net()
    x = torch.rand(2, 3, 12, 12)
    for scripted in (torch.jit.script(model), torch.jit.trace(model, x)):
        with pytest.raises(TypeError, match="TorchScript module .* Pass the nn.Module it was"):
            ef.measure(scripted, x, transforms=[ef.Rotation(1)])


def test_meta_says_random_weights_as_null_and_the_versions_measured_with(tmp_path):
    # random weights were saved as the string "None"; nothing said which equifast and torch,
    # nor which timm and torchvision built the model by name (its definition, its "default"
    # weights' tag, its preprocessing)
    import timm

    import equifast
    from equifast.report import Report
    rep = ef.measure("resnet18", torch.rand(2, 3, 32, 32), weights=None, num_classes=10,
                     transforms=[ef.Rotation(1)])
    assert rep.meta["weights"] is None
    assert rep.meta["versions"] == {"equifast": equifast.__version__, "torch": torch.__version__,
                                    "torchvision": torchvision.__version__,
                                    "timm": timm.__version__}
    rep.save(str(tmp_path / "r.json"))
    back = Report.load(str(tmp_path / "r.json"))
    assert back.meta["weights"] is None and back.meta["versions"] == rep.meta["versions"]


def test_warnings_of_measure_name_the_callers_line(tmp_path):
    # a fixed stacklevel counted past measure's caller (pytest's frame; `sys:1` at a script's
    # top level) or stopped inside equifast (the scores of measurement.py's Measurer.update)
    import warnings

    import torchvision.transforms as T
    from PIL import Image

    def ours(ws):
        mine = [w for w in ws if issubclass(w.category, ef.EquifastWarning)]
        assert mine, [str(w.message) for w in ws]
        for w in mine:
            assert w.filename == __file__, (w.filename, w.lineno, str(w.message))
        return " ".join(str(w.message) for w in mine)

    for i, name in enumerate(("cats", "dogs")):  # 2 class folders for a model of 5 classes
        (tmp_path / name).mkdir()
        Image.new("RGB", (12, 12), (200 * i, 90, 30)).save(tmp_path / name / "a.png")
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        ef.measure(circular_net(), str(tmp_path), transforms=[ef.Rotation(1)],
                   preprocess=T.ToTensor())
    assert "No accuracy: which of the model's 5 classes" in ours(ws)
    for name in ("c", "d", "e"):  # one folder per class, and an image beside them
        (tmp_path / name).mkdir()
        Image.new("RGB", (12, 12), (9, 90, 30)).save(tmp_path / name / "a.png")
    Image.new("RGB", (12, 12), (9, 9, 9)).save(tmp_path / "stray.png")
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        ef.measure(circular_net(), str(tmp_path), transforms=[ef.Rotation(1)],
                   preprocess=T.ToTensor(), n_images=10)
    assert "lie beside the class folders" in ours(ws) and "fewer than the n_images=10" in ours(ws)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        ef.measure(circular_net(), torch.rand(2, 3, 12, 12), transforms=[ef.Rotation(1)],
                   preprocess=T.ToTensor())
    assert "`preprocess` is not applied to a tensor" in ours(ws)
    # issued in functional.equivariance_scores, under Measurer.update's @torch.no_grad()
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        ef.measure(circular_net(), torch.rand(2, 3, 12, 12),
                   transforms=[ef.Translation(11, 11, mode="zero")])
    assert "leaves one position to compare" in ours(ws)
    # called directly, equivariance_scores names its caller too
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        ef.functional.equivariance_scores(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4),
                                          ef.Translation(3, 3, mode="zero"))
    assert "leaves one position to compare" in ours(ws)


def test_points_left_one_position_to_compare_are_named():
    # the warning named a map size and a transform: which points' scores were NaN was unsaid
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        report = ef.measure(circular_net(), torch.rand(2, 3, 12, 12),
                            transforms=[ef.Translation(11, 11, mode="zero"), ef.Rotation(1)])
    pts = report.points
    nan = pts[pts["channel"].isna() & (pts["transform"] == "translation(11,11,zero)")]
    maps = [p.name for p in ef.split(circular_net(), torch.rand(1, 3, 12, 12)) if not p.is_vector]
    assert set(nan["point"]) == set(maps) and maps  # every map, and no score under the rotation
    (said,) = [str(w.message) for w in ws if str(w.message).startswith("Correlation scores at point")]
    for point in maps:
        assert f"{point!r} (12x12 map; translation(11,11,zero))" in said
    assert "rotation" not in said


def _tiny_vit(classes=5):
    """torchvision's ViT, small: its classifier is zero-initialised (as vit_b_16 with weights=None)."""
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=classes)


def _undefined_warnings(ws):
    return [str(w.message) for w in ws if issubclass(w.category, ef.EquifastWarning)
            and str(w.message).startswith("Every score at point")]


def test_a_wholly_undefined_point_is_warned_of_once_naming_it_and_why():
    # vit_b_16 --weights none: a zero head gives equal logits, `final` NaN with nothing said
    import warnings

    model = _tiny_vit()
    x = torch.rand(4, 3, 32, 32)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        rep = ef.measure(model, x, transforms=[ef.Rotation(1), ef.Translation(8, 8)],
                         metric=["correlation", "cosine"], batch_size=4)
    # the logits are the head's zero bias: equal within each image (correlation) and zero (cosine)
    with torch.no_grad():
        assert torch.equal(model(x), torch.zeros(4, 5))
    final = rep.points[rep.points.point == "final"]
    assert final.channel.isna().all() and (final.undefined_fraction == 1.0).all()
    assert (rep.points[rep.points.point != "final"].undefined_fraction == 0.0).all()
    said = _undefined_warnings(ws)
    assert len(said) == 1, said  # once for the run, not per batch, transform or metric
    assert "'final' (its 5 values in each image; every transform; correlation, cosine)" in said[0]
    assert "constant (zero centred norm" in said[0] and "zero (zero norm" in said[0]
    assert "part(s) 'final' have no score" in said[0] and "'pool'" not in said[0]
    # a head of any other weights: every point defined, nothing said
    with torch.no_grad():
        model.heads.head.weight.normal_()
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        rep = ef.measure(model, x, transforms=[ef.Rotation(1)], batch_size=4)
    assert (rep.points.undefined_fraction == 0.0).all() and not _undefined_warnings(ws)


def test_a_dead_map_point_names_itself_and_its_part_but_not_what_is_warned_of_already():
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
                          nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
                          nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():  # the last block's units are dead (ReLU of a negative constant): its
        model[2][0].weight.zero_()  # maps are zero, and so the pooled vector
        model[2][0].bias.fill_(-1.0)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        rep = ef.measure(model, torch.rand(3, 3, 12, 12), transforms=[ef.Rotation(1)])
    dead = rep.points[rep.points.undefined_fraction == 1.0]
    assert list(dead.point) == ["2", "pool"]  # final is the head's bias: defined
    assert list(rep.parts[rep.parts.channel.isna()].part) == ["late", "pool"]
    said = _undefined_warnings(ws)
    assert len(said) == 1 and "'2' (each channel's 12x12 map; every transform), 'pool' (its 4 " \
        "values in each image; every transform)" in said[0]
    assert "part(s) 'late', 'pool' have no score" in said[0]
    # one compared position leaves every map undefined: said where scored, not again here
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        rep = ef.measure(circular_net(), torch.rand(2, 3, 12, 12),
                         transforms=[ef.Translation(11, 11, mode="zero")])
    assert rep.points[rep.points.part == "early"].channel.isna().all()
    assert not _undefined_warnings(ws) and any("leaves one position" in str(w.message) for w in ws)


def _device_works(name: str) -> bool:
    try:
        torch.empty(0, device=name)
        return True
    except Exception:
        return False


def test_amp_batch_size_device_backend_and_transforms_are_refused_before_the_model_loads(monkeypatch):
    # they were read after the model had loaded (minutes for a large timm model, or a download)
    import equifast.models

    loads = []
    real = equifast.models.load_model

    def recorded(*args, **kwargs):
        loads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(equifast.models, "load_model", recorded)
    x = torch.rand(2, 3, 32, 32)
    for kwargs, error, match in (
            (dict(amp="float32"), ValueError, "Expected `amp` to be None, 'float16' or 'bfloat16'"),
            (dict(batch_size=0), ValueError, "Expected `batch_size` to be an integer >= 1, but got 0"),
            (dict(batch_size=2.5), ValueError, "Expected `batch_size` to be an integer >= 1"),
            (dict(device="tpu:x"), ValueError, "Expected a device like 'cpu'"),
            (dict(device=f"cuda:{torch.cuda.device_count()}"), ValueError, "CUDA device"),
            # they failed deep inside: meta on .item(), the others on the first tensor moved
            (dict(device="meta"), ValueError, "a device that holds values, but got 'meta'"),
            *[(dict(device=d), ValueError, f"but '{d}' is not available here")
              for d in ("mps", "xla", "xpu") if not _device_works(d)],
            (dict(backend="fast"), ValueError, "Expected `backend` to be one of"),
            # split's own error named its `method`, after the model and the data had loaded
            (dict(split_method="graph"), ValueError,
             r"Expected `split_method` to be one of \('auto', 'fx', 'hooks'\), but got 'graph'"),
            (dict(transforms=[]), TypeError, "non-empty list of equifast transforms"),
            (dict(transforms=[ef.Rotation(1), ef.Rotation(1)]), ValueError, "more than once")):
        with pytest.raises(error, match=match):
            ef.measure("resnet18", x, weights=None, **{"transforms": [ef.Rotation(1)], **kwargs})
    assert loads == []
    ef.measure("resnet18", x, weights=None, transforms=[ef.Rotation(1)], batch_size=2)
    assert loads == ["resnet18"]  # the record sees a load where there is one
    # a Measurer of its own, too: batch_size=0 and an unknown backend ran silently
    for kwargs, match in ((dict(batch_size=0), "`batch_size`"), (dict(backend="fast"), "`backend`"),
                          (dict(split_method="graph"), "`split_method`")):
        with pytest.raises(ValueError, match=match):
            Measurer(circular_net(), x, [ef.Rotation(1)], **kwargs)


def test_meta_paths_are_absolute_and_the_accuracy_says_over_how_many_images(
        two_labelled_and_a_stray, monkeypatch):
    # relative paths read from another folder named nothing; an accuracy of 0.5 was 1 of 2
    # labelled images of 3 measured, and nothing said so
    from equifast.report import Report

    tmp_path = two_labelled_and_a_stray
    Path("resnet18").mkdir()  # a folder of a model's name: the name is still the model's
    with pytest.warns(ef.EquifastWarning, match="1 image\\(s\\) lie beside the class folders"):
        rep = ef.measure("resnet18", "val", weights="ckpt.pt", transforms=[ef.Rotation(1)])
    assert rep.meta["images"] == str(tmp_path.resolve() / "val")
    assert rep.meta["weights"] == str(tmp_path.resolve() / "ckpt.pt")
    assert rep.meta["model"] == "resnet18"
    assert (rep.accuracy, rep.meta["accuracy_images"], rep.meta["n_images"]) == (0.5, 2, 3)
    rep.save("r.json")
    monkeypatch.chdir(tmp_path / "val")  # read elsewhere, it still says what was measured
    back = Report.load(tmp_path / "r.json")
    assert Path(back.meta["images"]).is_dir() and Path(back.meta["weights"]).is_file()
    assert back.meta["accuracy_images"] == 2
    # no labels: no accuracy, over no images
    rep = ef.measure(circular_net(), torch.rand(2, 3, 12, 12), transforms=[ef.Rotation(1)])
    assert rep.accuracy is None and rep.meta["accuracy_images"] is None


def test_measurer_refuses_bad_batches_and_takes_transforms_as_measure_does():
    # update divided by zero on an empty batch, failed in channels_last on a 3-D one and inside
    # the model on uint8 or another channel count, and copied out of a meta tensor; the
    # constructor read "rotation" letter by letter, took no single transform and no model name
    x = torch.rand(4, 3, 12, 12)
    m = Measurer(circular_net(), x[:2], [ef.Rotation(1)], batch_size=4)
    for bad, error, match in ((x[:0], ValueError, r"at least one image, but got shape \(0, 3, 12, 12\)"),
                              (x[0], ValueError, r"`x` to be \[N, C, H, W\], but got shape \(3, 12, 12\)"),
                              ((x * 255).to(torch.uint8), TypeError, "floating tensor.*torch.uint8"),
                              (x[:, :1], ValueError, "3-channel images .*, but got 1 channels"),
                              (x.to("meta"), ValueError, "`x` to hold data .* meta tensor")):
        with pytest.raises(error, match=match):
            m.update(bad)
    assert m.state.n_images == 0 and not m.state.scores
    m.update(x)
    want = ef.measure(circular_net(), x, transforms=[ef.Rotation(1)], batch_size=4)
    pd.testing.assert_frame_equal(m.state.report().points[["point", "channel", "layer"]],
                                  want.points[["point", "channel", "layer"]])
    for transforms in ("rotation:90", ["rotation:90"], ef.Rotation(1)):
        one = Measurer(circular_net(), x[:2], transforms, batch_size=4)
        assert one.transforms == [ef.Rotation(1)]
    for model, example, error, match in (
            ("resnet18", x, TypeError, "nn.Module, but got str; load a model by name"),
            (circular_net(), x[0], ValueError, r"`example` to be \[N, C, H, W\]"),
            (circular_net(), x.to("meta"), ValueError, "`example` to hold data")):
        with pytest.raises(error, match=match):
            Measurer(model, example, [ef.Rotation(1)])
    with pytest.raises(ValueError, match="`images` to hold data .* meta tensor"):
        ef.measure(circular_net(), x.to("meta"), transforms=[ef.Rotation(1)])


def test_a_model_of_meta_tensors_is_refused_until_its_weights_are_loaded():
    # torch's "Cannot copy out of meta tensor" advised Module.to_empty(): uninitialised memory
    # measured as weights
    x = torch.rand(4, 3, 12, 12)
    with torch.device("meta"):
        model = circular_net().train()
    with pytest.raises(ValueError, match="`model` to hold its weights, but '0.0.weight' is a meta"):
        ef.measure(model, x, transforms=[ef.Rotation(1)])
    assert model.training and model[0][0].weight.is_meta
    model.load_state_dict(circular_net().state_dict(), assign=True)  # what the message says
    got = ef.measure(model, x, transforms=[ef.Rotation(1)])
    want = ef.measure(circular_net(), x, transforms=[ef.Rotation(1)])
    pd.testing.assert_frame_equal(got.points[["point", "channel", "layer"]],
                                  want.points[["point", "channel", "layer"]])


def test_metric_none_or_not_a_list_is_a_clear_error():
    # None was "'NoneType' object is not iterable" (measure and Measurer)
    x = torch.rand(2, 3, 12, 12)
    for metric in (None, 1):
        with pytest.raises(ValueError, match=rf"`metric` to be one of .* or a list of them, but got {metric}"):
            ef.measure(circular_net(), x, transforms=[ef.Rotation(1)], metric=metric)
        with pytest.raises(ValueError, match="`metric` to be one of"):
            Measurer(circular_net(), x, [ef.Rotation(1)], metric=metric)
    # a tuple is a list of metrics: both, each as measured alone
    both = ef.measure(circular_net(), x, transforms=[ef.Rotation(1)], metric=("cosine", "correlation"))
    alone = ef.measure(circular_net(), x, transforms=[ef.Rotation(1)], metric="cosine")
    pd.testing.assert_frame_equal(both.parts[both.parts.metric == "cosine"].reset_index(drop=True),
                                  alone.parts.reset_index(drop=True))


def test_a_state_of_no_image_has_no_report():
    # its report was every score NaN over n_images 0, with no word of why
    x = torch.rand(2, 3, 12, 12)
    m = Measurer(circular_net(), x, [ef.Rotation(1)])
    with pytest.raises(ValueError, match="at least one measured image, but it holds none"):
        m.state.report()
    m.update(x)  # one batch: the report of measure on it
    want = ef.measure(circular_net(), x, transforms=[ef.Rotation(1)])
    pd.testing.assert_frame_equal(m.state.report().parts, want.parts)


def test_images_of_several_sizes_in_different_batches_say_to_resize(tmp_path):
    # one image a batch (or one size a batch): the error was the Measurer's, "measure each input
    # size with a Measurer of its own", which `measure` gives no way to do
    from PIL import Image
    import torchvision.transforms as T

    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    Image.new("RGB", (20, 16)).save(tmp_path / "b.png")
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3)).eval()
    loader = torch.utils.data.DataLoader([torch.rand(3, 16, 16), torch.rand(3, 16, 20)], batch_size=1)
    for images, kw in ((str(tmp_path), {"preprocess": T.ToTensor()}), (loader, {})):
        with pytest.raises(ValueError, match=r"one size after preprocessing, but a batch holds "
                                             r"16x20 images after 16x16 ones: .*resizes and crops") as err:
            ef.measure(net, images, transforms=[ef.Flip("horizontal")], batch_size=1, **kw)
        assert "Measurer" not in str(err.value)
