"""Data sets and augmentations of the thesis studies (section 4.2).

Data sets (``build_dataset(name, ...)``):

================== ===================================================================
name               content
================== ===================================================================
``mnist6``         MNIST without the classes 0, 1, 6, 8; labels remapped (see below)
``mnist6-rot-inv`` every image turned by a random quarter turn, label unchanged
``mnist6-rot-eq``  same images; the target is ``(label, turn)``
``fmnist6*``       the same three on Fashion-MNIST
``cifar10``        CIFAR-10 (the augmentation and capacity studies)
================== ===================================================================

Label mapping of the ``*6`` sets: the kept classes ``(2, 3, 4, 5, 7, 9)`` become
``(0, 1, 2, 3, 4, 5)`` (:data:`KEPT_CLASSES`). Fashion-MNIST drops the same indices,
0 T-shirt/top, 1 Trouser, 6 Shirt, 8 Bag, and keeps Pullover, Dress, Coat, Sandal, Sneaker,
Ankle boot.

Rotations: image ``i`` is turned by ``turns[i]`` quarter turns, ``torch.rot90(x, turns[i],
dims=(-2, -1))`` (counter-clockwise), drawn once from ``data_seed`` over the whole split
(before any subset), so the same image always gets the same turn. The turns are kept on the
data set (``dataset.turns``).

Roots: MNIST is read from raw idx files (plain or ``.gz``) in ``root``, ``root/raw`` or
``root/MNIST/raw`` (the ``torchvision.datasets.MNIST(root)`` layout); Fashion-MNIST likewise
(``root/FashionMNIST/raw``), by default from :data:`FASHION_MNIST_ROOT`. ``download=True``
fetches with torchvision (never the default). CIFAR-10 uses
``torchvision.datasets.CIFAR10(root)`` (``root/cifar-10-batches-py``). A root that does not
hold the files says why (missing, a file) and names the folder that does when it lies one or
two levels below or one above. MNIST's and Fashion-MNIST's files have the same names: files of
the other data set (told by their mean pixel, 0.13 and 0.29) are refused.

Augmentations (:data:`AUGMENTATIONS`, CIFAR-10 only): ``none``, ``crop``
(``RandomCrop(32, padding=4)``), ``flip`` (``RandomHorizontalFlip()``), ``randaugment``
(``RandAugment(num_ops, magnitude)``, torchvision's defaults 2 and 9 of 31 bins), all per
image, and ``cutmix`` (``torchvision.transforms.v2.CutMix`` on batches, ``alpha`` 1 and
applied to half of them, the CutMix paper's CIFAR setting: see :class:`BatchCollate`; targets
become class probabilities). The thesis names the augmentations only.
"""
from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from equifast._checks import check_integer, is_integer
from equifast.warning import warn

__all__ = [
    "DATASETS", "AUGMENTATIONS", "KEPT_CLASSES", "REMOVED_CLASSES", "FASHION_MNIST_ROOT",
    "read_idx", "load_mnist", "load_fashion_mnist", "DigitsDataset", "CIFAR10Dataset",
    "build_dataset", "image_transform", "BatchCollate", "dataset_info", "measure_images",
]

REMOVED_CLASSES: Tuple[int, ...] = (0, 1, 6, 8)
KEPT_CLASSES: Tuple[int, ...] = (2, 3, 4, 5, 7, 9)
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
AUGMENTATIONS = ("none", "crop", "flip", "cutmix", "randaugment")
DATASETS = ("mnist6", "mnist6-rot-inv", "mnist6-rot-eq",
            "fmnist6", "fmnist6-rot-inv", "fmnist6-rot-eq", "cifar10")

_MEAN_STD = {"mnist": (0.1307, 0.3081), "fmnist": (0.2860, 0.3530),
             "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))}


# ------------------------------------------------------------------------------ idx files
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (``*-idx3-ubyte`` or ``*-idx1-ubyte``, plain or gzipped, whatever its
    name says: ``.gz`` or not), a path given as a string or a ``pathlib.Path``.

    Example:
        >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape
        (10000,)
    """
    path = os.fspath(path)  # a pathlib.Path: named as a string in the messages
    try:
        # gzip told by its magic bytes, not by the name: a browser that unpacks a download
        # keeps ".gz" on the plain file (BadGzipFile), a file renamed without ".gz" is still
        # gzip ("its header is b'\\x1f\\x8b'"); "re-download" got the same file again
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # a cut or damaged download
        raise ValueError(f"Could not read the idx file {path!r} ({type(err).__name__}: {err}); "
                         "re-download the file.") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"Expected an unsigned-byte idx file at {path!r}, but its header is "
                         f"{data[:4]!r}; re-download the file.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = len(data) - 4 - 4 * ndim
    if body != math.prod(shape):
        raise ValueError(f"Expected {math.prod(shape)} bytes of data in the idx file {path!r} "
                         f"(shape {shape}), but it holds {max(body, 0)}; re-download the file.")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _fetch(what: str, root: str, fetch: Callable[[], object], download: bool = True):
    """``fetch()`` (a torchvision data set, downloading it if ``download``), with a one-line
    error when it fails: offline, or files that are there but damaged."""
    try:
        return fetch()
    except (RuntimeError, OSError) as err:  # torchvision: RuntimeError (MNIST), URLError (CIFAR)
        cause = f"({type(err).__name__}: {' '.join(str(err).split())})"
        if not download:
            raise FileNotFoundError(
                f"Could not read {what} in {root!r} {cause}: its files are incomplete or "
                f"damaged. Extract them there again, or pass --download.") from err
        raise FileNotFoundError(
            f"Could not download {what} into {root!r} {cause}. Without "
            f"internet, put its files in that folder yourself and drop --download.") from err


def _cut_short(path: str) -> Optional[str]:
    """Why the plain idx file ``path`` is shorter than its header says (an extraction of the
    ``.gz`` stopped part way), else ``None``: read from its header alone."""
    with open(path, "rb") as f:
        head = f.read(4)
        if head[:3] != b"\x00\x00\x08"[:len(head)]:
            return None  # not a plain idx file: read_idx says what it is
        dims = f.read(4 * head[3]) if len(head) == 4 else b""
    size = os.path.getsize(path)
    if len(head) < 4 or len(dims) < 4 * head[3]:
        # stopped before its shape was written (an empty file, most often): that hid the .gz
        return f"{size} bytes, not even its whole header"
    shape = [int.from_bytes(dims[i:i + 4], "big") for i in range(0, len(dims), 4)]
    want = 4 + len(dims) + math.prod(shape)
    return f"{size} of its {want} bytes" if size < want else None


def _find_idx(root: str, sub: str, stem: str) -> Optional[str]:
    for d in (root, os.path.join(root, "raw"), os.path.join(root, sub, "raw")):
        plain, packed = os.path.join(d, stem), os.path.join(d, stem + ".gz")
        if os.path.isfile(plain):
            cut = _cut_short(plain) if os.path.isfile(packed) else None
            if cut is None:
                return plain
            # torchvision extracts the .gz beside it: that extraction was stopped part way
            warn(f"the idx file {plain!r} holds {cut} (an extraction stopped part way): read "
                 f"{os.path.basename(packed)!r} beside it instead; delete the plain file to "
                 "silence this.")
            return packed
        if os.path.isfile(packed):
            return packed
    return None


def _root_advice(root: str, holds: Callable[[str], bool], skip: str = "",
                 prefer: str = "") -> Tuple[str, bool]:
    """``(advice, found)``: why ``root`` is not the data set's folder, and which folder is when
    it can be told (then ``found``): a path that does not exist or is a file, or a data set one
    or two folders below ``root`` or one above it (the common mistake: a root one level too high
    or too low). Folders whose
    path from ``root``'s parent holds ``skip`` are not proposed, those holding ``prefer`` are
    proposed alone (Fashion-MNIST's idx files have MNIST's names)."""
    if not os.path.exists(root):
        return f" {root!r} does not exist.", False
    if not os.path.isdir(root):
        return f" {root!r} is a file; pass the folder that holds the data set.", False
    parent = os.path.dirname(os.path.abspath(root))
    near = [parent] if holds(parent) else []
    try:
        children = sorted(e.path for e in os.scandir(root) if e.is_dir() and e.name[0] != ".")
    except OSError:
        children = []
    for child in children[:64]:  # not every class folder of an image set given by mistake
        try:
            grandchildren = sorted(e.path for e in os.scandir(child)
                                   if e.is_dir() and e.name[0] != ".")
        except OSError:
            grandchildren = []
        near += [d for d in [child] + grandchildren if holds(d)]
    pairs = [(d, os.path.relpath(d, parent).lower()) for d in near]
    pairs = [(d, rel) for d, rel in pairs if not (skip and skip in rel)]
    near = [d for d, rel in pairs if prefer and prefer in rel] or [d for d, _ in pairs]
    if not near:
        return "", False
    if len(near) == 1:
        return f" It is in {near[0]!r}: pass that folder as `root` (--data-root).", True
    return f" Folders that hold it: {', '.join(map(repr, near[:3]))}; pass one as `root`.", True


# The mean pixel of each family's idx files over [0, 1] (test split: 0.1325, 0.2868): their
# files have the same names, and a root of the other one was trained under the wrong name.
_PIXEL_MEAN = {"MNIST": _MEAN_STD["mnist"][0], "Fashion-MNIST": _MEAN_STD["fmnist"][0]}


@functools.lru_cache(maxsize=8)
def _mean_pixel(path: str, mtime_ns: int) -> float:
    return float(_read_idx_cached(path, mtime_ns).mean(dtype=np.float64)) / 255


def _check_family(path: str, mtime_ns: int, what: str) -> None:
    """Raise ValueError when the images read as ``what`` (MNIST or Fashion-MNIST) are the other
    data set's, told by their mean pixel (within 0.02 of the other's; other data pass)."""
    mean = _mean_pixel(path, mtime_ns)
    other = next(name for name in _PIXEL_MEAN if name != what)
    if abs(mean - _PIXEL_MEAN[other]) < 0.02:
        raise ValueError(f"Expected the {what} idx files, but {path!r} holds {other}'s images (mean "
                         f"pixel {mean:.3f}: {other}'s is {_PIXEL_MEAN[other]:.3f}, {what}'s "
                         f"{_PIXEL_MEAN[what]:.3f}); pass the folder of the {what} files as `root` "
                         "(--data-root).")


def _load_idx_pair(root: str, sub: str, train: bool, what: str, option: str,
                   download: bool, tv_cls: str) -> Tuple[np.ndarray, np.ndarray]:
    prefix = "train" if train else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    root = os.path.expanduser(str(root)) if root is not None else None
    paths = [_find_idx(root, sub, s) for s in stems] if root else [None, None]
    if None in paths and download and root:
        import torchvision
        _fetch(what, root, lambda: getattr(torchvision.datasets, tv_cls)(root, train=train, download=True))
        paths = [_find_idx(root, sub, s) for s in stems]
    if None in paths:
        advice, found = _root_advice(
            root, lambda d: None not in [_find_idx(d, sub, s) for s in stems],
            *(("", "fashion") if sub == "FashionMNIST" else ("fashion", ""))) if root else ("", False)
        # one of the two found: which one is missing (a download cut short, a file misnamed)
        lacking = "them" if paths == [None, None] else (
            f"{stems[paths.index(None)]}[.gz] (beside {[p for p in paths if p][0]!r})")
        raise FileNotFoundError(
            f"Expected the {what} idx files {stems[0]}[.gz] and {stems[1]}[.gz] in `root`, "
            f"`root`/raw or `root`/{sub}/raw, but got root={root!r} without {lacking}."
            + (advice if found else
               f"{advice} Put the files there and pass that folder as `root` ({option} on the "
               f"command line), or pass download=True (--download) to fetch them with torchvision."))
    # one stat per file: the version read is the one whose mean is checked
    stamps = [os.stat(p).st_mtime_ns for p in paths]
    images, labels = (_read_idx_cached(p, t) for p, t in zip(paths, stamps))
    _check_pair(images, labels, paths, what)
    _check_family(paths[0], stamps[0], what)
    return images, labels.astype(np.int64)


def _check_pair(images: np.ndarray, labels: np.ndarray, paths: Sequence[str], what: str) -> None:
    """Raise ValueError unless ``images`` are ``[N, 28, 28]`` and ``labels`` ``[N]`` of classes
    0..9: a labels file of another split or data set gave images the wrong labels, or dropped
    some, without a word (an ``IndexError`` where they were more)."""
    again = f"; put the {what} files of one split there (re-download them)"
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"Expected {what} images [N, 28, 28] in {paths[0]!r}, but it holds "
                         f"{list(images.shape)}{again}.")
    if labels.ndim != 1:
        raise ValueError(f"Expected {what} labels [N] in {paths[1]!r}, but it holds "
                         f"{list(labels.shape)}{again}.")
    if len(images) != len(labels):
        raise ValueError(f"Expected as many labels as images, but {paths[0]!r} holds {len(images)} "
                         f"images and {paths[1]!r} {len(labels)} labels{again}.")
    if len(labels) and int(labels.max()) > 9:
        raise ValueError(f"Expected {what} labels 0..9 in {paths[1]!r}, but it holds "
                         f"{int(labels.max())}: another data set's labels{again}.")


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int) -> np.ndarray:
    """:func:`read_idx` memoised per file version (runs of a study share the data)."""
    return read_idx(path)  # read-only array: callers index (copy) it


def load_mnist(root: str, train: bool = True, download: bool = False
               ) -> Tuple[np.ndarray, np.ndarray]:
    """MNIST as ``(images uint8 [N, 28, 28], labels int64 [N])`` from raw idx files."""
    return _load_idx_pair(root, "MNIST", train, "MNIST", "--data-root", download, "MNIST")


def load_fashion_mnist(root: Optional[str] = None, train: bool = True, download: bool = False
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST as ``(images, labels)``; ``root`` defaults to :data:`FASHION_MNIST_ROOT`."""
    return _load_idx_pair(root or FASHION_MNIST_ROOT, "FashionMNIST", train, "Fashion-MNIST",
                          "--data-root", download, "FashionMNIST")


# ------------------------------------------------------------------------------ data sets
def _subset_indices(n: int, subset: Optional[int], seed: int) -> np.ndarray:
    # 2.5 or "5" failed in numpy's slicing or a comparison, deep in a data set's constructor
    subset = check_integer("`subset`", subset, 1, allow_none=True, none_means="all images")
    # numpy's generators said "expected non-negative integer" of -1 and "seed must be integer"
    # of 1.5, naming no argument
    seed = check_integer("`data_seed`", seed, 0)
    if subset is None or subset >= n:
        if subset is not None and subset > n:  # a quick run that is not quick, or a typo
            warn(f"A subset of {subset} images was asked of {n}; all {n} are used.")
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 7]).permutation(n)[:subset])


class DigitsDataset(Dataset):
    """MNIST6 / Fashion-MNIST6 and their rotated variants, held in memory.

    Items are ``(image float32 [1, 28, 28] normalised, target)``; ``target`` is the class
    (``int64`` scalar) or, for Rot-Eq, ``int64 [2]`` = ``(class, turn)``.

    Attributes:
        images: uint8 ``[N, 1, 28, 28]``, already turned.
        labels: int64 ``[N]``, remapped classes ``0..5``.
        turns: int64 ``[N]``, quarter turns applied (all 0 without rotation).
        source_index: int64 ``[N]``, index of each image in the original split.

    Args:
        images: uint8 ``[M, 28, 28]`` of the whole split.
        labels: original labels ``[M]``.
        rotate: turn every image by a random quarter turn.
        predict_turn: make the target ``(class, turn)`` (Rot-Eq).
        data_seed: seed of the turns and of the subset.
        subset: keep this many images (a seeded random subset) for quick runs.
        mean_std: normalisation.
        train: which split (only changes the turn stream).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, rotate: bool = False,
                 predict_turn: bool = False, data_seed: int = 0, subset: Optional[int] = None,
                 mean_std: Tuple[float, float] = _MEAN_STD["mnist"], train: bool = True):
        data_seed = check_integer("`data_seed`", data_seed, 0)  # as _subset_indices says
        images, labels = np.asarray(images), np.asarray(labels)  # torchvision's MNIST tensors too
        if images.dtype != np.uint8 or images.ndim != 3:
            # float images in [0, 1] were divided by 255 again, silently near black; [N, 1, H, W]
            # ones gave items [1, 1, H, W]
            raise ValueError(f"Expected `images` to be uint8 [N, H, W] (pixels 0..255, as read_idx "
                             f"gives them), but got {images.dtype} of shape {list(images.shape)}.")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"Expected `labels` to be [N] classes, one per image ({len(images)}), "
                             f"but got shape {list(labels.shape)}.")
        outside = labels[~np.isin(labels, np.arange(10))]
        if outside.size:  # dropped as a removed class would be, without a word
            raise ValueError(f"Expected `labels` to be the classes 0..9 of MNIST or Fashion-MNIST, "
                             f"but got {outside[0].item()!r} ({outside.size} of {labels.size} "
                             "labels are not).")
        labels = labels.astype(np.int64)  # 3.0 is class 3: an index into remap below
        keep = np.flatnonzero(np.isin(labels, KEPT_CLASSES))
        remap = np.full(10, -1, dtype=np.int64)
        remap[list(KEPT_CLASSES)] = np.arange(len(KEPT_CLASSES))
        turns = (np.random.default_rng([data_seed, int(train)]).integers(0, 4, len(keep))
                 if rotate else np.zeros(len(keep), dtype=np.int64))
        pick = _subset_indices(len(keep), subset, data_seed)
        self.source_index = torch.from_numpy(keep[pick].astype(np.int64))
        self.labels = torch.from_numpy(remap[labels[keep[pick]]])
        self.turns = torch.from_numpy(turns[pick].astype(np.int64))
        imgs = torch.from_numpy(np.ascontiguousarray(images[keep[pick]])).unsqueeze(1)
        for q in (1, 2, 3):
            sel = self.turns == q
            if sel.any():
                imgs[sel] = torch.rot90(imgs[sel], q, dims=(-2, -1))
        self.images = imgs.contiguous()
        self.predict_turn = predict_turn
        self.mean, self.std = mean_std
        self.num_classes = len(KEPT_CLASSES)
        self.num_rotations = 4 if predict_turn else 0

    def __len__(self) -> int:
        return len(self.labels)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[..., 28, 28]`` -> normalised float32."""
        return (images.float() / 255.0 - self.mean) / self.std

    def __getitem__(self, i: int):
        x = self.normalise(self.images[i])
        if self.predict_turn:
            return x, torch.stack([self.labels[i], self.turns[i]])
        return x, self.labels[i]


class CIFAR10Dataset(Dataset):
    """CIFAR-10 from ``torchvision.datasets.CIFAR10(root)`` with a per-image transform.

    Items are ``(image float32 [3, 32, 32] normalised, class int64)``.
    """

    def __init__(self, root: str, train: bool = True, transform: Optional[Callable] = None,
                 download: bool = False, subset: Optional[int] = None, data_seed: int = 0):
        import torchvision
        root = os.path.expanduser(str(root)) if root else None
        folder = os.path.join(root, "cifar-10-batches-py") if root else None
        if root is None and download:
            raise ValueError("Expected a `root` (--data-root) for CIFAR-10: the folder to fetch "
                             "it into with download=True (--download), but got None.")
        if root is None and not download:  # it said "got root=None without it"
            raise ValueError("Expected a `root` (--data-root) for CIFAR-10: a folder holding "
                             "cifar-10-batches-py (the torchvision.datasets.CIFAR10 layout), "
                             "or one to fetch it into with download=True (--download), but got "
                             "None.")
        if not download and not os.path.isdir(folder):
            advice, found = _root_advice(
                root, lambda d: os.path.isdir(os.path.join(d, "cifar-10-batches-py")))
            raise FileNotFoundError(
                f"Expected CIFAR-10 in `root`/cifar-10-batches-py (the torchvision.datasets."
                f"CIFAR10 layout), but got root={root!r} without it."
                + (advice if found else
                   f"{advice} Extract cifar-10-python.tar.gz there and pass that folder as `root` "
                   "(--data-root), or pass download=True (--download)."))
        self.base = _fetch("CIFAR-10", root, lambda: torchvision.datasets.CIFAR10(
            root, train=train, download=download), download)
        self.indices = _subset_indices(len(self.base), subset, data_seed)
        self.transform = transform
        self.num_classes, self.num_rotations = 10, 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, label = self.base[int(self.indices[i])]
        if self.transform is not None:
            img = self.transform(img)
        return img, torch.tensor(label, dtype=torch.int64)


# -------------------------------------------------------------------------- augmentations
def image_transform(augment: str = "none", train: bool = True,
                    randaugment: Tuple[int, int] = (2, 9)) -> Callable:
    """The per-image CIFAR-10 pipeline: augmentation (train only), ToTensor, Normalize.

    ``randaugment`` is RandAugment's ``(num_ops, magnitude)``. ``cutmix`` adds nothing here:
    it acts on batches (:class:`BatchCollate`).

    Example:
        >>> from PIL import Image
        >>> image_transform("crop")(Image.new("RGB", (32, 32))).shape
        torch.Size([3, 32, 32])
    """
    from torchvision import transforms as T
    if augment not in AUGMENTATIONS:
        raise ValueError(f"Expected `augment` to be one of {AUGMENTATIONS}, but got {augment!r}.")
    steps: List[Callable] = []
    if train and augment == "crop":
        steps.append(T.RandomCrop(32, padding=4))
    elif train and augment == "flip":
        steps.append(T.RandomHorizontalFlip())
    elif train and augment == "randaugment":
        num_ops, magnitude = _check_randaugment(randaugment)
        steps.append(T.RandAugment(num_ops=num_ops, magnitude=magnitude))
    mean, std = _MEAN_STD["cifar10"]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])


def _check_randaugment(randaugment) -> Tuple[int, int]:
    """RandAugment's ``(num_ops, magnitude)`` as ints, or a ValueError naming ``randaugment``:
    torchvision takes a negative magnitude as a bin counted from the top (-3: bin 28 of 30), fails
    with an IndexError past 30 whenever an operation that uses it is drawn (mid-training), and
    takes a negative ``num_ops`` as none."""
    pair = tuple(randaugment) if isinstance(randaugment, (tuple, list)) else ()
    if not (len(pair) == 2 and all(is_integer(v) for v in pair)
            and pair[0] >= 0 and 0 <= pair[1] <= 30):
        raise ValueError(f"Expected `randaugment` to be (num_ops, magnitude): integers, num_ops "
                         f">= 0 and magnitude 0..30 (of RandAugment's 31 bins), but got "
                         f"{randaugment!r}.")
    return int(pair[0]), int(pair[1])


class BatchCollate:
    """``default_collate`` followed by an optional batch transform (CutMix).

    With ``augment="cutmix"`` a batch goes, with probability ``cutmix_prob``, through
    ``torchvision.transforms.v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)``: a box of
    area ratio ``1 - lam`` (``lam ~ Beta(alpha, alpha)``) is pasted from the batch rolled by
    one, and the targets become ``lam * onehot(y) + (1 - lam) * onehot(y_rolled)`` with
    ``lam`` corrected to the exact box area; the other batches keep their images, with one-hot
    targets. A picklable class, so it works with loader worker processes.
    """

    def __init__(self, augment: str = "none", num_classes: int = 10, cutmix_alpha: float = 1.0,
                 cutmix_prob: float = 0.5):
        self.augment, self.num_classes, self.cutmix_prob = augment, num_classes, cutmix_prob
        self._cutmix = None
        if augment == "cutmix":
            from torchvision.transforms import v2
            self._cutmix = v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)

    def __call__(self, batch: Sequence) -> Tuple[torch.Tensor, torch.Tensor]:
        x, y = default_collate(batch)
        if self._cutmix is None:
            return x, y
        if float(torch.rand(())) < self.cutmix_prob:
            return self._cutmix(x, y)
        # one kind of target for every batch: probabilities
        return x, torch.nn.functional.one_hot(y, self.num_classes).to(torch.float32)


# ----------------------------------------------------------------------------- factory
def dataset_info(name: str) -> dict:
    """Static facts of a data set: family, rotate, predict_turn, num_classes, channels.

    Example:
        >>> dataset_info("mnist6-rot-eq")["num_rotations"]
        4
    """
    if name not in DATASETS:
        raise ValueError(f"Expected a data set name in {DATASETS}, but got {name!r}.")
    if name == "cifar10":
        return dict(family="cifar10", rotate=False, predict_turn=False, num_classes=10,
                    num_rotations=0, in_channels=3, image_size=32)
    return dict(family=name.split("-")[0][:-1], rotate="-rot-" in name,
                predict_turn=name.endswith("-rot-eq"), num_classes=6,
                num_rotations=4 if name.endswith("-rot-eq") else 0, in_channels=1,
                image_size=28)


def build_dataset(name: str, root: Optional[str] = None, train: bool = True,
                  augment: str = "none", download: bool = False, subset: Optional[int] = None,
                  data_seed: int = 0, randaugment: Tuple[int, int] = (2, 9)) -> Dataset:
    """Build one of :data:`DATASETS`.

    Args:
        name: data set name, e.g. ``"fmnist6-rot-inv"``.
        root: data folder (see the module docstring); ``None`` is allowed for the
            Fashion-MNIST sets only (then :data:`FASHION_MNIST_ROOT`).
        train: training or test split.
        augment: one of :data:`AUGMENTATIONS` (CIFAR-10 only; applied to the training split).
        download: fetch missing files with torchvision.
        subset: keep a seeded random subset of this many images.
        data_seed: seed of the rotations and of the subset.
        randaugment: RandAugment's ``(num_ops, magnitude)`` for ``augment="randaugment"``.

    Raises:
        FileNotFoundError: the files are not under ``root``.

    Example:
        >>> ds = build_dataset("fmnist6-rot-eq", train=False, subset=10)
        >>> x, (label, turn) = ds[0]
        >>> x.shape
        torch.Size([1, 28, 28])
    """
    info = dataset_info(name)
    if augment not in AUGMENTATIONS:
        raise ValueError(f"Expected `augment` to be one of {AUGMENTATIONS}, but got {augment!r}.")
    if info["family"] == "cifar10":
        return CIFAR10Dataset(root, train=train, transform=image_transform(augment, train, randaugment),
                              download=download, subset=subset, data_seed=data_seed)
    if augment != "none":
        raise ValueError(f"Expected `augment` to be 'none' for {name!r} (augmentations are "
                         f"defined for cifar10 only), but got {augment!r}.")
    if info["family"] == "mnist":
        if root is None:
            raise ValueError(f"Expected `root` to be the MNIST folder for {name!r}, but got "
                             f"None. Pass root=... (--data-root): the folder that holds the idx files, or "
                             f"where to fetch them with download=True (--download).")
        images, labels = load_mnist(root, train, download)
    else:
        images, labels = load_fashion_mnist(root, train, download)
    return DigitsDataset(images, labels, rotate=info["rotate"], predict_turn=info["predict_turn"],
                         data_seed=data_seed, subset=subset, mean_std=_MEAN_STD[info["family"]],
                         train=train)


def measure_images(name: str, root: Optional[str] = None, n_images: int = 2000,
                   data_seed: int = 0, download: bool = False, labels: bool = False):
    """The first ``n_images`` test images of a data set, as the model sees them.

    Returns:
        float32 ``[n, C, H, W]``, normalised (and turned for the rotated sets); the
        thesis measures on 2000 validation images. With ``labels``: ``(images, classes)``,
        ``classes`` int64 ``[n]`` (a Rot-Eq target's class, without its turn).
    """
    # 0 failed in torch.stack of no images ("stack expects a non-empty TensorList")
    n_images = check_integer("`n_images`", n_images, 1)
    ds = build_dataset(name, root, train=False, download=download, data_seed=data_seed)
    items = [ds[i] for i in range(min(n_images, len(ds)))]
    images = torch.stack([x for x, _ in items])
    if not labels:
        return images
    return images, torch.stack([y.reshape(-1)[0] for _, y in items])
