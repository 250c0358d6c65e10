"""Tests of equifast.training: data sets, augmentations, models, recipes, trainer, studies, CLI.

Real data: Fashion-MNIST idx files in /usr/share/datasets/fashion-mnist (skipped without).
MNIST and CIFAR-10 are not needed: the tests write small files in their on-disk formats (MNIST
idx files, CIFAR-10 pickled batches) so the real loaders run; CIFAR-10 augmentations are checked
on synthetic images.
"""
import errno
import gzip
import json
import os
import re
import struct
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from equifast.training import (KEPT_CLASSES, REMOVED_CLASSES, build_dataset, build_model,
                               get_recipe, list_recipes, train)
from equifast.training.data import (FASHION_MNIST_ROOT, BatchCollate, CIFAR10Dataset,
                                    image_transform, load_fashion_mnist, read_idx)
from equifast.training.studies import STUDIES, plot_study, run_study, summarize
from equifast.training.trainer import load_model
from equifast.warning import EquifastWarning

needs_fmnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_MNIST_ROOT, "train-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST idx files not found")

QUICK = dict(epochs=2, train_subset=512, test_subset=256, batch_size=64, device="cpu")


# ----------------------------------------------------------------------------- data sets
def _write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory):
    """A tiny MNIST in the torchvision layout root/MNIST/raw (plain idx files)."""
    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 50)):
        _write_idx(str(raw / f"{prefix}-images-idx3-ubyte"), rng.integers(0, 256, (n, 28, 28)))
        _write_idx(str(raw / f"{prefix}-labels-idx1-ubyte"), np.arange(n) % 10)
    return str(root)


def test_read_idx_roundtrip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz"):
        _write_idx(str(tmp_path / name), a)
        np.testing.assert_array_equal(read_idx(str(tmp_path / name)), a)
        np.testing.assert_array_equal(read_idx(tmp_path / name), a)  # a Path: AttributeError
    # a cut download: a traceback from gzip (EOFError) or numpy's reshape, without the file
    whole = (tmp_path / "x-idx3-ubyte").read_bytes()
    (tmp_path / "cut-idx3-ubyte").write_bytes(whole[:-5])
    with pytest.raises(ValueError, match=r"24 bytes of data .*cut-idx3-ubyte.* holds 19; re-download"):
        read_idx(str(tmp_path / "cut-idx3-ubyte"))
    (tmp_path / "cut-idx3-ubyte.gz").write_bytes((tmp_path / "x-idx3-ubyte.gz").read_bytes()[:-12])
    with pytest.raises(ValueError, match=r"Could not read the idx file .*cut-idx3-ubyte.gz.*re-download"):
        read_idx(str(tmp_path / "cut-idx3-ubyte.gz"))
    # gzip or not told by the bytes, not the name: a plain file a browser unpacked keeps its
    # ".gz" (BadGzipFile), a gzipped one renamed without it was "its header is b'\x1f\x8b'"; both
    # said to re-download, which got the same file again
    (tmp_path / "unpacked-idx3-ubyte.gz").write_bytes(whole)
    (tmp_path / "renamed-idx3-ubyte").write_bytes((tmp_path / "x-idx3-ubyte.gz").read_bytes())
    for name in ("unpacked-idx3-ubyte.gz", "renamed-idx3-ubyte"):
        np.testing.assert_array_equal(read_idx(tmp_path / name), a)


def test_a_plain_idx_file_cut_short_yields_to_the_whole_gz_beside_it(tmp_path):
    from equifast.training.data import load_mnist
    # torchvision extracts raw/*.gz beside them: an extraction stopped part way left a short
    # plain file, preferred to the intact .gz, and the data set failed to load ("re-download")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (20, 28, 28)), np.arange(20) % 10
    for stem, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        _write_idx(str(tmp_path / (stem + ".gz")), array)
    _write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), labels)  # whole: read, without a word
    _write_idx(str(tmp_path / "t10k-images-idx3-ubyte"), images)
    whole = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(whole[:5000])
    with pytest.warns(UserWarning, match=r"t10k-images-idx3-ubyte' holds 5000 of its 15696 bytes "
                                         r"\(an extraction stopped part way\): read "
                                         r"'t10k-images-idx3-ubyte.gz' beside it"):
        got_images, got_labels = load_mnist(str(tmp_path), train=False)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()  # alone, it is read and said to be cut
    with pytest.raises(ValueError, match=r"Expected 15680 bytes of data .* holds 4984; re-download"):
        load_mnist(str(tmp_path), train=False)


@pytest.mark.parametrize("keep", [0, 3, 10])
def test_a_plain_idx_file_cut_within_its_header_yields_to_the_gz_beside_it(tmp_path, keep):
    from equifast.training.data import load_mnist
    # an extraction stopped before the shape was written (an empty file, most often) hid the
    # .gz as well: "its header is b''", or 10 bytes read as a shape of 0 images
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (20, 28, 28)), np.arange(20) % 10
    for stem, array in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        _write_idx(str(tmp_path / (stem + ".gz")), array)
    _write_idx(str(tmp_path / "t10k-images-idx3-ubyte"), images)
    whole = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(whole[:keep])
    with pytest.warns(UserWarning, match=rf"t10k-images-idx3-ubyte' holds {keep} bytes, not even "
                                         r"its whole header \(an extraction stopped part way\)"):
        got_images, got_labels = load_mnist(str(tmp_path), train=False)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("images, labels, match", [
    # another split's labels: the first images took the test labels (at chance), silently
    ((12, 28, 28), np.arange(10) % 10, r"as many labels as images, but .*images-idx3-ubyte' holds "
                                       r"12 images and .*labels-idx1-ubyte' 10 labels"),
    # more labels than images: numpy's IndexError
    ((8, 28, 28), np.arange(10) % 10, r"holds 8 images and .* 10 labels"),
    # the two files swapped, or one-hot labels: IndexError
    ((10,), np.zeros((10, 28, 28)), r"Expected MNIST images \[N, 28, 28\] in .*images-idx3-ubyte', "
                                    r"but it holds \[10\]"),
    ((10, 28, 28), np.eye(10), r"Expected MNIST labels \[N\] in .*labels-idx1-ubyte', but it holds "
                               r"\[10, 10\]"),
    # another data set's labels (EMNIST's): the images of class 200 were dropped, silently
    ((10, 28, 28), [200] + [2] * 9, r"Expected MNIST labels 0..9 in .*, but it holds 200"),
    # images of another size were taken as they were
    ((10, 32, 32), np.arange(10) % 10, r"images \[N, 28, 28\] in .*, but it holds \[10, 32, 32\]"),
], ids=["fewer-labels", "more-labels", "swapped", "one-hot", "label-200", "32-pixels"])
def test_idx_files_that_do_not_pair_are_refused(tmp_path, images, labels, match):
    rng = np.random.default_rng(0)
    _write_idx(str(tmp_path / "t10k-images-idx3-ubyte"), rng.integers(0, 256, images))
    _write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), labels)
    with pytest.raises(ValueError, match=match + r".*put the MNIST files of one split there"):
        build_dataset("mnist6", str(tmp_path), train=False)


def test_mnist6_from_local_root(fake_mnist):
    ds = build_dataset("mnist6", fake_mnist, train=True)
    original = np.arange(200) % 10
    kept = original[ds.source_index.numpy()]
    assert not np.isin(kept, REMOVED_CLASSES).any()
    assert len(ds) == int(np.isin(original, KEPT_CLASSES).sum())
    # documented mapping (2, 3, 4, 5, 7, 9) -> (0..5)
    np.testing.assert_array_equal(ds.labels.numpy(),
                                  [KEPT_CLASSES.index(c) for c in kept])
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64


@needs_fmnist
def test_fmnist6_variants():
    images, labels = load_fashion_mnist(train=False)
    plain = build_dataset("fmnist6", train=False)
    inv = build_dataset("fmnist6-rot-inv", train=False)
    eq = build_dataset("fmnist6-rot-eq", train=False)
    for ds in (plain, inv, eq):
        src = ds.source_index.numpy()
        assert not np.isin(labels[src], REMOVED_CLASSES).any()
        assert set(ds.labels.tolist()) == set(range(6))
        np.testing.assert_array_equal(ds.labels.numpy(),
                                      [KEPT_CLASSES.index(c) for c in labels[src]])
    assert len(plain) == 6000
    assert (plain.turns == 0).all()
    # Rot-Inv: labels unchanged, images are rot90 of the originals by the recorded turn.
    assert torch.equal(inv.labels, plain.labels)
    assert set(inv.turns.tolist()) == {0, 1, 2, 3}
    for i in range(0, len(inv), 97):
        orig = torch.from_numpy(images[inv.source_index[i].item()].copy())
        assert torch.equal(inv.images[i, 0], torch.rot90(orig, int(inv.turns[i]), dims=(-2, -1)))
    # Rot-Eq: same images, the target carries the applied turn.
    assert torch.equal(eq.images, inv.images) and torch.equal(eq.turns, inv.turns)
    for i in range(0, len(eq), 501):
        x, target = eq[i]
        assert target.tolist() == [eq.labels[i].item(), eq.turns[i].item()]
        assert torch.equal(x, inv[i][0])
    # turns are fixed per image: a subset sees the same turn for the same image
    sub = build_dataset("fmnist6-rot-inv", train=False, subset=100)
    where = {s: i for i, s in enumerate(inv.source_index.tolist())}
    assert all(sub.turns[j] == inv.turns[where[s]] for j, s in enumerate(sub.source_index.tolist()))


def test_missing_root_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-root.*download=True"):
        build_dataset("mnist6", str(tmp_path / "nowhere"))
    # one file of the two: which one is missing is said (it listed both)
    half = tmp_path / "half"
    half.mkdir()
    (half / "t10k-images-idx3-ubyte.gz").write_bytes(b"")  # found before it is read
    with pytest.raises(FileNotFoundError, match=rf"without t10k-labels-idx1-ubyte\[\.gz\] \(beside "
                                                rf"'{re.escape(str(half))}/t10k-images-idx3-ubyte\.gz'\)"):
        build_dataset("fmnist6", str(half), train=False)
    with pytest.raises(ValueError, match="Expected `root` to be the MNIST folder"):
        build_dataset("mnist6-rot-eq", None)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*--data-root"):
        CIFAR10Dataset(str(tmp_path))
    with pytest.raises(ValueError, match="Expected a data set name"):
        build_dataset("mnist7")
    with pytest.raises(ValueError, match=r"`root` \(--data-root\) for CIFAR-10"):
        CIFAR10Dataset(None, download=True)
    # no root at all: it said "got root=None without it"
    with pytest.raises(ValueError, match=r"^Expected a `root` \(--data-root\) for CIFAR-10: a folder "
                                         r"holding cifar-10-batches-py"):
        CIFAR10Dataset(None)


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    # torchvision's own downloads, pointed at a port that refuses (no internet needed or used)
    import torchvision
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:1/"])
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", "http://127.0.0.1:1/cifar-10-python.tar.gz")
    with pytest.raises(FileNotFoundError, match=r"^Could not download MNIST into .*drop --download\.$") as err:
        build_dataset("mnist6", str(tmp_path), download=True)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"^Could not download CIFAR-10 into .*URLError"):
        CIFAR10Dataset(str(tmp_path), download=True)


def test_damaged_cifar10_files_are_not_called_a_failed_download(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"not a pickle")  # an interrupted extraction
    with pytest.raises(FileNotFoundError, match=r"^Could not read CIFAR-10 in .*incomplete or "
                                                r"damaged\. Extract them there again, or pass "
                                                r"--download\.$"):
        CIFAR10Dataset(str(tmp_path))


def test_ray_training_checks_data_and_batch_before_starting(tmp_path):
    ray = pytest.importorskip("ray")
    from equifast.training.ray_train import train_ray

    if ray.is_initialized():
        pytest.skip("a Ray cluster is running: the data may be on its workers only")
    recipe = get_recipe("cnn7-mnist6", data_root=str(tmp_path / "nowhere"), epochs=1)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train_ray(recipe, str(tmp_path / "run"), num_workers=2)
    with pytest.raises(ValueError, match=r"batch size \(128\) to be divisible by `num_workers` "
                                         r"\(3\).*Use 2 or 4 workers"):
        train_ray(recipe, str(tmp_path / "run3"), num_workers=3)
    assert not ray.is_initialized()  # no local cluster was started for a run that cannot go


# ------------------------------------------------------------------------- augmentations
def _pil(seed=0):
    from PIL import Image
    a = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return Image.fromarray(a), a


def test_crop_is_shifted_zero_padded_copy():
    from torchvision.transforms import functional as TF
    torch.manual_seed(0)
    img, _ = _pil()
    base = TF.to_tensor(img)
    padded = torch.nn.functional.pad(base, (4, 4, 4, 4))
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    offsets = set()
    for _ in range(8):
        out = image_transform("crop")(img)
        assert out.shape == (3, 32, 32)
        raw = out * std[:, None, None] + mean[:, None, None]
        hits = [(i, j) for i in range(9) for j in range(9)
                if torch.allclose(raw, padded[:, i:i + 32, j:j + 32], atol=1e-5)]
        assert hits, "crop output is not a window of the 4-pixel zero-padded image"
        offsets.add(hits[0])
    assert len(offsets) > 1


def test_flip_equals_torch_flip_on_some_samples():
    torch.manual_seed(0)
    img, _ = _pil(1)
    plain = image_transform("none")(img)
    outs = [image_transform("flip")(img) for _ in range(12)]
    flipped = [torch.equal(o, torch.flip(plain, dims=(-1,))) for o in outs]
    kept = [torch.equal(o, plain) for o in outs]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_randaugment_and_eval_pipeline():
    torch.manual_seed(0)
    img, _ = _pil(2)
    assert image_transform("randaugment")(img).shape == (3, 32, 32)
    # no augmentation at test time, whatever the name
    assert torch.equal(image_transform("crop", train=False)(img), image_transform("none")(img))
    with pytest.raises(ValueError, match="Expected `augment`"):
        image_transform("mixup")


def test_cutmix_mixes_labels_by_box_area():
    torch.manual_seed(0)
    n = 6
    batch = [(torch.full((3, 32, 32), float(i)), torch.tensor(i)) for i in range(n)]
    collate = BatchCollate("cutmix", num_classes=10, cutmix_prob=1.0)
    mixed = 0
    for _ in range(5):
        x, y = collate(batch)
        assert x.shape == (n, 3, 32, 32) and y.shape == (n, 10)
        torch.testing.assert_close(y.sum(1), torch.ones(n))
        for i in range(n):
            own = (x[i] == i).float().mean().item()
            other = (x[i] == (i - 1) % n).float().mean().item()  # pasted from the rolled batch
            assert own + other == pytest.approx(1.0)
            assert y[i, i].item() == pytest.approx(own, abs=1e-6)
            assert y[i, (i - 1) % n].item() == pytest.approx(other, abs=1e-6)
        mixed += int((y.max(1).values < 1).any())
    assert mixed > 0
    x, y = BatchCollate("none")(batch)
    assert y.tolist() == list(range(n))
    # cutmix_prob 0: the images untouched, their one-hot targets (one kind of target for all)
    x, y = BatchCollate("cutmix", num_classes=10, cutmix_prob=0.0)(batch)
    assert torch.equal(x, torch.stack([b[0] for b in batch]))
    assert torch.equal(y, torch.eye(10)[:n])
    # the default (the CutMix paper's CIFAR setting) mixes about half of the batches
    collate = BatchCollate("cutmix", num_classes=10)
    assert collate.cutmix_prob == 0.5 and collate._cutmix.alpha == 1.0
    kept = sum(torch.equal(collate(batch)[0], x) for _ in range(400))
    assert 160 < kept < 240  # binomial(400, 0.5): 200 +- 10


def test_augmentation_parameters_come_from_the_recipe(monkeypatch):
    from torchvision import transforms as T

    steps = image_transform("randaugment", randaugment=(3, 5)).transforms
    assert (steps[0].num_ops, steps[0].magnitude) == (3, 5)
    default = image_transform("randaugment").transforms[0]
    assert (default.num_ops, default.magnitude) == (2, 9)  # torchvision's defaults
    # torchvision read -3 as bin 28 and failed past 30 only when a magnitude op was drawn
    for bad in ((2, -3), (2, 31), (-1, 9), (2, 9.5), 5, (1, 2, 3)):
        with pytest.raises(ValueError, match=rf"`randaugment` to be \(num_ops, magnitude\).* but got "
                                             rf"{re.escape(repr(bad))}\.$"):
            image_transform("randaugment", randaugment=bad)
    assert image_transform("randaugment", randaugment=[np.int64(0), 30]).transforms[0].magnitude == 30
    assert isinstance(default, T.RandAugment)
    r = get_recipe("resnet44-cutmix", cutmix_prob=0.25, cutmix_alpha=0.5)
    assert (r.cutmix_prob, r.cutmix_alpha, r.randaugment_ops, r.randaugment_magnitude) == \
        (0.25, 0.5, 2, 9)
    for bad in (dict(cutmix_prob=1.5), dict(cutmix_alpha=0), dict(randaugment_magnitude=31),
                dict(randaugment_ops=-1)):
        with pytest.raises(ValueError, match="Expected `(cutmix|randaugment)_"):
            get_recipe("resnet44-cutmix", **bad)
    # a run stored before these fields existed is read with what it did (CutMix on every batch)
    from equifast.training.recipes import Recipe
    old = {k: v for k, v in get_recipe("resnet44-cutmix").to_dict().items()
           if not k.startswith(("cutmix_", "randaugment_"))}
    assert Recipe.from_dict(old).cutmix_prob == 1.0
    assert Recipe.from_dict(get_recipe("resnet44-cutmix").to_dict()).cutmix_prob == 0.5
    # ... so it is another run than today's cutmix recipe; runs of other recipes stay the same
    assert not Recipe.from_dict(old).same_run(get_recipe("resnet44-cutmix"))
    for name in ("cnn7-fmnist6", "resnet44-crop", "resnet44-randaugment"):
        stored = {k: v for k, v in get_recipe(name).to_dict().items()
                  if not k.startswith(("cutmix_", "randaugment_"))}
        assert Recipe.from_dict(stored).same_run(get_recipe(name)), name
    assert not get_recipe("resnet44-randaugment", randaugment_magnitude=5).same_run(
        get_recipe("resnet44-randaugment"))
    # and the trainer hands them to the data: a swap or a default would show here
    from equifast.training import trainer

    class Seen(Exception):
        pass

    seen = {}

    def dataset(name, **kw):
        seen.setdefault("randaugment", kw.get("randaugment"))
        return torch.utils.data.TensorDataset(torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.int64))

    def collate(augment, num_classes, *args, **kw):
        raise Seen(augment, num_classes, args, kw)

    monkeypatch.setattr(trainer, "build_dataset", dataset)
    monkeypatch.setattr(trainer, "BatchCollate", collate)
    recipe = get_recipe("resnet44-cutmix", cutmix_alpha=0.3, cutmix_prob=0.7, randaugment_ops=4,
                        randaugment_magnitude=6, device="cpu")
    with pytest.raises(Seen) as got:
        trainer._fit(recipe, "unused")
    assert seen["randaugment"] == (4, 6)
    assert got.value.args == ("cutmix", 10, (0.3, 0.7), {})


# ---------------------------------------------------------------------------------- models
def test_cnn7_structure_and_heads():
    m = build_model("cnn7", num_classes=6)
    assert [n for n, _ in m.named_children()] == ["stem", "layers", "pool", "head"]
    assert len(m.layers) == 6 and m.head.out_features == 6
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    assert len(convs) == 7 and all(c.out_channels == 20 and c.kernel_size == (3, 3) for c in convs)
    x = torch.randn(2, 1, 28, 28)
    assert m.forward_features(x).shape == (2, 20, 2, 2)
    eq = build_model("cnn7", num_classes=6, num_rotations=4).eval()
    full = eq(x)
    assert full.shape == (2, 10)
    # measured: the class logits are the final point (a rotation permutes the turn logits)
    import equifast as ef
    eq.class_logits_only = True
    assert torch.equal(eq(x), full[:, :6])
    points = ef.split(eq, x)
    assert [p.name for p in points][-2:] == ["pool", "final"]
    pts = ef.measure(eq, torch.rand(2, 1, 28, 28), transforms=[ef.Rotation(1)]).points
    assert list(pts.loc[pts.point == "final", "shape"]) == ["6"]


def test_resnet44_structure_and_widths():
    m = build_model("resnet44")
    assert [n for n, _ in m.named_children()] == ["stem", "layer1", "layer2", "layer3", "pool",
                                                  "head"]
    assert [len(m.layer1), len(m.layer2), len(m.layer3)] == [7, 7, 7]
    assert len(m.point_names()) == 22
    assert sum(p.numel() for p in m.parameters()) == 658_586  # ResNet-44 (option A): 0.66M
    for w in (1, 2):
        mw = build_model("resnet44", width=w)
        assert mw.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 64 * w, 8, 8)
    with pytest.raises(ValueError, match="Expected `name`"):
        build_model("vgg")
    # the name fixes the depth: Python's "got multiple values for keyword argument 'depth'"
    from equifast.training.models import ResNet, WideResNet
    for name, cls, depth in (("resnet44", ResNet, 44), ("wrn40", WideResNet, 40)):
        with pytest.raises(ValueError, match=rf"^Expected no `depth` for '{name}', whose depth is "
                                             rf"{depth}, but got depth=20; build .*"
                                             rf"models\.{cls.__name__}\(depth=\.\.\.\)"):
            build_model(name, depth=20)
        assert sum(p.numel() for p in cls(depth=depth - 24).parameters()) < sum(
            p.numel() for p in build_model(name).parameters())  # the way it names


def test_wrn40_structure_widths_and_parts():
    import equifast as ef

    # Zagoruyko & Komodakis, table 1: WRN-40-1, 2, 4, 8 have 0.6M, 2.2M, 8.9M, 35.7M parameters
    for k, millions in ((1, 0.6), (2, 2.2), (4, 8.9), (8, 35.7)):
        m = build_model("wrn40", width=k)
        assert round(sum(p.numel() for p in m.parameters()) / 1e6, 1) == millions
    m = build_model("wrn40", width=2).eval()
    assert [len(m.layer1), len(m.layer2), len(m.layer3)] == [6, 6, 6]
    shortcuts = [n for n, b in m.named_modules() if getattr(b, "shortcut", None) is not None]
    assert shortcuts == ["layer1.0", "layer2.0", "layer3.0"]  # 1x1 convs where the shape changes
    assert m.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 128, 8, 8)
    # parts: the stem and 18 blocks before pooling, in three groups of one resolution each
    points = ef.split(m, torch.rand(1, 3, 32, 32))
    assert [p.name for p in points] == m.point_names() + ["pool", "final"]
    sizes = {p.part: set() for p in points}
    modules = dict(m.named_modules())
    hooks = [modules[p.name].register_forward_hook(
        lambda mod, i, out, part=p.part: sizes[part].add(tuple(out.shape[2:])))
        for p in points if p.part in ("early", "middle", "late")]
    m(torch.rand(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sizes == {"early": {(32, 32)}, "middle": {(16, 16)}, "late": {(8, 8)}, "pool": set(),
                     "final": set()}
    assert [p.part for p in points].count("early") == 7
    from equifast.training.models import ResNet, WideResNet
    for net, depth in ((WideResNet, 41), (WideResNet, 0), (ResNet, 0)):  # 0 is no default
        with pytest.raises(ValueError, match="6n\\+[24]"):
            net(depth=depth)


# --------------------------------------------------------------------------------- recipes
def test_recipes_follow_tables():
    names = list_recipes()
    for ds in ("mnist6", "mnist6-rot-inv", "mnist6-rot-eq", "fmnist6", "fmnist6-rot-inv",
               "fmnist6-rot-eq"):
        r = get_recipe(f"cnn7-{ds}")
        assert (r.optimizer, r.lr, r.weight_decay, r.epochs, r.milestones, r.batch_size) == \
            ("adam", 0.01, 5e-4, 100, (25, 50), 128)
    for n in ["resnet44-" + a for a in ("none", "crop", "flip", "cutmix", "randaugment")] + \
            [f"resnet44-w{w}" for w in (1, 2, 4, 8)]:
        r = get_recipe(n)
        assert n in names
        assert (r.optimizer, r.lr, r.momentum, r.weight_decay, r.epochs, r.milestones,
                r.batch_size) == ("sgd", 0.1, 0.9, 1e-4, 200, (100, 150), 128)
    for w in (1, 2, 4, 8):  # the thesis: WideResNet-40 "same as ... (Table 2)"
        r, same = get_recipe(f"wrn40-w{w}"), get_recipe(f"resnet44-w{w}")
        assert (r.model, r.width) == ("wrn40", w)
        assert r.to_dict() == {**same.to_dict(), "name": r.name, "model": "wrn40"}
    assert get_recipe("resnet44-w4").width == 4 and get_recipe("resnet44-cutmix").augment == "cutmix"
    # tables 1 and 2: "Weight Decay epochs" and "factor 10.0" are the learning-rate drops (the
    # L2 reg. row is the weight decay): lr / 10 at those epochs
    for n in names:
        assert get_recipe(n).gamma == 0.1, n
        # sections 4.2.1 and 4.2.2: "2000 images from the validation set"
        assert get_recipe(n).measure_images == 2000, n
    # 4.2.1: MNIST6 and its Rot-Inv and Rot-Eq variants; 4.2.2: ResNet-44 on CIFAR-10, one
    # augmentation each, beside none (figure 8: "with no data augmentations")
    assert [get_recipe(f"cnn7-mnist6{v}").dataset for v in ("", "-rot-inv", "-rot-eq")] == \
        ["mnist6", "mnist6-rot-inv", "mnist6-rot-eq"]
    for aug in ("none", "crop", "flip", "cutmix", "randaugment"):
        r = get_recipe(f"resnet44-{aug}")
        assert (r.model, r.width, r.dataset, r.augment) == ("resnet44", 1, "cifar10", aug)
    with pytest.raises(ValueError, match="Expected recipe fields"):
        get_recipe("cnn7-mnist6", epoch=3)
    with pytest.raises(ValueError, match="Expected a recipe name"):
        get_recipe("cnn8")
    for bad in ((5, 5), (6, 3), (0, 3), (-1,)):  # MultiStepLR: a repeat drops twice, 0 never
        with pytest.raises(ValueError, match="increasing epochs >= 1"):
            get_recipe("cnn7-mnist6", milestones=bad)


# --------------------------------------------------------------------------------- trainer
def test_train_says_what_it_takes(tmp_path):
    # a recipe's name: "'str' object has no attribute 'device'"; no folder: os.fspath's TypeError
    with pytest.raises(TypeError, match=r"`recipe` to be a Recipe \(get_recipe\('cnn7-fmnist6'\) for"):
        train("cnn7-fmnist6", str(tmp_path / "run"))
    for bad in (None, ""):
        with pytest.raises(TypeError, match="`out_dir` to be the path of a run folder"):
            train(get_recipe("cnn7-fmnist6", epochs=1), bad)
    assert not (tmp_path / "run").exists()


def test_missing_gpu_fails_before_the_run_folder(tmp_path):
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    with pytest.raises(ValueError, match="CUDA device"):
        train(get_recipe("cnn7-fmnist6", epochs=1, device=missing), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_damaged_or_unfinished_run_is_said_so(tmp_path):
    # an unfinished run was measured as if trained; a cut checkpoint gave a zip-reader traceback
    from equifast.training.trainer import build_model_for
    from equifast.warning import EquifastWarning
    recipe = get_recipe("cnn7-fmnist6", epochs=5)
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    with pytest.raises(FileNotFoundError, match="trained weights .* but it has none"):
        load_model(str(run))
    net = build_model_for(recipe)
    torch.save({"epoch": 1, "model": net.state_dict()}, run / "checkpoint.pt")
    with pytest.warns(EquifastWarning, match=r"unfinished \(epoch 1 of 5\): its latest checkpoint"):
        loaded = load_model(str(run))
    for a, b in zip(loaded.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)
    # a device this machine lacks, or none at all, was "damaged: train the run again"
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    for where, said in ((missing, "CUDA device"), ("bogus", "a device like")):
        with pytest.raises(ValueError, match=said):
            load_model(str(run), map_location=where)
    whole = (run / "checkpoint.pt").read_bytes()
    # cut, half, junk, and bytes unpickling reads as other errors (KeyError, struct.error, an
    # OSError "Invalid argument" naming no file)
    for damaged in (whole[:300], whole[:len(whole) // 2], b"junk\n", b"h\x05", b"\x80\x02j"):
        (run / "checkpoint.pt").write_bytes(damaged)
        with pytest.raises(ValueError, match=r"Could not read the run file .*checkpoint.pt.*damaged"):
            load_model(str(run))
    (run / "recipe.json").write_text("{'cut")
    with pytest.raises(ValueError, match=r"Could not read the run file .*recipe.json.*JSONDecodeError"):
        load_model(str(run))


@needs_fmnist
def test_a_torch_file_that_is_no_checkpoint_is_said_so(tmp_path):
    # model.pt copied over checkpoint.pt (a state_dict: loads, but holds no epoch) failed with a
    # bare KeyError 'model' on resuming and KeyError 'epoch' in load_model
    recipe = get_recipe("cnn7-fmnist6", epochs=1, train_subset=32, test_subset=8, device="cpu")
    run = tmp_path / "run"
    train(recipe, str(run))
    weights = (run / "model.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(weights)
    (run / "result.json").unlink()
    (run / "model.pt").unlink()
    said = r"Could not read the run file .*checkpoint.pt.* \(KeyError: 'epoch'\): it is damaged"
    with pytest.raises(ValueError, match=said):
        train(recipe, str(run))
    with pytest.raises(ValueError, match=said):
        load_model(str(run))
    assert (run / "checkpoint.pt").read_bytes() == weights  # the user's file is left as it was
    torch.save([torch.zeros(1)], run / "checkpoint.pt")  # not even a dict
    with pytest.raises(ValueError, match=r"checkpoint.pt.* \(TypeError: a list, not a dict\)"):
        load_model(str(run))


@needs_fmnist
def test_a_result_json_that_is_no_result_is_said_so(tmp_path):
    # JSON, but not a run's result (a key missing, a list): a bare KeyError or TypeError
    recipe = get_recipe("cnn7-fmnist6", epochs=1, train_subset=32, test_subset=8, device="cpu")
    run = tmp_path / "run"
    first = train(recipe, str(run))
    stored = json.loads((run / "result.json").read_text())
    assert train(recipe, str(run)).test_acc == stored["test_acc"] == first.test_acc
    for key in ("recipe", "epochs", "test_acc"):
        (run / "result.json").write_text(json.dumps({k: v for k, v in stored.items() if k != key}))
        with pytest.raises(ValueError, match=rf"run file .*result.json.* \(KeyError: '{key}'\): "
                                             "it is damaged"):
            train(recipe, str(run))
    (run / "result.json").write_text("[1]")
    with pytest.raises(ValueError, match=r"run file .*result.json.* \(TypeError: .*\): it is damaged"):
        train(recipe, str(run))


@needs_fmnist
def test_short_real_run_learns(tmp_path):
    recipe = get_recipe("cnn7-fmnist6", epochs=2, train_subset=2000, test_subset=2000,
                        device="cpu")
    result = train(recipe, str(tmp_path))
    assert result.test_acc > 0.5, result.metrics  # chance is 1/6
    for name in ("checkpoint.pt", "metrics.csv", "model.pt", "result.json", "recipe.json"):
        assert (tmp_path / name).is_file()
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics.columns) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc",
                                     "lr", "seconds"]
    assert metrics["epoch"].tolist() == [1, 2]
    assert json.loads((tmp_path / "result.json").read_text())["test_acc"] == result.test_acc
    model = load_model(str(tmp_path))
    assert not model.training
    # a finished run is reused, not retrained
    stamp = os.stat(tmp_path / "checkpoint.pt").st_mtime_ns
    again = train(recipe, str(tmp_path))
    assert again.test_acc == result.test_acc and again.resumed_from == 2
    assert os.stat(tmp_path / "checkpoint.pt").st_mtime_ns == stamp


class _Crash(RuntimeError):
    pass


@needs_fmnist
def test_resume_after_crash_equals_uninterrupted(tmp_path, same_run):
    recipe = get_recipe("cnn7-fmnist6-rot-eq", **QUICK)
    straight = train(recipe, str(tmp_path / "straight"))

    def crash(epoch, row):
        if epoch == 1:
            raise _Crash("simulated crash after epoch 1")

    with pytest.raises(_Crash):
        train(recipe, str(tmp_path / "crashed"), callback=crash)
    assert not (tmp_path / "crashed" / "result.json").exists()
    with pytest.raises(FileExistsError, match=r"`out_dir` \(--out\) .* resume=True"):
        train(recipe, str(tmp_path / "crashed"), resume=False)
    resumed = train(recipe, str(tmp_path / "crashed"))
    assert resumed.resumed_from == 1 and resumed.epochs == 2

    same_run(tmp_path / "straight", tmp_path / "crashed")
    # Rot-Eq reports class and rotation accuracy
    assert straight.test_rot_acc is not None and 0 <= straight.test_rot_acc <= 1
    assert resumed.test_rot_acc == straight.test_rot_acc


class _FullDisk:
    """A file on a disk that fills up after ``room`` bytes."""

    def __init__(self, fh, room):
        self.fh, self.room = fh, room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


@needs_fmnist
def test_a_full_disk_while_checkpointing_is_an_os_error_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    # torch.save reported it as "RuntimeError: [enforce fail at inline_container.cc] unexpected
    # pos": a long traceback instead of equifast's one-line error
    import builtins

    from equifast.training.trainer import CHECKPOINT

    def disk_fills(epoch, row):
        if epoch == 1:
            real = builtins.open
            monkeypatch.setattr("equifast._io.open", lambda f, mode="r", *a, **k: (
                _FullDisk(real(f, mode, *a, **k), 1000) if "w" in mode else real(f, mode, *a, **k)),
                raising=False)

    recipe = get_recipe("cnn7-fmnist6", **QUICK)
    with pytest.raises(OSError, match="No space left on device: .*checkpoint.pt") as err:
        train(recipe, str(tmp_path), callback=disk_fills)
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "tb") == [
        "checkpoint.pt", "metrics.csv", "recipe.json"]  # no temporary file left
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 1  # epoch 1's, whole
    assert train(recipe, str(tmp_path)).resumed_from == 1


def test_a_schedule_the_run_never_reaches_is_said_before_it_trains(tmp_path):
    from equifast.training.trainer import start_lines

    # --epochs 5 kept the recipe's milestones 25 and 50: a constant learning rate, silently
    assert start_lines(get_recipe("cnn7-fmnist6", epochs=5), str(tmp_path)) == [
        "the learning rate stays at 0.01: milestones [25, 50] lie past the last epoch (5); "
        "--milestones shortens the schedule"]
    assert start_lines(get_recipe("cnn7-fmnist6", epochs=30), str(tmp_path)) == [
        "the learning rate stays at 0.001 after epoch 25: milestones [50] lie past the last epoch "
        "(30); --milestones shortens the schedule"]
    for epochs, milestones in ((51, (25, 50)), (5, (2, 4)), (5, ())):
        assert start_lines(get_recipe("cnn7-fmnist6", epochs=epochs, milestones=milestones),
                           str(tmp_path)) == []


def test_a_killed_writes_temporary_file_is_removed_when_the_run_continues(tmp_path):
    import subprocess
    import sys

    from equifast.training.trainer import prepare_out_dir

    recipe = get_recipe("cnn7-fmnist6", epochs=1, device="cpu")
    assert prepare_out_dir(recipe, str(tmp_path)) is None
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f".checkpoint.pt.{int(gone.stdout)}.0123abcd.tmp"  # kill -9 mid-write
    alive = tmp_path / f".checkpoint.pt.{os.getpid()}.4567cdef.tmp"  # a run writing now
    mine = tmp_path / ".notes.txt.1.89abcdef.tmp"  # not a run file's
    for p in (dead, alive, mine):
        p.write_bytes(b"half a checkpoint")
    assert prepare_out_dir(recipe, str(tmp_path)) is None
    assert not dead.exists() and alive.exists() and mine.exists()


@needs_fmnist
def test_out_dir_protection(tmp_path):
    recipe = get_recipe("cnn7-fmnist6", **{**QUICK, "epochs": 1})
    first = train(recipe, str(tmp_path))
    with pytest.raises(ValueError, match="overwrite=True"):
        train(recipe.replace(lr=0.1), str(tmp_path))
    # harmless fields (device, data_root) may differ
    again = train(recipe.replace(data_root=FASHION_MNIST_ROOT), str(tmp_path))
    assert again.test_acc == first.test_acc
    redone = train(recipe.replace(lr=0.001), str(tmp_path), overwrite=True)
    assert redone.resumed_from == 0 and redone.recipe.lr == 0.001


def _finished_run(folder, recipe):
    """A finished run's files (their contents are not read before training starts)."""
    from equifast.training.trainer import CHECKPOINT, METRICS, MODEL, RECIPE, RESULT
    folder.mkdir()
    (folder / RECIPE).write_text(json.dumps(recipe.to_dict()))
    for name in (CHECKPOINT, METRICS, MODEL, RESULT):
        (folder / name).write_text(f"the finished run's {name}")
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(tmp_path):
    # --overwrite deleted the finished run, then found the data missing: the run was lost
    recipe = get_recipe("cnn7-fmnist6", epochs=1, device="cpu")
    before = _finished_run(tmp_path / "run", recipe)
    with pytest.raises(FileNotFoundError):
        train(recipe.replace(data_root=str(tmp_path / "missing")), str(tmp_path / "run"),
              overwrite=True)
    assert {p.name: p.read_text() for p in (tmp_path / "run").iterdir()} == before


def test_overwrite_deletes_ray_trains_storage_of_the_old_run(tmp_path):
    # train_ray's default storage (out/ray) outlived --overwrite: the old run's Ray logs and
    # results stayed beside the new run's; the user's own files stay
    from equifast.training.trainer import prepare_out_dir

    recipe = get_recipe("cnn7-fmnist6", epochs=1, device="cpu")
    run = tmp_path / "run"
    _finished_run(run, recipe)
    (run / "ray" / "equifast-cnn7-fmnist6").mkdir(parents=True)
    (run / "ray" / "equifast-cnn7-fmnist6" / "result.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    assert prepare_out_dir(recipe, str(run), overwrite=True) is None
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "recipe.json"]
    assert (run / "notes.txt").read_text() == "mine"


def test_resuming_with_other_workers_or_device_warns(tmp_path):
    from equifast.training.trainer import CHECKPOINT, prepare_out_dir

    recipe = get_recipe("resnet44-flip", num_workers=0)
    assert prepare_out_dir(recipe, str(tmp_path)) is None
    (tmp_path / CHECKPOINT).write_bytes(b"")  # an unfinished run (only its presence counts here)
    with pytest.warns(UserWarning, match="another num_workers.*not be bitwise"):
        prepare_out_dir(recipe.replace(num_workers=2), str(tmp_path))


def test_a_folder_that_is_not_a_run_is_never_written(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.pt").write_text("my own model")
    recipe = get_recipe("cnn7-fmnist6", epochs=1)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"run folder .* or empty, but it holds other "
                                                  r"files: \['model.pt'\]"):
            train(recipe, str(mine), overwrite=overwrite)
    assert (mine / "model.pt").read_text() == "my own model"
    assert sorted(p.name for p in mine.iterdir()) == ["model.pt"]
    # a recipe.json of the user's own made the folder a run's: model.pt replaced, and with
    # overwrite every file of the run's names deleted
    for text in ('{"dish": "pasta"}', "not json", json.dumps({**recipe.to_dict(), "epochs": None})[:40]):
        (mine / "recipe.json").write_text(text)
        for overwrite in (False, True):
            with pytest.raises(FileExistsError, match=r"holds other files: \['model.pt', 'recipe.json'\] "
                                                      r"\(its recipe.json does not mark a run folder\)"):
                train(recipe, str(mine), overwrite=overwrite)
        assert (mine / "recipe.json").read_text() == text
    assert (mine / "model.pt").read_text() == "my own model"


def test_bad_recipe_values_are_refused_before_the_run_folder(tmp_path):
    for bad in ({"train_subset": 0}, {"test_subset": -3}, {"measure_images": 0}, {"lr": -1.0},
                {"lr": float("nan")}, {"lr": float("inf")}, {"gamma": -0.1}, {"gamma": 0.0},
                {"momentum": 1.0}, {"momentum": -0.5}, {"weight_decay": -5e-4},
                {"weight_decay": float("nan")}, {"seed": -1}, {"seed": 10**20},
                {"data_seed": -1}, {"num_workers": -1},
                # past float32's range: a RuntimeError traceback from Adam's first step
                {"lr": 1e38}, {"weight_decay": 1e39}):
        with pytest.raises(ValueError, match=rf"Expected `{next(iter(bad))}`"):
            get_recipe("cnn7-fmnist6", **bad)
    # another type than declared: epochs="2" passed the checks, then failed in the first epoch
    for bad, said in (({"epochs": "2"}, "an int, but got '2'"), ({"batch_size": 2.5}, "an int"),
                      ({"download": "yes"}, "a bool"), ({"lr": True}, "a float"),
                      ({"test_subset": 1.0}, "an int or None"), ({"data_root": 3}, "a str or None")):
        with pytest.raises(TypeError, match=rf"^Expected `{next(iter(bad))}` to be {said}"):
            get_recipe("cnn7-fmnist6", **bad)
    assert get_recipe("cnn7-fmnist6", lr=1, data_root=tmp_path).data_root == str(tmp_path)
    # NumPy's numbers (a setting read from a table) are counts and rates, kept as Python's (JSON)
    numpy = get_recipe("cnn7-fmnist6", epochs=np.int64(2), lr=np.float32(0.5), batch_size=np.int32(8))
    assert numpy == get_recipe("cnn7-fmnist6", epochs=2, lr=0.5, batch_size=8)
    assert (type(numpy.epochs), type(numpy.lr)) == (int, float)
    json.dumps(numpy.to_dict())
    with pytest.raises(TypeError, match=r"^Expected `epochs` to be an int"):
        get_recipe("cnn7-fmnist6", epochs=np.float64(2))
    # a string's characters or floats were read as other epochs: "59" as 5 and 9
    for bad in ("59", (99.9, 150.5), (True,), 3):  # 3: "'int' object is not iterable"
        with pytest.raises(TypeError, match="`milestones` to be a sequence of int epochs"):
            get_recipe("resnet44-crop", milestones=bad)
    assert get_recipe("resnet44-crop", milestones=[np.int64(3), 7]).milestones == (3, 7)
    # Adam has no momentum: a momentum given with it was silently ignored
    with pytest.raises(ValueError, match=r"Expected `momentum` 0 with optimizer 'adam'.*got 0.9"):
        get_recipe("cnn7-fmnist6", momentum=0.9)
    with pytest.raises(ValueError, match=r"Expected `momentum` 0 with optimizer 'adam'"):
        get_recipe("resnet44-crop", optimizer="adam")  # the recipe's SGD momentum 0.9
    assert get_recipe("resnet44-crop", optimizer="adam", momentum=0).optimizer == "adam"
    # CNN7 has one width: width=4 trained the same network, recorded as another run
    with pytest.raises(ValueError, match="`width` 1 for model 'cnn7'"):
        get_recipe("cnn7-fmnist6", width=4)
    assert get_recipe("resnet44-crop", width=2).width == 2
    # only CNN7 has the turn head: ResNet-44 trained a 6-way head on turn targets, then failed
    with pytest.raises(ValueError, match="model 'cnn7' for the Rot-Eq data set"):
        get_recipe("resnet44-crop", dataset="fmnist6-rot-eq")


def test_cli_errors_name_the_flags_typed(tmp_path, capsys):
    from equifast.training.cli import main
    for argv, said in ((["train", "cnn7-fmnist6", "--subset", "0"], "Expected --subset to be >= 1"),
                       (["train", "cnn7-fmnist6", "--batch-size", "0"], "Expected --batch-size"),
                       (["train", "cnn7-fmnist6", "--milestones", "3", "2"], "Expected --milestones"),
                       (["train", "cnn7-fmnist6", "--seed", "99999999999999999999"],
                        "Expected --seed to be an integer in 0..4294967295"),
                       (["study", "objective-fashion", "--seeds", "0", "-1"], "Expected --seeds"),
                       (["study", "objective-fashion", "--test-subset", "0"], "Expected --test-subset"),
                       # Ray workers: train_ray's `num_workers` is --workers on the command line;
                       # a study refused it only at its first run, its folder claimed
                       (["train", "cnn7-fmnist6", "--batch-size", "6", "--workers", "4"],
                        "batch size (6) to be divisible by --workers (4): each worker trains on "
                        "an equal share of it. Use 2 or 3 workers."),
                       (["study", "objective-fashion", "--workers", "3"],
                        "batch size (128) to be divisible by --workers (3)"),
                       # a study claimed its folder, then refused at its first run
                       (["study", "objective-fashion", "--workers", "2", "--gpu", "--device", "cpu"],
                        "Expected use_gpu=False (--gpu left out) for the recipe's device 'cpu'")):
        with pytest.raises(SystemExit) as exit_:
            main(argv + ["--out", str(tmp_path / "never")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and said in err and "`" not in err, err
    assert not (tmp_path / "never").exists()


def test_digits_dataset_takes_uint8_pixels_and_refuses_others(fake_mnist):
    # float images in [0, 1] were divided by 255 again: silently near black
    from equifast.training.data import DigitsDataset, load_mnist

    images, labels = load_mnist(fake_mnist, train=False)
    ds = DigitsDataset(torch.from_numpy(images.copy()), list(labels))  # torchvision's MNIST holds tensors
    keep = np.flatnonzero(np.isin(labels, KEPT_CLASSES))
    want = (torch.from_numpy(images[keep]).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(torch.stack([ds[i][0][0] for i in range(len(ds))]), want)
    assert [int(ds[i][1]) for i in range(len(ds))] == [KEPT_CLASSES.index(v) for v in labels[keep]]
    for bad, match in ((images / 255, r"`images` to be uint8 \[N, H, W\].* got float64 of shape"),
                       (images[:, None], r"got uint8 of shape \[50, 1, 28, 28\]")):
        with pytest.raises(ValueError, match=match):
            DigitsDataset(bad, labels)
    with pytest.raises(ValueError, match=r"`labels` to be \[N\] classes, one per image \(50\)"):
        DigitsDataset(images, labels[:-1])
    # labels of another data set (EMNIST's 0..46, one-based, -1): dropped as removed classes
    for wrong, first in ((np.where(labels == 3, 12, labels), 12), (labels - 1, -1), (labels + 0.5, 0.5)):
        outside = int(np.sum(~np.isin(wrong, np.arange(10))))
        with pytest.raises(ValueError, match=rf"`labels` to be the classes 0..9 .* but got "
                                             rf"{re.escape(repr(first))} \({outside} of 50"):
            DigitsDataset(images, wrong)
    as_floats = DigitsDataset(images, labels.astype(np.float32))  # whole numbers: the classes
    torch.testing.assert_close(as_floats.labels, ds.labels)


def test_a_subset_larger_than_the_data_says_all_are_used():
    from equifast.training.data import DigitsDataset

    images, labels = np.zeros((20, 28, 28), np.uint8), np.arange(20) % 10  # 12 of the 6 kept classes
    with pytest.warns(EquifastWarning, match="A subset of 50 images was asked of 12; all 12 are used") as ws:
        assert len(DigitsDataset(images, labels, subset=50)) == 12
    assert [w.filename for w in ws] == [__file__]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(DigitsDataset(images, labels, subset=12)) == 12
        assert len(DigitsDataset(images, labels, subset=5)) == 5


@pytest.mark.parametrize("bad", [0, -2, 2.5, "3"])
def test_image_counts_of_the_data_sets_are_checked_as_integers(fake_mnist, bad):
    # 0 failed in torch.stack ("stack expects a non-empty TensorList"), 2.5 in numpy's slicing
    from equifast.training import measure_images
    with pytest.raises(ValueError, match=rf"^Expected `n_images` to be an integer >= 1, but got "
                                         rf"{re.escape(repr(bad))}\.$"):
        measure_images("mnist6", fake_mnist, n_images=bad)
    with pytest.raises(ValueError, match=rf"^Expected `subset` to be an integer >= 1 \(or None: "
                                         rf"all images\), but got {re.escape(repr(bad))}\.$"):
        build_dataset("mnist6", fake_mnist, subset=bad)


@pytest.mark.parametrize("bad", [-1, 2.5, "3", None])
def test_data_seeds_of_the_data_sets_are_checked_as_integers(fake_mnist, bad):
    # numpy's generators said "expected non-negative integer" or "seed must be integer", of no
    # argument; CIFAR-10's only with a subset (it draws nothing else)
    from equifast.training import measure_images
    from equifast.training.data import DigitsDataset, load_mnist
    want = rf"^Expected `data_seed` to be an integer >= 0, but got {re.escape(repr(bad))}\.$"
    with pytest.raises(ValueError, match=want):
        measure_images("mnist6-rot-inv", fake_mnist, n_images=2, data_seed=bad)
    with pytest.raises(ValueError, match=want):
        build_dataset("mnist6", fake_mnist, subset=3, data_seed=bad)
    images, labels = load_mnist(fake_mnist, train=False)
    with pytest.raises(ValueError, match=want):
        DigitsDataset(images, labels, rotate=True, data_seed=bad)


def test_image_counts_of_numpy_are_taken_as_ints(fake_mnist):
    from equifast.training import measure_images
    from equifast.training.data import DigitsDataset, load_mnist

    test = DigitsDataset(*load_mnist(fake_mnist, train=False))  # every image of the split
    images, labels = measure_images("mnist6", fake_mnist, n_images=np.int64(3), labels=True)
    assert torch.equal(images, torch.stack([test[i][0] for i in range(3)]))
    assert labels.tolist() == [int(test[i][1]) for i in range(3)]
    assert torch.equal(build_dataset("mnist6", fake_mnist, subset=np.int64(4)).images,
                       build_dataset("mnist6", fake_mnist, subset=4).images)


@needs_fmnist
def test_a_subset_warning_names_the_callers_line_through_build_dataset():
    # stacklevel=3 named build_dataset's line in training/data.py
    with pytest.warns(EquifastWarning, match=r"A subset of 1000000 images was asked of \d+; all") as ws:
        build_dataset("fmnist6", FASHION_MNIST_ROOT, train=False, subset=10**6)
    assert [w.filename for w in ws] == [__file__]


def test_a_run_that_never_started_does_not_block_the_corrected_one(tmp_path):
    from equifast.training.trainer import CHECKPOINT, prepare_out_dir

    recipe = get_recipe("cnn7-fmnist6", epochs=1)
    assert prepare_out_dir(recipe.replace(lr=0.5), str(tmp_path)) is None  # then it failed
    assert prepare_out_dir(recipe, str(tmp_path)) is None  # nothing was trained: no conflict
    (tmp_path / CHECKPOINT).write_bytes(b"")  # now an epoch was: the run is protected
    with pytest.raises(ValueError, match="overwrite=True"):
        prepare_out_dir(recipe.replace(lr=0.5), str(tmp_path))


# --------------------------------------------------------------------------------- studies
def test_study_checks_its_arguments_and_folder_before_training(tmp_path):
    from equifast.training.studies import measure_study

    out = tmp_path / "study"
    for kwargs, match in (({"n_images": 0}, "n_images"), ({"n_images": -1}, "n_images"),
                          ({"seeds": [0, 0]}, "distinct seeds")):
        with pytest.raises(ValueError, match=match):
            run_study("objective-fashion", str(out), **{"seeds": [0], **kwargs})
        with pytest.raises(ValueError, match=match):
            measure_study("objective-fashion", str(out), **{"seeds": [0], **kwargs})
    # each run's own seed replaced it: seed 0 was trained, not 5, without a word
    with pytest.raises(ValueError, match=r"^Expected the seeds of a study in `seeds` \(--seeds\), "
                                         r"but got overrides=\{'seed': 5\}"):
        run_study("objective-fashion", str(out), seeds=[0],
                  overrides={"seed": 5, "data_root": str(tmp_path / "no-data")})
    for workers in (0, -1, 1.5, "2"):  # 0 and -1 trained in this process, as 1 does
        with pytest.raises(ValueError, match=r"^Expected `workers` \(--workers\) to be an integer "
                                             r">= 1, but got "):
            run_study("objective-fashion", str(out), seeds=[0], workers=workers,
                      overrides={"data_root": str(tmp_path / "no-data")})
    assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.csv").write_text("my own table")  # a name the study's tables take
    with pytest.raises(FileExistsError, match=r"^Expected `out` \(--out\) .* study folder .* holds other files: \[.summary.csv.\]\. Use another `out` \(--out\)\."):
        run_study("objective-fashion", str(mine), seeds=[0])
    assert sorted(p.name for p in mine.iterdir()) == ["summary.csv"]
    assert (mine / "summary.csv").read_text() == "my own table"


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_study_refuses_overrides_of_the_field_that_tells_its_settings_apart(tmp_path, name):
    # overrides={"dataset": "fmnist6"} trained the objective study's three settings all on plain
    # FMNIST6, each under its own label (Rot-Inv, Rot-Eq): identical rows read as three objectives
    from equifast.training.studies import measure_study

    study = STUDIES[name]
    recipes = [get_recipe(r).to_dict() for _, r in study.settings]
    apart = [f for f in recipes[0] if f != "name" and len({str(r[f]) for r in recipes}) > 1]
    assert apart  # the thesis' factor: dataset (objective), augment, width
    for field in apart:
        value = recipes[0][field]
        # what the override did: every setting the first one's recipe
        same = [get_recipe(r, **{field: value}).to_dict() for _, r in study.settings]
        assert all({**d, "name": ""} == {**same[0], "name": ""} for d in same)
        for call in (run_study, measure_study):
            with pytest.raises(ValueError, match=rf"^Expected `overrides` not to set '{field}', "
                                                 rf"which tells the settings of study '{name}' apart"):
                call(name, str(tmp_path / "study"), seeds=[0],
                     overrides={field: value, "data_root": str(tmp_path / "no-data")})
    assert not (tmp_path / "study").exists()


def test_study_folder_that_cannot_be_made_is_named_as_out(tmp_path):
    # a path under a file failed in mkdir with a bare "[Errno 20] Not a directory: ..."
    afile = tmp_path / "afile"
    afile.write_text("mine")
    out = afile / "study"
    with pytest.raises(NotADirectoryError) as made:  # what mkdir itself says of that path
        out.mkdir(parents=True)
    with pytest.raises(OSError, match=r"^Cannot create `out` \(--out\) " + re.escape(repr(str(out)))
                       + r" \(" + re.escape(made.value.strerror) + r"\)\.$"):
        run_study("objective-fashion", str(out), seeds=[0], measure=False,
                  overrides={**QUICK, "epochs": 1, "train_subset": 64, "test_subset": 64})
    assert afile.read_text() == "mine"


def test_study_folder_a_live_study_writes_to_is_refused_and_its_lock_released(tmp_path):
    # two studies in one folder at once both trained its runs and each committed its tables
    # over the other's: the second is refused while the first holds the folder's lock
    import socket
    import subprocess
    import sys
    out = tmp_path / "study"
    tiny = {**QUICK, "epochs": 1, "train_subset": 64, "test_subset": 64}
    run_study("objective-fashion", str(out), seeds=[0], measure=False, overrides=tiny)
    lock = out / ".equifast-study.lock"
    assert json.loads((out / "study.json").read_text()) == {"study": "objective-fashion"}
    assert not lock.exists()  # released when the study returned
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid}))
        for overwrite in (False, True):
            with pytest.raises(BlockingIOError, match=f"no other study writing to .*pid {other.pid}"):
                run_study("objective-fashion", str(out), seeds=[0], measure=False,
                          overrides=tiny, overwrite=overwrite)
        # an empty folder (its study.json not yet written) is refused too, and left empty
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        (fresh / lock.name).write_text(lock.read_text())
        with pytest.raises(BlockingIOError, match=f"pid {other.pid}"):
            run_study("objective-fashion", str(fresh), seeds=[0], measure=False, overrides=tiny)
        assert [p.name for p in fresh.iterdir()] == [lock.name]
    finally:
        other.kill()
        other.wait()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p != lock} == kept
    # its holder gone, the lock is stale: taken over, and the finished run reused
    run_study("objective-fashion", str(out), seeds=[0], measure=False, overrides=tiny)
    assert not lock.exists()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == kept


def test_study_run_of_other_options_is_refused_before_any_run_trains(tmp_path):
    # train refused it at that run: the runs before it in the study trained first (hours, on a
    # real study) and the study then stopped
    import shutil
    out = tmp_path / "study"
    tiny = {**QUICK, "epochs": 1, "train_subset": 64, "test_subset": 64}
    run_study("objective-fashion", str(out), seeds=[0], measure=False, overrides=tiny)
    from equifast.training.studies import _run_dir, get_study
    first, second, *_ = (Path(_run_dir(str(out), label, seed))
                         for label, _, seed in get_study("objective-fashion").runs([0]))
    shutil.rmtree(first)  # it would train first, the others being kept runs of epochs=1
    kept = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=re.escape(repr(str(second))) + " to hold a run of the same "
                                         r"recipe, but the stored recipe differs .*'epochs': \(1, 2\)"):
        run_study("objective-fashion", str(out), seeds=[0], measure=False,
                  overrides={**tiny, "epochs": 2})
    assert not first.exists()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == kept


def test_study_refuses_n_images_it_would_not_measure_with(tmp_path, capsys):
    # `--no-measure --n-images 500` trained and measured nothing, without a word about 500
    from equifast.training import cli
    out = tmp_path / "study"
    with pytest.raises(SystemExit) as ended:
        cli.main(["study", "objective-fashion", "--seeds", "0", "--no-measure", "--n-images",
                  "500", "--out", str(out), "--data-root", str(tmp_path / "no-data")])
    assert ended.value.code == 2
    assert capsys.readouterr().err == (
        "equifast study: error: Expected no `n_images` (--n-images) with measure=False "
        "(--no-measure), which measures nothing, but got 500: leave one of them out.\n")
    assert not out.exists()  # refused before the folder is claimed or anything trains


@pytest.mark.parametrize("kwargs, said", [
    ({"metric": "cosin"}, "Expected `metric` to be one of ('correlation', 'cosine'), but got 'cosin'"),
    ({"metric": ["cosine", "cosine"]}, "Expected `metric` to be one or more distinct metrics"),
    ({"batch_size": 0}, "Expected `batch_size` to be an integer >= 1, but got 0."),
    ({"device": "gpu"}, "Expected a device like 'cpu', 'cuda' or 'cuda:1', but got 'gpu'."),
])
def test_measure_study_checks_measures_arguments_before_any_run(tmp_path, kwargs, said):
    # they were found at the first run, and said as its error: "Could not measure the run ..."
    from equifast.training.studies import measure_study
    with pytest.raises(ValueError, match="^" + re.escape(said)):
        measure_study("objective-fashion", str(tmp_path / "no-study"), seeds=[0], **kwargs)


def test_study_takes_a_numpy_integer_n_images_as_an_int():
    # a count read from a pandas table is numpy.int64: it was refused, as 2.0 and True still are
    from equifast.training.studies import _check_seeds_and_images

    seeds, n = _check_seeds_and_images(np.arange(2), np.int64(3))
    assert n == 3 and type(n) is int
    assert seeds == [0, 1] and all(type(s) is int for s in seeds)  # a seed of np.arange
    assert _check_seeds_and_images(None, None) == (None, None)
    for bad in (2.0, True):
        with pytest.raises(ValueError, match=r"`n_images` \(--n-images\) to be an integer >= 1 "
                                             r"\(or None: each recipe's measure_images\)"):
            _check_seeds_and_images([0], bad)


@pytest.mark.parametrize("seeds, said", [
    ([], "Expected at least one seed (--seeds), but got none."),
    (0, "Expected `seeds` (--seeds) to be a list of integers, but got 0."),
    ("012", "Expected `seeds` (--seeds) to be a list of integers, but got '012'."),
    ([0, 1.5], "Expected `seeds` to be an integer"),
])
def test_bad_seeds_of_a_study_are_refused_before_its_folder_is_claimed(seeds, said, tmp_path):
    # seeds=[] wrote study.json, then failed in pandas ("No objects to concatenate"); 0 was
    # "'int' object is not iterable"
    from equifast.training.studies import measure_study

    for call in (run_study, measure_study):
        with pytest.raises(ValueError, match=re.escape(said)):
            call("objective-fashion", str(tmp_path / "study"), seeds=seeds)
    assert not (tmp_path / "study").exists()


def _fake_measure(model, images, transforms=(), metric="correlation", batch_size=64,
                  n_images=2000, device=None, seed=0):
    """Stands in for equifast.measure: one row per part with scores from the weights."""
    base = float(torch.sigmoid(next(model.parameters()).detach().mean()))
    parts = pd.DataFrame({"part": ["early", "middle", "late", "pool", "final"],
                          "family": "rotation", "channel": base, "layer": min(1.0, base + 0.1)})
    assert images.shape[1:] == (1, 28, 28) and len(transforms) == 3
    return types.SimpleNamespace(parts=parts)


@needs_fmnist
def test_run_study_tables_and_figure(tmp_path, monkeypatch):
    import equifast
    monkeypatch.setattr(equifast, "measure", _fake_measure, raising=False)
    summary = run_study("objective-fashion", str(tmp_path), seeds=[0, 1],
                        overrides={**QUICK, "epochs": 1, "train_subset": 128, "test_subset": 64},
                        n_images=16)
    assert (tmp_path / "figure.png").stat().st_size > 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 3 * 2 * 5 and set(runs["seed"]) == {0, 1}
    assert runs.loc[runs.setting == "FMNIST6-Rot-Eq", "test_rot_acc"].notna().all()
    labels = [s for s, _ in STUDIES["objective-fashion"].settings]
    assert list(summary["setting"].unique()) == labels
    assert list(summary["part"][:5]) == ["early", "middle", "late", "pool", "final"]
    assert {"channel_mean", "channel_std", "layer_mean", "test_acc_mean", "n_seeds"} <= set(summary)
    assert (summary["n_seeds"] == 2).all()
    assert (tmp_path / "FMNIST6-Rot-Inv" / "seed1" / "model.pt").is_file()
    # fewer seeds again: the tables cover seed 0, and seed 1's runs are kept and named
    lines = []
    run_study("objective-fashion", str(tmp_path), seeds=[0], echo=lines.append,
              overrides={**QUICK, "epochs": 1, "train_subset": 128, "test_subset": 64}, n_images=16)
    assert set(pd.read_csv(tmp_path / "runs.csv")["seed"]) == {0}
    assert (tmp_path / "FMNIST6-Rot-Inv" / "seed1" / "model.pt").is_file()
    assert "seeds [1]" in lines[-1] and "--seeds 0 1 takes them in" in lines[-1]
    # the finished runs are measured on the data root given now, not the one they trained on
    with pytest.raises(FileNotFoundError, match="moved-away"):
        run_study("objective-fashion", str(tmp_path), seeds=[0, 1],
                  overrides={**QUICK, "epochs": 1, "train_subset": 128, "test_subset": 64,
                             "data_root": str(tmp_path / "moved-away")}, n_images=16)
    # another study's folder is refused: its tables and figure would be replaced
    with pytest.raises(FileExistsError, match="holds study 'objective-fashion'"):
        run_study("objective", str(tmp_path), seeds=[0])
    assert (tmp_path / "summary.csv").is_file()


@needs_fmnist
def test_study_says_which_left_out_seeds_another_seeds_would_take_in(tmp_path, monkeypatch):
    # runs of other seeds trained with other options were said to be taken in by
    # "--seeds 0 1", which then refused them at their first run
    import equifast
    from equifast.training.trainer import read_run_recipe
    monkeypatch.setattr(equifast, "measure", _fake_measure, raising=False)
    quick = {**QUICK, "epochs": 1, "train_subset": 64, "test_subset": 64}
    run_study("objective-fashion", str(tmp_path), seeds=[0], overrides=quick, n_images=8)
    lines = []
    run_study("objective-fashion", str(tmp_path), seeds=[1], overrides={**quick, "epochs": 2},
              n_images=8, echo=lines.append)
    seed0 = tmp_path / "FMNIST6" / "seed0"
    trained = read_run_recipe(seed0 / "recipe.json").epochs
    assert trained == quick["epochs"]
    assert "takes them in)" not in lines[-1]
    assert (f"the runs of seeds [0] in {str(tmp_path)!r} are kept but left out: they were "
            f"trained with other options (the run's, these: {str(seed0)!r} "
            f"{{'epochs': ({trained}, 2)}}), so --seeds takes them in only with theirs") in lines[-1]
    with pytest.raises(ValueError, match=r"stored recipe differs .* \{'epochs': \(1, 2\)\}"):
        run_study("objective-fashion", str(tmp_path), seeds=[0, 1],
                  overrides={**quick, "epochs": 2}, n_images=8)
    # with the options of seed 0's runs, seed 1's are the other ones
    lines = []
    run_study("objective-fashion", str(tmp_path), seeds=[0], overrides=quick, n_images=8,
              echo=lines.append)
    assert "seeds [1]" in lines[-1] and "takes them in)" not in lines[-1]


@needs_fmnist
def test_study_overwrite_stopped_before_its_first_run_is_deleted_keeps_the_tables(tmp_path,
                                                                                 monkeypatch):
    # --overwrite with a typo in --data-root deleted runs.csv, summary.csv and figure.png, then
    # stopped on the missing data: every model they measured was left as it was
    import equifast
    from equifast.training import trainer
    monkeypatch.setattr(equifast, "measure", _fake_measure, raising=False)
    quick = {**QUICK, "epochs": 1, "train_subset": 64, "test_subset": 64}
    run_study("objective-fashion", str(tmp_path), seeds=[0], overrides=quick, n_images=8)
    names = ("runs.csv", "summary.csv", "figure.png")
    tables = {name: (tmp_path / name).read_bytes() for name in names}
    model = (tmp_path / "FMNIST6" / "seed0" / "model.pt").read_bytes()
    with pytest.raises((FileNotFoundError, ValueError), match="no-data"):
        run_study("objective-fashion", str(tmp_path), seeds=[0], overwrite=True, n_images=8,
                  overrides={**quick, "data_root": str(tmp_path / "no-data")})
    assert (tmp_path / "FMNIST6" / "seed0" / "model.pt").read_bytes() == model
    assert {name: (tmp_path / name).read_bytes() for name in names} == tables
    # retrained, they are gone before the first old run is deleted, and measured anew
    deleting = []
    delete_run = trainer._delete_run
    monkeypatch.setattr(trainer, "_delete_run", lambda out: (
        deleting.append([name for name in names if (tmp_path / name).exists()]), delete_run(out)))
    run_study("objective-fashion", str(tmp_path), seeds=[0], overwrite=True, n_images=8,
              overrides={**quick, "epochs": 2})
    assert deleting == [[]] * 3
    acc = json.loads((tmp_path / "FMNIST6" / "seed0" / "result.json").read_text())["test_acc"]
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert (runs[runs.setting == "FMNIST6"].test_acc == acc).all()


def test_summarize_and_plot(tmp_path):
    rows = [dict(setting=s, recipe=s, seed=k, part=p, family="translation", channel=c + k * 0.1,
                 layer=c + 0.05, test_acc=0.9) for s, c in (("none", 0.3), ("crop", 0.5))
            for k in (0, 1) for p in ("early", "middle", "late", "pool", "final")]
    summary = summarize(pd.DataFrame(rows))
    first = summary.iloc[0]
    assert (first.setting, first.part) == ("none", "early")
    assert first.channel_mean == pytest.approx(0.35)
    assert first.channel_std == pytest.approx(0.0707, abs=1e-3)
    fig = plot_study(summary, str(tmp_path / "f.png"), "t")
    assert len(fig.axes) == 2 and (tmp_path / "f.png").is_file()


def test_summarize_and_plot_refuse_the_other_table(tmp_path):
    # plot_study of the per-seed table (runs.csv) drew each part's seeds joined by one line,
    # without a word; summarize of a summary (summary.csv) raised pandas' bare KeyError
    rows = [dict(setting="none", recipe="r", seed=k, part=p, family="rotation", channel=0.1 * k,
                 layer=0.5, test_acc=0.9) for k in (0, 1) for p in ("early", "late")]
    runs = pd.DataFrame(rows)
    summary = summarize(runs)
    assert summary.channel_mean.tolist() == [runs.channel.mean()] * 2
    with pytest.raises(ValueError, match=r"Expected `summary` to be one of summarize's tables .* "
                                         r"lacks \['channel_mean', 'layer_mean'\]"):
        plot_study(runs, str(tmp_path / "f.png"))
    assert not (tmp_path / "f.png").exists()
    with pytest.raises(ValueError, match=r"Expected `runs` to be one of measure_study's tables .* "
                                         r"lacks \['seed', 'channel', 'layer'\]"):
        summarize(summary)
    with pytest.raises(ValueError, match=r"lacks \['setting', .*\(list\)"):
        summarize(rows)


def test_summarize_refuses_rows_of_one_seed_repeated():
    # runs.csv of two measures joined: seed 0's rows counted twice in the mean and std, while
    # n_seeds said 3
    rows = [dict(setting="none", recipe="r", seed=k, part="final", family="rotation",
                 channel=c, layer=c, test_acc=0.9) for k, c in ((0, 0.1), (1, 0.3), (2, 0.5))]
    runs = pd.DataFrame(rows)
    with pytest.raises(ValueError, match=r"Expected one row per seed of each setting, part, "
                                         r"family, but 2 rows repeat theirs \(the first: setting "
                                         r"'none', part 'final', family 'rotation', seed 0\)"):
        summarize(pd.concat([runs, runs.iloc[:1].assign(channel=0.9)], ignore_index=True))
    summary = summarize(runs).iloc[0]
    assert summary.n_seeds == 3
    assert summary.channel_mean == pytest.approx(np.mean(runs.channel))
    assert summary.channel_std == pytest.approx(np.std(runs.channel, ddof=1))


def test_studies_transforms():
    # 4.2.1: rotations by 90, 180, 270 degrees, three seeds; 4.2.2: diagonal shifts 1..16, three
    # seeds; 4.2.3 names neither (same as 4.2.2 read here)
    for name, study in STUDIES.items():
        assert study.seeds == (0, 1, 2), name
        transforms = study.make_transforms()
        if name.startswith("objective"):
            assert [t.quarter_turns for t in transforms] == [1, 2, 3]
        else:
            assert [(t.dy, t.dx) for t in transforms] == [(s, s) for s in range(1, 17)]
    assert [r for _, r in STUDIES["objective"].settings] == \
        ["cnn7-mnist6", "cnn7-mnist6-rot-inv", "cnn7-mnist6-rot-eq"]
    assert [r for _, r in STUDIES["augmentation"].settings] == \
        [f"resnet44-{a}" for a in ("none", "crop", "flip", "cutmix", "randaugment")]
    assert STUDIES["augmentation"].transforms == "translation:1-16"
    assert STUDIES["capacity"].transforms == "translation:1-16"
    assert STUDIES["objective"].transforms == "rotation"
    assert [r for _, r in STUDIES["capacity"].settings] == [f"resnet44-w{w}" for w in (1, 2, 4, 8)]
    assert STUDIES["capacity-wrn40"].transforms == "translation:1-16"
    assert [r for _, r in STUDIES["capacity-wrn40"].settings] == [f"wrn40-w{w}" for w in (1, 2, 4, 8)]


# ------------------------------------------------------------------------------------- CLI
def test_cli_options_without_a_recipe_or_study_are_refused(tmp_path, capsys):
    from equifast.training.cli import main
    # a forgotten recipe printed the list and exited 0, the options ignored
    for argv, said in ((["train", "--epochs", "2", "--out", str(tmp_path / "x")],
                        "--out, --epochs given without a recipe"),
                       (["study", "--seeds", "0", "1"], "--seeds given without a study")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    for argv, first in ((["train"], "cnn7-mnist6"), (["study", "--list"], "objective")):
        assert main(argv) == 0 and capsys.readouterr().out.split()[0] == first


@needs_fmnist
def test_cli_train(tmp_path, capsys):
    from equifast.training.cli import main
    assert main(["train", "--list"]) == 0
    assert "resnet44-randaugment" in capsys.readouterr().out
    out = str(tmp_path / "run")
    assert main(["train", "cnn7-fmnist6-rot-inv", "--epochs", "2", "--milestones", "1",
                 "--subset", "256", "--test-subset", "128", "--seed", "3", "--device", "cpu",
                 "--out", out]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert printed["epochs"] == 2 and 0 <= printed["test_acc"] <= 1
    # a progress line per epoch on stderr, from the same rows as metrics.csv
    lines = captured.err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert f"acc {printed['test_acc']:.4f}, lr 0.001" in lines[1]
    saved = json.loads(open(os.path.join(out, "recipe.json")).read())
    assert saved["seed"] == 3 and saved["milestones"] == [1]
    # the shortened schedule ran: the recipe's lr in epoch 1, gamma times it after milestone 1
    lrs = pd.read_csv(os.path.join(out, "metrics.csv"))["lr"].tolist()
    assert lrs == pytest.approx([0.01, 0.01 * get_recipe("cnn7-fmnist6").gamma])
    # run again: reused, and said so (it printed only the result, as if it had trained)
    argv = ["train", "cnn7-fmnist6-rot-inv", "--epochs", "2", "--milestones", "1", "--subset", "256",
            "--test-subset", "128", "--seed", "3", "--device", "cpu", "--out", out]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"finished before (2 epochs) in {out!r}: reused, not trained "
                                         "again (--overwrite retrains it)"]
    assert json.loads(captured.out) == printed
    # the run measured from `equifast measure`: on its recipe's test set, and said so
    from equifast.cli import main as equifast_main
    assert equifast_main(["measure", "--model", out, "--transforms", "rotation:90", "--n-images", "16",
                 "--out", str(tmp_path / "m"), "--no-progress"]) == 0
    assert f"{out} (test set of the run)" in capsys.readouterr().out
    meta = json.loads((tmp_path / "m" / "report.meta.json").read_text())
    assert meta["images"] == "test set of the run's recipe" and meta["n_images"] == 16
    assert meta["weights"] == os.path.join(os.path.abspath(out), "model.pt")  # not "default"
    with pytest.raises(SystemExit):
        main(["train", "cnn7-fmnist6", "--epochs", "x"])
    with pytest.raises(SystemExit) as exit_:
        main(["train", "cnn7-mnist6", "--epochs", "1", "--out", str(tmp_path / "no-data")])
    said = capsys.readouterr().err
    assert exit_.value.code == 2 and "--data-root" in said
    assert "learning rate stays" not in said  # a line on the schedule of a run that never starts
    for argv in (["train", "cnn7-fmnist6"], ["study", "objective-fashion"]):  # not silently 1 worker
        with pytest.raises(SystemExit) as exit_:
            main(argv + ["--workers", "0", "--out", str(tmp_path / "never")])
        assert exit_.value.code == 2 and "--workers >= 1" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_cli_parsers_plug_into_a_parent():
    import argparse
    from equifast.training.cli import add_study_parser, add_train_parser
    parser = argparse.ArgumentParser(prog="equifast")
    sub = parser.add_subparsers(dest="command")
    add_train_parser(sub)
    add_study_parser(sub)
    args = parser.parse_args(["study", "capacity", "--seeds", "0", "1", "--epochs", "3",
                              "--out", "x"])
    assert (args.study, args.seeds, args.epochs, args.out) == ("capacity", [0, 1], 3, "x")
    assert args.milestones is None  # the recipe's schedule
    from equifast.training.cli import _overrides
    for given, milestones in ((["--milestones", "2", "5"], (2, 5)), (["--milestones"], ())):
        args = parser.parse_args(["train", "resnet44-crop"] + given)
        assert get_recipe("resnet44-crop", **_overrides(args)).milestones == milestones
    assert callable(args.func)


@needs_fmnist
def test_a_rot_eq_run_is_measured_on_its_classes_and_evaluated_on_both(tmp_path):
    import equifast as ef
    from equifast.models import load_model as load_by_name
    from equifast.training.trainer import evaluate

    run = str(tmp_path / "eq")
    recipe = get_recipe("cnn7-fmnist6-rot-eq", epochs=1, train_subset=256, test_subset=128,
                        device="cpu")
    result = train(recipe, run)
    test = build_dataset("fmnist6-rot-eq", train=False, subset=128)
    full = load_model(run)
    measured, _ = load_by_name(run)  # how `equifast measure --model RUN` loads it
    x = torch.stack([test[i][0] for i in range(8)])
    with torch.no_grad():
        assert full(x).shape == (8, 10) and torch.equal(measured(x), full(x)[:, :6])
    # evaluated, the turn logits count again, whichever way it was loaded
    for model in (full, measured, result.load_model(class_logits_only=True)):
        got = evaluate(model, test)
        assert got["acc"] == pytest.approx(result.test_acc)
        assert got["rot_acc"] == pytest.approx(result.test_rot_acc)
    assert measured.class_logits_only  # and left as it was
    # on a data set of classes only, its class logits alone are scored (all ten outputs were,
    # with a turn accuracy of 0); a model without a turn head cannot score turns
    plain = build_dataset("fmnist6", train=False, subset=128)
    xs, ys = torch.stack([plain[i][0] for i in range(128)]), torch.tensor([plain[i][1] for i in range(128)])
    with torch.no_grad():
        want = (full(xs)[:, :6].argmax(1) == ys).double().mean().item()
    for model in (full, measured):
        got = evaluate(model, plain)
        assert got["acc"] == pytest.approx(want) and "rot_acc" not in got
    assert measured.class_logits_only and not full.training
    net = load_model(run)
    net.num_rotations = 0  # as a model of a recipe without turns
    with pytest.raises(ValueError, match="predicts the quarter turn too"):
        evaluate(net, test)
    report = ef.measure(run, transforms=[ef.Rotation(1)], n_images=8)
    pts = report.points
    assert list(pts.loc[pts.point == "final", "shape"]) == ["6"]
    # top-1 on the recipe's first test images, against their classes (the targets' turns dropped)
    whole = build_dataset("fmnist6-rot-eq", train=False)
    x, y = torch.stack([whole[i][0] for i in range(8)]), torch.stack([whole[i][1][0] for i in range(8)])
    with torch.no_grad():
        assert report.meta["accuracy"] == pytest.approx((measured(x).argmax(1) == y).double().mean().item())


def test_evaluate_refuses_an_empty_data_set(fake_mnist):
    from torch.utils.data import Subset

    from equifast.training.trainer import evaluate
    torch.manual_seed(0)
    model = build_model("cnn7", num_classes=6).eval()
    test = build_dataset("mnist6", fake_mnist, train=False)
    # no batch at all: it returned loss 0.0 and accuracy 0.0, as if measured
    with pytest.raises(ValueError, match="Expected `dataset` to hold at least one image, but it is empty"):
        evaluate(model, Subset(test, []))
    x, y = test[0]
    with torch.no_grad():
        out = model(x[None])
    got = evaluate(model, Subset(test, [0]))
    assert got["acc"] == float(out.argmax(1).item() == int(y))
    assert got["loss"] == pytest.approx(torch.nn.functional.cross_entropy(out, y[None]).item())


def test_evaluate_refuses_labels_beyond_the_models_logits(fake_mnist):
    # "IndexError: Target 6 is out of bounds" (a device-side assert on a GPU); -100 was
    # cross_entropy's ignore_index: left out of the loss, counted as a wrong image
    from torch.utils.data import TensorDataset

    from equifast.training.trainer import evaluate
    torch.manual_seed(0)
    model = build_model("cnn7", num_classes=6).eval()
    x = torch.rand(4, 1, 28, 28)
    for labels, seen in (([0, 1, 6, 2], r"\[0, 6\]"), ([0, -100, 3, 2], r"\[-100, 3\]")):
        with pytest.raises(ValueError, match=rf"Expected class labels in \[0, 6\) \(the model's class "
                                             rf"logits\), but a batch holds labels in {seen}"):
            evaluate(model, TensorDataset(x, torch.tensor(labels)))
    with torch.no_grad():  # labels within the logits: scored as before
        want = (model(x).argmax(1) == torch.tensor([0, 1, 5, 2])).double().mean().item()
    assert evaluate(model, TensorDataset(x, torch.tensor([0, 1, 5, 2])))["acc"] == pytest.approx(want)


def test_evaluate_on_another_device_than_the_model_is_refused(fake_mnist):
    # the batches went to `device` and the model stayed: a bare RuntimeError in the first
    # forward ("Tensor on device cpu is not on the expected device meta!"); on a GPU machine,
    # evaluate(cpu_model, data, device="cuda") failed the same way
    from torch.utils.data import Subset

    from equifast.training.trainer import evaluate
    torch.manual_seed(0)
    model = build_model("cnn7", num_classes=6).eval()
    test = Subset(build_dataset("mnist6", fake_mnist, train=False), range(8))
    x, y = torch.stack([test[i][0] for i in range(8)]), torch.stack([test[i][1] for i in range(8)])
    with torch.no_grad():
        want = (model(x).argmax(1) == y).double().mean().item()
    for device in (None, "cpu", torch.device("cpu")):  # the model's, named or not
        assert evaluate(model, test, device=device)["acc"] == pytest.approx(want)
    with pytest.raises(ValueError, match=r"Expected `device` to be the model's \(cpu\) or None, "
                                         r"but got 'meta': move the model there first"):
        evaluate(model, test, device="meta")
    assert next(model.parameters()).device.type == "cpu"
    # a model of no weights runs where the batches are (it failed with a bare StopIteration)
    class Fixed(torch.nn.Module):
        num_classes = 6

        def forward(self, x):
            return x.flatten(1)[:, :6]

    with torch.no_grad():
        fixed = (x.flatten(1)[:, :6].argmax(1) == y).double().mean().item()
    assert evaluate(Fixed(), test)["acc"] == evaluate(Fixed(), test, device="cpu")["acc"] == pytest.approx(fixed)
    # a DataLoader of the data failed as "'DataLoader' object is not subscriptable"
    from torch.utils.data import DataLoader
    with pytest.raises(TypeError, match=r"`dataset` to be a Dataset .* but got a DataLoader; "
                                        r"pass loader.dataset"):
        evaluate(model, DataLoader(test, batch_size=4))


@needs_fmnist
def test_measuring_a_run_on_a_folder_without_its_data_says_to_pass_data(tmp_path, capsys):
    from equifast.cli import main as cli

    run = str(tmp_path / "run")
    train(get_recipe("cnn7-fmnist6", epochs=1, train_subset=64, test_subset=64, device="cpu"), run)
    (tmp_path / "empty").mkdir()
    assert cli(["measure", "--model", run, "--data", str(tmp_path / "empty"), "--transforms",
                "rotation:90", "--out", str(tmp_path / "m"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"equifast: error: The run {run!r} is measured on the test set of its "
                          "recipe (fmnist6), which could not be read from ")
    # the advice in the command's terms: its flag, not measure's `images`
    assert "Fashion-MNIST idx files" in err and err.endswith("pass that folder as --data.")
    assert "`images`" not in err
    assert "--data-root" not in err and "--download" not in err  # train's options, not measure's
    assert not (tmp_path / "m").exists()


def test_a_run_is_measured_by_default_with_its_studys_transforms(tmp_path):
    # ImageNet's default (shifts 1-32) was as large as the 28-pixel digits: every run folder
    # measured without --transforms was refused
    from equifast.cli import _default_transforms, main as cli
    from equifast.report import Report
    from equifast.transforms import parse_transforms

    run = str(tmp_path / "run")
    train(get_recipe("cnn7-fmnist6", epochs=1, train_subset=64, test_subset=64, device="cpu"), run)
    assert cli(["measure", "--model", run, "--n-images", "8", "--out", str(tmp_path / "m"),
                "--no-progress"]) == 0
    measured = Report.load(tmp_path / "m").meta["transforms"]
    assert measured == [t.name for t in parse_transforms("rotation")]
    cifar = tmp_path / "cifar"  # the CIFAR-10 studies measure shifts 1-16 of 32 pixels
    cifar.mkdir()
    (cifar / "recipe.json").write_text(json.dumps(get_recipe("resnet44-none").to_dict()))
    assert _default_transforms(str(cifar)) == "translation:1-16"
    assert _default_transforms("resnet18") == "translation:1-32,rotation"


def test_study_with_real_measure(tmp_path):
    lines = []
    summary = run_study("objective-fashion", str(tmp_path), seeds=[0],
                        overrides={**QUICK, "epochs": 1}, n_images=64, echo=lines.append)
    assert set(summary["part"]) >= {"early", "middle", "late", "pool", "final"}
    assert summary["channel_mean"].between(0, 1).all()
    # progress: each run, its one epoch, its accuracy, then the measuring
    assert lines[0] == f"[objective-fashion 1/3] FMNIST6, seed 0 -> {tmp_path}/FMNIST6/seed0"
    # one epoch: the recipe's milestones lie past it, which is said before it trains
    assert lines[1] == ("  the learning rate stays at 0.01: milestones [25, 50] lie past the last "
                        "epoch (1); --milestones shortens the schedule")
    assert lines[2].startswith("  epoch 1/1: train loss ") and lines[3].startswith("  test acc ")
    assert sum(line.startswith("  epoch 1/1:") for line in lines) == 3
    assert lines[-1] == "[objective-fashion] measuring 3 runs"
    # a rerun trains nothing: the finished runs are read back
    again = []
    run_study("objective-fashion", str(tmp_path), seeds=[0], overrides={**QUICK, "epochs": 1},
              measure=False, echo=again.append)
    assert not any(line.startswith("  epoch") for line in again) and len(again) == 9
    assert again[1] == (f"  finished before (1 epoch) in {str(tmp_path / 'FMNIST6' / 'seed0')!r}: "
                        "reused, not trained again (--overwrite retrains it)")


def _write_cifar10(root, n_train=64, n_test=32, seed=0):
    """A small CIFAR-10 in torchvision's on-disk format (pickled batches), so the real
    loader runs; images are class-coloured noise, so there is something to learn."""
    import pickle

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(n):
        labels = rng.integers(0, 10, n)
        base = (labels[:, None] * 25).astype(np.int64)
        data = np.clip(base + rng.integers(0, 40, (n, 3 * 32 * 32)), 0, 255).astype(np.uint8)
        return {"data": data, "labels": labels.tolist()}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train // 5 + 1), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


@pytest.mark.parametrize("name, parts", [("resnet44-crop", [8, 7, 7]),  # 22 points
                                         ("wrn40-w1", [7, 6, 6])])     # 19 points
def test_cifar10_recipe_on_a_folder_then_measure(tmp_path, monkeypatch, name, parts):
    import torchvision.datasets.cifar

    import equifast as ef

    _write_cifar10(tmp_path / "data")
    # the files are ours, so their checksums are not CIFAR-10's; everything else is the real path
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    recipe = get_recipe(name, epochs=1, batch_size=16, device="cpu",
                        data_root=str(tmp_path / "data"))
    result = train(recipe, str(tmp_path / "run"))
    assert result.epochs == 1 and 0 <= result.test_acc <= 1
    report = ef.measure(str(tmp_path / "run"), transforms=ef.diagonal_shifts(1, 2), n_images=8,
                        batch_size=8)
    assert report.meta["images"] == "test set of the run's recipe" and report.meta["n_images"] == 8
    assert list(report.parts.part.astype(str).unique()) == ["early", "middle", "late", "pool", "final"]
    # the points before pooling in three groups: the stages of 32x32, 16x16, 8x8 maps
    assert report.parts.groupby("part", observed=True).n_points.first().tolist()[:3] == parts


def test_translation_study_keeps_each_shift(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    _write_cifar10(tmp_path / "data", n_train=32, n_test=16)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    out = tmp_path / "study"
    run_study("augmentation", str(out), seeds=[0, 1], n_images=4,
              overrides={"epochs": 1, "batch_size": 16, "device": "cpu",
                         "data_root": str(tmp_path / "data")})
    runs, shifts = (pd.read_csv(out / name) for name in ("runs.csv", "shift_runs.csv"))
    labels = [s for s, _ in STUDIES["augmentation"].settings]
    assert len(shifts) == len(labels) * 2 * 5 * 16 and list(shifts.setting.unique()) == labels
    assert list(shifts[(shifts.setting == "crop") & (shifts.seed == 1) & (shifts.part == "late")]
                .dy) == list(range(1, 17))
    # a part's family score is the mean of its scores at each shift (every point defined here)
    keys = ["setting", "seed", "part", "family"]
    both = runs.merge(shifts.groupby(keys)[["channel", "layer"]].mean().reset_index(), on=keys,
                      suffixes=("", "_shifts"))
    assert len(both) == len(runs) and both[["channel", "layer"]].notna().all().all()
    assert np.allclose(both.channel, both.channel_shifts) and np.allclose(both.layer, both.layer_shifts)
    # over seeds, as the figure draws them
    summary = pd.read_csv(out / "shift_summary.csv")
    row = summary[(summary.setting == "none") & (summary.part == "middle") & (summary.dy == 3)].iloc[0]
    seeds = shifts[(shifts.setting == "none") & (shifts.part == "middle") & (shifts.dy == 3)].channel
    assert row.n_seeds == 2 and row.channel_mean == pytest.approx(seeds.mean())
    assert row.channel_std == pytest.approx(seeds.std())
    assert (out / "shifts.png").stat().st_size > 0 and (out / "figure.png").stat().st_size > 0


@pytest.mark.parametrize("n,world,batch", [(13, 2, 3), (12, 2, 3), (257, 2, 64), (10, 4, 2)])
def test_ray_workers_see_every_image_once_and_step_on_the_global_batch_mean(n, world, batch):
    # DistributedSampler pads its permutation with copies of its first images: with N not a
    # multiple of the workers they were trained on twice an epoch and counted twice in the
    # metrics, and DDP's mean of the ranks' batch means was not the global batch's mean
    from torch.utils.data.distributed import DistributedSampler
    from equifast.training.trainer import _Shares

    torch.manual_seed(0)
    data, target = torch.randn(n, 3, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    seen, steps = [], {}
    for rank in range(world):
        sampler = DistributedSampler(range(n), world, rank, shuffle=True, seed=5)
        sampler.set_epoch(3)
        idx, shares = list(sampler), _Shares(n, rank, world, batch)
        for step in range(0, -(-len(idx) // batch)):
            i = torch.tensor(idx[step * batch:(step + 1) * batch])
            weight = shares.weights(step, len(i))
            seen += i[weight > 0].tolist()
            loss = (((data[i] @ w - target[i]) ** 2) * weight).sum()
            grad, = torch.autograd.grad(loss, w)
            steps.setdefault(step, []).append((i[weight > 0], grad))
    assert sorted(seen) == list(range(n))  # each image once
    for step, parts in steps.items():  # DDP averages the ranks' gradients
        i = torch.cat([p[0] for p in parts])
        mean, = torch.autograd.grad(((data[i] @ w - target[i]) ** 2).mean(), w)
        torch.testing.assert_close(sum(p[1] for p in parts) / world, mean)
