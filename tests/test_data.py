"""Inputs: tensors, loaders, datasets, folders."""
import os
import re

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from equifast import data


def _collect(it):
    xs, ys = zip(*it)
    return torch.cat(xs), (None if ys[0] is None else torch.cat(ys))


def test_tensor_batches_and_limit():
    x, y = torch.rand(10, 3, 8, 8), torch.arange(10)
    bx, by = _collect(data.batches(x, y, batch_size=4, n_images=7))
    assert torch.equal(bx, x[:7]) and torch.equal(by, y[:7])
    bx, by = _collect(data.batches((x, y), batch_size=3))
    assert torch.equal(bx, x) and torch.equal(by, y)


def test_loader_and_dataset():
    x, y = torch.rand(9, 3, 8, 8), torch.arange(9)
    bx, by = _collect(data.batches(DataLoader(TensorDataset(x, y), batch_size=4), n_images=6))
    assert torch.equal(bx, x[:6]) and torch.equal(by, y[:6])
    bx, by = _collect(data.batches(TensorDataset(x, y), batch_size=4, n_images=5, seed=1))
    assert len(bx) == 5 and all(any(torch.equal(b, xi) for xi in x) for b in bx)


def test_image_folder_with_classes(tmp_path):
    for cls, color in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (20, 16), color).save(tmp_path / cls / f"{i}.png")
    import torchvision.transforms as T

    pre = T.Compose([T.Resize((8, 8)), T.ToTensor()])
    bx, by = _collect(data.batches(str(tmp_path), batch_size=3, preprocess=pre))
    assert bx.shape == (4, 3, 8, 8) and by.tolist() == [0, 0, 1, 1]
    assert float(bx[0, 0].mean()) == 1.0 and float(bx[3, 2].mean()) == 1.0


def test_bad_inputs():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(data.batches("/no/such/folder"))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        list(data.batches(torch.rand(3, 8, 8)))
    with pytest.raises(TypeError, match="Expected `images`"):
        list(data.batches(42))
    # a DataLoader that yields single images: the advice was to fix the Dataset's images
    x = torch.rand(3, 3, 8, 8)
    with pytest.raises(ValueError, match=r"shape \(3, 8, 8\), one image: a DataLoader with batch_size=None"):
        list(data.batches(DataLoader(TensorDataset(x, torch.arange(3)), batch_size=None)))
    with pytest.raises(ValueError, match=r"give each image its channel dim"):  # grey [N, H, W]
        list(data.batches(DataLoader(TensorDataset(x[:, 0]), batch_size=2)))
    with pytest.raises(ValueError, match="labels"):
        list(data.batches(torch.rand(3, 3, 8, 8), torch.arange(2)))


def test_an_empty_folder_path_is_refused_not_read_as_the_working_folder(tmp_path, monkeypatch):
    # Path("") is "."; an unset variable measured the images of wherever the process ran
    Image.new("RGB", (4, 4)).save(tmp_path / "here.png")
    monkeypatch.chdir(tmp_path)
    assert data.ImageFiles(".").paths == [os.path.join(".", "here.png")]  # "." itself is a folder
    for empty in ("", "  "):
        with pytest.raises(ValueError, match="`images` to be a folder of images, but got an empty path"):
            data.ImageFiles(empty)
        with pytest.raises(ValueError, match="an empty path"):
            list(data.batches(empty))


def test_pil_images_without_a_preprocess_are_refused_naming_it(tmp_path):
    # torch's "Could not infer dtype of PngImageFile", from a worker its whole traceback
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "a.png")
    for workers in (0, 1):
        with pytest.raises(TypeError, match="got PIL images .* no `preprocess`"):
            list(data.batches(str(tmp_path), num_workers=workers))
    import torchvision.transforms as T

    x, _ = next(data.batches(str(tmp_path), preprocess=T.ToTensor()))  # with one: the pixels
    assert (x * 255).round().tolist() == [[[[10] * 8] * 8, [[20] * 8] * 8, [[30] * 8] * 8]]


def test_an_image_too_large_for_memory_names_its_file(tmp_path, monkeypatch):
    # PIL's MemoryError is bare: under a memory limit, which of 50,000 files was unknown
    from PIL import ImageFile

    Image.new("RGB", (13, 7)).save(tmp_path / "big.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "small.png")
    files = data.ImageFiles(tmp_path)
    assert files[1][0].size == (4, 4)

    def load(self):
        raise MemoryError()

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(MemoryError, match=rf"^Could not decode {re.escape(repr(str(tmp_path / 'big.png')))} "
                                          r"\(13x7 pixels\): out of memory"):
        files[0]


def test_image_folder_modes_and_unreadable_file(tmp_path):
    # grayscale and RGBA files load as RGB; a file that is not an image names itself
    Image.new("L", (8, 8), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (8, 8), (0, 255, 0, 10)).save(tmp_path / "rgba.png")
    import torchvision.transforms as T

    bx, by = _collect(data.batches(str(tmp_path), batch_size=2, preprocess=T.ToTensor()))
    assert bx.shape == (2, 3, 8, 8) and (by is None or bool((by == -1).all()))
    assert torch.allclose(bx[0], torch.full((3, 8, 8), 128 / 255))
    assert bx[1, 1].eq(1.0).all() and bx[1, 0].eq(0.0).all()
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    for workers in (0, 1):  # from a worker process: the error itself, not its traceback
        with pytest.raises(ValueError) as err:
            list(data.batches(str(tmp_path), batch_size=2, preprocess=T.ToTensor(),
                              num_workers=workers))
        assert str(err.value).startswith(f"Expected {str(tmp_path / 'broken.jpg')!r} to be a "
                                         "readable image, but PIL could not decode it")
        assert "Traceback" not in str(err.value) and "\n" not in str(err.value)


def test_a_file_system_error_stays_an_os_error(tmp_path):
    # a file gone since the listing (or EIO on a network disk) was called an image PIL could
    # not decode, a ValueError, which a sweep does not retry; an undecodable file still is one
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    (tmp_path / "c.png").write_bytes(b"not a png")
    files = data.ImageFiles(str(tmp_path))
    (tmp_path / "b.png").unlink()
    assert files[0][0].size == (8, 8)
    with pytest.raises(FileNotFoundError) as err:
        files[1]
    assert not isinstance(err.value, ValueError) and str(tmp_path / "b.png") in str(err.value)
    with pytest.raises(ValueError, match="c.png' to be a readable image"):
        files[2]


def test_sixteen_bit_float_and_extreme_images(tmp_path):
    # convert("RGB") clipped a 16-bit PNG to white and a float image to 0/1: silent wrong scores
    import numpy as np
    import torchvision.transforms as T

    levels = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(levels).save(tmp_path / "deep.png")  # PIL reads it as I;16
    bx, _ = _collect(data.batches(str(tmp_path), batch_size=1, preprocess=T.ToTensor()))
    want = torch.from_numpy(np.rint(levels / 257) / 255).float()
    torch.testing.assert_close(bx[0], want.expand(3, 8, 8), atol=1e-6, rtol=0)
    (tmp_path / "pgm").mkdir()
    Image.fromarray(levels).save(tmp_path / "pgm" / "deep.pgm")  # PIL reads it as I, 16 bits
    bx, _ = _collect(data.batches(str(tmp_path / "pgm"), batch_size=1, preprocess=T.ToTensor()))
    torch.testing.assert_close(bx[0], want.expand(3, 8, 8), atol=1e-6, rtol=0)
    for name, image, said in (
            ("float.tif", Image.fromarray(np.full((8, 8), 0.5, np.float32)), "32-bit floats"),
            # levels of 0..255 in 32 bits were read as 16-bit ones: a black image, no warning
            ("int.tif", Image.fromarray(np.full((8, 8), 200, np.int32)),
             "32-bit or signed integers, whose range is unknown"),
            # refused as holding 32-bit integers, which it does not
            ("int16.tif", Image.fromarray(np.full((8, 8), 200, np.int16)),
             "but .*int16.tif' holds 32-bit or signed integers"),
            ("strip.png", Image.new("RGB", (400, 4)), "aspect ratio at most 32:1, but .* is 400x4")):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        image.save(folder / name)
        with pytest.raises(ValueError, match=said):
            _collect(data.batches(str(folder), batch_size=1, preprocess=T.ToTensor()))


def test_large_images_take_memory_in_proportion_to_their_pixels(tmp_path, monkeypatch):
    # a 16-bit image was scaled in float64 at once: an 8000x8000 PNG took 1.6 GB to read
    import tracemalloc

    import numpy as np

    levels = np.random.default_rng(0).integers(0, 65536, (2048, 2048)).astype(np.uint16)
    levels[0, :4] = [0, 128, 129, 65535]  # the rounding's edges
    img = Image.fromarray(levels)  # I;16
    tracemalloc.start()
    try:
        out = data._pil_rgb(img, tmp_path / "deep.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * levels.size, f"{peak / levels.size:.1f} bytes a pixel"  # float64: 24
    want = np.clip(np.rint(levels / 257), 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(out)[..., 0], want) and out.mode == "RGB"
    rgb = Image.new("RGB", (8, 8))
    assert data._pil_rgb(rgb, tmp_path / "rgb.png") is rgb  # not a second copy of its pixels
    # PIL's guard against decompression bombs names no file: the error says which one
    Image.new("RGB", (30, 30)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=r"at most 200 pixels .*decompression bombs.*bomb\.png"):
        data.ImageFiles(tmp_path)[0]


def test_images_of_several_sizes_after_preprocessing_are_a_clear_error(tmp_path):
    # torch.stack's "stack expects each tensor to be equal size" (from a worker: its traceback)
    import torchvision.transforms as T

    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    Image.new("RGB", (20, 16)).save(tmp_path / "b.png")

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([Image.new("RGB", (16, 16)), Image.new("RGB", (20, 16))])

    for images, workers in ((str(tmp_path), 0), (str(tmp_path), 1), (Stream(), 0)):
        with pytest.raises(ValueError, match=r"one size after preprocessing, but a batch holds "
                                             r"\[3, 16, 16\] and \[3, 16, 20\]") as err:
            list(data.batches(images, batch_size=2, preprocess=T.ToTensor(), num_workers=workers))
        assert "Traceback" not in str(err.value)
        assert "resizes and crops to one size" in str(err.value)

    class Modes(torch.utils.data.Dataset):  # grey, RGB and RGBA photos of one size
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return Image.new(("L", "RGB", "RGBA")[i], (16, 16)), i

    # the advice was to resize and crop, which the pipeline already did
    with pytest.raises(ValueError, match=r"holds \[1, 16, 16\] and \[3, 16, 16\]: images of several "
                                         r"channel counts .*\.convert\('RGB'\)"):
        list(data.batches(Modes(), batch_size=3, preprocess=T.ToTensor()))


def test_normalise_like_reads_every_kind_of_pipeline():
    import torchvision
    import torchvision.transforms as T

    x = torch.rand(2, 3, 8, 8)
    want = T.functional.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    preset = torchvision.models.ResNet18_Weights.DEFAULT.transforms()  # no steps, mean/std only
    compose = T.Compose([T.Resize(10), T.CenterCrop(8), T.ToTensor(),
                         T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    for pre in (preset, compose):
        torch.testing.assert_close(data.normalise_like(x, pre), want)
    assert data.input_size(preset) == 224 and data.input_size(compose) == 8
    assert data.input_size(T.Compose([T.ToTensor()]), default=99) == 99


def test_the_crop_of_timms_pipelines_of_every_crop_mode_is_read():
    # crop_mode "border" (deepseek_vit's) crops with timm's CenterCropOrPad: the embedded photos
    # were cut at the default 224 for it, and a model of one input size failed on them
    import timm.data

    for mode in ("center", "squash", "border"):
        for size in ((40, 40), (32, 48)):
            pipeline = timm.data.create_transform(input_size=(3, *size), crop_pct=0.9,
                                                  crop_mode=mode)
            made = pipeline(Image.new("RGB", (70, 50))).shape[-2:]  # what it makes of an image
            assert data.input_shape(pipeline) == tuple(made) == size, mode


def test_a_normalisation_by_numbers_normalises_the_embedded_photos():
    # Normalize(0.5, 0.5) takes any channels (a folder's images go through it as they are):
    # the embedded photos cut for it failed in list(0.5), "'float' object is not iterable"
    import torchvision.transforms as T

    x = torch.rand(2, 3, 8, 8)
    for mean, std in ((0.5, 0.25), (torch.tensor(0.5), torch.tensor(0.25))):  # numbers: RGB
        pre = T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor(), T.Normalize(mean, std)])
        torch.testing.assert_close(data.normalise_like(x, pre), (x - 0.5) / 0.25)
        photos = data.EmbeddedPhotos(2, size=8, seed=3, preprocess=pre)
        torch.testing.assert_close(torch.stack([photos[0], photos[1]]),
                                   (data.embedded_photos(2, size=8, seed=3) - 0.5) / 0.25)


def test_pipelines_of_v2_transforms_in_a_sequential_or_nested_are_read(tmp_path):
    # torchvision's scriptable pipeline is an nn.Sequential (of v2 transforms), without
    # `transforms`: its photos were cut at 224 and not normalised, a folder's grey image went in
    # grey (one channel for an RGB model)
    from torch import nn
    from torchvision import transforms as T
    from torchvision.transforms import v2

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    sequential = nn.Sequential(v2.ToImage(), v2.Resize(20), v2.CenterCrop(16),
                               v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std))
    nested = T.Compose([T.Compose([T.Resize(20), T.CenterCrop(16)]), T.ToTensor(),
                        T.Normalize(mean, std)])
    Image.new("L", (30, 24), 100).save(tmp_path / "grey.png")
    for pre in (sequential, nested):
        made = pre(Image.new("RGB", (30, 24)))
        assert data.input_shape(pre) == tuple(made.shape[-2:]) == (16, 16)
        photos = data.EmbeddedPhotos(2, size=data.input_shape(pre), seed=1, preprocess=pre)
        torch.testing.assert_close(torch.stack([photos[0], photos[1]]), T.functional.normalize(
            data.embedded_photos(2, size=16, seed=1), mean, std))
        x, _ = _collect(data.batches(tmp_path, preprocess=pre))
        torch.testing.assert_close(x[0], pre(Image.open(tmp_path / "grey.png").convert("RGB")))
    # a RandomApply's steps may not run: not the pipeline's crop
    maybe = T.Compose([T.RandomApply([T.CenterCrop(10)], p=0.5), T.Resize(20), T.CenterCrop(16)])
    assert data.input_shape(maybe) == tuple(maybe(Image.new("RGB", (30, 24))).size[::-1]) == (16, 16)


def test_image_folder_follows_linked_class_folders(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    for folder in (root / "a", elsewhere):
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (4, 4)).save(folder / f"{i}.png")
    (root / "b").symlink_to(elsewhere, target_is_directory=True)
    files = data.ImageFiles(root)
    assert len(files) == 6 and files.class_index == {"a": 0, "b": 1}


def test_image_folder_enters_each_real_folder_once(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "0.png")
    for name in ("a", "b"):  # links back up: a walk that follows them loops
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "up").symlink_to(tmp_path, target_is_directory=True)
    assert [p.name for p in data.ImageFiles(tmp_path).files] == ["0.png"]


def test_model_classes_of_class_folders(tmp_path):
    for wnid in ("n07920052", "n02123045"):  # espresso (967), tabby (281)
        (tmp_path / wnid).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / wnid / "0.png")
    files = data.ImageFiles(tmp_path)
    assert [files[i][1] for i in range(2)] == [0, 1]  # sorted folders, as ImageFolder
    assert data.model_classes(files, 1000).tolist() == [281, 967]  # ImageNet-1k's synsets
    assert data.model_classes(files, 2).tolist() == [0, 1]  # a model of these two classes
    assert data.model_classes(files, 10) is None  # some of 10 classes: which is unknown


def test_embedded_photos_are_grey_for_a_one_channel_pipeline():
    # as a folder's images are for it: colour photos failed in a grey model's first layer
    import torchvision.transforms as T

    grey = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor(), T.Normalize([0.1307], [0.3081])])
    rgb = T.Compose([T.ToTensor(), T.Normalize([0.5, 0.4, 0.3], [0.2, 0.3, 0.4])])
    colour = data.embedded_photos(4, size=16, seed=2)  # the same crops, [0, 1]
    photos = data.EmbeddedPhotos(4, size=16, seed=2, preprocess=grey)
    for i in range(4):
        pil = T.functional.to_pil_image(colour[i])  # 8 bits, converted by PIL
        assert photos[i].shape == (1, 16, 16)
        torch.testing.assert_close(photos[i], grey(pil.convert("L")), rtol=0, atol=2 / 255 / 0.3081)
    torch.testing.assert_close(data.EmbeddedPhotos(4, size=16, seed=2, preprocess=rgb)[3],
                               rgb(T.functional.to_pil_image(colour[3])), rtol=0, atol=1 / 255 / 0.2)


def test_embedded_photos_go_through_every_photo():
    import skimage.data

    x = data.embedded_photos(2 * len(data.PHOTOS), size=16, seed=0)
    for i in range(len(x)):  # crop i is of photo i mod 15: grey photos give three equal channels
        name = list(data.PHOTOS)[i % len(data.PHOTOS)]
        grey = getattr(skimage.data, name)().ndim == 2
        assert (torch.equal(x[i, 0], x[i, 1]) and torch.equal(x[i, 1], x[i, 2])) == grey, name
    with pytest.raises(ValueError, match="`n` to be an integer >= 1"):
        data.embedded_photos(0)


def test_image_folder_labels_suffixes_and_order(tmp_path):
    import random

    names = [f"class{i:02d}" for i in range(12)]
    for name in random.Random(0).sample(names, len(names)):  # made in a shuffled order
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "x.JPEG", format="JPEG")  # ImageNet's suffix
    (tmp_path / "class03" / "notes.txt").write_text("not an image")
    files = data.ImageFiles(tmp_path)
    assert files.labelled and files.classes == names
    assert [files[i][1] for i in range(len(files))] == list(range(12))
    # a loose image beside the class folders has no label (-1); the others keep theirs
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.PNG")
    files = data.ImageFiles(tmp_path)
    assert len(files) == 13 and files.labelled and files.strays == [tmp_path / "loose.PNG"]
    assert [files[i][1] for i in range(13)] == list(range(12)) + [-1]  # sorted: class.. < loose


def test_image_files_come_in_image_folders_order(tmp_path):
    # nested folders: c1/sub/a.jpg came before c1/x.jpg, so a seeded subset drew other images
    # than from torchvision's ImageFolder over the same folder
    import torchvision

    for rel in ("c1/x.jpg", "c1/sub/a.jpg", "c1/sub/b/z.jpg", "c1-b/y.jpg", "c0/m.jpg", "c1/a.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / rel)
    theirs = [path for path, _ in torchvision.datasets.ImageFolder(str(tmp_path)).samples]
    assert [str(p) for p in data.ImageFiles(tmp_path).files] == theirs


def test_model_classes_of_synset_like_folders_outside_imagenet(tmp_path):
    for wnid in ("n02123045", "n00000001"):  # the second is no ImageNet-1k class
        (tmp_path / wnid).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / wnid / "0.png")
    assert data.model_classes(data.ImageFiles(tmp_path), 1000) is None


def test_helpers_of_subsets_sizes_and_batches(tmp_path):
    import torchvision.transforms as T
    from torch.utils.data import Subset

    Image.new("RGB", (4, 4)).save(tmp_path / "0.png")
    files = data.ImageFiles(tmp_path)
    assert data.image_folder(Subset(Subset(files, [0]), [0])) is files
    assert data.input_size(T.Compose([T.Resize((8, 16))]), default=99) == 99  # not square
    # a squash to an oblong size without a crop: its photos were cut at the default 224 x 224
    squash = T.Compose([T.Resize((8, 16)), T.ToTensor()])
    assert data.input_shape(squash) == tuple(squash(Image.new("RGB", (30, 20))).shape[-2:]) == (8, 16)
    assert data.input_size(T.Compose([T.Resize((8, 8))]), default=99) == 8
    # a seeded subset keeps the dataset's order; another seed, other images
    x, y = torch.rand(20, 3, 4, 4), torch.arange(20)
    _, a = _collect(data.batches(TensorDataset(x, y), batch_size=3, n_images=6, seed=1))
    _, b = _collect(data.batches(TensorDataset(x, y), batch_size=3, n_images=6, seed=2))
    assert len(set(a.tolist())) == 6 and a.tolist() == sorted(a.tolist())
    assert a.tolist() != b.tolist()
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=rf"`batch_size` to be an integer >= 1, but got {bad!r}"):
            list(data.batches(x, batch_size=bad))


def test_default_loader_workers_leave_one_cpu_to_the_model():
    from equifast.data import default_num_workers, usable_cpus

    assert [default_num_workers(c) for c in (1, 2, 4, 9, 64)] == [0, 1, 3, 8, 8]
    assert default_num_workers() == min(8, usable_cpus() - 1) and usable_cpus() >= 1


class _TwoArgError(Exception):  # pickles, but cannot be rebuilt from its message alone
    def __init__(self, path, why):
        super().__init__(f"{path}: {why}")


class _TwoOf(torch.utils.data.Dataset):
    """Two items of one image, labelled ``label`` (default: their index)."""

    def __init__(self, image, label=None):
        self.image, self.label = image, label

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return self.image, (i if self.label is None else self.label)


class _FailsAtFive(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 5:
            raise _TwoArgError("/x/5.jpg", "bad")
        return torch.full((3, 4, 4), float(i)), 0


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        for i in range(4):
            yield torch.full((3, 4, 4), float(i)), 0


def test_worker_errors_come_back_as_themselves_with_the_workers_traceback():
    with pytest.raises(RuntimeError, match=r"^_TwoArgError: /x/5\.jpg: bad$") as err:
        list(data.batches(_FailsAtFive(), batch_size=2, num_workers=1))
    cause = str(err.value.__cause__)
    assert "Traceback (most recent call last)" in cause and "raise _TwoArgError" in cause
    # a stream has no items to wrap: read by workers as before
    x = torch.cat([b for b, _ in data.batches(_Stream(), batch_size=2, num_workers=1)])
    assert x[:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


class _Dicts(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"img": self.x[i]}


class _Paths(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return "a.png", 0


def test_loaders_and_datasets_of_every_shape_of_item():
    from torch.utils.data import DataLoader, TensorDataset

    x, y = torch.rand(5, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    for images in (DataLoader(TensorDataset(x), batch_size=2), TensorDataset(x)):  # (image,) items
        bx, by = _collect(data.batches(images, batch_size=2))
        assert torch.equal(bx, x) and by is None
    bx, by = _collect(data.batches(TensorDataset(x, y, y), batch_size=2))  # extra fields ignored
    assert torch.equal(bx, x) and torch.equal(by, y)
    with pytest.raises(TypeError, match=r"^Expected the DataLoader's batches to be a floating tensor"):
        list(data.batches(DataLoader(TensorDataset((x * 255).byte()), batch_size=2)))
    with pytest.raises(TypeError, match=r"^Expected the DataLoader's batches to be image tensors .* got dict"):
        list(data.batches(DataLoader([{"img": v} for v in x], batch_size=2)))
    with pytest.raises(TypeError, match=r"^Expected the Dataset's items to be images or \(image, label\) "
                                        r"pairs, but got a dict \(keys img\)"):
        list(data.batches(_Dicts(x), batch_size=2, preprocess=lambda v: v))
    # paths: torchvision's "Unexpected type <class 'str'>" named neither the data nor a way out
    with pytest.raises(TypeError, match=r"^Expected the Dataset's images to be PIL images, tensors "
                                        r"or HxW\(xC\) uint8 arrays, but got a str \('a.png'\); open"):
        list(data.batches(_Paths(), batch_size=2, preprocess=lambda v: v))


def test_every_class_folder_counts_and_hidden_files_are_not_images(tmp_path):
    from PIL import Image

    for name in ("c0", "c1", "c2"):
        (tmp_path / name).mkdir()
    for name in ("c0", "c2"):  # c1 holds no image: c2's images are still class 2
        Image.new("RGB", (4, 4)).save(tmp_path / name / "x.png")
    (tmp_path / ".ipynb_checkpoints").mkdir()  # a notebook's copies, and macOS's ._ files
    Image.new("RGB", (4, 4)).save(tmp_path / ".ipynb_checkpoints" / "x.png")
    (tmp_path / "c0" / "._x.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    files = data.ImageFiles(tmp_path)
    assert files.classes == ["c0", "c1", "c2"] and len(files) == 2
    assert [files[i][1] for i in range(2)] == [0, 2]
    assert data.model_classes(files, 3).tolist() == [0, 1, 2]


def test_images_of_types_not_read_are_named(tmp_path):
    # an animated GIF among the photos was left out without a word (measured 2 of 3)
    for name in ("a.png", "b.JPG"):
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG" if name.endswith("png") else "JPEG")
    Image.new("RGB", (4, 4)).save(tmp_path / "anim.gif")
    (tmp_path / "notes.txt").write_text("not an image: no word on it")
    with pytest.warns(UserWarning, match=r"1 image\(s\) under .* are of types equifast does not read "
                                         r"\(e\.g\. '.*anim\.gif'\) and are left out"):
        files = data.ImageFiles(tmp_path)
    assert len(files) == 2
    only = tmp_path / "gifs"
    only.mkdir()
    Image.new("RGB", (4, 4)).save(only / "x.gif")
    with pytest.raises(FileNotFoundError, match=r"found none \(1 of other types, e\.g\. '.*x\.gif'\)"):
        data.ImageFiles(only)


def test_grey_arrays_of_one_channel_and_named_labels(tmp_path):
    # HxWx1 uint8 arrays (the docs' HxW(xC)) failed in PIL ("Cannot handle this data type");
    # labels of class names in torch's "too many dimensions 'str'"
    import numpy as np
    import torchvision.transforms as T

    grey = (np.arange(8 * 8) % 256).astype(np.uint8).reshape(8, 8, 1)

    bx, by = _collect(data.batches(_TwoOf(grey, 3), batch_size=2, preprocess=T.ToTensor()))
    torch.testing.assert_close(bx[0], T.ToTensor()(Image.fromarray(grey[..., 0])))
    assert by.tolist() == [3, 3]
    for workers in (0, 1):
        with pytest.raises(ValueError, match=r"labels to be class indices of the model \(ints, -1 "
                                             r"for none\), but got 'cat'"):
            _collect(data.batches(_TwoOf(grey, "cat"), batch_size=2, preprocess=T.ToTensor(),
                                  num_workers=workers))


def test_datasets_of_arrays_iterables_and_pgm_files(tmp_path):
    # numpy items failed deep in torchvision, an IterableDataset with a preprocess or n_images
    # with "has no len()", and
    # .pgm files (which ImageFolder reads) were not images
    import numpy as np
    import torchvision.transforms as T

    pixels = (np.arange(8 * 8 * 3) % 256).astype(np.uint8).reshape(8, 8, 3)

    bx, by = _collect(data.batches(_TwoOf(pixels), batch_size=2, preprocess=T.ToTensor()))
    torch.testing.assert_close(bx[0], T.ToTensor()(Image.fromarray(pixels)))
    assert by.tolist() == [0, 1]

    class Pictures(torch.utils.data.IterableDataset):  # PIL images, preprocessed as they come
        def __iter__(self):
            return ((Image.fromarray(pixels), i) for i in range(5))

    bx, by = _collect(data.batches(Pictures(), batch_size=2, n_images=3, preprocess=T.ToTensor()))
    torch.testing.assert_close(bx, T.ToTensor()(Image.fromarray(pixels)).expand(3, 3, 8, 8))
    assert by.tolist() == [0, 1, 2]  # the first n_images, in order
    Image.new("L", (8, 8), 51).save(tmp_path / "gray.pgm")
    bx, _ = _collect(data.batches(str(tmp_path), batch_size=1, preprocess=T.ToTensor()))
    torch.testing.assert_close(bx[0], torch.full((3, 8, 8), 0.2))


def test_a_macos_zips_folder_is_no_class(tmp_path):
    # a zip made on macOS extracts __MACOSX/ (AppleDouble ._ files) beside the class folders:
    # it became class 0 (sorted before lower-case names), and with as many folders as the
    # model's classes every label was taken one class off
    import torchvision

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "x.png")
        (tmp_path / "__MACOSX" / name).mkdir(parents=True)
        (tmp_path / "__MACOSX" / name / "._x.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    files = data.ImageFiles(tmp_path)
    assert files.classes == ["cat", "dog"] and files.labels == [0, 1]
    assert data.model_classes(files, 2).tolist() == [0, 1]
    # the reference without the zip's folder
    import shutil

    shutil.rmtree(tmp_path / "__MACOSX")
    theirs = torchvision.datasets.ImageFolder(str(tmp_path))
    assert theirs.classes == files.classes and [y for _, y in theirs.samples] == files.labels


def test_a_folder_that_cannot_be_listed_is_an_error(tmp_path):
    # os.walk skipped a folder it could not list (no permission, a path too long): its images
    # were silently left out of the measurement, its class still counted
    import errno
    import os

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "x.png")
    # a folder in "b" whose path is longer than the system's limit (PATH_MAX: 4096 on Linux),
    # made relative to its parent: os.scandir of its full path fails with ENAMETOOLONG
    fd = os.open(tmp_path / "b", os.O_RDONLY)
    try:
        for _ in range(20):
            os.mkdir("d" * 250, dir_fd=fd)
            inner = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)
    with pytest.raises(OSError, match=r"Could not list the folder '.*/b/ddd.*' of images") as err:
        data.ImageFiles(tmp_path)
    assert err.value.errno == errno.ENAMETOOLONG


def test_a_dangling_link_is_named_as_one(tmp_path):
    # listed (ls shows it) but "No such file or directory", an OSError a sweep retried in vain
    import os

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    os.symlink(tmp_path / "moved" / "b.png", tmp_path / "b.png")
    files = data.ImageFiles(tmp_path)
    assert len(files) == 2 and files[0][0].size == (4, 4)
    with pytest.raises(ValueError, match=rf"'{tmp_path / 'b.png'}' to be a readable image, but it "
                                         rf"is a link to '{tmp_path / 'moved' / 'b.png'}', which "
                                         r"does not exist; fix or remove the link\.$"):
        files[1]


def test_a_class_folders_link_that_leads_nowhere_is_said(tmp_path):
    # a class folder linked from a disk that is not mounted was no class, its images left out
    # without a word (and the folders after it took its label)
    for name in ("a", "c"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "x.png")
    want = data.ImageFiles(tmp_path)
    (tmp_path / "b").symlink_to(tmp_path / "unmounted" / "b")
    with pytest.warns(UserWarning, match=r"1 link\(s\) in .* lead to nothing \(e\.g\. 'b' -> "
                                         r"'.*unmounted/b'\): a class folder among them is no "
                                         r"class, and its images are left out"):
        files = data.ImageFiles(tmp_path)
    assert files.classes == want.classes == ["a", "c"] and files.paths == want.paths


def test_a_nas_thumbnail_folder_is_not_images_of_a_class(tmp_path):
    # a Synology NAS keeps thumbnails in an @eaDir/ in each folder: they were measured as more
    # images of the class folder they lie in
    for name in ("cat", "dog"):
        thumbs = tmp_path / name / "@eaDir" / "x.png"
        thumbs.mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name / "x.png")
        Image.new("RGB", (2, 2)).save(thumbs / "SYNOPHOTO_THUMB_S.jpg")
    (tmp_path / "@eaDir").mkdir()
    files = data.ImageFiles(tmp_path)
    assert files.paths == [str(tmp_path / c / "x.png") for c in ("cat", "dog")]
    assert files.classes == ["cat", "dog"] and files.labels == [0, 1]


def test_a_disks_lost_and_found_is_no_class(tmp_path):
    # a data set on its own ext4 disk: lost+found/ (root's only) failed every other user's
    # listing, and for root it was an empty class: the folders were one class too many
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "x.png")
    want = data.ImageFiles(tmp_path)
    (tmp_path / "lost+found").mkdir()
    files = data.ImageFiles(tmp_path)
    assert files.classes == want.classes == ["cat", "dog"] and files.labels == want.labels == [0, 1]
    assert data.model_classes(files, 2).tolist() == [0, 1]
    # a disk Windows mounted (a USB drive) holds System Volume Information/ and $RECYCLE.BIN/ at
    # its root, a Synology share #recycle/ with the deleted images in their class folders: more
    # classes (no accuracy), and deleted images measured
    (tmp_path / "System Volume Information").mkdir()
    (tmp_path / "System Volume Information" / "WPSettings.dat").write_bytes(b"x")
    (tmp_path / "$RECYCLE.BIN").mkdir()
    (tmp_path / "#recycle" / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "#recycle" / "cat" / "deleted.png")
    files = data.ImageFiles(tmp_path)
    assert files.classes == want.classes and files.paths == want.paths
    assert files.labels == want.labels and data.model_classes(files, 2).tolist() == [0, 1]


def test_n_images_must_be_a_positive_integer():
    # -1 drew all the images of a Dataset but one (randperm(N)[:-1]), silently; 2.5 failed in a slice
    x = torch.rand(5, 3, 4, 4)
    ds = TensorDataset(x, torch.arange(5))
    for bad in (-1, 0, 2.5, True):
        for images in (ds, x):
            with pytest.raises(ValueError, match=rf"`n_images` to be an integer >= 1 \(or None: "
                                                 rf"all\), but got {bad!r}\.$"):
                list(data.batches(images, n_images=bad))
        with pytest.raises(ValueError, match="`n_images`"):
            data.seeded_subset(ds, bad, seed=0)
    import numpy as np

    assert len(data.seeded_subset(ds, np.int64(3), seed=0)) == 3  # a numpy integer is one
    assert sum(len(b) for b, _ in data.batches(ds, n_images=5, batch_size=2)) == 5


def test_deep_images_of_a_dataset_without_normalisation_are_scaled_as_a_folders():
    # a pipeline without Normalize took a Dataset's 16-bit levels as they were (ToTensor: int16,
    # 0..65535) and 32-bit floats of unknown range; from a folder they were scaled and refused
    import numpy as np
    import torchvision.transforms as T

    levels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000

    bx, by = _collect(data.batches(_TwoOf(Image.fromarray(levels)), batch_size=2,
                                   preprocess=T.ToTensor()))
    want = torch.from_numpy(np.rint(levels / 257) / 255).float()  # as test_sixteen_bit_... has it
    assert bx.shape == (2, 1, 8, 8) and by.tolist() == [0, 1]
    torch.testing.assert_close(bx, want.expand(2, 1, 8, 8), atol=1e-6, rtol=0)
    floats = Image.fromarray(np.full((8, 8), 0.5, np.float32))
    with pytest.raises(ValueError, match="32-bit floats, whose range is unknown"):
        list(data.batches(_TwoOf(floats), batch_size=2, preprocess=T.ToTensor()))
    with pytest.raises(ValueError, match="32-bit or signed integers, whose range is unknown"):
        list(data.batches(_TwoOf(Image.fromarray(levels.astype(np.int32))), batch_size=2,
                          preprocess=T.ToTensor()))


def test_embedded_photos_refuse_a_size_or_count_that_is_no_positive_integer():
    # size 0 failed deep in F.interpolate, 2.5 in torch.empty, n=2.0 in range()
    for kw, name in ((dict(size=0), "size"), (dict(size=2.5), "size"), (dict(n=2.0), "n"),
                     (dict(n=0), "n")):
        with pytest.raises(ValueError, match=rf"Expected `{name}` to be an integer >= 1, but got "):
            data.embedded_photos(**{"n": 2, **kw})
    assert data.embedded_photos(2, size=8).shape == (2, 3, 8, 8)
    # a seed torch cannot take ("manual_seed expected a long"), here and in batches
    for seed in ("3", 2.5, -1 - 2**63):
        with pytest.raises(ValueError, match=r"Expected `seed` to be an integer in "):
            data.embedded_photos(2, size=8, seed=seed)
        with pytest.raises(ValueError, match=r"Expected `seed` to be an integer in "):
            next(data.batches(data.EmbeddedPhotos(4, size=8), n_images=2, seed=seed))
    assert torch.equal(data.embedded_photos(2, size=8, seed=torch.tensor(3)),
                       data.embedded_photos(2, size=8, seed=3))



def test_two_class_folders_linking_to_one_folder_both_hold_its_images(tmp_path):
    # the second link's class was silently empty (its real folder was "seen" already);
    # torchvision's ImageFolder lists the images under both classes
    from torchvision.datasets import ImageFolder

    root, real = tmp_path / "root", tmp_path / "real"
    for folder in (root / "a", real / "deep"):
        folder.mkdir(parents=True)
    for name in ("0.png", "1.png", "deep/2.png"):
        Image.new("RGB", (4, 4)).save(real / name)
    Image.new("RGB", (4, 4)).save(root / "a" / "x.png")
    for name in ("b", "c"):
        (root / name).symlink_to(real, target_is_directory=True)
    files = data.ImageFiles(root)
    assert list(zip(files.paths, files.labels)) == ImageFolder(root).samples
    assert files.labels == [0, 1, 1, 1, 2, 2, 2]
    (root / "a" / "up").symlink_to(root, target_is_directory=True)  # a loop still ends
    (root / "b" / "again").symlink_to(real, target_is_directory=True)  # and one class lists once
    again = data.ImageFiles(root)
    assert (again.paths, again.labels) == (files.paths, files.labels)


def test_image_folder_does_not_import_torchvision(tmp_path):
    # importing torchvision takes seconds (torch._dynamo, triton), for every measure of a
    # tensor: nothing is a torchvision dataset unless torchvision is loaded already
    import subprocess
    import sys

    (tmp_path / "c").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "c" / "a.png")
    code = f"""if True:
        import sys, torch
        from torch.utils.data import DataLoader, TensorDataset
        from equifast import data
        assert data.image_folder(torch.rand(2, 3, 4, 4)) is None
        assert data.image_folder(DataLoader(TensorDataset(torch.rand(2, 3, 4, 4)))) is None
        files = data.ImageFiles({str(tmp_path)!r})
        assert data.image_folder(files) is files
        print("torchvision" in sys.modules)
        from torchvision.datasets import ImageFolder  # loaded: its folders are seen
        print(data.image_folder(ImageFolder({str(tmp_path)!r})).classes)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["False", "['c']"], out.stdout


def test_a_loaders_count_is_the_images_it_yields():
    # its dataset's length counted images its sampler leaves out or drop_last drops: the
    # progress total, and a one-image across_images run refused only after it was measured
    from torch.utils.data import BatchSampler, SequentialSampler, SubsetRandomSampler

    x = torch.rand(7, 3, 4, 4)
    loaders = [DataLoader(TensorDataset(x), batch_size=2),
               DataLoader(TensorDataset(x), batch_size=3, drop_last=True),
               DataLoader(TensorDataset(x), batch_size=2, sampler=SubsetRandomSampler([5])),
               DataLoader(TensorDataset(x), batch_size=4, sampler=SubsetRandomSampler(range(6)),
                          drop_last=True)]
    for loader in loaders:
        assert data.count(loader) == sum(len(b[0]) for b in loader)
    # batches of the user's own sampler: their sizes are its; no count is better than a wrong one
    own = DataLoader(TensorDataset(x), batch_sampler=BatchSampler(SequentialSampler(range(3)), 2, False))
    assert data.count(own) is None
