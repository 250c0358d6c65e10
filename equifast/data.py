"""Where images come from: tensors, loaders, datasets, folders, and the embedded photos.

:func:`batches` turns any supported input into a stream of ``(x, y)`` batches of model-ready
tensors (``y`` is ``None`` without labels). :func:`embedded_photos` is the offline default:
seeded crops of the real photographs that scikit-image ships.
"""
from __future__ import annotations

import os
import pickle
import re
import sys
import traceback
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from ._checks import check_integer, checked_seed

__all__ = ["batches", "embedded_photos", "EmbeddedPhotos", "PHOTOS", "ImageFiles", "count", "normalise_like",
           "input_size", "input_shape", "image_folder", "ClassFolders", "model_classes", "seeded_subset",
           "check_num_workers", "usable_cpus", "default_num_workers"]

# Real photographs shipped inside scikit-image (no download): name -> what it shows.
PHOTOS = {
    "chelsea": "a tabby cat", "coffee": "a cup of coffee", "astronaut": "an astronaut",
    "rocket": "a rocket on its pad", "immunohistochemistry": "stained tissue",
    "hubble_deep_field": "galaxies", "colorwheel": "a colour wheel", "camera": "a photographer",
    "coins": "coins", "moon": "the moon's surface", "brick": "a brick wall", "grass": "grass",
    "gravel": "gravel", "clock": "a clock", "retina": "a retina",
}

_SYNSET = re.compile(r"n\d{8}")  # an ImageNet (WordNet) class id, e.g. n02123045

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

Batch = Tuple[torch.Tensor, Optional[torch.Tensor]]


def _photo_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def embedded_photos(n: int = 256, size=224, seed: int = 0) -> torch.Tensor:
    """``n`` seeded random crops of scikit-image's real photos, ``[n, 3, size, size]`` in [0, 1]
    (``[n, 3, H, W]`` for a ``size`` of ``(H, W)``).

    Each crop takes a random square (a rectangle of the aspect of ``(H, W)``) whose shorter
    side covers 35-100% of the largest such crop of a photo, resized to ``size`` with
    antialiasing. No download: the photos ship with scikit-image. All at once:
    :class:`EmbeddedPhotos` cuts the same crops one at a time.
    """
    photos = EmbeddedPhotos(n, size=size, seed=seed)
    out = torch.empty(n, 3, *photos.shape)
    for i in range(n):
        out[i] = photos[i]
    return out


class EmbeddedPhotos(Dataset):
    """The crops of :func:`embedded_photos` (item ``i`` is its ``[i]``), each cut when it is read,
    so that memory does not grow with ``n`` (2000 crops at 224 pixels are 1.2 GB at once);
    normalised as ``preprocess`` normalises (:func:`normalise_like`) when it is given, grey
    (``[1, H, W]``) where it normalises one channel, as a folder's images are. Items
    are model-ready tensors without labels."""

    def __init__(self, n: int = 256, size=224, seed: int = 0, preprocess=None):
        n = check_integer("`n`", n)  # torch failed later
        # (H, W): a model that takes only a non-square input (a ViT built at 64 x 96)
        if isinstance(size, (tuple, list)) and len(size) == 2:
            self.shape = (check_integer("`size`", size[0], 1), check_integer("`size`", size[1], 1))
        else:
            self.shape = (check_integer("`size`", size),) * 2
        self.size, self.preprocess = size, preprocess
        seed = checked_seed(seed)  # torch's "manual_seed expected a long" named no argument
        # a grey model's pipeline: colour photos failed in its first layer, "expected input to
        # have 1 channels, but got 3", where a folder's images are made grey for it (_prepared)
        self.grey = preprocess is not None and _pipeline_mode(preprocess) == "L"
        shapes = [img.shape[-2:] for img in self._load()]
        gen = torch.Generator().manual_seed(seed)
        self.crops = []  # (photo, top, left, height, width) of each image: the draws, in order
        aspect = self.shape[1] / self.shape[0]
        for i in range(n):
            h, w = shapes[i % len(shapes)]
            # a square's side is the photo's shorter side; a wide crop's at most w / aspect
            side = int(min(h, w / aspect) * (0.35 + 0.65 * torch.rand((), generator=gen).item()))
            across = min(w, max(1, int(round(side * aspect))))
            top = int(torch.randint(0, h - side + 1, (), generator=gen))
            left = int(torch.randint(0, w - across + 1, (), generator=gen))
            self.crops.append((i % len(shapes), top, left, side, across))

    _photos = None  # the photos as [3, H, W] floats in [0, 1], read once a process

    @classmethod
    def _load(cls):
        if cls._photos is None:
            import skimage.data

            cls._photos = [torch.from_numpy(_photo_rgb(getattr(skimage.data, name)()))
                           .permute(2, 0, 1).float() / 255 for name in PHOTOS]
        return cls._photos

    def __len__(self):
        return len(self.crops)

    def __getitem__(self, i):
        import torch.nn.functional as F

        k, top, left, side, across = self.crops[i]
        crop = self._load()[k][:, top:top + side, left:left + across].unsqueeze(0)
        x = F.interpolate(crop, size=self.shape, mode="bilinear", antialias=True,
                          align_corners=False)[0].clamp(0, 1)
        if self.grey:  # PIL's convert("L") weights, as torchvision's
            from torchvision.transforms.functional import rgb_to_grayscale
            x = rgb_to_grayscale(x)
        return x if self.preprocess is None else normalise_like(x, self.preprocess)


class ImageFiles(Dataset):
    """The images of a folder (recursively, following links: two class folders that link to
    one folder both hold its images, as in ImageFolder), sorted by path; labels from class
    subfolders.

    With class subfolders (ImageNet's ``val/<wnid>/*.JPEG`` layout) the label of an image is
    the index of its folder in sorted order, as in ``torchvision.datasets.ImageFolder``; a
    flat folder has no labels, nor do images beside the class folders (``strays``: label -1),
    but for a folder named by a synset (``val/n02123045`` given alone): its images are that class.
    The flat ILSVRC2012 validation folder (``ILSVRC2012_val_00000001.JPEG``, ...) takes its
    labels from Kaggle's ``LOC_val_solution.csv`` where it lies in the folder or up to four
    folders above it (its ``ILSVRC/Data/CLS-LOC/val`` layout), or else from the official devkit's
    folder ``ILSVRC2012_devkit_t12`` (``data/ILSVRC2012_validation_ground_truth.txt`` and
    ``data/meta.mat``, read with scipy) found the same way: the classes are then the sorted
    synsets, the order ImageNet models are trained with; its images the file does not name, and
    files among them not named as its images, are ``strays`` (label -1; ``strays_why`` says
    which). Hidden files and folders, a macOS zip's
    ``__MACOSX``, a NAS's ``@eaDir`` and ``#recycle``, a disk's ``lost+found``,
    ``System Volume Information`` and ``$RECYCLE.BIN`` and the devkit's folder are no
    images or classes; a folder
    that cannot be listed is an ``OSError``. A folder of split folders (``imagenet/`` holding
    ``train/`` and ``val/``) is refused, naming the split to give.
    :func:`model_classes` says which class of a model each label is.
    """

    def __init__(self, root, transform: Optional[Callable] = None):
        if isinstance(root, str) and not root.strip():
            # Path("") is ".": an unset variable read the working folder's images, or failed
            # naming a folder that was never given
            raise ValueError("Expected `images` to be a folder of images, but got an empty path "
                             f"({root!r}: an unset variable?); pass the folder.")
        root = Path(root).expanduser()  # "~/imagenet/val" from Python: no shell expanded it
        if not root.is_dir():
            if root.is_file():
                raise NotADirectoryError(
                    f"Expected `images` to be a folder of images, but {str(root)!r} is a file; "
                    f"pass the folder that holds it ({str(root.parent)!r}).")
            raise FileNotFoundError(
                f"Expected `images` to be a folder of images, but {str(root)!r} does not exist.")
        # the class folders (sorted: folder i is class i), listed once for both uses
        entries = list(os.scandir(root))
        subfolders = sorted(e.name for e in entries if e.is_dir() and _data_folder(e.name))
        _check_not_splits(root, subfolders)
        # links that lead nowhere (a class folder linked from a disk not mounted): no folder, so
        # no class, and its images were left out without a word (a link named as an image
        # fails when it is read, naming it)
        gone = sorted(e.name for e in entries if e.is_symlink() and not os.path.exists(e.path)
                      and _data_folder(e.name) and not _image_name(e.name))
        if gone:
            from .warning import warn
            warn(f"{len(gone)} link(s) in {str(root)!r} lead to nothing (e.g. {gone[0]!r} -> "
                 f"{os.readlink(os.path.join(root, gone[0]))!r}): a class folder among them is "
                 "no class, and its images are left out; mount or fix its target, or remove "
                 "the link.")
        # torchvision ImageFolder's order (class folders by name; in each, folders by path,
        # files by name), so that a seeded n_images subset draws the same images as from it.
        # Strings, not Paths: pathlib took 1.3 s of 1.4 to list 50,000 files.
        top = str(root)
        unread: List[str] = []
        found = sorted(_image_paths(top, unread))
        unread.sort()
        if not found:
            raise FileNotFoundError(
                f"Expected image files ({', '.join(IMAGE_SUFFIXES)}) under {top!r}, but found none"
                + (f" ({len(unread)} of other types, e.g. {unread[0]!r})." if unread else ".")
            )
        if unread:
            from .warning import warn
            warn(f"{len(unread)} image(s) under {top!r} are of types equifast does not read (e.g. "
                 f"{unread[0]!r}) and are left out; it reads {', '.join(IMAGE_SUFFIXES)}.")
        self.paths = [folder + os.sep + name for _, folder, name in found]
        # every class folder counts, an empty one too: folder i is class i of the model
        self.labelled = any(folder != top for _, folder, _ in found)
        classes = subfolders if self.labelled else []
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.labels = [self.class_index[cls] if folder != top else -1 for cls, folder, _ in found]
        # its name as written out: "." and "../n02123045" are named "" and ".." (no class)
        name = os.path.basename(os.path.abspath(top))
        if not self.labelled and _SYNSET.fullmatch(name):
            # one ImageNet class folder given (a root one level too low): its images are that class
            classes, self.labels, self.labelled = [name], [0] * len(found), True
            self.class_index = {name: 0}
        self.strays_why = ""  # why the strays have no label, where not beside class folders
        if not self.labelled:
            names = [name for _, _, name in found]
            solution = _val_solution(root, names)
            if solution is not None:
                classes, self.labels, source = solution
                self.class_index = {c: i for i, c in enumerate(classes)}
                self.labelled = True
                self.strays_why = _val_strays_why(root, names, self.labels, source)
        self.strays = [Path(p) for p, y in zip(self.paths, self.labels) if y < 0] if classes else []
        self.classes = classes
        self.root = root
        self.transform = transform
        self._files = None

    @property
    def files(self) -> List[Path]:
        """The image files, in order (``paths``, the same as strings)."""
        if self._files is None:  # made when asked: 50,000 Paths take a second to make
            self._files = [Path(p) for p in self.paths]
        return self._files

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        path = self.paths[i]
        size = None
        try:
            with Image.open(path) as img:
                size = img.size
                img.load()
        except MemoryError as e:  # PIL's is bare: a large image under a memory limit named no file
            pixels = f" ({size[0]}x{size[1]} pixels)" if size else ""
            raise MemoryError(f"Could not decode {str(path)!r}{pixels}: out of memory; downscale "
                              "it, or give the process more memory.") from e
        except Image.DecompressionBombError as e:  # PIL's own message names no file
            raise ValueError(f"Expected images of at most {2 * Image.MAX_IMAGE_PIXELS} pixels "
                             f"(PIL's guard against decompression bombs), but {str(path)!r} is "
                             f"larger ({e}); downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS "
                             "if the file is trusted.") from e
        except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for unreadable files
            if isinstance(e, FileNotFoundError) and os.path.islink(path):
                # listed, as ls lists it, but "no such file": a link that fails again at a retry
                raise ValueError(f"Expected {str(path)!r} to be a readable image, but it is a link "
                                 f"to {os.readlink(path)!r}, which does not exist; fix or remove "
                                 "the link.") from e
            if isinstance(e, OSError) and e.errno is not None:
                # the file system's (EIO, a stale NFS handle, a file gone since the listing),
                # naming the file: an OSError, which a sweep's retry_exceptions retries, where a
                # file PIL cannot decode (no errno) would fail again
                raise
            raise ValueError(f"Expected {str(path)!r} to be a readable image, but PIL could not decode "
                             f"it ({e}); remove or replace that file.") from e
        img = _pil_rgb(img, path)
        x = self.transform(img) if self.transform else img
        return x, self.labels[i]


# Names of the folders of a data set's splits: a folder holding only these is one level too high.
_SPLITS = ("val", "validation", "valid", "test", "train", "training")


def _check_not_splits(root: Path, subfolders: List[str], argument: str = "`images`") -> None:
    """Raise ValueError when ``root``'s ``subfolders`` (not hidden) are split folders (``train/``,
    ``val/``) rather than class folders: measured as it is, the splits were two classes and
    training images were drawn. ``argument``: what gave ``root``, as the message names it."""
    splits = [name for name in subfolders if name.lower() in _SPLITS]
    if not splits or len(splits) != len(subfolders):
        return
    pick = min(splits, key=lambda name: _SPLITS.index(name.lower()))  # validation first
    raise ValueError(
        f"Expected {argument} to be the folder of one split (its class folders, as "
        f"val/n01440764/...), but {str(root)!r} holds the splits {', '.join(sorted(splits))}; "
        f"pass {str(root / pick)!r}.")


# The flat ILSVRC2012 validation layout: an image's name (of any type read: a copy converted to
# PNG had no labels, and no word said why), and the files of its labels: Kaggle's
# csv, or the official devkit's folder (its ground truth numbers the classes in the devkit's
# order, which meta.mat maps to synsets: the models' order is the sorted synsets)
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})(?:%s)" % "|".join(map(re.escape, IMAGE_SUFFIXES)),
                       re.IGNORECASE)
_VAL_ID = re.compile(r"ILSVRC2012_val_(\d{8})", re.IGNORECASE)
_VAL_SOLUTION = "LOC_val_solution.csv"
DEVKIT = "ILSVRC2012_devkit_t12"
_GROUND_TRUTH = ("data", "ILSVRC2012_validation_ground_truth.txt")
_META = ("data", "meta.mat")


def _val_solution(root: Path, names: List[str]) -> Optional[Tuple[List[str], List[int], str]]:
    """``(classes, labels, the file read)`` of a flat folder of ILSVRC2012 validation images
    from the first folder of ``root`` and up to four above it (then of the folder it links to
    and up to four above that) that holds Kaggle's ``LOC_val_solution.csv`` or the devkit's
    folder ``ILSVRC2012_devkit_t12`` (the csv first): the classes are the sorted synsets of the
    file (the models' order), -1 an image it does not name or whose name is not ILSVRC2012's
    (a stray, as an image beside class folders). ``None`` when no name is ILSVRC2012's or
    neither file is found (with a warning: no labels)."""
    ids = [_VAL_NAME.fullmatch(n) for n in names]
    if not any(ids):
        return None
    here, real = root.absolute(), root.resolve()  # the folders above a relative "val" too
    # and above the folder a linked val/ leads to (~/data/val -> /mnt/ILSVRC/Data/CLS-LOC/val)
    synset = source = None
    for folder in dict.fromkeys([here, *here.parents][:5] + [real, *real.parents][:5]):
        if (folder / _VAL_SOLUTION).is_file():
            source = folder / _VAL_SOLUTION
            synset = _read_val_solution(source)
            break
        if folder.joinpath(DEVKIT, *_GROUND_TRUTH).is_file():
            source = folder.joinpath(DEVKIT, *_GROUND_TRUTH)
            synset = _read_devkit(folder / DEVKIT)
            break
    if synset is None:
        from .warning import warn

        warn(f"{str(root)!r} holds ILSVRC2012 validation images without class folders, and neither "
             f"Kaggle's {_VAL_SOLUTION} nor the devkit's folder {DEVKIT} (with "
             f"{'/'.join(_GROUND_TRUTH)} and {'/'.join(_META)}) lies in it or up to four folders "
             "above it: they have no labels (no top-1 accuracy). Put one of them beside the "
             "images, or sort them into synset folders. (The numbers of "
             f"{_GROUND_TRUTH[1]} alone are the devkit's class order, not the models' sorted "
             "synsets: do not use them as labels.)")
        return None
    classes = sorted(set(synset.values()))
    index = {c: i for i, c in enumerate(classes)}
    return classes, [index.get(synset.get(int(m.group(1))), -1) if m else -1 for m in ids], str(source)


def _val_strays_why(root: Path, names: List[str], labels: List[int], source: str) -> str:
    """Why the images of a flat ILSVRC2012 validation folder labelled ``-1`` have no label:
    how many are not named as its images, how many the labels' ``source`` has no row for."""
    odd = [n for n in names if not _VAL_NAME.fullmatch(n)]
    unnamed = [n for n, y in zip(names, labels) if y < 0 and _VAL_NAME.fullmatch(n)]
    why = [f"{len(odd)} not named as ILSVRC2012 validation images (ILSVRC2012_val_00000001.JPEG, "
           f"...; e.g. {odd[0]!r})"] if odd else []
    why += [f"{len(unnamed)} without a row there (e.g. {unnamed[0]!r})"] if unnamed else []
    return f"of {str(root)!r} are not labelled by {source!r}: {', '.join(why)}"


def _read_val_solution(path: Path) -> dict:
    """``{image number: synset}`` of Kaggle's ``LOC_val_solution.csv`` (ValueError if it is not one)."""
    synset = {}
    with open(path, newline="") as f:
        for row in f.read().splitlines()[1:]:  # ImageId,PredictionString ("n01751748 x y x y ...")
            image, _, boxes = row.partition(",")
            number = _VAL_ID.fullmatch(image.strip())
            if boxes.split() and number:
                synset[int(number.group(1))] = boxes.split()[0]
    if not synset or not all(_SYNSET.fullmatch(s) for s in synset.values()):
        raise ValueError(f"Expected {str(path)!r} to be ImageNet's {_VAL_SOLUTION} (rows ImageId,"
                         "PredictionString starting with a synset, as ILSVRC2012_val_00000001,"
                         "n01751748 ...), but it is not; move it away or replace it.")
    return synset


def _read_devkit(devkit: Path) -> dict:
    """``{image number: synset}`` of the ILSVRC2012 devkit's folder: line ``k`` of its
    validation ground truth is the ILSVRC2012_ID of image ``k``, which ``data/meta.mat`` maps to
    a synset (as ``torchvision.datasets.imagenet.parse_devkit_archive`` reads them)."""
    truth, meta = devkit.joinpath(*_GROUND_TRUTH), devkit.joinpath(*_META)
    lines = truth.read_text(errors="replace").split()
    if not lines or not all(v.isdecimal() and v.isascii() for v in lines):
        bad = next((v for v in lines if not (v.isdecimal() and v.isascii())), "")
        raise ValueError(f"Expected {str(truth)!r} to be the devkit's ground truth (one class ID, "
                         f"1..1000, a line), but it {'holds ' + repr(bad[:40]) if bad else 'is empty'}; "
                         f"extract {DEVKIT}.tar.gz again.")
    if not meta.is_file():
        raise FileNotFoundError(f"Expected the devkit's {'/'.join(_META)} beside {str(truth)!r} (it "
                                "maps its class IDs to synsets), but it is not there; extract "
                                f"{DEVKIT}.tar.gz again.")
    wnid = _devkit_synsets(meta)
    missing = sorted({int(v) for v in lines} - set(wnid))
    if missing:
        raise ValueError(f"Expected the class IDs of {str(truth)!r} to be classes of {str(meta)!r}, "
                         f"but {', '.join(map(str, missing[:5]))} are not; extract "
                         f"{DEVKIT}.tar.gz again.")
    return {k: wnid[int(v)] for k, v in enumerate(lines, 1)}


def _devkit_synsets(meta: Path) -> dict:
    """``{ILSVRC2012_ID: synset}`` of the devkit's ``meta.mat``, its leaves (the 1000 classes;
    the other synsets are their WordNet ancestors)."""
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise ModuleNotFoundError(
            f"Reading ImageNet labels from the devkit's {str(meta)!r} needs scipy (scipy.io."
            f"loadmat), which does not import here ({err}); install it with `pip install scipy`, "
            f"or put Kaggle's {_VAL_SOLUTION} beside the images instead.", name="scipy") from err
    try:
        synsets = loadmat(meta, squeeze_me=True)["synsets"]
        ids, wnids, children = (np.atleast_1d(synsets[k]).tolist()
                                for k in ("ILSVRC2012_ID", "WNID", "num_children"))
        out = {int(i): str(w) for i, w, n in zip(ids, wnids, children) if int(n) == 0}
    except Exception as err:  # noqa: BLE001 -- scipy's MatReadError, IndexError, KeyError, ...
        raise ValueError(f"Expected {str(meta)!r} to be the ILSVRC2012 devkit's meta.mat (a struct "
                         "array `synsets` with fields ILSVRC2012_ID, WNID, num_children), but it "
                         f"could not be read as one ({type(err).__name__}: {err}); extract "
                         f"{DEVKIT}.tar.gz again.") from err
    if not out or not all(_SYNSET.fullmatch(w) for w in out.values()):
        raise ValueError(f"Expected the WNIDs of {str(meta)!r} to be synsets (as n01440764), but "
                         f"got {', '.join(sorted(set(out.values()))[:3]) or 'none'}; extract "
                         f"{DEVKIT}.tar.gz again.")
    return out


# Longest side / shortest side beyond which an image is refused: resizing the short side to
# the model's size first made a 12000x1 strip a 3-million-pixel-wide image (gigabytes).
MAX_ASPECT = 32


# Formats Pillow opens as mode "I" at 16 bits a level (PGM/PPM; PNG before Pillow 10): TIFF's
# "I" is 32-bit.
_SIXTEEN_BIT_AS_I = frozenset({"PNG", "PPM"})


def _pil_rgb(img, path: Path):
    """``img`` as 8-bit RGB, as stored (EXIF orientation is not applied, as torchvision's
    ImageFolder and timm's evaluation read images, so accuracies compare with theirs); 16-bit
    images are scaled to 8 bits, which ``convert`` would clip to white. 32-bit float and integer
    images and extreme aspect ratios are refused (``ValueError``)."""
    from PIL import Image

    w, h = img.size
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ValueError(f"Expected images of aspect ratio at most {MAX_ASPECT}:1, but {str(path)!r} "
                         f"is {w}x{h}; crop it or remove it.")
    if img.mode == "F":  # their range (0..1? 0..255?) is not in the file
        raise ValueError(f"Expected an 8- or 16-bit image, but {str(path)!r} holds 32-bit floats, "
                         "whose range is unknown; save it as an 8- or 16-bit image.")
    if img.mode == "I" and img.format not in _SIXTEEN_BIT_AS_I:
        # a 32-bit integer TIFF (or image made in memory): read as 16 bits, 0..255 was black;
        # a signed 16-bit TIFF opens as mode I too
        raise ValueError(f"Expected an 8- or unsigned 16-bit image, but {str(path)!r} holds 32-bit "
                         "or signed integers, whose range is unknown; save it as an 8- or 16-bit "
                         "image.")
    if img.mode.startswith("I"):  # I;16, I;16B, I (a 16-bit PNG or PGM): 0..65535
        img = Image.fromarray(_eight_bits(np.asarray(img)))
    return img if img.mode == "RGB" else img.convert("RGB")  # convert copies even an RGB image


# Pixels scaled at once by _eight_bits: its int32 temporaries stay within a few MB.
_BAND = 1 << 20


def _eight_bits(levels: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit integer) ``levels`` as uint8: ``rint(v / 257)`` clipped to 0..255,
    in integers ((v + 128) // 257: no ties, as v / 257 is never a half), a band of rows at a
    time. In float64 at once an 8000x8000 image took 1.6 GB beside its 128 MB of pixels."""
    out = np.empty(levels.shape, np.uint8)
    rows = max(1, _BAND // max(1, levels[0].size if levels.ndim > 1 else 1))
    for r in range(0, levels.shape[0], rows):
        band = np.clip(levels[r:r + rows], 0, 65535).astype(np.int32)
        band += 128
        band //= 257
        out[r:r + rows] = band
    return out


# Folders that are no class, whatever a data set holds: a zip made on macOS extracts its
# __MACOSX/ (of ._ files) beside the class folders; the ILSVRC2012 devkit kept in val/. Each had
# become a class: sorted first, every label was one off, or there was no accuracy. A Synology
# NAS keeps thumbnails (SYNOPHOTO_THUMB_*.jpg) in an @eaDir/ in each folder: in a class folder
# they were measured as images of that class. A data set on its own ext4 disk has the file
# system's lost+found/ at its root, readable by root only: every other user's listing failed on
# it ("make it readable, or move it"), and for root it was an empty class, one too many. So
# were a disk Windows has mounted (a USB drive's exFAT or NTFS) its System Volume Information/
# and $RECYCLE.BIN/, and a Synology share's #recycle/, whose deleted images (in their class
# folders) were measured as one more class.
_NOT_CLASSES = frozenset({"__MACOSX", "@eaDir", DEVKIT, "lost+found", "System Volume Information",
                          "$RECYCLE.BIN", "#recycle"})


def _data_folder(name: str) -> bool:
    """Whether a folder of that name may hold a data set's images: not a hidden one
    (.ipynb_checkpoints/), nor one of :data:`_NOT_CLASSES`."""
    return not name.startswith(".") and name not in _NOT_CLASSES


_SUFFIXES = frozenset(IMAGE_SUFFIXES)


def _suffix(name: str) -> str:
    """A file name's suffix in lower case (``".jpg"``), ``""`` for a hidden file or none (macOS's
    ._photo.jpg and .DS_Store are no images)."""
    return "" if name.startswith(".") or "." not in name else name[name.rfind("."):].lower()


def _image_name(name: str) -> bool:
    """Whether a file of that name is one of a data set's images."""
    return _suffix(name) in _SUFFIXES


def _unlisted(err: OSError):
    """``os.walk``'s ``onerror``: a folder that cannot be listed is an error, naming it (walk
    skipped it: its images were silently left out, its class still counted)."""
    raise type(err)(err.errno, f"Could not list the folder {err.filename!r} of images "
                    f"({err.strerror}): its images would be left out; make it readable, or move "
                    "it out of the folder measured.") from err


def has_images(root: str) -> bool:
    """Whether :class:`ImageFiles` finds an image under the folder ``root`` (the walk stops at
    the first); ``OSError`` where it cannot be listed."""
    return next(_image_paths(str(root)), None) is not None


# images of types ImageFiles does not read (as ImageFolder does not): left out, and said so
_UNREAD_SUFFIXES = frozenset((".gif", ".jfif", ".jpe", ".avif", ".heic", ".heif", ".jp2", ".jxl",
                              ".tga", ".ico", ".dng", ".cr2", ".nef", ".arw"))


def _image_paths(root: str, unread: Optional[List[str]] = None) -> Iterator[Tuple[str, str, str]]:
    """``(class folder, or the name of a file in root; folder; name)`` of the image files under
    ``root`` (sorted, torchvision ImageFolder's order), entering linked folders (``Path.rglob``
    does not: a class folder may be a link), each real folder once a class (a link back up
    would loop). Two class folders linking to one real folder both hold its images, as in
    ImageFolder (the second was silently an empty class). The paths of images of other types
    (:data:`_UNREAD_SUFFIXES`) go to ``unread``, when given."""
    top = os.path.realpath(root)
    seen = {}  # class folder -> the real folders entered for it, with root's (a link up)
    start = len(root.rstrip(os.sep)) + 1
    for folder, subfolders, names in os.walk(root, onerror=_unlisted, followlinks=True):
        cls = folder[start:].split(os.sep, 1)[0]
        if cls:
            real, entered = os.path.realpath(folder), seen.setdefault(cls, {top})
            if real in entered:
                subfolders[:] = []
                continue
            entered.add(real)
        subfolders[:] = [d for d in subfolders if _data_folder(d)]
        yield from ((cls or n, folder, n) for n in names if _image_name(n))
        if unread is not None:
            unread += [folder + os.sep + n for n in names if _suffix(n) in _UNREAD_SUFFIXES]


def model_classes(folder, n_classes: int) -> Optional[torch.Tensor]:
    """The class of a model of ``n_classes`` that each label of ``folder`` stands for
    (``[n_folders]``), or ``None`` when that cannot be known.

    Folders named by ImageNet synset ids (``n02123045``) are their ImageNet-1k class for a model
    of 1000 classes, whichever of the classes the folder holds; folders named by numbers
    (ImageNetV2's ``0`` ... ``999``) are the class of that number, whichever of them there are;
    otherwise folder ``i`` (sorted) is class ``i`` when there is one folder per class of the
    model.
    """
    if n_classes == 1000 and all(_SYNSET.fullmatch(c) for c in folder.classes):
        from timm.data import ImageNetInfo

        index = {s: i for i, s in enumerate(ImageNetInfo().label_names())}
        if all(c in index for c in folder.classes):
            return torch.tensor([index[c] for c in folder.classes])
    if folder.classes and all(c.isdecimal() and c.isascii() for c in folder.classes):
        # sorted as text, "10" comes before "2": folder i was class i, a silently wrong accuracy
        numbers = [int(c) for c in folder.classes]
        fits = len(set(numbers)) == len(numbers) and max(numbers) < n_classes
        return torch.tensor(numbers) if fits else None
    if len(folder.classes) == n_classes:
        return torch.arange(n_classes)
    return None


@dataclass(frozen=True)
class ClassFolders:
    """The class folders whose sorted index a dataset's labels are (a torchvision
    ``ImageFolder``'s, as :class:`ImageFiles` has them)."""

    classes: List[str]
    strays: Tuple[Path, ...] = ()

    @property
    def labelled(self) -> bool:
        return bool(self.classes)


def folders_disagree(images) -> bool:
    """Whether ``images`` is a ``ConcatDataset`` (maybe under a ``DataLoader`` or ``Subset``) of
    class-folder datasets with different classes: each labels its images by the index of its own
    folders, which are then no class of the model (every image of one-folder parts is label 0)."""
    from torch.utils.data import ConcatDataset

    while isinstance(images, (DataLoader, Subset)):
        images = images.dataset
    if not isinstance(images, ConcatDataset):
        return False
    folders = [image_folder(d) for d in images.datasets]
    # a folder beside other data (raw labels), or one with a target_transform: not said to be this
    return (len(folders) > 1 and all(f is not None for f in folders)
            and len({tuple(f.classes) for f in folders}) > 1)


def image_folder(images):
    """The class folders whose index ``images`` labels its images with: an :class:`ImageFiles`
    or a torchvision ``ImageFolder`` (``DatasetFolder``, without a ``target_transform``;
    ``ImageNet``'s are its ``wnids``), itself
    or under a ``DataLoader``, ``Subset`` or ``ConcatDataset`` of folders with the same classes,
    or a dataset that says so itself (a ``class_folders`` attribute, a :class:`ClassFolders`);
    else ``None`` (the labels are then taken as the model's class indices)."""
    from torch.utils.data import ConcatDataset

    # not imported for this: torchvision takes seconds to import (torch._dynamo, triton), and
    # nothing is one of its datasets unless its module is loaded
    DatasetFolder = getattr(sys.modules.get("torchvision.datasets.folder"), "DatasetFolder", None)
    while isinstance(images, (DataLoader, Subset)):
        images = images.dataset
    if isinstance(images, ConcatDataset):
        folders = [image_folder(d) for d in images.datasets]
        same = folders and all(f is not None and f.classes == folders[0].classes for f in folders)
        return ClassFolders(folders[0].classes, tuple(p for f in folders for p in f.strays)) \
            if same else None
    if isinstance(images, ImageFiles):
        return images
    if isinstance(getattr(images, "class_folders", None), ClassFolders):
        return images.class_folders
    if DatasetFolder is not None and isinstance(images, DatasetFolder) and getattr(images, "target_transform", None) is None:
        # torchvision's ImageNet replaces its classes (the folders) by tuples of names, ("tench",
        # "Tinca tinca"): they failed deep in model_classes; its folders are its wnids
        names = list(getattr(images, "wnids", None) or images.classes)
        return ClassFolders(names) if all(isinstance(c, str) for c in names) else None
    return None


class _WorkerTraceback(Exception):
    """Where a DataLoader worker raised: the cause of the error raised again in the main process."""

    def __str__(self):
        return f"\n\"\"\"\n{self.args[0]}\"\"\""


class _Failed:
    """An item that raised in a DataLoader worker: the main process raises ``error`` again, from
    the worker's traceback (torch would raise a copy whose message is that whole traceback)."""

    def __init__(self, error: BaseException):
        self.traceback = traceback.format_exc()
        try:  # it travels back to the main process, where it must be rebuilt
            pickle.loads(pickle.dumps(error))
            self.error = error
        except Exception:  # noqa: BLE001 -- an error that cannot travel: its type and text can
            self.error = RuntimeError(f"{type(error).__name__}: {error}")

    @classmethod
    def of(cls, error: BaseException) -> "_Failed":
        """``error``, raised here and caught, so that its traceback is kept as a worker's."""
        try:
            raise error
        except BaseException as err:  # noqa: BLE001 -- the error given, whatever its type
            return cls(err)

    def raise_again(self):
        raise self.error from _WorkerTraceback(self.traceback)


class _RaisedAsItems(Dataset):
    """``dataset`` whose items that raise become :class:`_Failed` (in DataLoader workers)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            return self.dataset[i]
        except Exception as err:  # noqa: BLE001 -- every kind is raised again, as itself
            return _Failed(err)


def _image_and_label(item):
    """``(image, label or None)`` of a dataset item: an image, ``(image,)`` (a TensorDataset of
    images alone) or ``(image, label, ...)``."""
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def _collate(items):
    failed = next((item for item in items if isinstance(item, _Failed)), None)
    if failed is not None:
        return failed
    xs, ys = zip(*[_image_and_label(item) for item in items])
    ys = None if all(y is None for y in ys) else ys
    if any(hasattr(v, "getbands") for v in xs):  # torch: "Could not infer dtype of PngImageFile"
        return _Failed.of(TypeError(
            "Expected model-ready tensors, but got PIL images (of a folder or Dataset) and no "
            "`preprocess` to make them tensors; pass the model's (equifast.measure gives its "
            "own; equifast.models.default_preprocess() is ImageNet's)."))
    xs = [torch.as_tensor(v) for v in xs]
    sizes = list(dict.fromkeys(tuple(v.shape) for v in xs))
    if len(sizes) > 1:  # torch.stack's error names no cause (from a worker: its whole traceback)
        a, b = sizes[0], sizes[1]
        if len(a) == len(b) == 3 and a[0] != b[0] and a[1:] == b[1:]:
            # a pipeline without Normalize keeps each PIL image's mode (grey, RGB, RGBA)
            advice = ("images of several channel counts (grey, RGB, RGBA); convert them to one "
                      "mode in the Dataset (PIL's .convert('RGB')), or give a `preprocess` that "
                      "normalises 3 channels (Normalize), which takes every image as RGB")
        else:
            advice = ("give a `preprocess` that resizes and crops to one size (as the models' "
                      "own do: Resize(256), CenterCrop(224))")
        return _Failed.of(ValueError(f"Expected every image to have one size after preprocessing, "
                                     f"but a batch holds {list(a)} and {list(b)}: {advice}."))
    x = torch.stack(xs)
    try:
        y = None if ys is None else class_indices(ys, "the Dataset's labels", "in the Dataset")
    except ValueError as err:
        return _Failed.of(err)
    return x, y


def class_indices(ys, what: str, where: str) -> torch.Tensor:
    """A batch's labels ``ys`` (a sequence, array or tensor) as a tensor, or a ``ValueError``
    naming them (``what``: "the Dataset's labels") and where to fix them (``where``: "in the
    Dataset"): torch's own errors named neither (class names: "too many dimensions 'str'";
    one-hot vectors as items: "only integer tensors of a single element can be converted to an
    index")."""
    try:
        return torch.as_tensor(ys)
    except (TypeError, ValueError, RuntimeError):
        pass
    items = list(ys) if isinstance(ys, (list, tuple, np.ndarray)) else [ys]
    if items and all(isinstance(v, (int, np.integer)) for v in items):  # a NumPy object array
        return torch.tensor([int(v) for v in items])
    named = next((v for v in items if isinstance(v, (str, bytes))), None)
    if named is not None:
        raise ValueError(f"Expected {what} to be class indices of the model (ints, -1 for none), "
                         f"but got {named!r}; map the class names to the model's indices {where}.")
    shaped = next((v for v in items if len(getattr(v, "shape", ())) > 0), None)
    if shaped is not None:
        raise ValueError(f"Expected {what} to be class indices of the model, one int per image "
                         f"(-1 for none), but got a label of shape {tuple(shaped.shape)}; for "
                         f"one-hot labels give label.argmax() {where}.")
    odd = next((v for v in items if not isinstance(v, (int, np.integer, torch.Tensor))),
               items[0] if items else ys)
    raise ValueError(f"Expected {what} to be class indices of the model (ints, -1 for none), but "
                     f"got {odd!r:.80} ({type(odd).__name__}); make every label an int {where}.")


def _prepared(item, preprocess: Callable, mode: Optional[str] = None):
    """A dataset's item as ``(model-ready image, label)``: ``preprocess`` applied to a PIL image
    (or an HxW(xC) array of pixels) converted to ``mode`` (:func:`_pipeline_mode`) first, a
    tensor taken as it is, -1 for no label."""
    if isinstance(item, dict):  # preprocess would fail deep inside torchvision
        raise TypeError(f"Expected the Dataset's items to be images or (image, label) pairs, "
                        f"but got a dict (keys {', '.join(map(str, item))}); wrap it to return "
                        "(image, label).")
    x, y = _image_and_label(item)
    if isinstance(x, np.ndarray):  # an HxW or HxWxC array of pixels, as PIL holds them
        from PIL import Image
        if x.ndim == 3 and x.shape[2] == 1:  # HxWx1 grey: PIL takes it as HxW only
            x = x[..., 0]
        try:
            x = Image.fromarray(x)
        except (TypeError, ValueError) as err:
            raise TypeError(f"Expected the Dataset's images to be PIL images, tensors or "
                            f"HxW(xC) uint8 arrays, but got an array of shape {x.shape} and "
                            f"dtype {x.dtype} ({err}).") from None
    if isinstance(x, torch.Tensor):
        return x, (-1 if y is None else y)
    if isinstance(x, (str, bytes, os.PathLike)):  # torchvision: "Unexpected type <class 'str'>"
        raise TypeError(f"Expected the Dataset's images to be PIL images, tensors or HxW(xC) "
                        f"uint8 arrays, but got a {type(x).__name__} ({x!r:.80}); open the file "
                        "in the Dataset (PIL.Image.open), or pass a folder of images itself.")
    if mode is None and getattr(x, "mode", "").startswith(("I", "F")):
        # a pipeline that does not normalise took 16-bit levels unscaled (0..65535) and floats
        # of unknown range: one channel, as it was, in 8 bits as from a folder (floats refused)
        mode = "L"
    if mode is not None and getattr(x, "mode", mode) != mode:
        # a grey image (torchvision's MNIST) failed in Normalize with "output with shape
        # [1, 224, 224] doesn't match the broadcast shape [3, 224, 224]"
        x = _pil_rgb(x, "an image of the Dataset")
        x = x if mode == "RGB" else x.convert(mode)
    return preprocess(x), (-1 if y is None else y)


def _pipeline_mode(preprocess) -> Optional[str]:
    """The PIL mode images take into ``preprocess``: ``"RGB"`` where it normalises three
    channels (every ImageNet model's pipeline), ``"L"`` where one (``Normalize([m], [s])``);
    ``None`` when it does not normalise, or normalises every channel alike with numbers
    (``Normalize(0.5, 0.5)``): then images go in as they are."""
    step = _normalize_step(preprocess)
    mean = None if step is None else torch.as_tensor(step.mean)
    # a number (Normalize(0.5, 0.5)) normalises any channels, as a pipeline without one: colour
    # images went in grey, and an RGB model failed on them ("expected 3 channels, got 1")
    channels = None if mean is None or mean.dim() == 0 else mean.numel()
    return {1: "L", 3: "RGB"}.get(channels)


class _Preprocessed(Dataset):
    """``dataset`` with its items :func:`_prepared`; a module-level class, so DataLoader
    workers can receive it by pickling too."""

    def __init__(self, dataset: Dataset, preprocess: Callable):
        self.dataset, self.preprocess = dataset, preprocess
        self.mode = _pipeline_mode(preprocess)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return _prepared(self.dataset[i], self.preprocess, self.mode)


class _PreprocessedStream(IterableDataset):
    """An ``IterableDataset`` with its items :func:`_prepared`, in the order it yields them."""

    def __init__(self, dataset: IterableDataset, preprocess: Callable):
        self.dataset, self.preprocess = dataset, preprocess
        self.mode = _pipeline_mode(preprocess)

    def __iter__(self):
        return (_prepared(item, self.preprocess, self.mode) for item in self.dataset)


def _with_transform(dataset: Dataset, preprocess: Optional[Callable]) -> Dataset:
    """Apply ``preprocess`` to PIL images a dataset yields (tensors pass through)."""
    if preprocess is None:
        return dataset
    if isinstance(dataset, IterableDataset):
        return _PreprocessedStream(dataset, preprocess)
    return _Preprocessed(dataset, preprocess)


def normalise_like(images: torch.Tensor, preprocess) -> torch.Tensor:
    """Apply the normalisation of a torchvision/timm pipeline to tensors in [0, 1]: its
    ``Normalize`` step, or the ``mean``/``std`` of a torchvision weights' preset
    (``ImageClassification``, which holds no steps)."""
    from torchvision import transforms as T

    step = _normalize_step(preprocess)
    if step is None:
        return images
    # numbers, lists or tensors as lists: Normalize(0.5, 0.5), which a folder's images go
    # through (it normalises any channels), failed here on list(0.5)
    mean, std = (torch.as_tensor(v, dtype=torch.float64).reshape(-1).tolist()
                 for v in (step.mean, step.std))
    return T.functional.normalize(images, mean, std)


def _steps(preprocess, nested: bool = False) -> list:
    """The steps of a pipeline in order: a ``Compose``'s ``transforms`` (torchvision's, v2's,
    timm's), an ``nn.Sequential``'s modules (torchvision's scriptable pipelines, of v2
    transforms), and those of a ``Compose`` or ``Sequential`` nested in one (not a
    ``RandomApply``'s, which may not run); none for another callable. A Sequential was read as
    no steps: its images were cut at 224 and not normalised, whatever its own crop and
    ``Normalize``."""
    if isinstance(preprocess, torch.nn.Sequential):
        steps = list(preprocess)
    elif nested and type(preprocess).__name__ != "Compose":
        return []
    else:
        steps = getattr(preprocess, "transforms", None)
        if not isinstance(steps, (list, tuple, torch.nn.ModuleList)):
            return []
    return [each for step in steps for each in [step] + _steps(step, nested=True)]


def _normalize_step(preprocess):
    """The step of a pipeline that holds its ``mean`` and ``std`` (a ``Normalize``, or a
    torchvision weights' preset itself), or ``None``."""
    for step in [preprocess] + _steps(preprocess):
        if getattr(step, "mean", None) is not None and getattr(step, "std", None) is not None:
            return step
    return None


def input_size(preprocess, default: int = 224) -> int:
    """The square size a pipeline crops images to: the ``crop_size`` of a torchvision weights'
    preset, or the size of its ``CenterCrop`` (``Resize`` to a square) step, of
    ``torchvision.transforms`` or ``transforms.v2`` (timm's ``CenterCropOrPad`` too); ``default``
    (also for a crop that is not square: see :func:`input_shape`)."""
    h, w = input_shape(preprocess, default)
    return h if h == w else default


def input_shape(preprocess, default: int = 224) -> Tuple[int, int]:
    """``(H, W)`` a pipeline crops images to: as :func:`input_size`, and also a crop that is
    not square (timm's pipeline of a model built at 64 x 96)."""
    from torchvision import transforms as T
    from torchvision.transforms import v2

    crop = getattr(preprocess, "crop_size", None)
    if crop is not None:
        return (int(crop[0] if isinstance(crop, (list, tuple)) else crop),) * 2
    # a transforms.v2 pipeline's steps are other classes: its CenterCrop(96) was the default 224,
    # and the embedded photos were cut at 224 for it. timm's pipelines of crop_mode "border"
    # (deepseek_vit's, at 546) crop with its own CenterCropOrPad: not imported for this, as no
    # pipeline holds one unless timm's transforms are loaded
    pad = getattr(sys.modules.get("timm.data.transforms"), "CenterCropOrPad", None)
    centre = (T.CenterCrop, v2.CenterCrop) + ((pad,) if pad is not None else ())
    for cls in (centre, (T.Resize, v2.Resize)):
        for step in _steps(preprocess):
            size = getattr(step, "size", None) if isinstance(step, cls) else None
            if isinstance(size, int) or (isinstance(size, (list, tuple)) and len(set(size)) == 1):
                return (int(size if isinstance(size, int) else size[0]),) * 2
            # Resize((H, W)) makes H x W images too: a pipeline that squashes to a ViT's 64 x 96
            # without a crop had its photos cut at the default 224 x 224
            if isinstance(size, (list, tuple)) and len(size) == 2:
                return int(size[0]), int(size[1])
    return default, default


def seeded_subset(dataset: Dataset, n: Optional[int], seed: int) -> Dataset:
    """``n`` images of ``dataset`` drawn with ``seed``, kept in dataset order (all if ``n`` is
    ``None`` or not smaller): the subset :func:`batches` and the sweeps measure."""
    n = _check_n_images(n)
    if n is None or n >= len(dataset):
        return dataset
    gen = torch.Generator().manual_seed(seed)
    return Subset(dataset, torch.randperm(len(dataset), generator=gen)[:n].sort().values.tolist())


def _check_n_images(n) -> Optional[int]:
    """``n`` (a number of images) as an int, or ``None``; a ValueError unless it is ``None`` or
    an integer >= 1: -1 drew all the images but one (``randperm(N)[:-1]``), 0 none, 2.5 failed
    in a slice."""
    return check_integer("`n_images`", n, 1, allow_none=True, none_means="all")


def count(images) -> Optional[int]:
    """The number of images an input holds, when it is known up front."""
    if isinstance(images, torch.Tensor):
        return images.shape[0]
    if isinstance(images, (tuple, list)) and images and isinstance(images[0], torch.Tensor):
        return images[0].shape[0]
    if isinstance(images, DataLoader):
        # the images it yields: its sampler's (a subset of the dataset), whole batches only
        # with drop_last; its dataset's length counted images it never gives
        if images.batch_size is None:  # a batch sampler of the user's: its batches' sizes
            return None
        if isinstance(images.dataset, IterableDataset):  # a stream: its own length, if it says
            return len(images.dataset) if hasattr(images.dataset, "__len__") else None
        try:
            n = len(images.sampler)
        except TypeError:  # a sampler without a length
            return None
        return n - n % images.batch_size if images.drop_last else n
    if isinstance(images, Dataset) and hasattr(images, "__len__"):
        return len(images)
    return None


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS says, else all)."""
    if hasattr(os, "sched_getaffinity"):  # Linux; not macOS or Windows
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_num_workers(cpus: Optional[int] = None) -> int:
    """Loader processes to decode images beside the model's: the CPUs (default:
    :func:`usable_cpus`) less the one that runs the model, at most 8."""
    return min(8, max(0, int(usable_cpus() if cpus is None else cpus) - 1))


def check_batch_size(batch_size) -> int:
    """``batch_size`` (images per forward pass) as an int; a ValueError unless it is an integer
    >= 1."""
    return check_integer("`batch_size`", batch_size)


def check_num_workers(num_workers) -> int:
    """``num_workers`` (DataLoader worker processes) as an int; a ValueError unless it is an
    integer >= 0."""
    return check_integer("`num_workers`", num_workers, 0)


def _check_images(x, what: str = "`images`", batched: bool = False) -> None:
    """Raise unless ``x`` is a model-ready batch: a floating tensor ``[N, C, H, W]``
    (``batched``: a batch a DataLoader made, whose first dim is the images)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected {what} to be image tensors [N, C, H, W] (alone or as "
                        f"(images, labels)), but got {type(x).__name__}.")
    if x.dim() != 4:
        # a loader's [N, H, W] batch has its batch dim: its images lack their channel dim
        fix = ("give each image its channel dim ([1, H, W] for grey) in the Dataset" if batched
               else "add a batch dim with images.unsqueeze(0) (one [C, H, W] image), or a channel "
                    "dim with images.unsqueeze(1) (grey [N, H, W] images)")
        raise ValueError(f"Expected {what} to be [N, C, H, W], but got shape {tuple(x.shape)}; "
                         f"{fix}.")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] > 4:
        # measured as images 1 to 4 pixels wide: a rotation said the square image was no square
        # ("16x3"), a model "expected input to have 3 channels, but got 16"
        raise ValueError(f"Expected {what} to be [N, C, H, W], but got shape {tuple(x.shape)}, "
                         f"which reads as [N, H, W, C] ({x.shape[-1]} channels last); pass "
                         "images.permute(0, 3, 1, 2) (an [N, C, H, W] tensor in the channels_last "
                         "memory format is taken as it is).")
    if not x.is_floating_point():
        raise TypeError(f"Expected {what} to be a floating tensor, model-ready (scaled and "
                        f"normalised as the model expects), but got {x.dtype}; convert "
                        "uint8 images with images.float() / 255 and normalise them.")
    if x.is_meta:  # failed in the first copy: "Cannot copy out of meta tensor; no data!"
        raise ValueError(f"Expected {what} to hold data (a CPU or CUDA tensor), but got a meta "
                         "tensor, which has a shape only; create the images on a real device.")


def batches(images, labels: Optional[torch.Tensor] = None, batch_size: int = 64,
            n_images: Optional[int] = None, preprocess: Optional[Callable] = None,
            seed: int = 0, num_workers: int = 0) -> Iterator[Batch]:
    """Stream ``(x, y)`` batches from any supported input.

    Args:
        images: a tensor ``[N, C, H, W]`` (used as is: already preprocessed), a tuple
            ``(images, labels)``, a ``DataLoader`` (yielding ``x`` or ``(x, y)``), a map-style
            ``Dataset`` (yielding ``(image, label, ...)``, ``(image,)`` or images; PIL images
            get ``preprocess``; dict items are refused), or a path to a folder of images (see
            :class:`ImageFiles`).
        labels: ``[N]`` class indices for a tensor input (optional; with another input a
            ``ValueError``).
        batch_size: images per batch (not for a ``DataLoader``, which keeps its own).
        n_images: use at most this many images (an integer >= 1, or ``None``: all); for a
            dataset or folder, a seeded random subset of this size (the thesis measures 2000
            validation images).
        preprocess: PIL image -> tensor (the model's own preprocessing). A PIL image goes in
            with the channels the pipeline normalises: a grey, CMYK or palette image is
            converted to RGB for a three-channel ``Normalize`` (every ImageNet model's), a
            colour one to grey for a one-channel one; as it is when the pipeline has none
            (or one of numbers, ``Normalize(0.5, 0.5)``, which takes any channels)
            (but a 16-bit one in 8 bits, a float one refused, as from a folder).
        seed: the seed of the subset.
        num_workers: processes that read and preprocess a dataset's or folder's images
            (``DataLoader`` workers; 0: in this process; an ``IterableDataset``, which each
            worker would read whole, by one at most, with a warning). The batches are the same
            either way.
    """
    # as ints: torch's BatchSampler refuses a numpy integer as batch_size
    batch_size, num_workers = check_batch_size(batch_size), check_num_workers(num_workers)
    n_images, seed = _check_n_images(n_images), checked_seed(seed)
    if isinstance(images, (str, os.PathLike)):
        images = ImageFiles(images)
    if isinstance(images, (tuple, list)) and len(images) == 2 and isinstance(images[0], torch.Tensor):
        if labels is not None:  # one of the two was silently dropped
            raise ValueError("Expected labels once, but got `images` as (images, labels) and "
                             "`labels` too; pass the labels in one place.")
        second = images[1]
        if isinstance(second, torch.Tensor) and second.ndim >= 3 and second.is_floating_point():
            # two batches of images: "Expected `labels` to be integer class indices" said nothing
            raise TypeError(f"Expected a pair in `images` to be (images, labels), but its second "
                            f"item is a {second.dtype} tensor of shape {tuple(second.shape)}, not "
                            "class indices; pass batches of images as one tensor (torch.cat), "
                            "or a DataLoader.")
        images, labels = images
    elif labels is not None and not isinstance(images, torch.Tensor):
        # they were silently ignored: the items' own labels (or none) were used
        raise ValueError(f"Expected `labels` only with a tensor of images, but got them with "
                         f"images of type {type(images).__name__}, which carry their own labels "
                         "or none (a folder's: its class folders); leave `labels` out.")
    if isinstance(images, torch.Tensor):
        _check_images(images)
        if labels is not None:
            labels = class_indices(labels, "`labels`", "first")
            if labels.dim() == 0:  # len() of a 0-d tensor
                raise ValueError(f"Expected `labels` to be [N] class indices, one per image, but "
                                 f"got one number, {labels.item()}; for one image pass [label].")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"Expected {len(images)} labels, but got {len(labels)}.")
        if labels is not None:
            kind = torch.as_tensor(labels).dtype
            if kind.is_floating_point or kind.is_complex:
                raise TypeError(f"Expected `labels` to be integer class indices, but got {kind}.")
        stop = len(images) if n_images is None else min(n_images, len(images))
        for i in range(0, stop, batch_size):
            j = min(i + batch_size, stop)
            yield images[i:j], (None if labels is None else torch.as_tensor(labels[i:j]))
        return
    if isinstance(images, DataLoader):
        seen = 0
        for item in images:
            if isinstance(item, _Failed):  # from _collate, of an IterableDataset below
                item.raise_again()
            x, y = _image_and_label(item)
            if (isinstance(x, torch.Tensor) and x.dim() == 3 and images.batch_size is None
                    and images.batch_sampler is None):
                # its items one by one: "give each image its channel dim" sent users to the Dataset
                raise ValueError(f"Expected the DataLoader's batches to be [N, C, H, W], but got "
                                 f"shape {tuple(x.shape)}, one image: a DataLoader with "
                                 "batch_size=None yields its Dataset's items unbatched; give it a "
                                 "batch_size (DataLoader(dataset, batch_size=32)).")
            _check_images(x, "the DataLoader's batches", batched=True)
            if n_images is not None and seen + len(x) > n_images:
                x = x[: n_images - seen]
                y = None if y is None else y[: len(x)]
            if len(x) == 0:
                return
            # a custom collate's list, say; class names from the default one
            y = None if y is None else class_indices(y, "the DataLoader's labels", "in its Dataset")
            yield x, (None if y is None or (y < 0).all() else y)
            seen += len(x)
            if n_images is not None and seen >= n_images:
                return
        return
    if isinstance(images, IterableDataset):
        if num_workers > 1:
            from .warning import warn

            # torch gives each worker process the whole stream: every image came num_workers
            # times (n_images counted each copy), unless the stream shards itself
            warn(f"An IterableDataset is read by one loader process, not by num_workers="
                 f"{num_workers}: each would read the whole stream, and every image would be "
                 f"measured {num_workers} times. Pass a DataLoader of it instead, with workers "
                 "where it gives each its own share (torch.utils.data.get_worker_info()).")
        # a stream has no length to draw a seeded subset from: its first n_images, in order
        images = DataLoader(_with_transform(images, preprocess), batch_size=batch_size,
                            num_workers=min(num_workers, 1), collate_fn=_collate)
        yield from batches(images, n_images=n_images)
        return
    if isinstance(images, Dataset):
        dataset = seeded_subset(_with_transform(images, preprocess), n_images, seed)
        wrap = bool(num_workers)
        loader = DataLoader(_RaisedAsItems(dataset) if wrap else dataset,
                            batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=_collate)
        for batch in loader:
            if isinstance(batch, _Failed):
                batch.raise_again()
            x, y = batch
            _check_images(x, "the Dataset's images, batched", batched=True)
            yield x, (None if y is None or (y < 0).all() else y)
        return
    raise TypeError(
        "Expected `images` to be a tensor [N, C, H, W], a (images, labels) tuple, a DataLoader, a "
        f"Dataset or a folder path, but got {type(images).__name__}."
    )
