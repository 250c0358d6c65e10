"""Sweep specs: which models, datasets, transform families, metrics and seeds to measure.

A spec is YAML (or the same structure as a Python dict); :func:`load_spec` reads and
validates it, and :meth:`SweepSpec.jobs` expands it into :class:`Job` s, one per
(model, dataset, transform family, seed). Every job has a stable id: a hash of what it
measures (model, weights and a checkpoint's content, data, transforms, metrics, seed, number
of images, batch size, vector mode, amp, ``tensor_cores`` when false, the family labels of
zero-filled or nearest-rounded shifts, what decides a folder's labels beyond its images' names:
:func:`folder_labels_source`), not of how it runs (resources, shards, retries), so
changing a cluster setting never re-measures a finished job.

Example, with every kind of entry (``distributed/examples/small.yaml`` is one that runs offline)::

    name: small
    out: runs/sweep-small
    models:
      - {name: resnet18, weights: none, num_classes: 10, accuracy: 0.70}
      - {name: resnet50, accuracy: hub}           # top-1 from torchvision's weight metadata
      - {name: my_net, arch: resnet18, weights: ckpt/resnet18.pt, num_classes: 10}
    datasets:
      - {name: photos, kind: embedded, image_size: 64}
      - {name: val, path: /data/imagenet/val}     # class subfolders give labels
      - {name: cifar10, torchvision: CIFAR10, root: /data, args: {train: false}, image_size: 64}
    transforms: {translation: "translation:1-32", rotation: rotation}
    metrics: [correlation]
    seeds: [0]
    n_images: 2000
    batch_size: 64
    resources: {num_cpus: 4, num_gpus: 0.5}
    shards: 1
    max_retries: 2
    tensor_cores: true        # false: float32 arithmetic on CUDA (a distinct job id)

Validation happens before any job starts and reports every problem at once in one
:class:`SpecError` (a ``ValueError``).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from equifast._checks import SEED_RANGE, is_integer
from equifast._hints import did_you_mean
from equifast._io import lies_in
from equifast.data import IMAGE_SUFFIXES, has_images
from equifast.devices import parse_device
from equifast.models import (ModelArgumentError, check_checkpoint, check_model_args,
                             check_weights_file, checkpoint_path, close_model_names, crop_shape,
                             input_sizes, is_known_model, torchvision_weights,
                             torchvision_weights_names)

__all__ = ["SweepSpec", "ModelEntry", "DatasetEntry", "Job", "SpecError", "load_spec",
           "validate_spec", "job_id", "hub_accuracy", "SPEC_VERSION"]

#: Bumped when the meaning of a job's content changes (its id changes with it). 2: embedded
#: photos normalised by torchvision presets and cut at the model's input size, checkpoints of
#: torchvision models preprocessed by their preset, checkpoints hashed: results of version 1
#: jobs may differ, so they are measured again (their records stay, out of the tables).
#: 3: model splits found the blocks of more models (iterated blocks, channels-last maps by
#: width, multi-output modules, EfficientViT's blocks and head conv, DLA at 32 px), and timm
#: MobileNetV3's ``pool`` moved to its pooled vector. 4: a module of repeated units whose
#: output is a sum with them or a layer on them is one block (Xception's, CSPNet's, DLA's,
#: HGNetV2's and MobileViTv2's points changed); Twins', VOLO's and GCViT's blocks are points.
SPEC_VERSION = 4
# The families a record could hold before zero-filled and nearest-rounded shifts had their own
_FIRST_FAMILIES = {"translation", "rotation", "flip", "identity", "transform"}

_TOP_KEYS = {"name", "out", "models", "datasets", "transforms", "metrics", "seeds", "n_images",
             "batch_size", "vector_mode", "resources", "shards", "max_retries", "retry_exceptions",
             "device", "amp", "tensor_cores"}
_MODEL_KEYS = {"name", "arch", "weights", "num_classes", "accuracy", "label", "resources",
               "batch_size", "shards"}
_DATASET_KEYS = {"name", "kind", "path", "torchvision", "root", "args", "image_size", "crop_pct",
                 "n_images", "labels"}
_KINDS = ("folder", "embedded", "random", "torchvision")
#: The transform families of a spec without ``transforms:`` (the thesis' figures 11 and 12).
_DEFAULT_FAMILIES = (("translation", "translation:1-32"), ("rotation", "rotation"))
_NO_WEIGHTS = (None, "none", "None", "random")
_MAX_SEED = SEED_RANGE[1]  # torch.manual_seed's largest
#: The largest ``image_size`` a spec takes: one 3 x 4096 x 4096 float32 image is 192 MiB, a batch
#: of 64 of them 12 GiB before any activation. A larger size (a typo: 10**6) failed every job
#: with out-of-memory on the workers.
MAX_IMAGE_SIZE = 4096


class SpecError(ValueError):
    """An invalid sweep spec; ``problems`` lists every problem found, one line each."""

    def __init__(self, problems: Sequence[str], source: str = "spec"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"Invalid sweep spec {source} ({len(self.problems)} "
                         f"problem{'s' if len(self.problems) != 1 else ''}); no job was started:\n{lines}")


@dataclass(frozen=True)
class ModelEntry:
    """One model of a sweep.

    Attributes:
        label: the name shown in tables and figures (unique in a sweep).
        arch: the torchvision/timm architecture name.
        weights: ``"default"`` (hub), ``None`` (random init), ``"embedded"``, or a checkpoint path.
        num_classes: classifier size (``None``: the architecture's default).
        accuracy: known top-1 accuracy in [0, 1] (used when the data has no labels), or None.
        resources, batch_size, shards: per-model overrides of the sweep's settings
            (``resources`` holds only the keys the entry gives: the others are the sweep's).
    """

    label: str
    arch: str
    weights: Optional[str] = "default"
    num_classes: Optional[int] = None
    accuracy: Optional[float] = None
    resources: Optional[Tuple[Tuple[str, float], ...]] = None
    batch_size: Optional[int] = None
    shards: Optional[int] = None

    def content(self) -> Dict[str, Any]:
        """What the measurement depends on (part of a job's id)."""
        return {"arch": self.arch, "weights": self.weights, "num_classes": self.num_classes}

    def entry(self) -> Dict[str, Any]:
        """The spec entry, as recorded with each result."""
        return {"label": self.label, "arch": self.arch, "weights": self.weights,
                "num_classes": self.num_classes, "accuracy": self.accuracy}


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a sweep.

    Attributes:
        label: its name in tables.
        kind: ``"folder"`` (``path``; class subfolders give labels), ``"embedded"`` (the
            scikit-image photos), ``"random"`` (seeded Gaussian noise, for smoke tests), or
            ``"torchvision"`` (``torchvision.datasets.<name>(root, **args)``, never downloaded;
            in RGB, its labels counted where its ``classes`` are the model's, as class folders').
        image_size: model input size; overrides the model's own preprocessing with the
            ImageNet evaluation pipeline at this size (resize, centre crop ``crop_pct``).
        n_images: overrides the sweep's ``n_images`` for this dataset.
        labels: use the labels the data has (``False``: ignore them; accuracy then comes
            from the model's known accuracy).
    """

    label: str
    kind: str
    path: Optional[str] = None
    name: Optional[str] = None
    root: Optional[str] = None
    args: Tuple[Tuple[str, Any], ...] = ()
    image_size: Optional[int] = None
    crop_pct: float = 0.875
    n_images: Optional[int] = None
    labels: bool = True

    def content(self) -> Dict[str, Any]:
        """What the measurement depends on (part of a job's id)."""
        out = {"kind": self.kind, "image_size": self.image_size, "labels": self.labels}
        if self.kind == "folder":
            out["path"] = self.path
        if self.kind == "torchvision":
            out.update(name=self.name, root=self.root, args=dict(self.args))
        if self.image_size is not None and self.kind in ("folder", "torchvision"):
            out["crop_pct"] = self.crop_pct
        return out

    def entry(self) -> Dict[str, Any]:
        """The spec entry, as recorded with each result."""
        return {"label": self.label, **self.content()}


@dataclass(frozen=True)
class Job:
    """One unit of a sweep: a model measured on a dataset under one transform family and seed.

    ``id`` is :func:`job_id` of :meth:`content`. ``base_dir`` resolves relative paths.
    """

    id: str
    model: ModelEntry
    dataset: DatasetEntry
    family: str
    transforms: Tuple[str, ...]
    transform_spec: str
    metrics: Tuple[str, ...]
    seed: int
    n_images: Optional[int]
    batch_size: int
    vector_mode: str = "per_image"
    shards: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    device: Optional[str] = None
    amp: Optional[str] = None
    tensor_cores: bool = True
    base_dir: str = "."

    def content(self) -> Dict[str, Any]:
        """The canonical content the id hashes."""
        from equifast.transforms import parse_transforms

        return _job_content(self.model, self.dataset, self.transforms, self.metrics, self.seed,
                            self.n_images, self.batch_size, self.vector_mode, self.amp,
                            tensor_cores=self.tensor_cores, base_dir=self.base_dir,
                            families=[t.family for t in parse_transforms(self.transform_spec)])

    def entry(self, folders: Optional["Folders"] = None) -> Dict[str, Any]:
        """Everything about the job, JSON-ready, as stored in its result record; a folder's
        ``resolved_path`` too, and what its files are (:func:`folder_fingerprint`:
        ``files_sha256``, names and sizes, and ``files_stamp``, with each file's modification
        time; ``None`` where the driver cannot list the folder): the id holds the path as the
        spec says it, so that a rerun from a copy of the spec's folder (``ray job submit
        --working-dir``) skips what is done, and a rerun sees images changed in place.

        ``folders``: the run's :class:`Folders`, which lists each folder once, not once a job
        (ImageNet's 50,000 files: a second each). A torchvision data set's root is kept the same
        way (``resolved_path``, :func:`torchvision_fingerprint`)."""
        dataset = self.dataset.entry()
        if self.data_path is not None:
            dataset["resolved_path"] = self.resolve(self.data_path)
            found = (Folders() if folders is None else folders).of(self) or {}
            dataset["files_sha256"] = found.get("files_sha256")
            dataset["files_stamp"] = found.get("files_stamp")
        return {"id": self.id, "model": self.model.entry(), "dataset": dataset,
                "family": self.family, "transform_spec": self.transform_spec,
                "transforms": list(self.transforms),
                "metrics": list(self.metrics), "seed": self.seed, "n_images": self.n_images,
                "batch_size": self.batch_size, "vector_mode": self.vector_mode,
                "shards": self.shards, "resources": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
                "device": self.device, "amp": self.amp, "tensor_cores": self.tensor_cores}

    @property
    def relative_folder(self) -> bool:
        """Whether the job's data is a folder (or a torchvision root) given relative to the
        spec's folder."""
        path = self.data_path
        return path is not None and not os.path.isabs(os.path.expanduser(path))

    @property
    def data_path(self) -> Optional[str]:
        """The folder the job's files are under as the spec gives it: a folder's path, a
        torchvision data set's root (``None`` for the others)."""
        return {"folder": self.dataset.path, "torchvision": self.dataset.root}.get(self.dataset.kind)

    def resolve(self, path: Optional[str]) -> Optional[str]:
        """``path`` made absolute against the spec's folder (``None`` stays ``None``)."""
        return None if path is None else _resolve(path, self.base_dir)

    @property
    def title(self) -> str:
        """A short human description: ``resnet18 / photos / rotation / seed 0``."""
        return f"{self.model.label} / {self.dataset.label} / {self.family} / seed {self.seed}"


def _job_content(model, dataset, transforms, metrics, seed, n_images, batch_size, vector_mode, amp,
                 tensor_cores=True, base_dir=".", families=(), labels_source=None):
    """``labels_source``: :func:`folder_labels_source` of the dataset (taken here when ``None``)."""
    out = {"version": SPEC_VERSION, "model": model.content(), "dataset": dataset.content(),
           # metrics in any order: measured in the same passes, the same numbers (only the
           # rows' order differs); listed in another order, every job was measured again.
           # Sorted, the ids of lists in this order (the default, [correlation, cosine]) stay
           "transforms": list(transforms), "metrics": sorted(metrics), "seed": seed,
           "n_images": n_images, "batch_size": batch_size, "vector_mode": vector_mode, "amp": amp}
    source = folder_labels_source(dataset, base_dir) if labels_source is None else labels_source
    if source:  # only where one decides: the ids of other folders' jobs stay as they were
        out["labels_source"] = source
    if not tensor_cores:  # only when off, so the ids of existing (default) sweeps stay the same
        out["tensor_cores"] = False
    labels = sorted(set(families) - _FIRST_FAMILIES)
    if labels:  # shifts labelled translation-zero, ...: records from before labelled them otherwise
        out["families"] = labels
    if checkpoint_path(model.arch, model.weights) is not None:
        # a checkpoint retrained in place measures something else: a new job, not a skip
        path = _resolve(model.weights, base_dir)
        if os.path.isfile(path):
            stat = os.stat(path)
            out["weights_sha256"] = _file_sha256(path, stat.st_size, stat.st_mtime_ns)
    return out


# The version of the rule that makes numbered class folders (ImageNetV2's 0/ ... 999/) classes
# (equifast.data.model_classes): 1, the class of the number; before, folder i sorted as text
# ("10" third) was class i, a wrong accuracy. Bump it when that rule changes.
_NUMBERED_CLASSES_RULE = 1


def folder_labels_source(dataset: "DatasetEntry", base_dir: str = ".",
                         folders: Optional["Folders"] = None) -> Dict[str, Any]:
    """What decides the labels of a folder's images beyond its path, for its jobs' ids (empty
    where nothing does, or its labels are not used): for numbered class folders, the rule that
    makes them classes (``numbered_classes``); for a flat folder labelled by a
    ``LOC_val_solution.csv`` or the devkit's ``ILSVRC2012_devkit_t12`` (in it or above it: not
    among its images), or named by a synset, the SHA-256 of its classes and each image's label
    (``labels_sha256``). A changed rule, csv or ground truth is a new job, not the same job's
    result. Named class folders are in each image's name, as the record's
    :func:`folder_files_sha256` keeps them. Which of these decides is what
    :class:`equifast.data.ImageFiles` decides: class folders where an image lies in one (folders
    it skips, as the devkit's, ``__MACOSX``, hidden ones, are none); a folder with class folders
    and no image of its own is not listed here (ImageNet's 50,000 files).
    ``folders``: the run's :class:`Folders` (a folder is listed once a run)."""
    if dataset.kind != "folder" or not dataset.labels:
        return {}
    from equifast.data import _data_folder, _image_name

    root = _resolve(dataset.path, base_dir)
    try:
        with os.scandir(root) as entries:
            subfolders, images = [], False
            for e in entries:
                if e.is_dir():
                    if _data_folder(e.name):
                        subfolders.append(e.name)
                elif not images:  # an image of its own: labelled by class folders, or by a file
                    images = _image_name(e.name)
    except OSError:
        return {}
    if subfolders and not images:  # the class folders' images decide (or none: the tasks fail)
        return _class_folders_source(subfolders)
    import warnings

    with warnings.catch_warnings():  # no csv: each task says so, in the job's record
        warnings.simplefilter("ignore")
        files = (Folders() if folders is None else folders).files(root)
    if files is None or not files.labelled:  # no images, a broken csv: the tasks fail, naming it
        return {}
    if any("/" in name for name in image_names(files)):  # ImageFiles' rule: an image in a class folder
        return _class_folders_source(files.classes)
    return {"labels_sha256": hashlib.sha256(_labels_text(files).encode()).hexdigest()}


def _class_folders_source(classes: Sequence[str]) -> Dict[str, Any]:
    """:func:`folder_labels_source` of class folders ``classes``."""
    numbered = all(c.isdecimal() and c.isascii() for c in classes)
    return {"numbered_classes": _NUMBERED_CLASSES_RULE} if numbered else {}


def _labels_text(files) -> str:
    """An :class:`equifast.data.ImageFiles`' classes and each image's label, as hashed."""
    return json.dumps(list(files.classes)) + "\n" + ",".join(map(str, files.labels))


def folder_files_sha256(path: str) -> Optional[str]:
    """SHA-256 of the relative names and sizes of a folder's images (what a job reads there),
    and of their labels where the names do not give them (:func:`names_give_labels`), ``None`` when
    it has none: ``files_sha256`` of :func:`folder_fingerprint`."""
    found = folder_fingerprint(os.path.abspath(path))
    return None if found is None else found["files_sha256"]


def folder_fingerprint(path: str, files=None, stats=None) -> Optional[Dict[str, str]]:
    """What a folder's images are, as a job's record keeps it (``None``: it has none, or cannot
    be listed): ``files_sha256``, SHA-256 of their relative names and sizes (and of their labels
    where the names do not give them: :func:`names_give_labels`), the same for a copy of the
    folder; and ``files_stamp``, SHA-256 of that and each file's modification time
    (``st_mtime_ns``), which changes with a file replaced or edited in place, at the same size
    too. ``files``: the folder's :class:`equifast.data.ImageFiles`, where it is listed already,
    and ``stats``: :func:`file_stats` of its paths, where they are taken already.

    Taken anew at each call, never cached: the folder's own modification time misses a file
    added or replaced in a subfolder. One ``stat`` a file gives both its size and its time
    (50,000 files on a local disk: about 0.4 s in all, most of it the stat'ing).
    """
    if files is None:
        files = _list_folder(path)
        if files is None:
            return None
    names = image_names(files)
    stats = file_stats(files.paths) if stats is None else stats
    # else the names say the labels: the digest stays as it was
    labels = None if names_give_labels(files, names) else _labels_text(files)
    return _fingerprint(names, stats, labels)


def _fingerprint(names: Sequence[str], stats: Sequence[Tuple[int, int]],
                 labels: Optional[str] = None) -> Dict[str, str]:
    """``files_sha256`` (of ``names``, their sizes and ``labels``, where given) and ``files_stamp``
    (of that and the modification times) of files: :func:`folder_fingerprint`'s."""
    digest = hashlib.sha256()
    _hash_lines(digest, names, [size for size, _ in stats])
    if labels is not None:
        digest.update(("\0labels\n" + labels).encode())
    sha = digest.hexdigest()
    stamp = hashlib.sha256(f"{sha}\n".encode())
    stamp.update(" ".join(str(mtime) for _, mtime in stats).encode())
    return {"files_sha256": sha, "files_stamp": stamp.hexdigest()}


#: A torchvision data set's folder of more files is not fingerprinted (its jobs are not checked
#: for changed files): a root that holds other data sets too (``/data``) is not walked whole.
MAX_STAMPED_FILES = 200_000


def mnist_kin(name: str) -> Optional[type]:
    """``torchvision.datasets.<name>`` when it is MNIST or a subclass (FashionMNIST, KMNIST,
    EMNIST, QMNIST), which read their files from ``root/<name>/raw``; else ``None``."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, name, None)
    return cls if inspect.isclass(cls) and issubclass(cls, torchvision.datasets.MNIST) else None


def mnist_files_missing(name: str, root: str) -> Optional[str]:
    """Where torchvision's MNIST and its kin (those that check their files as MNIST does) look
    for their files under ``root``, said where one is missing there: ``root/<Name>/raw``,
    uncompressed (a folder of the ``.gz`` idx files, as ``equifast train`` reads Fashion-MNIST
    from, is not it); ``None`` when they are all there, and for other data sets."""
    import torchvision.datasets

    cls = mnist_kin(name)
    # QMNIST and EMNIST check their files their own way
    if cls is None or cls._check_exists is not torchvision.datasets.MNIST._check_exists:
        return None
    files = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
    raw = os.path.join(root, name, "raw")
    if all(os.path.isfile(os.path.join(raw, f)) for f in files):
        return None
    return (f"{name} reads its idx files uncompressed ({', '.join(files)}) from {raw!r}, not .gz "
            "files in root itself")


def torchvision_folder(name: str, root: str) -> str:
    """The folder under ``root`` whose files ``torchvision.datasets.<name>`` reads, as far as its
    class says: its ``base_folder`` (CIFAR10's ``cifar-10-batches-py``), ``<name>/`` for MNIST and
    its kin (their ``raw_folder``), else ``root`` itself."""
    import torchvision.datasets

    base = getattr(getattr(torchvision.datasets, name, None), "base_folder", None)
    if isinstance(base, str) and base and os.path.isdir(os.path.join(root, base)):
        return os.path.join(root, base)
    if mnist_kin(name) is not None and os.path.isdir(os.path.join(root, name)):
        return os.path.join(root, name)
    return root


def torchvision_fingerprint(name: str, root: str) -> Optional[Dict[str, str]]:
    """What the files of a torchvision data set are, as a folder's (:func:`folder_fingerprint`):
    ``files_sha256`` of the names (relative to ``root``, with ``/``) and sizes of every file under
    :func:`torchvision_folder` (all of them: which a data set reads is its own code's), and
    ``files_stamp``, with their modification times. ``None`` where there is none, or more than
    :data:`MAX_STAMPED_FILES`: not checked. A sweep's results folder under it
    (:meth:`~.store.ResultStore.is_store`) is left out: ``root: .`` with ``--out runs/sweep``
    holds the store, whose files change at every run."""
    from .store import ResultStore

    folder = torchvision_folder(name, root)
    paths: List[str] = []
    for where, subfolders, names in os.walk(folder):
        # os.walk's order is the file system's; a store's own files would make every finished
        # job read as changed at the next run (this sweep's, or another's sharing the root)
        subfolders[:] = sorted(s for s in subfolders
                               if not ResultStore(os.path.join(where, s)).is_store())
        paths.extend(os.path.join(where, n) for n in sorted(names))
        if len(paths) > MAX_STAMPED_FILES:
            return None
    if not paths:
        return None
    top = len(root.rstrip(os.sep)) + 1
    names = [p[top:] if os.sep == "/" else p[top:].replace(os.sep, "/") for p in paths]
    return _fingerprint(names, file_stats(paths))


def _list_folder(path: str):
    """:class:`equifast.data.ImageFiles` of ``path``, or ``None`` where it cannot be listed:
    missing, no folder, no images, a folder of splits or a broken csv (the tasks reading it fail,
    naming what is wrong)."""
    from equifast.data import ImageFiles

    try:
        return ImageFiles(path)
    except (OSError, ValueError):
        return None


class Folders:
    """The image folders one sweep run reads, each listed (:class:`equifast.data.ImageFiles`)
    and fingerprinted (:func:`folder_fingerprint`) once a run, not once a use (its labels'
    source, its records, its kept shards): ImageNet's 50,000 files take about 0.4 s to list and
    stat. Made anew for each run, so that a folder changed between runs is seen by the next."""

    def __init__(self):
        self._files: Dict[str, Any] = {}
        self._prints: Dict[str, Optional[Dict[str, str]]] = {}
        self._stats: Dict[str, List[Tuple[int, int]]] = {}
        self._roots: Dict[Tuple[str, str], Optional[Dict[str, str]]] = {}

    def files(self, path: str):
        """The folder's :class:`equifast.data.ImageFiles`, or ``None`` (:func:`_list_folder`)."""
        if path not in self._files:
            self._files[path] = _list_folder(path)
        return self._files[path]

    def fingerprint(self, path: str) -> Optional[Dict[str, str]]:
        """:func:`folder_fingerprint` of the folder, from its listing of this run."""
        if path not in self._prints:
            files = self.files(path)
            if files is not None:
                self._stats[path] = file_stats(files.paths)
            self._prints[path] = (None if files is None
                                  else folder_fingerprint(path, files, self._stats[path]))
        return self._prints[path]

    def torchvision(self, name: str, root: str) -> Optional[Dict[str, str]]:
        """:func:`torchvision_fingerprint` of a torchvision data set's root, once a run."""
        if (name, root) not in self._roots:
            self._roots[(name, root)] = torchvision_fingerprint(name, root)
        return self._roots[(name, root)]

    def of(self, job: "Job") -> Optional[Dict[str, str]]:
        """The fingerprint of ``job``'s files where its spec's path resolves now: its folder's
        (:meth:`fingerprint`) or its torchvision root's (:meth:`torchvision`); ``None`` for
        other data, or files the driver cannot list."""
        if job.data_path is None:
            return None
        path = job.resolve(job.data_path)
        if job.dataset.kind == "folder":
            return self.fingerprint(path)
        return self.torchvision(job.dataset.name, path)

    def times_sha256(self, path: str, indices: Optional[Sequence[int]] = None) -> Optional[str]:
        """SHA-256 of the modification times of the folder's images ``indices`` (of its
        listing; ``None``: all) as this run stat'ed them (:meth:`fingerprint`), or ``None``
        where it cannot be listed."""
        if self.fingerprint(path) is None:
            return None
        stats = self._stats[path]
        times = (t for _, t in stats) if indices is None else (stats[i][1] for i in indices)
        return hashlib.sha256(" ".join(map(str, times)).encode()).hexdigest()


def image_names(files) -> List[str]:
    """The names of an :class:`equifast.data.ImageFiles`' images relative to its root, with
    ``/``: each ``Path.relative_to(root).as_posix()``, without making a Path of each (50,000
    files: 0.6 s of Paths, 0.02 s of strings)."""
    top = len(str(files.root))
    # its paths are str(root) + os.sep + ...: os.walk joins onto the root as given
    names = [p[top:].lstrip(os.sep) for p in files.paths]
    return names if os.sep == "/" else [n.replace(os.sep, "/") for n in names]


def file_stats(paths: Sequence[str]) -> List[Tuple[int, int]]:
    """Each file's ``(size in bytes, modification time in ns)`` (following links), ``(-1, -1)``
    for one that cannot be stat'ed."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((-1, -1))
        else:
            out.append((st.st_size, st.st_mtime_ns))
    return out


def _hash_lines(digest, names: Sequence[str], sizes: Optional[Sequence[int]] = None,
                block: int = 8192) -> None:
    """Feed ``digest`` a line ``name\n`` (or ``name\0size\n``) per image, a block of lines per
    call (one call a line cost as much as the listing). A name's bytes are the file system's
    (``surrogateescape``, as ``os.fsencode``): a Linux name need not be UTF-8."""
    for i in range(0, len(names), block):
        if sizes is None:
            text = "".join(f"{n}\n" for n in names[i:i + block])
        else:
            text = "".join(f"{n}\0{s}\n" for n, s in zip(names[i:i + block], sizes[i:i + block]))
        digest.update(text.encode("utf-8", "surrogateescape"))


def names_give_labels(files, names: Optional[Sequence[str]] = None) -> bool:
    """Whether the class folders in an :class:`equifast.data.ImageFiles`' image names (``n0144/
    a.JPEG``) are its classes and labels, so that a fingerprint of the names covers them; not
    so for labels from a ``LOC_val_solution.csv`` (which may lie above the folder), a synset
    folder given alone, or an empty class folder (it moves the index of those after it)."""
    names = image_names(files) if names is None else names
    tops = [n.split("/", 1)[0] if "/" in n else None for n in names]
    implied = sorted({t for t in tops if t is not None})
    index = {c: i for i, c in enumerate(implied)}
    return list(files.classes) == implied and list(files.labels) == [
        -1 if t is None else index[t] for t in tops]


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file (cached per path, size and modification time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def job_id(content: Mapping[str, Any]) -> str:
    """A stable id: the first 16 hex digits of SHA-256 of the canonical JSON of ``content``."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class SweepSpec:
    """A validated sweep. Build with :func:`load_spec`; expand with :meth:`jobs`."""

    name: str
    models: List[ModelEntry]
    datasets: List[DatasetEntry]
    families: Dict[str, str]
    metrics: List[str] = field(default_factory=lambda: ["correlation"])
    seeds: List[int] = field(default_factory=lambda: [0])
    n_images: Optional[int] = None
    batch_size: int = 64
    vector_mode: str = "per_image"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    shards: int = 1
    max_retries: int = 2
    retry_exceptions: bool = False
    device: Optional[str] = None
    amp: Optional[str] = None
    tensor_cores: bool = True
    out: Optional[str] = None
    base_dir: str = "."
    raw: Dict[str, Any] = field(default_factory=dict)

    def jobs(self, folders: Optional[Folders] = None) -> List[Job]:
        """Every job, in a stable order (model, dataset, family, seed). ``folders``: the run's
        :class:`Folders` (a flat folder's labels are listed once a run)."""
        folders = Folders() if folders is None else folders  # each folder looked at once
        return self._jobs([folder_labels_source(d, self.base_dir, folders) for d in self.datasets])

    def check_out(self, out: Union[str, os.PathLike]) -> None:
        """Raise ``ValueError`` when the results folder ``out`` lies in a folder dataset's
        folder: its report's figures would be measured as that dataset's images (and its
        ``records/`` taken for a class) by the next run."""
        for d in self.datasets:
            if d.kind == "folder" and d.path and lies_in(out, _resolve(d.path, self.base_dir)):
                raise ValueError(f"Expected the results folder outside the images of dataset "
                                 f"{d.label!r}, but {str(out)!r} lies in its path {d.path!r}: "
                                 f"its figures would be read as images there; use another "
                                 f"--out (or the spec's out).")

    def _jobs(self, sources: Sequence[Dict[str, Any]]) -> List[Job]:
        """The jobs, with each dataset's :func:`folder_labels_source` given."""
        from equifast.transforms import parse_transforms

        parsed = {fam: parse_transforms(text) for fam, text in self.families.items()}
        names = {fam: tuple(t.name for t in ts) for fam, ts in parsed.items()}
        out = []
        for m in self.models:
            res = dict(m.resources or ())
            for d, source in zip(self.datasets, sources):
                n = d.n_images if d.n_images is not None else self.n_images
                for fam in self.families:
                    for seed in self.seeds:
                        bs = m.batch_size or self.batch_size
                        content = _job_content(m, d, names[fam], self.metrics, seed, n, bs,
                                               self.vector_mode, self.amp,
                                               tensor_cores=self.tensor_cores,
                                               base_dir=self.base_dir,
                                               families=[t.family for t in parsed[fam]],
                                               labels_source=source)
                        out.append(Job(
                            id=job_id(content), model=m, dataset=d, family=fam,
                            transforms=names[fam], transform_spec=self.families[fam],
                            metrics=tuple(self.metrics), seed=seed,
                            n_images=n, batch_size=bs, vector_mode=self.vector_mode,
                            shards=m.shards or self.shards,
                            num_cpus=float(res.get("num_cpus", self.num_cpus)),
                            num_gpus=float(res.get("num_gpus", self.num_gpus)),
                            device=self.device, amp=self.amp,
                            tensor_cores=self.tensor_cores, base_dir=self.base_dir))
        same: Dict[str, List[Job]] = {}
        for j in out:
            same.setdefault(j.id, []).append(j)
        repeats = [js for js in same.values() if len(js) > 1]
        if repeats:  # each said by its entries: an id alone told the user nothing to remove
            raise SpecError([f"jobs: Expected every job to measure something different, but "
                             f"{' and '.join(repr(j.title) for j in js)} measure the same (one "
                             f"model, images and transforms; id {js[0].id}); remove the repeated "
                             "model, dataset, transform family or seed." for js in repeats])
        return out

    def to_dict(self) -> Dict[str, Any]:
        """The spec as a plain dict (what the YAML said, with defaults filled in)."""
        return {
            "name": self.name, "out": self.out,
            "models": [{**m.entry(), **({"resources": dict(m.resources)} if m.resources else {}),
                        **({"batch_size": m.batch_size} if m.batch_size else {}),
                        **({"shards": m.shards} if m.shards else {})} for m in self.models],
            "datasets": [d.entry() for d in self.datasets],
            "transforms": dict(self.families), "metrics": list(self.metrics),
            "seeds": list(self.seeds), "n_images": self.n_images, "batch_size": self.batch_size,
            "vector_mode": self.vector_mode,
            "resources": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "shards": self.shards, "max_retries": self.max_retries,
            "retry_exceptions": self.retry_exceptions, "device": self.device, "amp": self.amp,
            "tensor_cores": self.tensor_cores,
        }


# ---- loading and validation -----------------------------------------------------------------

def load_spec(spec: Union[str, os.PathLike, Mapping[str, Any], SweepSpec],
              base_dir: Optional[str] = None) -> SweepSpec:
    """Read and validate a sweep spec.

    Args:
        spec: a YAML (or JSON) file path, a dict of the same structure, or a ``SweepSpec``.
        base_dir: the folder relative paths are resolved against (default: the spec file's
            folder, or the current directory for a dict).

    Raises:
        SpecError: listing every problem (unknown model names, missing paths and
            checkpoints, bad transform specs, bad values); nothing has run yet.
        FileNotFoundError: when the spec file itself is missing.

    Example:
        >>> spec = load_spec({"models": [{"name": "resnet18", "weights": "none"}],
        ...                   "datasets": [{"kind": "random", "image_size": 32}],
        ...                   "transforms": {"rotation": "rotation"}, "n_images": 8})
        >>> [j.title for j in spec.jobs()]
        ['resnet18 / random / rotation / seed 0']
    """
    if isinstance(spec, SweepSpec):
        return spec
    source = "(dict)"
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if path.is_dir():  # (it said "does not exist" of a folder)
            found = sorted(p.name for p in path.glob("*.y*ml"))
            raise IsADirectoryError(f"Expected a sweep spec file (YAML), but {str(path)!r} is a folder"
                                    + (f" (holding {', '.join(found[:5])}); give one of them."
                                       if found else "."))
        if not path.is_file():
            raise FileNotFoundError(f"Expected a sweep spec file (YAML), but {str(path)!r} does not exist.")
        import yaml

        try:
            # utf-8-sig: json refuses the byte-order mark some editors write (YAML skips it)
            with path.open(encoding="utf-8-sig") as f:  # a stream: the parser's messages name the file, not a string
                if path.suffix.lower() == ".json":  # JSON's whitespace is no YAML's: a tab-indented
                    raw = json.load(f, object_pairs_hook=_unique_keys)  # file was "no valid YAML"
                else:
                    raw = yaml.load(f, Loader=_UniqueKeysLoader())
        except yaml.YAMLError as err:
            raise SpecError([f"Expected valid YAML, but parsing failed: {err}"], str(path)) from None
        except (json.JSONDecodeError, _RepeatedKey) as err:
            raise SpecError([f"Expected valid JSON (a .json file), but parsing failed: {err}"],
                            str(path)) from None
        except UnicodeDecodeError as err:  # a binary file: Python's codec message named no file
            raise SpecError([f"Expected a YAML text file (UTF-8), but byte {err.start} is no "
                             f"UTF-8 text ({err.object[err.start:err.start + 1]!r}); is it the "
                             "sweep spec?"], str(path)) from None
        source = str(path)
        base_dir = base_dir or str(path.resolve().parent)
    else:
        raw = copy.deepcopy(dict(spec))
    return validate_spec(raw, base_dir=base_dir or os.getcwd(), source=source)


class _RepeatedKey(ValueError):
    """A JSON spec's key given twice in one object."""


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """A JSON object's ``dict``, refusing a key given twice (``json`` keeps the last, as PyYAML
    does: :func:`_UniqueKeysLoader`)."""
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKey(f"found the key {key!r} twice; give each key once")
        out[key] = value
    return out


def _UniqueKeysLoader():
    """A ``yaml.SafeLoader`` class that refuses a key given twice in one mapping (PyYAML keeps
    the last: a second ``seeds:`` further down silently replaced the first)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: Dict[Any, Any] = {}
            for key_node, _ in node.value:  # as written: keys merged in (<<: *base) may repeat
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader's own error says it
                    break
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found the key {key!r} twice (first on line {first.start_mark.line + 1}); "
                        "give each key once", key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    return Loader


def validate_spec(raw: Any, base_dir: str = ".", source: str = "(dict)") -> SweepSpec:
    """Check a raw spec dict, collecting every problem; see :func:`load_spec`."""
    problems: List[str] = []
    if not isinstance(raw, Mapping):
        raise SpecError([f"Expected the spec to be a mapping (models:, datasets:, transforms:, ...), "
                         f"but got {type(raw).__name__}."], source)
    unknown = sorted(set(raw) - _TOP_KEYS)
    for key in unknown:
        problems.append(f"{key}: Expected a known key ({', '.join(sorted(_TOP_KEYS))}), but got "
                        f"{key!r}{did_you_mean(key, _TOP_KEYS, n=3) or '.'}")

    def number(key, value, lo, allow_none=False, where=None):
        """``value`` as an int, or None with its problem collected."""
        where = where or key
        if value is None and allow_none:
            return None
        if not is_integer(value) or not value >= lo:
            problems.append(f"{where}: Expected an integer >= {lo}{' or null' if allow_none else ''}, "
                            f"but got {value!r}.")
            return None
        return int(value)

    # settings ---------------------------------------------------------------------------
    name = raw.get("name", "sweep")
    if not isinstance(name, str) or not name:
        problems.append(f"name: Expected a non-empty string, but got {name!r}.")
        name = "sweep"
    n_images = number("n_images", raw.get("n_images"), 1, allow_none=True)
    batch_size = number("batch_size", raw.get("batch_size", 64), 1) or 64
    shards = number("shards", raw.get("shards", 1), 1) or 1
    max_retries = raw.get("max_retries", 2)
    max_retries = number("max_retries", max_retries, 0) if max_retries is not None else 0
    retry_exceptions = raw.get("retry_exceptions", False)
    if not isinstance(retry_exceptions, bool):
        problems.append(f"retry_exceptions: Expected true or false, but got {retry_exceptions!r}.")
        retry_exceptions = False
    vector_mode = raw.get("vector_mode", "per_image")
    if vector_mode not in ("per_image", "across_images"):
        problems.append(f"vector_mode: Expected 'per_image' or 'across_images', but got {vector_mode!r}.")
    amp = raw.get("amp")
    if amp not in (None, "float16", "bfloat16"):
        problems.append(f"amp: Expected null, 'float16' or 'bfloat16', but got {amp!r}.")
    tensor_cores = raw.get("tensor_cores", True)
    if not isinstance(tensor_cores, bool):
        problems.append(f"tensor_cores: Expected true (CUDA multiplies on tensor cores) or false "
                        f"(float32 arithmetic), but got {tensor_cores!r}.")
        tensor_cores = True
    device = raw.get("device")
    if device is not None and not _is_device_name(device):
        problems.append(f"device: Expected null (CUDA when the worker has a GPU) or a device like 'cpu', "
                        f"'cuda' or 'cuda:1', but got {device!r}.")
    res = _resources(raw.get("resources"), "resources", problems)
    num_cpus, num_gpus = res.get("num_cpus", 1.0), res.get("num_gpus", 0.0)
    out = raw.get("out")
    if out is not None and not isinstance(out, str):
        problems.append(f"out: Expected a folder path, but got {out!r}.")
        out = None

    metrics = raw.get("metrics", ["correlation"])
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    from equifast.reference import METRICS

    if not isinstance(metrics, list) or not metrics:
        problems.append(f"metrics: Expected a non-empty list of {list(METRICS)}, but got {metrics!r}.")
        metrics = ["correlation"]
    for m in metrics:
        if m not in METRICS:
            problems.append(f"metrics: Expected each metric to be one of {list(METRICS)}, but got {m!r}.")
    known = [m for m in metrics if m in METRICS]  # a mapping among them ({a: 1}) is unhashable
    if len(set(known)) != len(known):
        problems.append(f"metrics: Expected distinct metrics, but got {metrics!r}.")

    seeds = raw.get("seeds", [0])
    if is_integer(seeds):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(is_integer(s) for s in seeds):
        problems.append(f"seeds: Expected a non-empty list of integers, but got {seeds!r}.")
        seeds = [0]
    seeds = [int(s) for s in seeds]  # a numpy integer is no JSON number
    if not all(0 <= s <= _MAX_SEED for s in seeds):
        # torch's range: every worker failed on a larger one ("Overflow when unpacking long
        # long"), and it takes a negative seed s as 2**64 + s: -1 drew what 2**64 - 1 draws
        problems.append(f"seeds: Expected integers from 0 to 2**64 - 1 (torch's seeds), but got "
                        f"{[s for s in seeds if not 0 <= s <= _MAX_SEED]!r}.")
        seeds = [0]
    elif len(set(seeds)) != len(seeds):
        problems.append(f"seeds: Expected distinct seeds, but got {seeds!r}.")

    # transforms -------------------------------------------------------------------------
    # the thesis' two families where the spec has no `transforms:`; an empty one (null) is a
    # problem, as an empty list: it measured those two families in silence
    families = _families(raw.get("transforms", dict(_DEFAULT_FAMILIES)), problems)

    # models -----------------------------------------------------------------------------
    models: List[ModelEntry] = []
    entries = raw.get("models")
    if not isinstance(entries, list) or not entries:
        problems.append("models: Expected a non-empty list of models (e.g. '- {name: resnet50}'), "
                        f"but got {entries!r}.")
        entries = []
    for i, entry in enumerate(entries):
        m = _model(entry, f"models[{i}]", base_dir, problems, number)
        if m is not None:
            models.append(m)
    labels = [m.label for m in models]
    for lab in sorted({lab for lab in labels if labels.count(lab) > 1}):
        problems.append(f"models: Expected distinct model labels, but {lab!r} repeats; give each "
                        "entry its own 'label:'.")

    # datasets ---------------------------------------------------------------------------
    datasets: List[DatasetEntry] = []
    dataset_where: List[str] = []
    entries = raw.get("datasets", ["embedded"])
    if not isinstance(entries, list) or not entries:
        problems.append(f"datasets: Expected a non-empty list of datasets, but got {entries!r}.")
        entries = []
    for i, entry in enumerate(entries):
        d = _dataset(entry, f"datasets[{i}]", base_dir, problems, number)
        if d is None:
            continue
        n = d.n_images if d.n_images is not None else n_images
        if d.kind == "random" and n is None:
            problems.append(f"datasets[{i}]: Expected n_images (here or at the top) for random data, "
                            "but got none.")
        if n is not None:
            for m in models:
                if (m.shards or shards) > n:
                    problems.append(f"shards: Expected at most n_images={n} shards for dataset "
                                    f"{d.label!r}, but model {m.label!r} has {m.shards or shards}.")
            if vector_mode == "across_images" and n < 2:  # else every job failed on its worker
                problems.append(f"vector_mode: Expected n_images >= 2 for 'across_images' (it "
                                f"correlates across images), but dataset {d.label!r} has {n}.")
        datasets.append(d)
        dataset_where.append(f"datasets[{i}]")
    # a size the model cannot take, or a shift as large as the images, would fail every such
    # job on the workers
    from equifast.transforms import Rotation, parse_transforms

    parsed = {fam: parse_transforms(text) for fam, text in families.items()}

    def check_fit(size, what, hint=""):
        shape = size if isinstance(size, tuple) else (size, size)
        for fam, ts in parsed.items():
            for t in ts:
                try:
                    t.check_input(shape)
                except ValueError as err:
                    # a quarter turn needs a square: the one a spec's image_size gives
                    text = str(err).rstrip(".") + (hint if isinstance(t, Rotation) else ".")
                    problems.append(f"transforms.{fam}: Expected transforms that fit {what}, but "
                                    f"{text[:1].lower() + text[1:]}")
                    break

    for where, d in zip(dataset_where, datasets):
        if d.image_size is not None:
            check_fit(d.image_size, f"dataset {d.label!r} (image_size {d.image_size})")
        for m in models:
            size, fixed = input_sizes(m.arch, m.weights)
            crop = crop_shape(m.arch) if size is None else None  # none square (Sapiens2)
            if d.image_size is None and size is not None:  # the model's own preprocessing
                check_fit(size, f"dataset {d.label!r} at the input size of model {m.label!r} "
                                f"({size}: the dataset sets no image_size)")
            elif d.image_size is None and crop is not None:
                # its preprocessing crops images to h x w, and random and embedded ones are made
                # at h x w: a rotation failed every job
                check_fit(crop, f"dataset {d.label!r} at the input size of model {m.label!r} "
                                f"({crop[0]}x{crop[1]}: the dataset sets no image_size)",
                          "; here: set the dataset's image_size (a square crop).")
            elif fixed is not None and d.image_size not in (None, fixed):
                arch = f" ({m.arch})" if m.arch != m.label else ""
                problems.append(f"{where}.image_size: Expected {fixed}, the only input size model "
                                f"{m.label!r}{arch} takes, but dataset {d.label!r} has image_size "
                                f"{d.image_size}; set {fixed}, or leave image_size out (each "
                                "model's own size).")
    dlabels = [d.label for d in datasets]
    for lab in sorted({lab for lab in dlabels if dlabels.count(lab) > 1}):
        problems.append(f"datasets: Expected distinct dataset labels, but {lab!r} repeats; give each "
                        "entry its own 'name:'.")

    if problems:
        raise SpecError(problems, source)
    spec = SweepSpec(name=name, models=models, datasets=datasets, families=families,
                     metrics=list(metrics), seeds=list(seeds), n_images=n_images,
                     batch_size=batch_size, vector_mode=vector_mode, num_cpus=num_cpus,
                     num_gpus=num_gpus, shards=shards, max_retries=max_retries,
                     retry_exceptions=retry_exceptions, device=device, amp=amp,
                     tensor_cores=tensor_cores, out=out,
                     base_dir=str(base_dir), raw=dict(raw))
    # raises on repeated jobs; without listing folders (the run lists them, once): two jobs'
    # labels sources are the same where their datasets' content is, so they repeat alike
    try:
        spec._jobs([{}] * len(spec.datasets))
    except SpecError as err:  # said with the spec's file, as every other problem
        raise SpecError(err.problems, source) from None
    return spec


def _resolve(path: str, base_dir: str) -> str:
    p = Path(os.path.expanduser(str(path)))
    return str(p if p.is_absolute() else Path(base_dir) / p)


def _is_device_name(device) -> bool:
    """Whether ``device`` names a torch device (whether a worker has it is checked there)."""
    if not isinstance(device, str):
        return False
    try:
        parse_device(device)
    except ValueError:
        return False
    return True


def _resources(value, where, problems) -> Dict[str, float]:
    """The valid keys of a ``resources:`` mapping, only those given (a model's entry takes the
    others from the sweep's)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{where}: Expected a mapping like {{num_cpus: 1, num_gpus: 0.5}}, but got {value!r}.")
        return {}
    for key in set(value) - {"num_cpus", "num_gpus"}:
        problems.append(f"{where}.{key}: Expected num_cpus or num_gpus, but got {key!r}.")
    out = {}
    for key in ("num_cpus", "num_gpus"):
        if key not in value:
            continue
        v = value[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (key == "num_cpus" and v <= 0):
            problems.append(f"{where}.{key}: Expected a number {'> 0' if key == 'num_cpus' else '>= 0'}, "
                            f"but got {v!r}.")
        elif v > 1 and not float(v).is_integer():
            problems.append(f"{where}.{key}: Expected a fraction <= 1 or a whole number (Ray's rule), "
                            f"but got {v!r}.")
        else:
            out[key] = float(v)
    return out


def _families(value, problems) -> Dict[str, str]:
    from equifast.transforms import check_distinct, parse_transforms

    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and not value:  # no family: a "complete" sweep of no job
        problems.append("transforms: Expected at least one transform spec (a mapping {family: spec} "
                        "or a list of specs), but got [].")
        return {}
    if isinstance(value, list):
        named = {}
        for text in value:
            if not isinstance(text, str):
                problems.append(f"transforms: Expected transform specs as strings, but got {text!r}.")
                continue
            try:
                ts = parse_transforms(text)
                check_distinct(ts)
                fams = {t.family for t in ts}
            except ValueError as err:
                problems.append(f"transforms: {err}")
                continue
            key = "+".join(sorted(fams))
            if key in named:
                problems.append(f"transforms: Expected one spec per family, but {key!r} repeats; "
                                "name them with a mapping ({name: spec}).")
            named[key] = text
        return named
    if not isinstance(value, Mapping) or not value:
        problems.append(f"transforms: Expected a mapping {{family: spec}} like "
                        f"{{translation: 'translation:1-32', rotation: rotation}}, but got {value!r}.")
        return {}
    out = {}
    for fam, text in value.items():
        if fam is None or not str(fam).strip():  # a job "resnet18 / photos /  / seed 0", an
            # empty cell in the tables' CSV files (read back as NaN)
            problems.append(f"transforms: Expected each family's name (its name in tables and "
                            f"figures) to be non-empty, but got {fam!r} for {text!r}; name it, "
                            "as {rotation: rotation}.")
            continue
        if not isinstance(text, str):
            problems.append(f"transforms.{fam}: Expected a spec string like 'translation:1-32', but got {text!r}.")
            continue
        try:
            check_distinct(parse_transforms(text))
        except ValueError as err:
            problems.append(f"transforms.{fam}: {err}")
            continue
        out[str(fam)] = text
    return out


def _name(value, where: str, problems: List[str]) -> Optional[str]:
    """A model's label or a dataset's name as the spec gives it: text (YAML reads ``label: 2024``
    as a number: its text), or ``None`` where not given; a list, mapping or boolean is a
    problem (``label: [r18]`` was the label "['r18']" in every table and figure)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"{where}: Expected a name (text), but got {value!r}.")
        return None
    return str(value)


def _unknown_model_hint(name: str) -> str:
    close = close_model_names(name, n=4)
    return (f" (did you mean {', '.join(close)}?)" if close else "") + \
        "; list names with `equifast models PATTERN`"


def hub_accuracy(arch: str, weights: str = "default") -> Optional[float]:
    """Top-1 ImageNet accuracy in [0, 1] of torchvision's weights for ``arch`` (its default
    ones, or those ``weights`` names: ``IMAGENET1K_V1``), from the weights' metadata (no
    download); ``None`` for other models and weights."""
    named = torchvision_weights(arch, "DEFAULT" if weights == "default" else weights)
    if named is None:
        return None
    try:
        meta = named.meta
        return float(meta["_metrics"]["ImageNet-1K"]["acc@1"]) / 100.0
    except (KeyError, AttributeError, ValueError):
        return None


def _model(entry, where, base_dir, problems, number) -> Optional[ModelEntry]:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, Mapping):
        problems.append(f"{where}: Expected a model name or a mapping {{name: ..., weights: ...}}, "
                        f"but got {entry!r}.")
        return None
    for key in sorted(set(entry) - _MODEL_KEYS):
        problems.append(f"{where}.{key}: Expected a known key ({', '.join(sorted(_MODEL_KEYS))}), "
                        f"but got {key!r}{did_you_mean(key, _MODEL_KEYS, n=3) or '.'}")
    name = entry.get("name")
    arch = entry.get("arch", name)
    if not isinstance(arch, str) or not arch:
        problems.append(f"{where}.name: Expected a torchvision or timm model name, but got {arch!r}.")
        return None
    key = 'arch' if 'arch' in entry else 'name'
    ok = known = is_known_model(arch)
    if not known:
        problems.append(f"{where}.{key}: Expected a torchvision or timm "
                        f"model name, but got {arch!r}{_unknown_model_hint(arch)}.")
    weights = entry.get("weights", "default")
    if weights in _NO_WEIGHTS:
        weights = None
    elif not isinstance(weights, str):
        problems.append(f"{where}.weights: Expected 'default', 'none', a checkpoint path or torchvision "
                        f"weights by name (IMAGENET1K_V1), but got {weights!r}.")
        ok = False
    elif checkpoint_path(arch, weights) is not None and not os.path.isfile(_resolve(weights, base_dir)):
        problems.append(f"{where}.weights: Expected a checkpoint file or the name of torchvision "
                        f"weights, but {weights!r} is neither (looked at "
                        f"{_resolve(weights, base_dir)!r}); fix the path or use "
                        f"{', '.join(repr(w) for w in ['default', 'none'] + torchvision_weights_names(arch))}.")
        ok = False
    elif checkpoint_path(arch, weights) is not None:
        try:  # a file that is no checkpoint failed on every worker, after Ray started
            check_weights_file(_resolve(weights, base_dir), arch)
        except (OSError, ValueError) as err:
            problems.append(f"{where}.weights: {err}")
            ok = False
    # 0: a timm model's pooled features as `final` (check_model_args refuses it elsewhere)
    num_classes = number("num_classes", entry.get("num_classes"), 0, allow_none=True,
                         where=f"{where}.num_classes")
    if known and (weights is None or isinstance(weights, str)):
        # what load_model would refuse on every worker (a bad tag: timm.is_model takes any)
        try:
            check_model_args(arch, weights, num_classes, check_file=False)  # beside the spec: above
        except ModelArgumentError as err:
            problems.append(f"{where}.{key if err.argument == 'name' else err.argument}: {err}")
            ok = ok and err.argument == "num_classes"
        else:
            try:  # a checkpoint of another model (or classes) failed on every worker, after Ray
                # started: built here on the meta device, from the checkpoint's shapes alone
                if ok and checkpoint_path(arch, weights) is not None:
                    check_checkpoint(arch, _resolve(weights, base_dir), num_classes)
            except (ModelArgumentError, ValueError, OSError) as err:
                argument = getattr(err, "argument", "weights")
                problems.append(f"{where}.{argument} ({name}): {err}")
                ok = ok and argument == "num_classes"
    accuracy = entry.get("accuracy")
    if accuracy == "hub":
        accuracy = hub_accuracy(arch, weights) if weights is not None else None
        if accuracy is None and ok:
            problems.append(f"{where}.accuracy: Expected torchvision hub metadata for 'hub' (a torchvision "
                            f"model with weights: default or named weights), but {arch!r} with weights "
                            f"{weights!r} has none; write the top-1 accuracy as a number instead.")
    elif accuracy is not None:
        if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0 <= accuracy <= 100:
            problems.append(f"{where}.accuracy: Expected a top-1 accuracy in [0, 1] (or a percentage), "
                            f"'hub', or null, but got {accuracy!r}.")
            accuracy = None
        else:
            accuracy = float(accuracy) / 100.0 if accuracy > 1 else float(accuracy)
    elif weights is not None:  # 'default' or named torchvision weights; None for other weights
        accuracy = hub_accuracy(arch, weights) if ok else None
    label = (_name(entry.get("label"), f"{where}.label", problems)
             or (_name(name, f"{where}.name", problems) if "arch" in entry else name) or arch)
    res = _resources(entry.get("resources"), f"{where}.resources", problems)
    batch_size = number("batch_size", entry.get("batch_size"), 1, allow_none=True,
                        where=f"{where}.batch_size")
    shards = number("shards", entry.get("shards"), 1, allow_none=True, where=f"{where}.shards")
    if not ok:
        return None
    return ModelEntry(label=str(label), arch=arch, weights=weights, num_classes=num_classes,
                      accuracy=accuracy,
                      resources=tuple(sorted(res.items())) or None,
                      batch_size=batch_size, shards=shards)


def _dataset(entry, where, base_dir, problems, number) -> Optional[DatasetEntry]:
    if isinstance(entry, str):
        entry = {"kind": entry} if entry in ("embedded", "random") else {"path": entry}
    if not isinstance(entry, Mapping):
        problems.append(f"{where}: Expected 'embedded', a folder path or a mapping, but got {entry!r}.")
        return None
    for key in sorted(set(entry) - _DATASET_KEYS):
        problems.append(f"{where}.{key}: Expected a known key ({', '.join(sorted(_DATASET_KEYS))}), "
                        f"but got {key!r}{did_you_mean(key, _DATASET_KEYS, n=3) or '.'}")
    kind = entry.get("kind") or ("torchvision" if "torchvision" in entry else
                                 "folder" if "path" in entry else None)
    if kind not in _KINDS:
        problems.append(f"{where}.kind: Expected one of {list(_KINDS)} (or a 'path:' / 'torchvision:' key), "
                        f"but got {kind!r}.")
        return None
    # a key of another kind was silently ignored: {kind: embedded, path: /data/val} measured
    # the photos, with the folder's name in the tables
    owners = {"path": "folder", "torchvision": "torchvision", "root": "torchvision", "args": "torchvision"}
    for key in sorted(k for k in owners if k in entry and owners[k] != kind):
        problems.append(f"{where}.{key}: Expected the keys of kind {kind!r}, but got {key!r}, a key "
                        f"of kind {owners[key]!r} that {kind!r} data ignores; remove it, or set "
                        f"kind: {owners[key]}.")
    image_size = number("image_size", entry.get("image_size"), 8, allow_none=True, where=f"{where}.image_size")
    if "crop_pct" in entry and (entry.get("image_size") is None or kind not in ("folder", "torchvision")):
        # the crop of the pipeline image_size sets for a folder's or torchvision's images only
        problems.append(f"{where}.crop_pct: Expected crop_pct only beside image_size, for a folder or "
                        f"torchvision dataset (the centre crop of the resize image_size sets), but "
                        f"{kind!r} data{' without image_size' if kind in ('folder', 'torchvision') else ''} "
                        "ignores it; remove it.")
    if image_size is not None and image_size > MAX_IMAGE_SIZE:
        gib = 3 * image_size ** 2 * 4 / 2**30
        problems.append(f"{where}.image_size: Expected at most {MAX_IMAGE_SIZE} pixels a side, but "
                        f"got {image_size}: one image of it is {gib:,.1f} GiB of float32 (3 x "
                        f"{image_size} x {image_size}), a batch of them more, before the model's "
                        "activations; check it for a typo.")
        image_size = None
    crop_pct = entry.get("crop_pct", 0.875)
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
        problems.append(f"{where}.crop_pct: Expected a number in (0, 1], but got {crop_pct!r}.")
        crop_pct = 0.875
    n_images = number("n_images", entry.get("n_images"), 1, allow_none=True, where=f"{where}.n_images")
    labels = entry.get("labels", True)
    if not isinstance(labels, bool):
        problems.append(f"{where}.labels: Expected true or false, but got {labels!r}.")
        labels = True
    path = name = root = None
    args: Tuple[Tuple[str, Any], ...] = ()
    if kind == "folder":
        path = entry.get("path")
        if not isinstance(path, str) or not path:
            problems.append(f"{where}.path: Expected a folder of images, but got {path!r}.")
            return None
        if not os.path.isdir(_resolve(path, base_dir)):
            what = ("is a file, not a folder" if os.path.exists(_resolve(path, base_dir))
                    else "does not exist")  # (it said "does not exist" of a file)
            problems.append(f"{where}.path: Expected a folder of images, but {path!r} {what} "
                            f"(looked at {_resolve(path, base_dir)!r}); fix the path or mount the data.")
        else:
            from equifast.data import _check_not_splits, _data_folder

            folder = _resolve(path, base_dir)
            with contextlib.suppress(OSError):  # one the driver cannot list: workers may
                # a folder of splits (train/, val/) failed each job, after Ray started
                subfolders = sorted(e.name for e in os.scandir(folder)
                                    if e.is_dir() and _data_folder(e.name))
                try:
                    _check_not_splits(Path(folder), subfolders, argument="`path`")
                except ValueError as err:
                    problems.append(f"{where}.path: {err}")
                if not has_images(folder):  # it failed each job, after Ray started
                    problems.append(f"{where}.path: Expected a folder of images, but "
                                    f"{folder!r} holds no image files "
                                    f"({', '.join(IMAGE_SUFFIXES)}).")
    elif kind == "torchvision":
        import torchvision.datasets

        name = entry.get("torchvision")
        cls = getattr(torchvision.datasets, name, None) if isinstance(name, str) else None
        if not inspect.isclass(cls):
            known = [n for n in dir(torchvision.datasets) if n[:1].isupper()]
            problems.append(f"{where}.torchvision: Expected a torchvision.datasets class name like "
                            f"'CIFAR10', but got {name!r}{did_you_mean(name, known, n=3) or '.'}")
            cls = None
        root = entry.get("root")
        if not isinstance(root, str) or not os.path.isdir(_resolve(root, base_dir)):
            what = ("is a file, not a folder" if isinstance(root, str)
                    and os.path.exists(_resolve(root, base_dir)) else "does not exist")
            problems.append(f"{where}.root: Expected the dataset's root folder (datasets are never "
                            f"downloaded by a sweep), but {root!r} {what}.")
        elif cls is not None and (missing := mnist_files_missing(name, _resolve(root, base_dir))):
            # it failed every job, after Ray had started
            problems.append(f"{where}.root: Expected the files of torchvision.datasets.{name} under "
                            f"{root!r}, but {missing}; sweeps never download: put the data under "
                            "that root first.")
        raw_args = entry.get("args", {}) or {}
        if not isinstance(raw_args, Mapping) or not all(isinstance(k, str) for k in raw_args):
            # a key of another type ({1: a}) failed the sorting of the arguments with a TypeError
            problems.append(f"{where}.args: Expected a mapping of dataset arguments by name, like "
                            f"{{train: false}}, but got {raw_args!r}.")
            raw_args = {}
        if "download" in raw_args:
            problems.append(f"{where}.args.download: Expected no download argument (workers never "
                            "download); put the data under 'root' first.")
        elif cls is not None:
            _check_dataset_args(cls, raw_args, f"{where}.args", problems)
        args = tuple(sorted(raw_args.items()))
    label = _name(entry.get("name"), f"{where}.name", problems) or (
        Path(path).name if kind == "folder" and path else name if kind == "torchvision" else kind)
    return DatasetEntry(label=str(label), kind=kind, path=path, name=name, root=root, args=args,
                        image_size=image_size, crop_pct=float(crop_pct), n_images=n_images,
                        labels=labels)


def _check_dataset_args(cls, args: Mapping, where: str, problems: List[str]) -> None:
    """The problem, if any, with calling ``cls(root=..., **args)`` (each worker would raise it)."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):  # no signature to read: the worker tells
        return
    params = [n for n in sig.parameters if n not in ("self", "root")]
    try:
        sig.bind(root=".", **args)
    except TypeError as err:
        unknown = [k for k in args if k not in sig.parameters]
        hint = did_you_mean(unknown[0], params, n=3) if len(unknown) == 1 else ""
        problems.append(f"{where}: Expected arguments of torchvision.datasets.{cls.__name__} "
                        f"({', '.join(params)}), but {err}{hint or '.'}")
