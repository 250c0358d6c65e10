"""Run a sweep on Ray: one task per job (or per shard of a job), results into a store.

    >>> from equifast.distributed import run_sweep
    >>> result = run_sweep("distributed/examples/small.yaml", out="runs/sweep-small")  # doctest: +SKIP
    >>> result.complete                                                                 # doctest: +SKIP
    True

How it keeps every result exactly once:

- A job's id is a hash of what it measures (:mod:`equifast.distributed.spec`); the store
  holds one record file per id, written atomically by the driver (workers only return
  results, so workers need no shared disk). A rerun skips jobs with an ``ok`` record.
- Each task runs with Ray's ``max_retries`` (a worker that dies, e.g. killed or out of
  memory, is retried) and ``retry_exceptions`` from the spec (never for an exception that
  would repeat: :data:`_REPEATING`). A small tracker actor counts
  every attempt that starts, crashed ones included; when the retries are spent, the job gets
  a ``failed`` record with its error and attempt counts, which the next run retries.
- A job with ``shards: k`` is measured by ``k`` tasks, each on a contiguous slice of the
  job's images; their :class:`equifast.MeasureState` s merge exactly (integer sums) into the
  single-process result. Each finished shard is kept in the store until its job's record is
  written, so a rerun of a job that did not finish measures only the shards that did not
  (:func:`_kept_shards` says which kept ones still fit the job).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import traceback
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from equifast._io import start_ticks, writable_folder
from equifast._hints import import_optional, without_download_advice
from equifast.data import ClassFolders, _pil_rgb
from equifast.warning import warn

from .spec import (Folders, Job, SweepSpec, _hash_lines, file_stats, image_names, load_spec,
                   mnist_files_missing, names_give_labels)
from .store import ResultStore, _frame_records

__all__ = ["run_sweep", "measure_job", "job_inputs", "job_record", "SweepResult", "DEFAULT_OUT"]

#: Where results go when neither ``--out`` nor the spec's ``out`` says.
DEFAULT_OUT = "runs/sweep"

Hook = Callable[[Job, int, Optional[int]], None]


@dataclass
class SweepResult:
    """What :func:`run_sweep` did.

    Attributes:
        out: the store folder. total: jobs in the spec. finished / failed / pending: counts
        at the end. ran: jobs submitted this run. skipped: jobs already finished before.
        failures: ``{job id: error}`` of the jobs failed in this run. seconds: wall time.
    """

    out: Path
    total: int
    finished: int
    failed: int
    pending: int
    ran: int
    skipped: int
    seconds: float
    failures: Dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every job of the spec has an ``ok`` record."""
        return self.finished == self.total


# ---- one job (runs on a worker) ------------------------------------------------------------

class _NoLabels(torch.utils.data.Dataset):
    """A dataset whose labels are hidden (``labels: false`` in the spec)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        return (item[0] if isinstance(item, (tuple, list)) else item), -1


class _TorchvisionImages(torch.utils.data.Dataset):
    """A torchvision dataset as :func:`equifast.measure` takes class folders: RGB images (MNIST's
    are grayscale: the models and their Normalize take three channels), and labels that count
    toward the accuracy only where its ``classes`` are the model's (one per class of the model:
    :func:`equifast.data.model_classes`, the folders' rule), not taken as ImageNet's indices.
    A dataset that names no classes has no labels here."""

    def __init__(self, dataset, name: str):
        self.dataset, self.name = dataset, name
        classes = getattr(dataset, "wnids", None) or getattr(dataset, "classes", None)  # ImageNet: wnids
        self.classes = [str(c) for c in classes] if isinstance(classes, (list, tuple)) else []
        # equifast.measure maps these labels as it maps class folders' (image_folder)
        self.class_folders = ClassFolders(self.classes)
        if not self.classes:
            warn(f"No accuracy: torchvision's {name} names no classes (no `classes`), so "
                 "which of the model's classes its labels are is unknown.")

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        x, y = (item[0], item[1] if len(item) > 1 else -1) if isinstance(item, (tuple, list)) else (item, -1)
        if getattr(x, "mode", "RGB") != "RGB" and hasattr(x, "convert"):  # a PIL image
            # as image files are read: convert clipped 16-bit images to white
            x = _pil_rgb(x, f"{self.name}[{i}]")
        return x, (y if self.classes else -1)


class RandomImages(torch.utils.data.Dataset):
    """Seeded Gaussian noise images (a spec's ``kind: random``), drawn when they are read:
    item ``i`` is, bit for bit, ``torch.randn(n, 3, h, w, generator=g)[i]`` of a generator
    ``g`` seeded with ``seed`` (``size``: ``h`` or ``(h, w)``), without making that tensor
    (2000 images at 224 pixels are 1.2 GB at once).

    PyTorch draws a float32 ``randn`` of 16 values or more on the CPU as one uniform draw per
    value, made normal in blocks of 16 values (Box-Muller), the last 16 values, when the size is
    no multiple of 16, from 16 further draws. So any 16-aligned run of the whole tensor is
    ``randn`` of that run's length after its start's number of draws: item ``i`` takes the
    aligned run around it, and the tail from the 16 draws after the whole tensor's. Reading the
    items in order draws each value once; going back starts the generator again.
    """

    _SKIP = 1 << 22  # uniform draws discarded at a time when skipping ahead

    def __init__(self, n: int, size: Union[int, Tuple[int, int]], seed: int = 0):
        shape = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        if n < 0 or len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"Expected n >= 0 and size >= 1 (or (h, w)), but got n={n}, size={size}.")
        self.n, self.shape, self.seed = int(n), (int(shape[0]), int(shape[1])), int(seed)
        self._gen: Optional[torch.Generator] = None
        self._drawn = 0  # uniform draws taken from _gen so far
        self._last: Optional[torch.Tensor] = None  # the last 16 values drawn

    def __len__(self) -> int:
        return self.n

    def __getstate__(self):  # a generator is no picklable state: it restarts where it is needed
        return {**self.__dict__, "_gen": None, "_drawn": 0, "_last": None}

    def _draw(self, a: int, b: int) -> torch.Tensor:
        """``randn(b - a)`` of the generator after ``a`` uniform draws (``b - a``: a multiple of
        16); the 16 values drawn last are kept, as the next item may begin in their block."""
        pieces = []
        if self._gen is not None and a == self._drawn - 16 and self._last is not None:
            pieces.append(self._last)  # the block this item shares with the previous one
            a = self._drawn
        elif self._gen is None or a < self._drawn:
            self._gen, self._drawn, self._last = torch.Generator().manual_seed(self.seed), 0, None
        while self._drawn < a:  # skip: a float32 uniform is one draw, as each of randn's values
            k = min(a - self._drawn, self._SKIP)
            torch.empty(k).uniform_(generator=self._gen)
            self._drawn += k
        if b > a:
            values = torch.randn(b - a, generator=self._gen)
            self._drawn, self._last = b, values[-16:].clone()
            pieces.append(values)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def __getitem__(self, i: int) -> torch.Tensor:
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"Expected an index below {self.n}, but got {i}.")
        per = 3 * self.shape[0] * self.shape[1]
        total, start, stop = self.n * per, i * per, (i + 1) * per
        if total < 16:  # drawn one by one (another algorithm): tiny, so drawn whole
            gen = torch.Generator().manual_seed(self.seed)
            return torch.randn(self.n, 3, *self.shape, generator=gen)[i]
        # values [0, body) come from their own block of 16 draws; a total of no multiple of 16
        # ends in 16 values from the 16 draws after the whole tensor's
        body = total - 16 if total % 16 else total
        pieces = []
        if start < body:
            end = min(stop, body)
            a, b = start // 16 * 16, -(-end // 16) * 16
            pieces.append(self._draw(a, b)[start - a:end - a])
        if stop > body:
            pieces.append(self._draw(total, total + 16)[max(start, body) - body:stop - body])
        return (torch.cat(pieces) if len(pieces) > 1 else pieces[0]).view(3, *self.shape)


def job_inputs(job: Job, preprocess=None) -> Tuple[Union[torch.Tensor, torch.utils.data.Dataset], Any]:
    """The images a job measures, before sharding, and the preprocessing they need.

    Args:
        job: the job.
        preprocess: the model's own preprocessing (replaced when the dataset sets ``image_size``).

    Returns:
        ``(images, preprocess)``: model-ready images, a dataset of noise images drawn as
        they are read (``random``: :class:`RandomImages`) or of crops cut as they are read
        (``embedded``: :class:`equifast.data.EmbeddedPhotos`), or a dataset already cut to the job's seeded
        subset of ``n_images`` (``folder``, ``torchvision``; the same subset
        :func:`equifast.measure` takes).
    """
    from equifast import data as data_mod
    from equifast.models import default_preprocess

    d = job.dataset
    if d.image_size is not None:
        preprocess = default_preprocess(d.image_size, d.crop_pct)
    if preprocess is None:
        preprocess = default_preprocess()
    # the model's own crop, an oblong one too (as measure's embedded photos): its rotations
    # are refused by the spec
    size = d.image_size or data_mod.input_shape(preprocess)
    if d.kind == "random":
        # drawn as they are read: all at once they grow with n_images (2000 at 224 px: 1.2 GB)
        return RandomImages(job.n_images, size, job.seed), preprocess
    if d.kind == "embedded":
        # cut as they are read: all at once they grow with n_images (2000 at 224 px: 1.2 GB)
        return data_mod.EmbeddedPhotos(job.n_images or 256, size=size, seed=job.seed,
                                       preprocess=preprocess), preprocess
    if d.kind == "folder":
        dataset = data_mod.ImageFiles(job.resolve(d.path))
    else:
        import torchvision.datasets

        root = job.resolve(d.root)
        try:
            dataset = getattr(torchvision.datasets, d.name)(root=root, **dict(d.args))
        except RuntimeError as err:
            if "download=True" not in str(err):
                raise
            # torchvision's advice (download=True) is one a sweep refuses: say what to do instead
            kept = without_download_advice(str(err)).rstrip(".")
            layout = mnist_files_missing(d.name, root)
            raise FileNotFoundError(
                f"Expected the files of torchvision.datasets.{d.name}{dict(d.args) or ''} under "
                f"{root!r}, but torchvision found none there{f' ({kept})' if kept else ''}; "
                f"{f'{layout}; ' if layout else ''}"
                "sweeps never download: put the data under that root first.") from None
        dataset = _TorchvisionImages(dataset, d.name)
    if not d.labels:
        dataset = _NoLabels(dataset)
    if job.n_images is not None and len(dataset) < job.n_images:
        # said as equifast.measure(n_images=...) says it: a partial copy of a dataset on a node
        # measured what it held, its record's n_images the only sign
        warn(f"Measured the {len(dataset)} images of dataset {d.label!r}, fewer than the "
             f"n_images={job.n_images} asked for: that is all it holds.")
    return data_mod.seeded_subset(dataset, job.n_images, job.seed), preprocess


def _loader_workers(job: Job, images) -> int:
    """Processes decoding a folder's or dataset's images: the CPUs the task reserved beyond
    its own (``resources.num_cpus`` - 1, at most 8); none for model-ready images (random,
    embedded)."""
    from equifast.data import default_num_workers

    return 0 if _model_ready(job) else default_num_workers(job.num_cpus)


def _model_ready(job: Job) -> bool:
    """Whether the job's images come model-ready (random, embedded): no preprocess to apply."""
    return job.dataset.kind in ("random", "embedded")


def _shard(images, shard: int, shards: int):
    """The ``shard``-th of ``shards`` contiguous slices (``numpy.array_split`` sizes)."""
    n = len(images)
    index = np.array_split(np.arange(n), shards)[shard]
    if isinstance(images, torch.Tensor):
        return images[int(index[0]):int(index[-1]) + 1] if len(index) else images[:0]
    return torch.utils.data.Subset(images, index.tolist())


def _image_files(images):
    """``(ImageFiles, indices)``: the folder dataset under a job's (sharded, seeded) images and
    which of its files they are (``None``: all); ``(None, None)`` for other images."""
    from equifast.data import ImageFiles

    indices = None
    while True:
        if isinstance(images, torch.utils.data.Subset):
            idx = [int(i) for i in images.indices]
            indices = idx if indices is None else [idx[i] for i in indices]
            images = images.dataset
        elif isinstance(images, _NoLabels):
            images = images.dataset
        elif isinstance(images, ImageFiles):
            return images, indices
        else:
            return None, None


def shard_fingerprint(part) -> Optional[str]:
    """SHA-256 of what a shard of a folder's images is: the folder's class folders and the
    relative names of all its images (which the seeded subset, the slices and the labels
    depend on), and the names and sizes of the shard's own images, and their labels where the
    names do not give them (``LOC_val_solution.csv``: :func:`~.spec.names_give_labels`);
    ``None`` for images that are no folder's (``random`` and ``embedded`` are drawn from the
    job's seed). A kept shard is reused only where this is still the same (and the driver's
    :func:`_shard_times` of its images, :func:`_times_changed`): an image fixed in another
    shard's slice leaves it so."""
    files, indices = _image_files(part)
    if files is None:
        return None
    names, head, named = _folder_head(files)
    digest = head.copy()
    indices = range(len(names)) if indices is None else indices
    _hash_lines(digest, [names[i] for i in indices],
                [size for size, _ in file_stats([files.paths[i] for i in indices])])
    if not named:
        digest.update(("\0labels\n" + ",".join(str(files.labels[i]) for i in indices)).encode())
    return digest.hexdigest()


# ImageFiles -> (its image names, the digest of its classes and names, whether the names give
# the labels): the driver checks every kept shard of every job of a folder against one listing
_HEADS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _folder_head(files):
    if files not in _HEADS:
        names = image_names(files)
        head = hashlib.sha256()
        head.update(json.dumps(list(files.classes)).encode())
        _hash_lines(head, names)
        head.update(b"\0")
        _HEADS[files] = (names, head, names_give_labels(files, names))
    return _HEADS[files]


def measure_job(job: Job, shard: int = 0, shards: Optional[int] = None):
    """Measure one job (or one shard of it) in this process.

    Seeds torch with the job's seed before building the model, so every shard of a
    randomly initialised model gets the same weights.

    Args:
        job: the job. shard: which slice of its images. shards: how many slices (default
            ``job.shards``).

    Returns:
        ``(state, info)``: the :class:`equifast.MeasureState` (``None`` for an empty shard) and
        ``{"host", "pid", "shard", "n_images", "load_s", "measure_s", "device", "backend",
        "warnings", ...}`` (``warnings``: the distinct messages of the warnings it raised; of a
        job of several shards, ``data_sha256``: :func:`shard_fingerprint` of its images).

    Example:
        >>> from equifast.distributed import load_spec, measure_job
        >>> job = load_spec("distributed/examples/small.yaml").jobs()[0]    # doctest: +SKIP
        >>> state, info = measure_job(job)                                 # doctest: +SKIP
        >>> state.report().parts                                           # doctest: +SKIP
    """
    shards = job.shards if shards is None else shards
    if not 0 <= shard < shards:
        raise ValueError(f"Expected 0 <= shard < {shards}, but got shard={shard}.")
    # Kept in the record and said once by the driver: a worker would print each one in Python's
    # format, once per worker process, among Ray's logs.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        state, info = _measure_shard(job, shard, shards)
    info["warnings"] = list(dict.fromkeys(str(w.message) for w in caught))
    return state, info


def _measure_shard(job: Job, shard: int, shards: int):
    import equifast
    from equifast.measurement import library_versions
    from equifast.models import checkpoint_path, load_model
    from equifast.transforms import parse_transforms

    started = time.time()
    torch.manual_seed(job.seed)
    weights = job.model.weights
    if checkpoint_path(job.model.arch, weights) is not None:
        weights = job.resolve(weights)  # relative to the spec's folder
    model, preprocess = load_model(job.model.arch, weights=weights, num_classes=job.model.num_classes)
    images, preprocess = job_inputs(job, preprocess)
    part = _shard(images, shard, shards)
    loaded = time.time()
    workers = _loader_workers(job, part)
    info = {"host": socket.gethostname(), "pid": os.getpid(), "shard": shard, "shards": shards,
            "started_at": started, "load_s": loaded - started, "backend": equifast.backend(),
            "n_images": len(part), "loader_workers": workers,
            "versions": library_versions()}  # this worker's: job_record merges one install's only
    if shards > 1:  # what a rerun checks before it reuses this shard (kept until the job ends)
        info["data_sha256"] = shard_fingerprint(part)
    if len(part) == 0:
        info.update(measure_s=0.0, finished_at=time.time(), device=None)
        return None, info
    # sorted, as the job id hashes them: a shard kept by a run of [cosine, correlation] is one of
    # this job's too, and a state of the other order was refused by the merge (a failed job)
    state = equifast.measure(model, part, transforms=parse_transforms(job.transform_spec),
                             metric=sorted(job.metrics), batch_size=job.batch_size, n_images=None,
                             vector_mode=job.vector_mode, device=job.device, amp=job.amp,
                             tensor_cores=job.tensor_cores, seed=job.seed,
                             # embedded and random images come model-ready
                             preprocess=None if _model_ready(job) else preprocess,
                             return_state=True, num_workers=workers)
    finished = time.time()
    device = job.device or ("cuda" if torch.cuda.is_available() else "cpu")
    info.update(measure_s=finished - loaded, finished_at=finished, device=device)
    return state, info


def job_record(job: Job, results: List[Tuple[Any, Dict[str, Any]]], attempts: int = 1,
               previous: Optional[Dict[str, Any]] = None,
               folders: Optional[Folders] = None) -> Dict[str, Any]:
    """The ``ok`` record of a job from its shards' ``(state, info)`` (merged in shard order);
    ``folders``: the run's listed folders and their fingerprints (:meth:`Job.entry`). Shards kept from an
    earlier run have ``"reused": True`` in their info: the record lists them
    (``reused_shards``), and its ``total_s`` is the wall time of the shards measured in this
    run (``load_s`` and ``measure_s`` add up every shard's)."""
    results = sorted(results, key=lambda r: r[1]["shard"])
    shard_ids = [i["shard"] for _, i in results]
    if len(set(shard_ids)) != len(shard_ids):
        raise ValueError(f"Expected each shard of job {job.title} once, but got shards {shard_ids}.")
    # each worker's install (the driver's check of a kept shard is of its own): a node of another
    # timm or torchvision (an autoscaled one of a newer image) measures another model definition
    installs: Dict[str, List[int]] = {}
    for _, i in results:
        if i.get("versions"):  # (kept by an equifast that did not say them: the driver's check)
            installs.setdefault(json.dumps(i["versions"], sort_keys=True), []).append(i["shard"])
    if len(installs) > 1:
        raise ValueError(f"Expected the shards of job {job.title} to be measured with the same "
                         "equifast, torch, timm and torchvision, but the workers' differ: "
                         + "; ".join(f"shard(s) {ids} {v}" for v, ids in installs.items())
                         + ". Install the same versions on every node; a rerun measures every "
                         "shard again.")
    states = [s for s, _ in results if s is not None]
    if not states:
        raise ValueError(f"Expected at least one image for job {job.title}, but every shard was empty.")
    state = states[0]
    for other in states[1:]:
        state = state.merge(other)
    infos = [i for _, i in results]
    meta = {"model": job.model.label, "arch": job.model.arch, "weights": job.model.weights,
            "dataset": job.dataset.label, "family": job.family, "seed": job.seed,
            "batch_size": job.batch_size, "backend": infos[0].get("backend"),
            "device": infos[0].get("device"), "amp": job.amp, "shards": len(infos)}
    report = state.report(meta)
    measured = report.meta.get("accuracy")
    known = job.model.accuracy
    now = [i for i in infos if not i.get("reused")] or infos  # the shards this run measured
    start = min(i["started_at"] for i in now)
    end = max(i["finished_at"] for i in now)
    return {
        "id": job.id, "status": "ok", "job": job.entry(folders), "meta": report.meta,
        "accuracy": measured if measured is not None else known,
        "accuracy_measured": measured, "accuracy_known": known,
        "accuracy_source": "measured" if measured is not None else ("known" if known is not None else None),
        "n_images": state.n_images,
        "points": _frame_records(report.points), "parts": _frame_records(report.parts),
        "timings": {"started_at": start, "finished_at": end, "total_s": end - start,
                    "load_s": sum(i["load_s"] for i in infos),
                    "measure_s": sum(i["measure_s"] for i in infos), "shards": infos},
        "warnings": list(dict.fromkeys(w for i in infos for w in i.get("warnings", []))),
        "hosts": sorted({i["host"] for i in infos}), "attempts": attempts,
        "reused_shards": [i["shard"] for i in infos if i.get("reused")],
        "total_attempts": attempts + int((previous or {}).get("total_attempts") or 0),
        "finished_at": time.time(), "versions": _versions(),
    }


def _failure_record(job: Job, error: Union[BaseException, "_Repeating"], attempts: int,
                    previous: Optional[dict], hosts: List[str],
                    folders: Optional[Folders] = None) -> Dict[str, Any]:
    repeating = isinstance(error, _Repeating)
    return {"id": job.id, "status": "failed", "job": job.entry(folders),
            "error": error.error if repeating else _describe(error),
            "traceback": (error.traceback if repeating
                          else "".join(traceback.format_exception(error))[-20000:]),
            "attempts": attempts,
            "total_attempts": attempts + int((previous or {}).get("total_attempts") or 0),
            "hosts": hosts, "finished_at": time.time(), "versions": _versions()}


def _system_failure(error: BaseException) -> bool:
    """A worker or node died (as opposed to an exception raised by the measurement)."""
    import ray.exceptions as rex

    kinds = tuple(getattr(rex, n) for n in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError",
                                            "LocalRayletDiedError") if hasattr(rex, n))
    return isinstance(error, kinds)


def _describe(error: BaseException) -> str:
    """One line: what went wrong in a task."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]
    text = str(error).strip().splitlines()
    first = next((line for line in text if line.strip()), "")
    return f"{type(error).__name__}: {first}"[:500]


def _versions() -> Dict[str, str]:
    from equifast.measurement import library_versions

    # plain strings (torch's is a TorchVersion): a kept shard holds them, read weights_only
    out = library_versions()
    try:
        import ray

        out["ray"] = ray.__version__
    except ImportError:
        pass
    return out


# ---- Ray side ------------------------------------------------------------------------------

class _Tracker:
    """A tiny actor that counts the attempts each task starts (crashed ones included)."""

    def __init__(self):
        self.starts: Dict[str, Dict[int, int]] = {}
        self.hosts: Dict[str, set] = {}
        self.active: set = set()

    def started(self, job_id: str, shard: int, host: str) -> int:
        shards = self.starts.setdefault(job_id, {})
        shards[shard] = shards.get(shard, 0) + 1
        self.hosts.setdefault(job_id, set()).add(host)
        self.active.add((job_id, shard))
        return shards[shard]

    def ended(self, job_id: str, shard: int) -> None:
        self.active.discard((job_id, shard))

    def snapshot(self) -> Dict[str, Dict[str, Any]]:
        running = {j for j, _ in self.active}
        return {k: {"attempts": max(v.values()), "hosts": sorted(self.hosts.get(k, ())),
                    "running": k in running} for k, v in self.starts.items()}


def _start_tracker(ray):
    """The :class:`_Tracker` actor, on the driver's node where Ray can put it there (a worker
    node may be lost: spot instances, scale-down), elsewhere otherwise."""
    opts: Dict[str, Any] = {"num_cpus": 0}
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=True)
    except Exception:  # noqa: BLE001 -- Ray Client, an older Ray: wherever Ray puts it
        pass
    return ray.remote(_Tracker).options(**opts).remote()


#: Exceptions that repeat when a task runs again: bad data (an image PIL cannot decode), bad
#: settings, a bug. Under ``retry_exceptions: true`` a task that raises one is not retried.
_REPEATING = (ValueError, TypeError, LookupError, AttributeError, NotImplementedError,
              ArithmeticError, AssertionError)


@dataclass
class _Repeating:
    """What a task returns, not raises, for an exception of :data:`_REPEATING` when the spec
    retries exceptions: Ray would run the shard again for nothing, ``max_retries`` times (hours
    each at ImageNet scale). The driver makes it the job's failure."""

    error: str       # :func:`_describe` of it
    traceback: str


def _task(job: Job, shard: int, shards: int, tracker, before_job: Optional[Hook],
          retried: bool = False):
    """One Ray task: report the start to the tracker, run the hook, measure. ``retried``: Ray
    retries its exceptions (``retry_exceptions``); one that would only repeat is returned as
    :class:`_Repeating` instead.

    The start is confirmed through ``ObjectRef.future()``, not ``ray.get``: a task blocked in
    ``ray.get`` lends its CPUs to the next task, which would oversubscribe the node.
    """
    attempt = None
    if tracker is not None:
        try:  # delivered before anything can crash this worker
            attempt = tracker.started.remote(job.id, shard, socket.gethostname()).future().result(
                timeout=60)
        except Exception:  # noqa: BLE001 -- bookkeeping only; never fail a job for it
            attempt = None
    try:
        if before_job is not None:
            before_job(job, shard, attempt)
        state, info = measure_job(job, shard, shards)
        info["attempt"] = attempt
    except _REPEATING as err:
        if not retried:
            raise
        return _Repeating(_describe(err), "".join(traceback.format_exception(err))[-20000:])
    finally:  # a crashed worker never gets here: its shard stays running until retried
        if tracker is not None:
            try:
                tracker.ended.remote(job.id, shard)
            except Exception:  # noqa: BLE001 -- bookkeeping only (a tracker gone)
                pass
    return state, info


def _init_ray(address: Optional[str], num_cpus: Optional[int]) -> bool:
    """Connect to Ray (``address``, else ``RAY_ADDRESS``) or start a local Ray of this process's
    own, even where a ``ray start`` cluster runs on the machine (``--address auto`` joins that);
    True when this call started or joined it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: Dict[str, Any] = {"address": address}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # address=None would join a running `ray start` cluster, which refuses num_cpus
        kwargs.update(address="local", include_dashboard=False)
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)
    return True


def _check_reachable(address: Optional[str], timeout_s: float = 5.0) -> None:
    """Raise ConnectionError unless ``address`` (or ``RAY_ADDRESS``) can be a Ray cluster: a
    ``host:port`` (or ``ray://``) that accepts a TCP connection within ``timeout_s`` and does
    not answer HTTP (the dashboard does), ``auto``, ``local`` or another scheme Ray resolves;
    ``http(s)://`` and malformed addresses are refused. ``ray.init`` would retry some of
    them for many minutes."""
    where = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local"):
        return  # found by Ray itself
    dashboard = ("the Ray dashboard's (the Jobs API that `ray job submit --address` takes), not "
                 "the cluster's: give the head's HOST:6379, 'auto' on a node of the cluster, or "
                 "ray://HOST:10001")
    if address.startswith(("http://", "https://")):
        raise ConnectionError(f"Expected a Ray cluster address ({where}), but {address!r} is "
                              f"{dashboard}.")
    if "://" in address.replace("ray://", "", 1):
        return  # another scheme (anyscale://...): Ray's to resolve
    host, _, port = address.replace("ray://", "", 1).rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"Expected a Ray cluster address ({where}): HOST:PORT, "
                              f"ray://HOST:PORT, 'auto' or 'local', but got {address!r}.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConnectionError(f"Expected a Ray cluster at {address!r} ({where}), but {host}:{port} "
                              f"does not accept connections ({err.strerror or err}); start one "
                              "(`ray start --head`) or fix the address.") from None
    if _speaks_http(host.strip("[]"), int(port)):  # ray.init would retry it for minutes
        raise ConnectionError(f"Expected a Ray cluster at {address!r} ({where}), but "
                              f"{host}:{port} is {dashboard}.")


def _speaks_http(host: str, port: int, timeout_s: float = 3.0) -> bool:
    """Whether ``host:port`` answers an HTTP/1.1 request (the dashboard does; Ray's GCS and
    client server speak gRPC, which does not)."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", "/api/version")
        return conn.getresponse().status > 0
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def run_sweep(spec: Union[str, os.PathLike, dict, SweepSpec], out: Optional[os.PathLike] = None,
              address: Optional[str] = None, *, retry_failed: bool = True, progress: bool = True,
              before_job: Optional[Hook] = None, num_cpus: Optional[int] = None,
              poll_s: float = 0.5, echo: Callable[[str], None] = print) -> SweepResult:
    """Run every unfinished job of a sweep on Ray and store the results.

    Args:
        spec: a spec file, dict or :class:`SweepSpec`; validated before anything runs.
        out: the store folder (default: the spec's ``out``, else ``runs/sweep``).
        address: a Ray cluster (``"auto"``, ``"ray://head:10001"``); ``None`` uses the Ray
            this process is connected to, ``RAY_ADDRESS`` (as under ``ray job submit``), or
            starts a local one (with ``num_cpus``, default all cores).
        retry_failed: also rerun jobs whose record says ``failed`` (default True).
        progress: print a line whenever the counts change (and one per finished job).
        before_job: ``f(job, shard, attempt)`` called on the worker before measuring: setup,
            or fault injection in tests (``attempt`` counts from 1, crashed attempts included;
            ``None`` if the tracker did not answer).
        poll_s: how often the counts and ``status.json`` are refreshed.
        echo: where progress lines go.

    Returns:
        :class:`SweepResult`. The combined tables (``points``, ``parts``, ``jobs`` in Parquet
        and CSV) are rewritten at the end, also after an interruption.

    Raises:
        SpecError: an invalid spec (nothing ran). BlockingIOError: another live sweep writes
        ``out``.
        ConnectionError: ``address`` is no Ray cluster: nothing accepts connections at
        ``host:port``, it is the dashboard's (``http://``, or a port answering HTTP), it is
        malformed, or ``auto`` finds no cluster; nothing is written then.
        ValueError: jobs to run ask for more CPUs or GPUs (``resources``) than the local Ray this
        call started has (Ray would wait for ever); nothing is written. On a cluster it joined,
        which may autoscale, that is a warning.
    """
    ray = import_optional("ray", "distributed", "Running a sweep")
    spec = load_spec(spec)
    folders = Folders()  # each folder listed once this run: labels, fingerprints, kept shards
    jobs = spec.jobs(folders)
    store = ResultStore(out or spec.out or DEFAULT_OUT)
    t0 = time.time()
    spec.check_out(store.root)
    store.check_folder()
    writable_folder(store.root, "the results folder (--out)", keep=False)  # before Ray, too
    store.check_unlocked()  # before Ray starts (10-20 s): lock() below still decides
    started_ray = False
    try:
        # before the store is touched: a wrong address, no cluster, or jobs it can never run
        # leave nothing behind; which jobs run, from their records' first lines (not tables)
        runs = {j.id for j in jobs if _to_run({"status": store.status_of(j.id)}, retry_failed)}
        if not ray.is_initialized() and runs:
            _check_reachable(address)
            started_ray = _init_ray(address, num_cpus)
        if ray.is_initialized():
            _check_resources(jobs, ray.cluster_resources(),
                             can_grow=not (started_ray and _is_local(address)),
                             runs=lambda j: j.id in runs)
        store.lock()
    except BaseException:
        if started_ray:
            ray.shutdown()
        raise
    tracker = None
    pending: Dict[Any, Tuple[Job, int]] = {}
    counts: Optional[_Counts] = None
    try:
        _warn_other_spec(store, spec, jobs)
        store.write_spec(spec.to_dict(), [j.id for j in jobs],
                         {j.id: j.model.label for j in jobs}, {j.id: j.dataset.label for j in jobs},
                         {j.id: j.family for j in jobs})
        before = _previous_records(store, jobs)  # again, under the lock
        _warn_damaged(store, _damaged(store, jobs, before))
        done, old_failed, todo = _todo(before, jobs, retry_failed, folders)
        _previous_attempts(store, before, todo)
        for job in todo:  # the records' fingerprints: of the images before they are read
            folders.of(job)
        failed_now: Dict[str, str] = {}
        warned: set = set()
        say = echo if progress else (lambda _line: None)
        say(f"[{spec.name}] {len(jobs)} job{'s' * (len(jobs) != 1)}: {len(done)} already finished, "
            f"{len(todo)} to run -> {store.root}")
        listed = _tidy_shards(store, jobs, done, say)  # {job id: its kept shards' files}
        loaded: Dict[Tuple[str, int], dict] = {}  # the kept shards' contents, each read once
        kept = _kept_shards(store, todo, say, folders, loaded)  # {job id: shards of an earlier run}
        status = {"sweep": spec.name, "state": "running", "total": len(jobs), "out": str(store.root),
                  "host": socket.gethostname(), "pid": os.getpid(), "started_at": t0,
                  "started": start_ticks(os.getpid())}
        counts = _Counts(jobs, done, set() if retry_failed else old_failed)
        store.write_status({**status, **counts.as_dict(set())})
        partial: Dict[str, List[Tuple[Any, dict]]] = {}  # each job's shards measured in this run

        def fail(job: Job, err: BaseException, attempts: int, hosts: List[str]) -> None:
            rec = _failure_record(job, err, attempts, before[job.id], hosts, folders)
            store.write_record(rec)
            failed_now[job.id] = rec["error"]
            counts.fail(job.id)
            partial.pop(job.id, None)
            going = sum(1 for j, _ in pending.values() if j.id == job.id)
            say(f"  FAILED {job.title} after {attempts} attempt(s): {rec['error']}"
                + (f" (its other {going} shard(s) go on: what they measure is kept for the rerun)"
                   if going else ""))

        def finish(job: Job, attempts: int, hosts: List[str]) -> None:
            """The job's record, from its shards of this run and those kept from earlier."""
            try:
                results = partial.pop(job.id, []) + _load_kept(store, job, kept.get(job.id, ()),
                                                               loaded)
                rec = job_record(job, results, attempts, before[job.id], folders)
            except Exception as err:  # noqa: BLE001 -- a failure record, as a task's error
                _remove_shards(store, job, listed)  # no merge of these again: the rerun measures afresh
                fail(job, err, attempts, hosts)
                return
            store.write_record(rec)
            _remove_shards(store, job, listed)  # after the record: a crash between leaves them to _tidy
            counts.finish(job.id)
            reused = (f", {len(rec['reused_shards'])} of {job.shards} shards kept from an earlier "
                      "run" if rec["reused_shards"] else "")
            say(f"  ok {job.title} ({rec['timings']['total_s']:.1f} s on "
                f"{', '.join(rec['hosts'])}, attempt {attempts}{reused})")
            for w in rec["warnings"]:  # each once a sweep: the record keeps all of them
                if w not in warned:
                    warned.add(w)
                    say(f"  warning ({job.title}): {w}")

        if todo:
            if any(len(kept.get(j.id, ())) < j.shards for j in todo) and not ray.is_initialized():
                # jobs to run after all: their records changed, or moved
                started_ray = _init_ray(address, num_cpus)
            if started_ray and _is_local(address):  # moved ones too, which the first check left out
                _check_resources(todo, ray.cluster_resources())
            if ray.is_initialized():
                tracker = _start_tracker(ray)
                remote = ray.remote(_task)
            for job in todo:
                opts = dict(num_cpus=job.num_cpus, num_gpus=job.num_gpus,
                            max_retries=spec.max_retries, retry_exceptions=spec.retry_exceptions,
                            name=f"equifast:{job.model.label}:{job.family}:{job.seed}")
                for shard in range(job.shards):
                    if shard not in kept.get(job.id, ()):
                        ref = remote.options(**opts).remote(job, shard, job.shards, tracker,
                                                            before_job, spec.retry_exceptions)
                        pending[ref] = (job, shard)
            for job in todo:  # every shard kept (the driver stopped before the merge): no task
                if len(kept.get(job.id, ())) == job.shards:
                    finish(job, 0, [])
        last_line, last_write = None, 0.0
        snapshot: Dict[str, dict] = {}
        lost: List[BaseException] = []  # the tracker's error, once it is gone

        def take_snapshot() -> Dict[str, dict]:
            """The tracker's counts; the last ones when it is gone (its node lost, killed):
            bookkeeping, which never stops the sweep."""
            if tracker is None or lost:
                return snapshot
            try:
                return ray.get(tracker.snapshot.remote(), timeout=60)
            except Exception as err:  # noqa: BLE001 -- an actor that died, or does not answer
                lost.append(err)
                say(f"[{spec.name}] warning: the tracker of attempts is gone ({_describe(err)}); "
                    "the sweep goes on, without counting attempts or running jobs")
                return snapshot

        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=poll_s, fetch_local=False)
            if ready:
                snapshot = take_snapshot()
            for ref in ready:
                job, shard = pending.pop(ref)
                attempts = max(1, snapshot.get(job.id, {}).get("attempts", 1))
                hosts = snapshot.get(job.id, {}).get("hosts", [])
                try:
                    result = ray.get(ref)
                except Exception as err:  # noqa: BLE001 -- any task error becomes a failure record
                    if job.id in failed_now:  # another shard of a job that failed already
                        continue
                    if _system_failure(err):  # Ray spent every retry on it
                        attempts = max(attempts, spec.max_retries + 1)
                    fail(job, err, attempts, hosts)
                    continue
                if isinstance(result, _Repeating):  # raised, and not retried: it would repeat
                    if job.id not in failed_now:
                        fail(job, result, attempts, hosts)
                    continue
                if job.shards > 1:  # kept until the job's record is written: a rerun reuses it
                    _keep(store, job, result, say, folders)
                if job.id in failed_now:  # a shard of a failed job: kept for the rerun only
                    continue
                partial.setdefault(job.id, []).append(result)
                if len(partial[job.id]) + len(kept.get(job.id, ())) == job.shards:
                    finish(job, attempts, hosts)
            if not ready:
                snapshot = take_snapshot()
            running = ({jid for jid, s in snapshot.items() if s["running"] and jid not in counts.closed}
                       if tracker is not None and not lost else set())
            line = counts.line(running)
            now = time.time()
            if line != last_line or now - last_write > 10:
                store.write_status({**status, "updated_at": now, **counts.as_dict(running)})
                last_write = now
                if line != last_line:
                    say(f"[{spec.name}] {line}")
                    last_line = line
        final = counts.as_dict(set())
        store.write_status({**status, "state": "done", "updated_at": time.time(), **final})
        say(f"[{spec.name}] done in {time.time() - t0:.1f} s: {counts.line(set())}")
        return SweepResult(out=store.root, total=len(jobs), finished=final["finished"],
                           failed=final["failed"], pending=final["pending"], ran=len(todo),
                           skipped=len(done), seconds=time.time() - t0, failures=failed_now)
    except BaseException:
        for ref in list(pending):
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 -- best effort on the way out
                pass
        st = store.read_status() or {}
        if st.get("state") == "running":  # the counts as they are now, none running: the
            # last status written may be older (it is written on a change of line, or 10 s)
            now = (counts.as_dict(set()) if counts is not None else
                   {"pending": st.get("pending", 0) + st.get("running", 0), "running": 0,
                    "running_ids": []})
            store.write_status({**st, "state": "interrupted", "updated_at": time.time(), **now})
        raise
    finally:
        try:
            store.write_tables()
        finally:
            if tracker is not None:
                try:
                    ray.kill(tracker)
                except Exception:  # noqa: BLE001
                    pass
            if started_ray:
                ray.shutdown()
            store.unlock()


def _warn_other_spec(store: ResultStore, spec: SweepSpec, jobs: List[Job]) -> None:
    """Warn where the folder's saved spec has finished jobs that ``spec`` lacks (another sweep
    given the same --out, or a model taken out of the spec): its ``spec.json`` is replaced, so
    that ``sweep status`` and the tables show ``spec``'s jobs from now on; their records stay."""
    saved = store.read_spec() or {}
    ours = {j.id for j in jobs}
    theirs = [jid for jid in saved.get("jobs") or [] if jid not in ours and store.status_of(jid) == "ok"]
    if theirs:
        name = (saved.get("spec") or {}).get("name")
        warn(f"{str(store.root)!r} holds sweep {name!r}, and {len(theirs)} of its finished jobs are "
             f"not jobs of this spec ({spec.name!r}): `sweep status` and `sweep report` show this "
             f"spec's jobs from now on. Their records are kept in {str(store.records_dir)!r} (a run "
             "of that spec shows them again, measuring nothing); give this spec another --out to "
             "keep the two apart.")


def _previous_records(store: ResultStore, jobs: List[Job]) -> Dict[str, Optional[dict]]:
    """What the driver keeps of each job's record (``None``: none): its ``status``,
    ``total_attempts`` and ``job.dataset`` (for :func:`_moved`), not its tables: a finished
    job's record holds them all (a sweep of thousands of ImageNet jobs held gigabytes). Only
    the fields before the tables are read (:meth:`~.store.ResultStore.head_of`), and of a
    finished job without a folder or torchvision root only its status is kept; an older finished
    record's ``total_attempts`` lies after its tables: :func:`_previous_attempts` reads it for
    the jobs that run again."""
    out: Dict[str, Optional[dict]] = {}
    for job in jobs:
        rec = store.head_of(job.id)
        if rec is not None and rec.get("status") == "ok" and job.data_path is None:
            out[job.id] = {"status": "ok"}  # no folder, no torchvision root: nothing else is used
            continue
        out[job.id] = None if rec is None else {
            "status": rec.get("status"), "total_attempts": rec.get("total_attempts"),
            "job": {"dataset": (rec.get("job") or {}).get("dataset") or {}}}
    return out


def _damaged(store: ResultStore, jobs: List[Job], before: Dict[str, Optional[dict]]) -> List[Job]:
    """The ``jobs`` whose record file is there but cannot be read (:func:`_previous_records`
    has ``None``: damaged, :meth:`~.store.ResultStore.unreadable`): they run again."""
    return [j for j in jobs if before.get(j.id) is None and store.record_path(j.id).is_file()]


def _warn_damaged(store: ResultStore, damaged: List[Job]) -> None:
    """Say the jobs of :func:`_damaged` (a damaged finished record was read as a finished job,
    its numbers left out of the tables unsaid)."""
    if damaged:
        names = ", ".join(j.title for j in damaged[:5]) + (", ..." if len(damaged) > 5 else "")
        warn(f"{len(damaged)} record file(s) in {str(store.records_dir)!r} cannot be read "
             f"(damaged?): {names}; their jobs are measured again, and their records replaced.")


def _previous_attempts(store: ResultStore, before: Dict[str, Optional[dict]],
                       todo: List[Job]) -> None:
    """Fill in ``total_attempts`` of the finished records (of :func:`_previous_records`) of the
    jobs ``todo`` runs again (their files changed, or moved) where their head lacks it, read
    whole: a record written before it came first holds it after its tables, and only these few
    need it (their new record counts on from it)."""
    for job in todo:
        rec = before.get(job.id)
        if rec is not None and rec.get("status") == "ok" and rec.get("total_attempts") is None:
            rec["total_attempts"] = (store.get(job.id) or {}).get("total_attempts")


def _shard_versions() -> Dict[str, str]:
    """What a kept shard must have been measured with to be merged with new ones: this
    equifast and torch (another version may measure otherwise, or pickle other classes), and
    this timm and torchvision (a model by name is their definition, its preprocess theirs: a
    shard of another one's model is no slice of this one's job)."""
    from equifast.measurement import library_versions

    return library_versions()


def _shard_payload(job: Job, result: Tuple[Any, Dict[str, Any]], folders: Folders) -> Dict[str, Any]:
    """What :func:`_keep` keeps of a finished shard: its ``state`` and ``info``, what it was
    measured with (:func:`_shard_versions`), and ``times``: :func:`_shard_times` of its
    images, as the driver stat'ed them before the run read them."""
    state, info = result
    return {"state": state, "info": info, "versions": _shard_versions(),
            "times": _shard_times(job, info["shard"], folders)}


def _shard_times(job: Job, shard: int, folders: Folders) -> Optional[Dict[str, str]]:
    """``{"path": the folder's real path, "sha256": of the modification times of the images
    shard ``shard`` of ``job`` reads}``, as the driver's listing of this run has them (``None``:
    no folder's, or one the driver cannot list); of a torchvision data set, its root's and
    :func:`~.spec.torchvision_fingerprint`'s ``files_stamp`` (which of its files a shard reads
    is the data set's own code's). Not in the worker's :func:`shard_fingerprint`: a worker's
    copy of the folder (on another node) has times of its own."""
    if job.dataset.kind == "torchvision":
        found = folders.of(job)
        return None if found is None else {"path": os.path.realpath(job.resolve(job.data_path)),
                                           "sha256": found["files_stamp"]}
    part = _listed_part(job, shard, folders)
    if part is None or part is _UNSEEN:
        return None
    path = job.resolve(job.dataset.path)
    _, indices = _image_files(part)
    return {"path": os.path.realpath(path), "sha256": folders.times_sha256(path, indices)}


def _times_changed(then: Optional[Dict[str, str]], now: Optional[Dict[str, str]]) -> bool:
    """Whether a kept shard's images were modified since it was kept (:func:`_shard_times`
    ``then`` and ``now``): compared in the same folder only, as records are (:func:`_moved`: a
    copy of the folder elsewhere, as ``ray job submit --working-dir`` unpacks one, has times of
    its own); a shard kept where the driver could not list the folder, and can now, is
    measured again."""
    if now is None:
        return False
    if not isinstance(then, dict):
        return True
    return then.get("path") == now["path"] and then.get("sha256") != now["sha256"]


def _keep(store: ResultStore, job: Job, result: Tuple[Any, Dict[str, Any]], say,
          folders: Optional[Folders] = None) -> None:
    """Keep a finished shard of ``job`` in the store until the job's record is written; one
    that cannot be kept (a full disk) is said, and only a rerun pays for it. ``folders``: the
    run's listed folders."""
    try:
        store.write_shard(job.id, result[1]["shard"], job.shards,
                          _shard_payload(job, result, Folders() if folders is None else folders))
    except Exception as err:  # noqa: BLE001 -- the result is still merged in this run
        say(f"  warning ({job.title}): shard {result[1]['shard']} of {job.shards} is not kept for a "
            f"rerun: {type(err).__name__}: {err}")


def _load_kept(store: ResultStore, job: Job, shards,
               loaded: Optional[Dict[Tuple[str, int], dict]] = None) -> List[Tuple[Any, Dict[str, Any]]]:
    """The ``(state, info)`` of the shards of ``job`` kept from an earlier run (their info
    marked ``"reused": True``); ``loaded``: what :func:`_kept_shards` read of them (taken out
    of it), the others are read here."""
    out = []
    for shard in sorted(shards):
        payload = (loaded or {}).pop((job.id, shard), None)
        if payload is None:
            payload = store.read_shard(job.id, shard, job.shards)
        if payload is None:
            raise FileNotFoundError(
                f"Expected shard {shard} of {job.shards} of job {job.title}, kept from an earlier "
                f"run, in {str(store.shard_path(job.id, shard, job.shards))!r}, but it is gone or "
                "unreadable; a rerun measures every shard again.")
        out.append((payload["state"], {**payload["info"], "reused": True}))
    return out


def _listed_part(job: Job, shard: int, folders: Folders):
    """The images shard ``shard`` of ``job`` would measure now, sliced as its worker slices
    them (:func:`job_inputs`, then :func:`_shard`) from the driver's listing of its folder
    (``folders``: this run's); ``None`` for no folder's images, :data:`_UNSEEN` where the driver
    cannot list the folder (workers may have data the driver has not)."""
    from equifast.data import seeded_subset

    if job.dataset.kind != "folder":
        return None
    files = folders.files(job.resolve(job.dataset.path))
    if files is None:
        return _UNSEEN
    return _shard(seeded_subset(files, job.n_images, job.seed), shard, job.shards)


def _current_fingerprint(job: Job, shard: int, folders: Folders):
    """:func:`shard_fingerprint` of :func:`_listed_part` (``None`` and :data:`_UNSEEN` as
    there)."""
    part = _listed_part(job, shard, folders)
    return part if part is None or part is _UNSEEN else shard_fingerprint(part)


_UNSEEN = object()  # a folder the driver cannot list


def _kept_shards(store: ResultStore, todo: List[Job], say, folders: Optional[Folders] = None,
                 loaded: Optional[Dict[Tuple[str, int], dict]] = None) -> Dict[str, List[int]]:
    """For each job to run, the shards a run before this one finished and kept that it reuses:
    of the job's number of shards, readable, measured with this equifast, torch, timm and torchvision
    (:func:`_shard_versions`), and of the same images as the job has now (a folder's, where
    the driver can list it: :func:`shard_fingerprint`). The files of the others of the job's
    number of shards are deleted (another number of shards cuts other slices: their files
    stay until the job finishes). ``folders``: the run's listed folders; ``loaded``: filled
    with ``{(job id, shard): content}`` of the reused ones, for :func:`_load_kept` (held until
    their job is merged: the jobs a stopped run left unfinished, not the sweep's)."""
    files = store.shard_files()
    folders = Folders() if folders is None else folders
    current = _shard_versions()
    kept: Dict[str, List[int]] = {}
    for job in todo:
        unseen = False
        for shard, shards, path in files.get(job.id, []):
            if shards != job.shards or job.shards < 2:
                continue
            payload = store.read_shard(job.id, shard, shards)
            why = None
            if payload is None:
                why = "unreadable"
            elif payload.get("versions") != current:
                why = f"measured with {payload.get('versions')}, not {current}"
            else:
                now = _current_fingerprint(job, shard, folders)
                unseen = unseen or now is _UNSEEN
                if now is not _UNSEEN and (
                        now != (payload.get("info") or {}).get("data_sha256")
                        or _times_changed(payload.get("times"), _shard_times(job, shard, folders))):
                    why = "its images have changed since"
            if why is not None:
                path.unlink(missing_ok=True)
                say(f"  {job.title}: shard {shard} of {shards}, kept from an earlier run, is "
                    f"measured again ({why})")
                continue
            kept.setdefault(job.id, []).append(shard)
            if loaded is not None:
                loaded[(job.id, shard)] = payload
        if job.id in kept:
            n = len(kept[job.id])
            say(f"  {job.title}: {n} of {job.shards} shards kept from an earlier run; measuring "
                f"the other {job.shards - n}"
                + (" (the driver cannot list the folder to check its images: reused as its job "
                   "id says)" if unseen else ""))
    return kept


def _tidy_shards(store: ResultStore, jobs: List[Job], done: set, say) -> Dict[str, List[Path]]:
    """Delete the kept shards of finished jobs (a driver stopped between a job's record and
    deleting its shards), and say how many jobs of no job of the spec have shards kept (an
    earlier spec's: kept, as its records are, for a run of it to reuse). Returns the files of
    the others, ``{job id: paths}``, as listed: the folder is listed once a run
    (:func:`_remove_shards`)."""
    files = store.shard_files()
    ours = {j.id for j in jobs}
    others = []
    for jid in list(files):
        if jid in done or (jid not in ours and store.status_of(jid) == "ok"):
            store.remove_shards(jid, [path for _, _, path in files.pop(jid)])
        elif jid not in ours:
            others.append(jid)
    if others:
        n = sum(len(files[jid]) for jid in others)
        say(f"  {n} shard(s) of {len(others)} unfinished job(s) not in this spec are kept in "
            f"{store.shards_dir} (an earlier spec's: a run of it reuses them; delete them if "
            "it will not run again)")
    return {jid: [path for _, _, path in found] for jid, found in files.items()}


def _remove_shards(store: ResultStore, job: Job, listed: Dict[str, List[Path]]) -> None:
    """Delete the kept shards of ``job``, finished or failed in its merge: those of another
    number of shards listed at the run's start (``listed``: :func:`_tidy_shards`) and those of
    its own, which this run keeps (only the driver holding the lock writes shards), by name."""
    own = [store.shard_path(job.id, i, job.shards) for i in range(job.shards)] if job.shards > 1 else []
    store.remove_shards(job.id, list(dict.fromkeys(listed.get(job.id, []) + own)))


def _to_run(record: Optional[dict], retry_failed: bool) -> bool:
    """Whether a job with this record (``None``: none) runs: not finished, and not failed
    unless failures are retried."""
    status = (record or {}).get("status")
    return status != "ok" and (retry_failed or status != "failed")


def _todo(records: Dict[str, Optional[dict]], jobs: List[Job], retry_failed: bool,
          folders: Optional[Folders] = None):
    """``(finished ids, failed ids, jobs to run)`` from the jobs' records (``None``: none);
    a finished job whose folder now holds other images runs again (:func:`_moved`)."""
    moved = _moved(records, jobs, folders)
    done = {jid for jid, rec in records.items() if rec and rec.get("status") == "ok"} - set(moved)
    failed = {jid for jid, rec in records.items() if rec and rec.get("status") == "failed"}
    return done, failed, [j for j in jobs if j.id in moved or _to_run(records[j.id], retry_failed)]


def _moved(records: Dict[str, Optional[dict]], jobs: List[Job],
           folders: Optional[Folders] = None) -> Dict[str, str]:
    """``{job id: why}`` of the finished jobs of a folder (or a torchvision data set's root:
    :func:`~.spec.torchvision_fingerprint`) whose images are not those their record measured,
    said in one warning per dataset and reason (``why``):

    - ``"changed"``: the same folder, but its images' names, sizes or modification times
      differ (:func:`~.spec.folder_fingerprint`'s ``files_stamp``): an image added, removed,
      replaced or edited in place;
    - ``"unstamped"``: the same folder, but the record has no stamp (written before records
      kept one, or where the driver could not list the folder): whether the images changed is
      unknown, so it is measured again, once;
    - ``"moved"``: the path (as the spec writes it, relative) now resolves to another folder
      with other images (two specs in different folders sharing an --out); a copy of the same
      images elsewhere (``ray job submit --working-dir``: the same names and sizes, other
      times) is the same data.

    A folder the driver cannot list (workers may have data it has not) is not checked.
    ``folders``: the run's listed folders (each fingerprinted once)."""
    folders = Folders() if folders is None else folders
    found: Dict[Tuple[str, str, Optional[str], str, bool, str], List[str]] = {}
    for job in jobs:
        rec = records.get(job.id) or {}
        if rec.get("status") != "ok" or job.data_path is None:
            continue
        then = rec.get("job", {}).get("dataset", {})
        was, now = then.get("resolved_path"), job.resolve(job.data_path)
        if was is None or os.path.realpath(now) == os.path.realpath(was):
            current = folders.of(job)
            if current is None or then.get("files_stamp") == current["files_stamp"]:
                continue
            why = "unstamped" if then.get("files_stamp") is None else "changed"
        else:
            current = folders.of(job) if then.get("files_sha256") is not None else None
            if current is not None and current["files_sha256"] == then["files_sha256"]:
                continue  # a copy of the same images
            why = "moved"
        what = "images" if job.dataset.kind == "folder" else "files"
        found.setdefault((why, job.dataset.label, was, now, job.relative_folder, what),
                         []).append(job.id)
    for (why, label, was, now, relative, what), ids in found.items():
        n = f"{len(ids)} finished job(s)"
        if why == "moved":
            warn(f"dataset {label!r}: {n} measured {was!r}, but the spec's "
                 f"{'relative ' * relative}path now means "
                 f"{now!r}, which holds other {what}: they are measured again, replacing those "
                 "records (another spec's, if they share this --out: give their data absolute "
                 "paths).")
        elif why == "changed":
            warn(f"dataset {label!r}: {n} measured {now!r}, whose {what} have changed since "
                 f"({'an image' if what == 'images' else 'a file'} added, removed, replaced or edited: their names, sizes or modification "
                 "times differ): they are measured again, replacing those records.")
        else:
            warn(f"dataset {label!r}: {n} of {now!r} have records without a stamp of its "
                 f"{what}' modification times (written before sweeps kept one, or where the "
                 "driver could not list the folder), so whether they changed since is unknown: "
                 "they are measured again (once), replacing those records.")
    return {jid: why for (why, *_), ids in found.items() for jid in ids}


def _is_local(address: Optional[str]) -> bool:
    """Whether :func:`_init_ray` starts a local Ray of its own (which cannot grow)."""
    return address is None and not os.environ.get("RAY_ADDRESS")


def _check_resources(jobs: List[Job], available: Dict[str, float], can_grow: bool = False,
                     runs: Optional[Callable[[Job], bool]] = None) -> None:
    """Raise ValueError naming the jobs whose task asks for more CPUs or GPUs than the Ray
    cluster (``available``: its total resources) has: Ray would wait for them for ever. Only
    warn when the cluster ``can_grow`` (a running cluster may autoscale). ``runs``: whether a
    job is to run (asked only of those that ask too much; default: all are)."""
    short = {}
    for job in jobs:
        need = {"CPU": job.num_cpus, "GPU": job.num_gpus}
        over = {k: v for k, v in need.items() if v > available.get(k, 0) + 1e-9}
        if over and (runs is None or runs(job)):
            short.setdefault(tuple(sorted(over.items())), []).append(job)
    if not short:
        return
    asks = "; ".join(f"{len(js)} job(s) ({', '.join(sorted({j.model.label for j in js}))}) ask "
                     f"{' and '.join(f'{v:g} {k}' for k, v in need)} per task"
                     for need, js in short.items())
    kinds = sorted({k for need in short for k, _ in need})
    have = ", ".join(f"{available.get(k, 0):g} {k}" for k in kinds)
    what = f"the Ray cluster to have the resources each job's task asks for, but it has {have}: {asks}"
    if not can_grow:
        raise ValueError(f"Expected {what}; lower `resources:` in the spec (num_gpus: 0 runs on "
                         "CPUs) or run on a cluster that has them.")
    warn(f"Expected {what} now; Ray waits until an autoscaling cluster adds them (stop "
         "the sweep otherwise: it waits for ever).")


class _Counts:
    """Finished / running / failed / pending bookkeeping of the driver."""

    def __init__(self, jobs: List[Job], done: set, failed: set):
        self.ids = [j.id for j in jobs]
        self.done = set(done)
        self.failed = set(failed)

    @property
    def closed(self) -> set:
        return self.done | self.failed

    def finish(self, job_id: str) -> None:
        self.done.add(job_id)
        self.failed.discard(job_id)

    def fail(self, job_id: str) -> None:
        self.failed.add(job_id)

    def as_dict(self, running: set) -> Dict[str, Any]:
        running = set(running) - self.closed
        return {"finished": len(self.done), "running": len(running), "failed": len(self.failed),
                "pending": len(self.ids) - len(self.done) - len(self.failed) - len(running),
                "running_ids": sorted(running), "failed_ids": sorted(self.failed)}

    def line(self, running: set) -> str:
        c = self.as_dict(running)
        return (f"finished {c['finished']}/{len(self.ids)}, running {c['running']}, "
                f"failed {c['failed']}, pending {c['pending']}")
