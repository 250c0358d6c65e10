"""Data sets as researchers keep them on disk: ImageNet's folder layouts and quirks, a Dataset of
grey images, local MNIST and CIFAR-10 roots given one level off. Fixtures are real pixels
(scikit-image's photos) in real formats, written to tmp_path."""
import os
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from equifast import data

TABBY, ESPRESSO, TENCH = "n02123045", "n07920052", "n01440764"  # ImageNet-1k 281, 967, 0


def _photo(name: str, size=None) -> Image.Image:
    import skimage.data

    img = Image.fromarray(getattr(skimage.data, name)())
    return img if size is None else img.resize(size)


def _imagenet_split(folder, store):
    """A val/ of synset folders with ImageNet's quirks: a CMYK JPEG, a PNG named .JPEG, a grey
    JPEG, sizes from 30x20 to 600x400, upper-case suffixes, .DS_Store, an empty class folder
    and a class folder that is a link."""
    for wnid in (TENCH, TABBY, ESPRESSO, "n01443537"):  # the last stays empty (goldfish, 1)
        (folder / wnid).mkdir(parents=True)
    _photo("chelsea").save(folder / TABBY / f"{TABBY}_1.JPEG", format="JPEG")
    _photo("chelsea").convert("CMYK").save(folder / TABBY / f"{TABBY}_2.JPEG", format="JPEG")
    _photo("coffee").save(folder / ESPRESSO / f"{ESPRESSO}_1.JPEG", format="PNG")
    _photo("coffee", (30, 20)).save(folder / ESPRESSO / f"{ESPRESSO}_2.JPG", format="JPEG")
    elsewhere = store / folder.name  # where the link leads
    elsewhere.mkdir(parents=True)
    _photo("camera").save(elsewhere / f"{TENCH}_1.JPEG", format="JPEG")  # grey
    (folder / TENCH).rmdir()
    (folder / TENCH).symlink_to(elsewhere, target_is_directory=True)
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / TABBY / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")


def test_imagenet_root_one_level_too_high_names_the_split_to_give(tmp_path):
    # imagenet/ holding train/ and val/: the splits became two classes, training images were
    # measured beside validation ones, and the accuracy was dropped with a puzzling warning
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        _imagenet_split(root / split, tmp_path / "store")
    with pytest.raises(ValueError, match=r"one split .* holds the splits train, val; pass "
                                         rf"'{root / 'val'}'\.$"):
        data.ImageFiles(root)


def test_imagenet_val_folder_reads_as_torchvision_and_timm_read_it(tmp_path):
    import torchvision
    from timm.data import ImageNetInfo

    val = tmp_path / "val"
    _imagenet_split(val, tmp_path / "store")
    files = data.ImageFiles(val)
    # the reference: PIL's convert("RGB") of the CMYK, grey and disguised PNG files
    theirs = torchvision.datasets.ImageFolder(str(val), allow_empty=True)
    assert [str(p) for p in files.files] == [p for p, _ in theirs.samples]
    assert files.classes == theirs.classes == [TENCH, "n01443537", TABBY, ESPRESSO]
    for i in range(len(files)):
        (mine, label), (ref, ref_label) = files[i], theirs[i]
        assert label == ref_label and mine.mode == "RGB"
        assert np.array_equal(np.asarray(mine), np.asarray(ref))
    synsets = ImageNetInfo().label_names()
    assert synsets == sorted(synsets)  # the order the models' 1000 logits are in
    classes = data.model_classes(files, 1000).tolist()
    assert classes == [synsets.index(c) for c in files.classes] == [0, 1, 281, 967]


def _flat_val(folder, n=4):
    folder.mkdir(parents=True)
    for i in range(1, n + 1):
        _photo(("chelsea", "coffee")[i % 2], (50, 40)).save(
            folder / f"ILSVRC2012_val_{i:08d}.JPEG", format="JPEG")


def test_flat_ilsvrc2012_val_takes_labels_from_loc_val_solution(tmp_path, monkeypatch):
    # Kaggle's layout: LOC_val_solution.csv four folders above ILSVRC/Data/CLS-LOC/val/*.JPEG;
    # a flat folder had no labels, so no accuracy
    val = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    _flat_val(val)
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000002,{ESPRESSO} 1 2 30 40 {ESPRESSO} 5 6 7 8 \n"
        f"ILSVRC2012_val_00000001,{TABBY} 0 0 49 39 \n"
        f"ILSVRC2012_val_00000003,{TENCH} 3 3 9 9 \n"
        f"ILSVRC2012_val_00000099,{TABBY} 3 3 9 9 \n")  # not in the folder
    files = data.ImageFiles(val)
    assert files.labelled and files.classes == sorted([TABBY, ESPRESSO, TENCH])
    assert [files[i][1] for i in range(4)] == [1, 2, 0, -1]  # 00000004 has no row: a stray
    assert files.strays == [val / "ILSVRC2012_val_00000004.JPEG"]
    assert data.model_classes(files, 1000).tolist() == [0, 281, 967]
    assert data.image_folder(torch.utils.data.Subset(files, [0, 1])) is files
    monkeypatch.chdir(val.parent)  # given as a relative path: the file is still four folders up
    assert [data.ImageFiles("val")[i][1] for i in range(4)] == [1, 2, 0, -1]


def test_a_flat_val_folder_converted_to_another_type_takes_its_labels(tmp_path):
    # ILSVRC2012_val_*.png (a copy converted from JPEG): no labels, and no warning said why
    val = tmp_path / "val"
    _flat_val(val, n=3)
    for k, suffix in ((1, ".png"), (2, ".webp")):
        jpeg = val / f"ILSVRC2012_val_0000000{k}.JPEG"
        Image.open(jpeg).save(jpeg.with_suffix(suffix))
        jpeg.unlink()
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000001,{TABBY} 0 0 9 9\n"
        f"ILSVRC2012_val_00000002,{TENCH} 0 0 9 9\n"
        f"ILSVRC2012_val_00000003,{ESPRESSO} 0 0 9 9\n")
    files = data.ImageFiles(val)
    assert [p.name for p in files.files] == ["ILSVRC2012_val_00000001.png", "ILSVRC2012_val_00000002.webp",
                                            "ILSVRC2012_val_00000003.JPEG"]
    synsets = [TABBY, TENCH, ESPRESSO]  # the csv's rows, in the files' order
    assert files.labelled and files.labels == [sorted(synsets).index(s) for s in synsets]
    assert not files.strays


def test_a_linked_flat_val_finds_the_labels_above_the_folder_it_links_to(tmp_path):
    # ~/data/val -> /mnt/ILSVRC/Data/CLS-LOC/val: only the folders above the link were looked
    # at, so it had no labels; and a lower-case name (ilsvrc2012_val_...jpeg) was no row's
    real = tmp_path / "mnt" / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    _flat_val(real, n=3)
    (real / "ILSVRC2012_val_00000003.JPEG").rename(real / "ilsvrc2012_val_00000003.jpeg")
    (tmp_path / "mnt" / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000001,{TABBY} 0 0 9 9\n"
        f"ILSVRC2012_val_00000002,{TENCH} 0 0 9 9\n"
        f"ILSVRC2012_val_00000003,{ESPRESSO} 0 0 9 9\n")
    (tmp_path / "home" / "data").mkdir(parents=True)
    (tmp_path / "home" / "data" / "val").symlink_to(real, target_is_directory=True)
    for root in (real, tmp_path / "home" / "data" / "val"):
        files = data.ImageFiles(root)
        assert files.classes == [TENCH, TABBY, ESPRESSO] and files.labels == [1, 0, 2]
        assert data.model_classes(files, 1000).tolist() == [0, 281, 967]



def test_a_flat_val_folder_with_other_files_labels_its_ilsvrc2012_images(tmp_path):
    # one file not named as ILSVRC2012's among them: the folder had no labels, and no warning
    import warnings

    from torch import nn
    from torchvision import transforms as T

    import equifast as ef

    val = tmp_path / "val"
    _flat_val(val, n=3)
    _photo("chelsea", (50, 40)).save(val / "cat.jpg")
    (tmp_path / "LOC_val_solution.csv").write_text(  # no row for image 3
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000001,{TABBY} 0 0 9 9\nILSVRC2012_val_00000002,{ESPRESSO} 0 0 9 9\n")
    files = data.ImageFiles(val)
    assert files.labelled and files.classes == [TABBY, ESPRESSO]  # sorted: 281, 967
    assert [p.name for p in files.files] == [f"ILSVRC2012_val_0000000{k}.JPEG" for k in (1, 2, 3)] + ["cat.jpg"]
    assert files.labels == [0, 1, -1, -1] and data.model_classes(files, 1000).tolist() == [281, 967]
    assert files.strays == [val / "ILSVRC2012_val_00000003.JPEG", val / "cat.jpg"]
    # measured: a model that always answers tabby is right on 1 of the 2 labelled images
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 1000))
    with torch.no_grad():
        model[-1].weight.zero_()
        model[-1].bias.copy_(torch.eye(1000)[281])
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        rep = ef.measure(model, str(val), transforms=[ef.Rotation(2)],
                         preprocess=T.Compose([T.Resize((12, 12)), T.ToTensor()]))
    assert rep.accuracy == 0.5 and rep.meta["n_images"] == 4
    said = [str(w.message) for w in ws if issubclass(w.category, ef.EquifastWarning)]
    assert said == [f"2 image(s) of {str(val)!r} are not labelled by "
                    f"{str(tmp_path / 'LOC_val_solution.csv')!r}: 1 not named as ILSVRC2012 "
                    "validation images (ILSVRC2012_val_00000001.JPEG, ...; e.g. 'cat.jpg'), 1 "
                    "without a row there (e.g. 'ILSVRC2012_val_00000003.JPEG'): they are "
                    "measured, but have no label and are left out of the top-1 accuracy."], said


def test_flat_ilsvrc2012_val_without_labels_says_so(tmp_path):
    from equifast import EquifastWarning

    _flat_val(tmp_path / "val", n=2)
    with pytest.warns(EquifastWarning, match=r"ILSVRC2012 validation images without class "
                                             r"folders, .*LOC_val_solution\.csv nor the devkit's "
                                             r"folder ILSVRC2012_devkit_t12 .* no labels"):
        files = data.ImageFiles(tmp_path / "val")
    assert not files.labelled and [files[i][1] for i in range(2)] == [-1, -1]
    (tmp_path / "LOC_val_solution.csv").write_text(  # another file of that name
        "ImageId,PredictionString\nILSVRC2012_val_00000001,7 1 2 3 4\n")
    with pytest.raises(ValueError, match=r"Expected .*LOC_val_solution\.csv' to be ImageNet's"):
        data.ImageFiles(tmp_path / "val")


def _devkit(folder, leaves, truth):
    """The official ILSVRC2012_devkit_t12 in ``folder``: its ``data/meta.mat`` as the real one
    is (a (n, 1) struct array ``synsets``: the leaves ``leaves`` as ILSVRC2012_ID 1, 2, ... in
    the devkit's order, then a WordNet ancestor with children) and the ground truth ``truth``
    (an ILSVRC2012_ID a line, for image 1, 2, ...)."""
    from scipy.io import savemat

    fields = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images")
    rows = [(i, wnid, []) for i, wnid in enumerate(leaves, 1)]
    rows.append((len(leaves) + 1, "n00001740", list(range(1, len(leaves) + 1))))  # entity
    synsets = np.empty((len(rows), 1), dtype=[(f, "O") for f in fields])
    for r, (i, wnid, children) in enumerate(rows):
        synsets[r, 0] = (np.array([[i]], np.uint16), np.array([wnid]), np.array([f"words {i}"]),
                         np.array(["gloss"]), np.array([[len(children)]], np.uint8),
                         np.array([children], np.uint16).reshape(1, -1),
                         np.array([[0 if not children else 1]], np.uint8),
                         np.array([[1300]], np.uint16))
    (folder / "data").mkdir(parents=True)
    savemat(folder / "data" / "meta.mat", {"synsets": synsets})
    (folder / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{i}\n" for i in truth))


def test_torchvisions_imagenet_dataset_gives_its_wnids_as_class_folders(tmp_path):
    # torchvision's ImageNet replaces its classes by tuples of names: model_classes failed with
    # "expected string or bytes-like object, got 'tuple'"
    import torchvision

    names = {TENCH: ("tench", "Tinca tinca"), TABBY: ("tabby", "tabby cat")}
    torch.save((names, []), tmp_path / "meta.bin")  # as its parse_devkit_archive leaves it
    for wnid in names:
        (tmp_path / "val" / wnid).mkdir(parents=True)
        _photo("chelsea", (20, 20)).save(tmp_path / "val" / wnid / "a.JPEG")
    imagenet = torchvision.datasets.ImageNet(str(tmp_path), split="val")
    assert imagenet.classes == [names[TENCH], names[TABBY]]
    folders = data.image_folder(torch.utils.data.Subset(imagenet, [0, 1]))
    assert folders.classes == [TENCH, TABBY] == data.ImageFiles(tmp_path / "val").classes
    assert data.model_classes(folders, 1000).tolist() == [0, 281]


def test_flat_ilsvrc2012_val_takes_labels_from_the_devkit(tmp_path, monkeypatch):
    # the official devkit beside val/ was no label source: its images had no labels
    val = tmp_path / "val"
    _flat_val(val)
    # the devkit numbers its classes in its own order (tabby 1, tench 2, espresso 3); images
    # 1..5 are tabby, espresso, tench, tabby, espresso (5 is not in the folder)
    _devkit(tmp_path / "ILSVRC2012_devkit_t12", [TABBY, TENCH, ESPRESSO], [1, 3, 2, 1, 3])
    files = data.ImageFiles(val)
    # by hand: the sorted synsets are tench 0, tabby 1, espresso 2
    assert files.labelled and files.classes == [TENCH, TABBY, ESPRESSO]
    assert [files[i][1] for i in range(4)] == [1, 2, 0, 1] and files.strays == []
    assert data.model_classes(files, 1000).tolist() == [0, 281, 967]
    # the same labels as Kaggle's csv of the same truth gives
    kaggle = tmp_path / "kaggle"
    _flat_val(kaggle / "val")
    (kaggle / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{k:08d},{s} 1 2 3 4\n" for k, s in enumerate([TABBY, ESPRESSO, TENCH, TABBY], 1)))
    csv = data.ImageFiles(kaggle / "val")
    assert (csv.classes, csv.labels) == (files.classes, files.labels)
    # the devkit inside the val folder (and given relative): found there, and no class folder
    (tmp_path / "ILSVRC2012_devkit_t12").rename(val / "ILSVRC2012_devkit_t12")
    monkeypatch.chdir(tmp_path)
    inside = data.ImageFiles("val")
    assert (inside.classes, inside.labels) == (files.classes, files.labels)
    # an image the ground truth does not reach is a stray
    (val / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n3\n")
    short = data.ImageFiles(val)
    assert short.classes == [TABBY, ESPRESSO] and short.labels == [0, 1, -1, -1]
    assert short.strays == [val / f"ILSVRC2012_val_{k:08d}.JPEG" for k in (3, 4)]


def test_a_devkit_folder_among_synset_folders_is_no_class(tmp_path):
    val = tmp_path / "val"
    for wnid in (TABBY, ESPRESSO):
        (val / wnid).mkdir(parents=True)
        _photo("chelsea", (20, 20)).save(val / wnid / "a.JPEG")
    _devkit(val / "ILSVRC2012_devkit_t12", [TABBY, ESPRESSO], [1, 2])
    files = data.ImageFiles(val)  # the devkit sorted first: class 0, every label one off
    assert files.classes == [TABBY, ESPRESSO] and files.labels == [0, 1]
    assert data.model_classes(files, 1000).tolist() == [281, 967]
    # nor is it a class beside split folders: imagenet/ with it is still a folder of splits
    (tmp_path / "train").mkdir()
    _devkit(tmp_path / "ILSVRC2012_devkit_t12", [TABBY], [1])
    with pytest.raises(ValueError, match=r"holds the splits train, val; pass"):
        data.ImageFiles(tmp_path)


def test_a_broken_devkit_is_a_clear_error(tmp_path, monkeypatch):
    _flat_val(tmp_path / "val", n=2)
    devkit = tmp_path / "ILSVRC2012_devkit_t12"
    _devkit(devkit, [TABBY, TENCH], [1, 2])
    truth = devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text("1\n7\n")  # no class 7 in meta.mat
    with pytest.raises(ValueError, match=r"ground_truth\.txt' to be classes of .*meta\.mat', but 7 are not"):
        data.ImageFiles(tmp_path / "val")
    truth.write_text("1\nn01440764\n")
    with pytest.raises(ValueError, match=r"one class ID, 1\.\.1000, a line\), but it holds 'n01440764'"):
        data.ImageFiles(tmp_path / "val")
    truth.write_text("1\n2\n")
    (devkit / "data" / "meta.mat").write_bytes(b"not a mat file" * 10)
    with pytest.raises(ValueError, match=r"meta\.mat' to be the ILSVRC2012 devkit's meta\.mat"):
        data.ImageFiles(tmp_path / "val")
    (devkit / "data" / "meta.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"Expected the devkit's data/meta\.mat beside"):
        data.ImageFiles(tmp_path / "val")
    _flat_val(tmp_path / "other" / "val", n=2)
    _devkit(tmp_path / "other" / "ILSVRC2012_devkit_t12", [TABBY, TENCH], [1, 2])
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # scipy not installed: import fails
    with pytest.raises(ModuleNotFoundError, match=r"needs scipy .*pip install scipy"):
        data.ImageFiles(tmp_path / "other" / "val")


def test_a_path_that_is_a_file_is_told_apart_from_a_missing_one(tmp_path):
    _photo("chelsea", (8, 8)).save(tmp_path / "cat.JPEG")
    with pytest.raises(NotADirectoryError, match=rf"is a file; pass the folder that holds it "
                                                 rf"\('{tmp_path}'\)"):
        data.ImageFiles(tmp_path / "cat.JPEG")
    with pytest.raises(FileNotFoundError, match=r"'.*nope' does not exist\.$"):
        data.ImageFiles(tmp_path / "nope")


def test_listing_a_large_folder_costs_little_more_than_image_folders(tmp_path):
    # pathlib took 1.3 of the 1.5 s that 50,000 files took to list (ImageFolder: 0.09 s)
    import torchvision

    for c in range(50):
        (tmp_path / f"n{c:08d}").mkdir()
        for i in range(100):
            (tmp_path / f"n{c:08d}" / f"ILSVRC2012_val_{c * 100 + i:08d}.JPEG").touch()

    def best(make):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            make()
            times.append(time.perf_counter() - start)
        return min(times)

    theirs = best(lambda: torchvision.datasets.ImageFolder(str(tmp_path), loader=str))
    mine = best(lambda: data.ImageFiles(tmp_path))
    assert mine < 6 * theirs, f"{mine:.3f} s against ImageFolder's {theirs:.3f} s"  # was 16x


class _Grey(torch.utils.data.Dataset):
    """torchvision's MNIST as it yields its items: grey PIL images and int labels."""

    def __init__(self, mode="L"):
        self.images = [_photo("camera", (40, 30)).convert(mode), _photo("coins", (40, 30)).convert(mode)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i


def test_grey_images_of_a_dataset_take_the_pipelines_channels():
    # an RGB model's pipeline failed in Normalize: "output with shape [1, 224, 224] doesn't
    # match the broadcast shape [3, 224, 224]"
    import torchvision.transforms as T

    rgb = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor(),
                     T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    x, y = next(data.batches(_Grey(), batch_size=2, preprocess=rgb))
    want = torch.stack([rgb(img.convert("RGB")) for img in _Grey().images])
    assert x.shape == (2, 3, 16, 16) and y.tolist() == [0, 1]
    torch.testing.assert_close(x, want, rtol=0, atol=0)
    # a one-channel pipeline (an MNIST model's) gets grey images of colour ones
    grey = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor(), T.Normalize([0.1307], [0.3081])])
    x, _ = next(data.batches(_Grey("RGB"), batch_size=2, preprocess=grey))
    want = torch.stack([grey(img.convert("L")) for img in _Grey("RGB").images])
    assert x.shape == (2, 1, 16, 16)
    torch.testing.assert_close(x, want, rtol=0, atol=0)
    # Normalize(0.5, 0.5) normalises any channels: colour images stay colour (they went in grey
    # and an RGB model failed on them), as in torchvision's ImageFolder with that pipeline
    for mean in (0.5, torch.tensor(0.5)):
        alike = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor(), T.Normalize(mean, 0.25)])
        x, _ = next(data.batches(_Grey("RGB"), batch_size=2, preprocess=alike))
        want = torch.stack([alike(img) for img in _Grey("RGB").images])
        assert x.shape == (2, 3, 16, 16)
        torch.testing.assert_close(x, want, rtol=0, atol=0)


def _write_idx(path, array):
    import gzip
    import struct

    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(header + array.tobytes())


def _digits(folder, mean: float, n=20):
    """Idx files of ``n`` 28x28 crops of a real photo, scaled to a given mean pixel."""
    folder.mkdir(parents=True)
    crop = np.asarray(_photo("camera", (28, 28)), dtype=np.float64)
    images = np.clip(np.rint(crop * (mean * 255 / crop.mean())), 0, 255)
    for prefix in ("train", "t10k"):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.repeat(images[None], n, 0))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_mnist_and_fashion_mnist_roots_one_level_off_or_swapped(tmp_path):
    from training.data import build_dataset

    _digits(tmp_path / "data" / "mnist", 0.131)  # MNIST's mean pixel
    _digits(tmp_path / "data" / "fashion-mnist", 0.286)  # Fashion-MNIST's
    assert len(build_dataset("mnist6", str(tmp_path / "data" / "mnist"), train=False)) == 12
    # one level too high: the folder that holds them is named (not Fashion-MNIST's for MNIST)
    with pytest.raises(FileNotFoundError, match=rf"It is in '{tmp_path / 'data' / 'mnist'}': pass "
                                                r"that folder as `root` \(--data-root\)\.$"):
        build_dataset("mnist6", str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError, match=r"It is in '.*fashion-mnist'"):
        build_dataset("fmnist6", str(tmp_path / "data"))
    # a file, not a folder; a path that does not exist
    with pytest.raises(FileNotFoundError, match=r"-idx3-ubyte.gz' is a file; pass the folder"):
        build_dataset("mnist6", str(tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz"))
    with pytest.raises(FileNotFoundError, match=r"'.*nowhere' does not exist\."):
        build_dataset("mnist6", str(tmp_path / "nowhere"))
    # the two share file names: Fashion-MNIST's files given as MNIST trained it as MNIST
    with pytest.raises(ValueError, match=r"Expected the MNIST idx files, but .* holds "
                                         r"Fashion-MNIST's images \(mean pixel 0\.28"):
        build_dataset("mnist6", str(tmp_path / "data" / "fashion-mnist"))
    with pytest.raises(ValueError, match=r"holds MNIST's images \(mean pixel 0\.13"):
        build_dataset("fmnist6", str(tmp_path / "data" / "mnist"))


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="no local Fashion-MNIST")
def test_the_local_fashion_mnist_is_not_taken_for_mnist():
    from training.data import FASHION_MNIST_ROOT, build_dataset

    assert len(build_dataset("fmnist6", FASHION_MNIST_ROOT, train=False)) == 6000
    with pytest.raises(ValueError, match="holds Fashion-MNIST's images"):
        build_dataset("mnist6", FASHION_MNIST_ROOT, train=False)


def test_cifar10_root_one_level_off(tmp_path):
    from training.data import CIFAR10Dataset

    batches = tmp_path / "data" / "cifar10" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    (batches / "data_batch_1").write_bytes(b"")
    for root, said in ((batches, rf"It is in '{batches.parent}'"),  # too low
                       (tmp_path, rf"It is in '{batches.parent}'"),  # two levels too high
                       (batches / "data_batch_1", r"data_batch_1' is a file"),
                       (tmp_path / "nowhere", r"nowhere' does not exist")):
        with pytest.raises(FileNotFoundError, match=said):
            CIFAR10Dataset(str(root))


def test_numbered_class_folders_are_the_class_of_their_number(tmp_path):
    # ImageNetV2's layout (0/ ... 999/): sorted as text, folder "10" is the third, and was
    # taken for class 2 of an 11-class model
    for name in [str(i) for i in range(11)]:
        (tmp_path / name).mkdir()
        _photo("chelsea", (8, 8)).save(tmp_path / name / "a.jpeg")
    files = data.ImageFiles(tmp_path)
    assert files.classes[:4] == ["0", "1", "10", "2"]
    assert data.model_classes(files, 11).tolist() == [int(c) for c in files.classes]
    assert data.model_classes(files, 1000).tolist() == [int(c) for c in files.classes]
    assert data.model_classes(files, 10) is None  # folder 10 is no class of it: no accuracy
    # and the warning says which numbers the folders needed
    from torch import nn
    from torchvision import transforms as T

    import equifast as ef

    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 10))
    with pytest.warns(ef.EquifastWarning, match=r"No accuracy: .* the 11 class folders \(0, 1, 10, "
                                                r"\.\.\.\) are is unknown \(not one folder per class, "
                                                r"nor folders numbered 0 to 9, nor ImageNet-1k"):
        rep = ef.measure(model, str(tmp_path), transforms=[ef.Rotation(2)],
                         preprocess=T.Compose([T.Resize((12, 12)), T.ToTensor()]))
    assert rep.accuracy is None and rep.meta["n_images"] == 11


def test_one_synset_folder_given_alone_is_that_class(tmp_path, monkeypatch):
    # val/n02123045 given (a root one level too low) had no labels: no accuracy for its cats
    cats = tmp_path / "val" / TABBY
    cats.mkdir(parents=True)
    for i in range(2):
        _photo("chelsea", (20 + i, 20)).save(cats / f"{TABBY}_{i}.JPEG")
    files = data.ImageFiles(cats)
    assert files.classes == [TABBY] and [files[i][1] for i in range(2)] == [0, 0]
    assert data.model_classes(files, 1000).tolist() == [281] and files.strays == []

    # given as "." from inside it (cd val/n02123045), or through "..": it is named "" and ".."
    # there, and its images had no labels
    monkeypatch.chdir(cats)
    for given in (".", "./", os.path.join("..", TABBY)):
        files = data.ImageFiles(given)
        assert files.classes == [TABBY] and files.labels == [0, 0], given


def test_a_folder_under_the_home_folder_from_python(tmp_path, monkeypatch):
    # "~/imagenet/val" in Python (no shell expands it) "did not exist"
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "val" / TABBY).mkdir(parents=True)
    _photo("chelsea", (8, 8)).save(tmp_path / "val" / TABBY / "a.JPEG")
    files = data.ImageFiles("~/val")
    assert files.files == [tmp_path / "val" / TABBY / "a.JPEG"] and files.root == tmp_path / "val"
