"""Train a :class:`~equifast.training.recipes.Recipe` in one process, resumably.

Files written to ``out_dir`` (the same by :mod:`equifast.training.ray_train`):

=================== ====================================================================
``recipe.json``     the recipe of the run
``checkpoint.pt``   after every epoch: model, optimiser, scheduler, RNG states (torch,
                    CUDA, numpy, python, the data-loader generator; one set per Ray
                    worker), the device each worker trains on, completed epochs, metric
                    history. Written to a temporary file
                    and moved in place with ``os.replace``, so it is never half written.
``metrics.csv``     one row per epoch: ``epoch, train_loss, train_acc, test_loss,
                    test_acc, lr, seconds`` (+ ``train_rot_acc, test_rot_acc`` for Rot-Eq);
                    rewritten from the checkpoint's history, so it always matches it
``tb/``             TensorBoard scalars (when tensorboard is installed)
``model.pt``        the final ``state_dict`` (when finished)
``result.json``     final accuracies and devices; its presence marks a finished run
=================== ====================================================================

Resuming reloads ``checkpoint.pt`` and continues; the parameters after resuming are
bitwise those of an uninterrupted run on the same machine (on CPU; on GPU only as
deterministic as the kernels, see ``torch.use_deterministic_algorithms``; with Ray, when
resumed with the same number of workers). Resumed on another kind of device than its
checkpoint records (a run begun on a GPU with ``device=None`` going on where there is none), on
another number of Ray workers or data-loader workers, it continues with a warning that it will
not be bitwise the uninterrupted run. A finished run is never
retrained or overwritten unless ``overwrite=True``.

A run whose loss or weights turn NaN or infinite (a learning rate far too high) stops with
:class:`TrainingDivergedError`, which names the epoch and the step: within a few steps of a
non-finite training loss (without a host sync every step on an accelerator: see the error),
else at the end of the epoch (test loss, weights); on every Ray worker at the same step.
Nothing of that epoch is saved, so the folder keeps the previous epoch's checkpoint and never
a ``model.pt`` or ``result.json`` of a diverged model.

Accuracy: ``test_acc`` is the class accuracy; Rot-Eq also reports ``test_rot_acc``, the
quarter-turn accuracy. With CutMix the training accuracy counts the arg-max of the mixed
target.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from equifast._io import (FolderLock, atomic_write, check_own_folder, json_object_with,
                          remove_stale_temps, save_torch_atomic, write_text_atomic)
from equifast.devices import resolve_device
from equifast.warning import warn

from .data import BatchCollate, build_dataset, dataset_info
from .models import build_model
from .recipes import Recipe

__all__ = ["TrainResult", "TrainingDivergedError", "train", "build_model_for", "load_model",
           "trained_epochs", "evaluate", "prepare_out_dir", "epoch_line", "read_run_file",
           "read_run_recipe", "start_lines", "CHECKPOINT", "METRICS", "RESULT", "MODEL", "RECIPE"]

CHECKPOINT, METRICS, RESULT, MODEL, RECIPE = (
    "checkpoint.pt", "metrics.csv", "result.json", "model.pt", "recipe.json")
_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"]
_ROT_COLUMNS = ["train_rot_acc", "test_rot_acc"]


class TrainingDivergedError(FloatingPointError, ValueError):
    """Training diverged: a training step's loss, an epoch's test loss or the weights after it
    are NaN or infinite.

    Raised as soon as it is seen, before anything of the epoch is saved: a non-finite training
    loss within a few steps (every step on CPU, every 32 on an accelerator, where each look
    is a host sync), the test loss and the weights at the end of the epoch. The run folder keeps
    the checkpoint (and ``metrics.csv`` rows) of the epoch before, and no ``model.pt`` or
    ``result.json``, so a study never measures or averages the run. A ``ValueError`` too: the
    ``equifast`` command prints it in one line, as bad input.

    Attributes:
        epoch: the epoch that diverged (1-based).
        row: its ``metrics.csv`` row (never written); stopped within the epoch, its training
            values are those of the steps done and its test values NaN (not measured).
        step: the first step (1-based, of the epoch) whose training loss was not finite, or
            ``None`` when the epoch ended before anything was (the test loss or the weights).
    """

    def __init__(self, message: str, epoch: int, row: Dict, step: Optional[int] = None):
        super().__init__(message)
        self.epoch, self.row, self.step = epoch, row, step

    def __reduce__(self):  # picklable (a Ray worker's error travels to the driver)
        return type(self), (str(self), self.epoch, self.row, self.step)


@dataclass
class TrainResult:
    """The outcome of a run (also read back from a finished ``out_dir``).

    Attributes:
        out_dir: the run folder.
        recipe: the recipe trained.
        epochs: completed epochs.
        test_acc: final test (class) accuracy.
        test_loss: final test loss.
        test_rot_acc: final quarter-turn accuracy (Rot-Eq), else ``None``.
        metrics: per-epoch rows as dicts (``metrics.csv``).
        resumed_from: epochs already done when this call started (0 for a fresh run).
    """

    out_dir: str
    recipe: Recipe
    epochs: int
    test_acc: float
    test_loss: float
    test_rot_acc: Optional[float]
    metrics: List[Dict]
    resumed_from: int = 0

    @property
    def model_path(self) -> str:
        """Path of the final ``state_dict``."""
        return os.path.join(self.out_dir, MODEL)

    def load_model(self, map_location: str = "cpu", class_logits_only: bool = False) -> nn.Module:
        """The trained model in eval mode (see :func:`load_model`)."""
        return load_model(self.out_dir, map_location, class_logits_only)


def epoch_line(epoch: int, epochs: int, row: Dict) -> str:
    """One line of progress from an epoch's ``metrics.csv`` row (the CLI's and the studies')."""
    line = (f"epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}, "
            f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}")
    if row.get("test_rot_acc") is not None:
        line += f" (turn {row['test_rot_acc']:.4f})"
    return line + f", lr {row['lr']:g}, {row['seconds']:.1f} s"


def start_lines(recipe: Recipe, out_dir: str, overwrite: bool = False,
                resume: bool = True) -> List[str]:
    """Progress lines before ``recipe`` trains in ``out_dir`` (the CLI's and the studies'):
    that a finished run there is reused or an unfinished one resumed, and that the learning
    rate does not drop where ``epochs`` ends before ``milestones`` (``--epochs 5`` keeps the
    recipe's 25 and 50)."""
    out = Path(out_dir)
    lines = []
    try:
        same = (not overwrite and (out / RECIPE).is_file()
                and not read_run_recipe(out / RECIPE).differences(recipe))
        done, total = trained_epochs(str(out)) if same else (0, recipe.epochs)
    except (OSError, ValueError, KeyError, RuntimeError):  # said by prepare_out_dir
        same, done, total = False, 0, recipe.epochs
    if same and (out / RESULT).is_file():
        return [f"finished before ({total} epoch{'s' if total != 1 else ''}) in {str(out)!r}: "
                f"reused, not trained again "
                f"(--overwrite retrains it)"]
    if same and resume and (out / CHECKPOINT).is_file():  # resume=False refuses it instead
        lines.append(f"resuming {str(out)!r} after epoch {done} of {total}, from its checkpoint")
    reached = [m for m in recipe.milestones if m < recipe.epochs]
    unreached = [m for m in recipe.milestones if m >= recipe.epochs]
    if unreached:
        lr = recipe.lr * recipe.gamma ** len(reached)
        lines.append(f"the learning rate stays at {lr:g}"
                     + (f" after epoch {reached[-1]}" if reached else "")
                     + f": milestones {unreached} lie past the last epoch ({recipe.epochs}); "
                     f"--milestones shortens the schedule")
    return lines


# ---------------------------------------------------------------------------- building
def build_model_for(recipe: Recipe) -> nn.Module:
    """The model of a recipe, with the head its data set needs."""
    info = dataset_info(recipe.dataset)
    if recipe.model == "cnn7":
        return build_model("cnn7", num_classes=info["num_classes"],
                           num_rotations=info["num_rotations"], in_channels=info["in_channels"])
    return build_model(recipe.model, num_classes=info["num_classes"], width=recipe.width,
                       in_channels=info["in_channels"])


def load_model(out_dir: str, map_location: str = "cpu", class_logits_only: bool = False) -> nn.Module:
    """Rebuild a run's model from ``recipe.json`` and its weights (``model.pt``, else the
    latest ``checkpoint.pt``), in eval mode; with ``class_logits_only`` a Rot-Eq model returns
    its class logits without the turn logits (how the runs are measured: see
    :class:`~equifast.training.models.CNN7`).

    Example:
        >>> model = load_model("runs/cnn7-fmnist6/seed0")  # doctest: +SKIP
    """
    out = Path(out_dir)
    if not (out / RECIPE).is_file():
        raise FileNotFoundError(f"Expected a run folder with {RECIPE}, but got {str(out)!r}. "
                                f"Train it first with `equifast train`.")
    if isinstance(map_location, (str, torch.device)):  # a GPU this machine lacks read as damage
        resolve_device(map_location)
    recipe = read_run_recipe(out / RECIPE)
    model = build_model_for(recipe)
    if (out / MODEL).is_file():
        state = read_run_file(out / MODEL, map_location)
    elif (out / CHECKPOINT).is_file():
        ckpt = _load_checkpoint(out / CHECKPOINT, map_location, recipe)
        warn(f"The run {str(out)!r} is unfinished (epoch {ckpt['epoch']} of "
             f"{recipe.epochs}): its latest checkpoint is used.")
        state = ckpt["model"]
    else:
        raise FileNotFoundError(f"Expected the run {str(out)!r} to hold trained weights ({MODEL} "
                                f"or {CHECKPOINT}), but it has none: train it first with "
                                "`equifast train`.")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # weights copied in from a run of another model
        source = MODEL if (out / MODEL).is_file() else CHECKPOINT
        cause = " ".join(str(err).split("\n")[1:3]).strip()
        raise ValueError(f"Expected the weights {str(out / source)!r} to be of the model that "
                         f"{RECIPE} describes ({recipe.model}, {recipe.dataset}), but they do "
                         f"not fit it ({cause}).") from err
    if hasattr(model, "class_logits_only"):
        model.class_logits_only = class_logits_only
    return model.eval()


def trained_epochs(out_dir: str) -> Tuple[int, int]:
    """``(epochs trained, epochs of the recipe)`` of the weights :func:`load_model` reads from
    a run: equal for a finished run (``model.pt``), fewer for an unfinished one's checkpoint,
    so that a report of it can say so once the warning is gone."""
    out = Path(out_dir)
    recipe = read_run_recipe(out / RECIPE)
    if (out / MODEL).is_file() or not (out / CHECKPOINT).is_file():
        return recipe.epochs, recipe.epochs
    return int(_load_checkpoint(out / CHECKPOINT, "cpu", recipe, mmap=True)["epoch"]), recipe.epochs


def _optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)


# ------------------------------------------------------------------------ loss/metrics
def _loss_and_counts(out: torch.Tensor, target: torch.Tensor, num_classes: int,
                     reduction: str = "mean"):
    """Loss (batch mean, or per image with ``reduction="none"``) and ``(class correct, turn
    correct)`` counts (per image with ``"none"``) of a batch."""
    if target.dim() == 2 and target.dtype == torch.int64:  # Rot-Eq: (class, turn)
        cls, rot = out[:, :num_classes], out[:, num_classes:]
        loss = (F.cross_entropy(cls, target[:, 0], reduction=reduction)
                + F.cross_entropy(rot, target[:, 1], reduction=reduction))
        correct, rot_correct = cls.argmax(1) == target[:, 0], rot.argmax(1) == target[:, 1]
    else:
        loss = F.cross_entropy(out, target, reduction=reduction)  # classes or (CutMix) probabilities
        label = target.argmax(1) if target.dim() == 2 else target
        correct = out.argmax(1) == label
        rot_correct = torch.zeros_like(correct) if reduction == "none" else \
            torch.zeros((), dtype=torch.int64, device=out.device)
    return (loss, correct, rot_correct) if reduction == "none" else (loss, correct.sum(), rot_correct.sum())


class _Shares:
    """Which images of a rank's batches are real in a ``DistributedSampler`` epoch, and how
    to weigh them so that DDP's mean of the ranks' gradients is the global batch's mean.

    ``DistributedSampler`` pads the permutation to a multiple of the workers with copies of
    its first images and gives rank ``r`` positions ``r, r + W, ...``; so step ``t`` of all
    ranks together is the padded permutation's ``t``-th chunk of ``W * batch`` positions, and
    a position ``>= N`` is a copy. Copies get weight 0 (in the loss and the metrics), so every
    image counts once an epoch; the real images of a step are weighed ``W / m`` (``m``: the
    step's real images over all ranks), the single-process batch mean after DDP's averaging.
    """

    def __init__(self, n: int, rank: int, world: int, batch: int):
        self.n, self.rank, self.world, self.batch = n, rank, world, batch

    def weights(self, step: int, size: int, device=None) -> torch.Tensor:
        # made on the device: a host-to-device copy is a host sync every step
        j = torch.arange(step * self.batch, step * self.batch + size, dtype=torch.int64,
                         device=device)
        real = (self.rank + self.world * j < self.n).double()
        m = min(self.world * self.batch, self.n - step * self.world * self.batch)
        return real * (self.world / m)


class _Diverged(Exception):
    """A training pass stopped at step ``at`` (1-based): its loss was not finite from step
    ``first`` on; ``sums`` as :func:`_run_epoch` returns them, of the steps done."""

    def __init__(self, first: int, at: int, steps: int, sums: torch.Tensor):
        super().__init__(first, at)
        self.first, self.at, self.steps, self.sums = first, at, steps, sums


# How often a training pass looks at its loss: every step on CPU, where reading a value costs
# nothing, else every _CHECK_EVERY steps (a host sync stalls an accelerator's queue). On Ray's
# gloo CPU workers each look is also a scalar all-reduce: 0.3-1 ms beside a 35-190 ms DDP step
# of the smallest model (the 7-layer CNN, 16-64 images a worker, 2 workers), under 3%.
_CHECK_EVERY_CPU, _CHECK_EVERY = 1, 32
_NEVER = 2**62  # "no non-finite step yet"


class _LossWatch:
    """The first step of a training pass whose loss is not finite, kept on the device (no
    host sync per step) and read every ``every`` steps and at the last; the ranks' first steps
    are all-reduced (minimum), so that every rank stops at the same step (a rank stopping
    alone would leave the others waiting in DDP's next all-reduce)."""

    def __init__(self, device: torch.device, dist: "_Dist"):
        self.dist = dist
        self.every = _CHECK_EVERY_CPU if device.type == "cpu" else _CHECK_EVERY
        self.first = torch.full((), _NEVER, dtype=torch.int64, device=device)

    def see(self, step: int, loss: torch.Tensor) -> None:
        bad = (~torch.isfinite(loss)).any().long()  # scalar arithmetic only: nothing is copied
        self.first = torch.minimum(self.first, bad * (step + 1 - _NEVER) + _NEVER)

    def check(self, step: int, steps: int, sums: torch.Tensor) -> None:
        """Raise :class:`_Diverged` after step ``step`` (0-based) of ``steps`` when due and a
        loss so far was not finite."""
        if (step + 1) % self.every and step + 1 != steps:
            return
        # reduced in place: unless all ranks held _NEVER (kept so) the pass stops here
        first = int(self.dist.min(self.first).item())
        if first != _NEVER:
            raise _Diverged(first, step + 1, steps, sums.cpu())


def _run_epoch(model, loader, device, num_classes, optimizer=None,
               shares: Optional[_Shares] = None, watch: Optional[_LossWatch] = None) -> torch.Tensor:
    """One pass; returns float64 sums ``[loss * n, n, correct, rot_correct]``; with
    ``shares`` (a Ray worker's training pass) images are weighed as :class:`_Shares` says; with
    ``watch`` a non-finite training loss stops the pass within ``watch.every`` steps
    (:class:`_Diverged`)."""
    train = optimizer is not None
    model.train(train)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # no host sync per batch
    steps = len(loader)
    with torch.set_grad_enabled(train):
        for step, (x, labels) in enumerate(loader):
            x, y = x.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            out = model(x)
            _check_targets(labels, out.shape[1], num_classes)
            if shares is not None:
                w = shares.weights(step, x.shape[0], device)
                loss, correct, rot_correct = _loss_and_counts(out, y, num_classes, "none")
                mask = w > 0
                real = mask.double()
                optimizer.zero_grad(set_to_none=True)
                (loss * w.to(loss.dtype)).sum().backward()
                optimizer.step()
                # a padded copy's loss weighs 0, and NaN * 0 is NaN: its images count only
                loss = torch.where(mask, loss.detach(), 0)
                sums += torch.stack([loss.double().sum(), real.sum(),
                                     (correct.double() * real).sum(),
                                     (rot_correct.double() * real).sum()])
                if watch is not None:
                    watch.see(step, loss)
                    watch.check(step, steps, sums)
                continue
            loss, correct, rot_correct = _loss_and_counts(out, y, num_classes)
            if train:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            sums[0] += loss.detach().double() * x.shape[0]
            sums[1] += x.shape[0]  # a Python number: torch.tensor(n, device=...) is a copy, a sync
            sums[2:] += torch.stack([correct.double(), rot_correct.double()])
            if watch is not None:
                watch.see(step, loss.detach())
                watch.check(step, steps, sums)
    return sums.cpu()


def _check_targets(labels: torch.Tensor, width: int, num_classes: int) -> None:
    """``ValueError`` unless a batch's class (and turn) indices lie within the model's logits;
    read on the host before the loss: cross_entropy failed with "IndexError: Target 12 is out
    of bounds" (on a GPU, a device-side assert that ends the process's CUDA use), and ignored
    -100 while counting its image. Probability targets (CutMix) and labels already on a
    device (read there only at a cost) are left to the loss."""
    if labels.device.type != "cpu" or labels.is_floating_point() or not labels.numel():
        return
    parts = ([("class", labels, width)] if labels.dim() == 1 else
             [("class", labels[:, 0], num_classes), ("quarter turn", labels[:, 1], width - num_classes)])
    for what, values, bound in parts:
        lo, hi = torch.aminmax(values)
        if lo < 0 or hi >= bound:
            raise ValueError(f"Expected {what} labels in [0, {bound}) (the model's {what} logits), "
                             f"but a batch holds labels in [{int(lo)}, {int(hi)}]; give the model "
                             f"as many classes as the data set (num_classes) or the data set's "
                             f"labels as indices from 0.")


def evaluate(model: nn.Module, dataset, batch_size: int = 256, device=None) -> Dict[str, float]:
    """Test loss and accuracies of ``model`` on ``dataset``.

    ``device``: the model's device (``None``: wherever its parameters are), where the batches go;
    the model is not moved.

    Returns:
        ``{"loss", "acc"}`` (+ ``"rot_acc"`` for a Rot-Eq model on a data set with turns; on
        one without, its class logits alone are scored). The model's mode is left as it was.
    """
    if isinstance(dataset, DataLoader):  # failed as "'DataLoader' object is not subscriptable"
        raise TypeError("Expected `dataset` to be a Dataset (evaluate batches it by `batch_size`), "
                        "but got a DataLoader; pass loader.dataset.")
    if not len(dataset):  # no batch: loss and accuracy read 0.0, as if measured
        raise ValueError("Expected `dataset` to hold at least one image, but it is empty.")
    # a model of no weights (a fixed filter bank) runs wherever the batches are
    any_tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    held = torch.device(device or "cpu") if any_tensor is None else any_tensor.device
    device = torch.device(device) if device else held
    # the batches go to `device`, the model stays where it is: another device failed in the
    # first forward, deep in torch ("Tensor on device cpu is not on the expected device ...")
    other_index = None not in (device.index, held.index) and device.index != held.index
    if device.type != held.type or other_index:
        raise ValueError(f"Expected `device` to be the model's ({held}) or None, but got "
                         f"{str(device)!r}: move the model there first (model.to({str(device)!r})).")
    device = held
    num_classes = getattr(model, "num_classes", None) or 10
    first = torch.as_tensor(dataset[0][1])
    turns_in_data = not first.is_floating_point() and tuple(first.shape) == (2,)
    turns = getattr(model, "num_rotations", 0) > 0
    if turns_in_data and not turns:
        raise ValueError("Expected a model that predicts the quarter turn too (a Rot-Eq recipe's) "
                         "for a data set of (class, turn) targets, but the model has no turn head.")
    # a model loaded for measuring hides its turn logits: they are scored here, where the data
    # has turns; on a data set of classes only, its class logits alone are
    classes_only, training = getattr(model, "class_logits_only", None), model.training
    try:
        if classes_only is not None:
            model.class_logits_only = not turns_in_data
        sums = _run_epoch(model, DataLoader(dataset, batch_size=batch_size), device, num_classes)
    finally:
        if classes_only is not None:
            model.class_logits_only = classes_only
        model.train(training)
    return _summarise(sums, turns and turns_in_data)


def _summarise(sums: torch.Tensor, rot: bool) -> Dict[str, float]:
    n = max(sums[1].item(), 1.0)
    out = {"loss": sums[0].item() / n, "acc": sums[2].item() / n}
    if rot:
        out["rot_acc"] = sums[3].item() / n
    return out


# --------------------------------------------------------------------------- run files
def _write_csv(path: Path, rows: List[Dict]) -> None:
    def write(p):
        with open(p, "w", newline="") as f:
            cols = _COLUMNS + [c for c in _ROT_COLUMNS if rows and c in rows[0]]
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    atomic_write(path, write)


def read_run_file(path: Path, map_location="cpu", mmap: bool = False):
    """What a run's file holds: ``.json`` parsed, else a ``torch.save`` file read weights-only
    (with ``mmap``, its tensors mapped from the file and read only where used). A damaged file
    (a cut copy, a full disk) is a ``ValueError`` naming it, not a traceback."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise  # not damaged: missing, or not ours to read
    except Exception as err:  # noqa: BLE001 -- unpickling bytes that are no pickle raises any kind
        # (KeyError, struct.error, OSError "Invalid argument" of a cut zip archive, ...)
        raise _damaged(path, err) from err


def _damaged(path: Path, err: BaseException) -> ValueError:
    """The error of a run file that cannot be read (``err``: why)."""
    cause = " ".join(str(err).split("\n")[0].split())
    return ValueError(f"Could not read the run file {str(path)!r} ({type(err).__name__}: "
                      f"{cause}): it is damaged. Restore it, or train the run again with "
                      "--overwrite (overwrite=True).")


def read_run_recipe(path, stored: Optional[Dict] = None) -> Recipe:
    """The :class:`Recipe` a run file holds (``recipe.json``, or ``stored``: the recipe
    ``path`` holds, e.g. ``result.json``'s); one that this version cannot read (unknown or bad
    fields, from another version or edited) is a ``ValueError`` naming the file."""
    d = read_run_file(path) if stored is None else stored
    try:
        return Recipe.from_dict(d)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Could not read the recipe of the run file {str(path)!r}: {err} "
                         "Train the run again with --overwrite (overwrite=True), or edit the "
                         "file.") from err


# What every reader of a checkpoint takes from it (load_model, trained_epochs, Ray's driver).
_CHECKPOINT_KEYS = ("epoch", "model")


def _load_checkpoint(path: Path, map_location="cpu", recipe: Optional[Recipe] = None,
                     mmap: bool = False) -> Dict:
    """``checkpoint.pt``; with ``recipe``, refused (``ValueError``) when it was written by a run
    of another recipe (a file copied in from another run folder); ``mmap``: see
    :func:`read_run_file` (for a few fields, not the weights and optimiser state)."""
    ckpt = read_run_file(path, map_location, mmap)
    # a torch file that is no checkpoint (model.pt copied over it: a state_dict) failed later
    # with a bare KeyError 'model' or 'epoch', in load_model, trained_epochs or resuming
    if not isinstance(ckpt, dict):
        raise _damaged(path, TypeError(f"a {type(ckpt).__name__}, not a dict"))
    for key in _CHECKPOINT_KEYS:
        if key not in ckpt:
            raise _damaged(path, KeyError(key))
    stored = ckpt.get("recipe") if recipe is not None else None
    if stored is not None:
        diff = read_run_recipe(path, stored).differences(recipe)
        if diff:
            raise ValueError(f"Expected the checkpoint {str(path)!r} to be of the run in its folder, "
                             f"but it was written by a run of another recipe (checkpoint's, "
                             f"recipe.json's): {diff}. Put back the run's own checkpoint, or "
                             "train it again with --overwrite (overwrite=True).")
    return ckpt


def _device_record(device: torch.device) -> Dict[str, str]:
    """What a rank trains on, for its checkpoint: the device and, for a GPU, its model (cuda:0
    and cuda:1 of one kind compute alike; another kind, or the CPU, rounds differently)."""
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        return {"device": f"cuda:{index}", "name": torch.cuda.get_device_name(index)}
    return {"device": str(device), "name": device.type}


def _warn_if_resumed_otherwise(out: Path, ckpt: Dict, devices: List[Dict], workers: int,
                              recipe: Recipe) -> None:
    """Warn that a run resumed otherwise than its checkpoint's epochs were trained: on another
    number of (Ray) workers, whose random streams restart from the seed, or on another kind of
    device (with ``device=None``, a run begun on a GPU goes on on the CPU of a machine without
    one). ``devices``: :func:`_device_record` of each worker; a ``name`` of ``None`` is not known
    (a Ray driver's view of its GPU workers) and only the device type is compared. A checkpoint
    older than that record is compared by its recipe's ``device`` field."""
    before, what = len(ckpt["rng_per_rank"]), []
    if before != workers:
        what.append(f"on {workers} worker(s), its epochs so far on {before} (resume with "
                    f"{before} for an exact continuation)")

    def kinds(records, names):
        return sorted({(torch.device(r["device"]).type, r["name"] if names else None)
                       for r in records})

    def said(records):
        return ", ".join(sorted({r["device"] if r["name"] in (None, torch.device(r["device"]).type)
                                 else f"{r['device']} ({r['name']})" for r in records}))

    recorded = ckpt.get("devices")
    if recorded is not None:
        names = all(r["name"] is not None for r in devices)
        if kinds(recorded, names) != kinds(devices, names):
            what.append(f"on {said(devices)}, its epochs so far on {said(recorded)}")
    elif (ckpt.get("recipe") or {}).get("device") != recipe.device:
        what.append(f"with another device ({recipe.device!r}, its recipe's was "
                    f"{ckpt['recipe']['device']!r})")
    if what:
        warn(f"Resuming {str(out)!r} {' and '.join(what)}: the rest of the run computes "
             "differently, so it will not be bitwise the uninterrupted run.")


def _rng_state(generator: torch.Generator) -> Dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
            "python": random.getstate(), "loader": generator.get_state()}


def _set_rng_state(state: Dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
    random.setstate(state["python"])
    generator.set_state(state["loader"])


def _result_from_dir(out: Path, resumed_from: Optional[int] = None) -> TrainResult:
    d = read_run_file(out / RESULT)
    rows = []
    if (out / METRICS).is_file():
        try:
            with open(out / METRICS, newline="") as f:
                rows = [{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items() if v != ""}
                        for r in csv.DictReader(f)]
        except (ValueError, TypeError, csv.Error) as err:  # edited, or cut short
            raise _damaged(out / METRICS, err) from err
    try:  # JSON, but not a result (edited, or written by something else): a bare KeyError
        recipe, epochs = read_run_recipe(out / RESULT, d["recipe"]), d["epochs"]
        scores = dict(test_acc=d["test_acc"], test_loss=d["test_loss"],
                      test_rot_acc=d.get("test_rot_acc"))
    except (KeyError, TypeError, AttributeError) as err:
        raise _damaged(out / RESULT, err) from err
    return TrainResult(out_dir=str(out), recipe=recipe, epochs=epochs, metrics=rows,
                       resumed_from=epochs if resumed_from is None else resumed_from, **scores)


def _will_train(out_dir: str, overwrite: bool) -> bool:
    """Whether a run in ``out_dir`` trains rather than returning a finished result: what
    :func:`prepare_out_dir` decides, known before it deletes or writes anything."""
    return overwrite or not Path(out_dir, RESULT).is_file()


# What ``overwrite`` deletes, in this order. result.json (the mark of a finished run) goes first,
# so that a deletion interrupted anywhere never leaves a folder that reads as finished with some
# of its files gone; model.pt and metrics.csv before checkpoint.pt, so that what is left is an
# unfinished run whose weights and rows are its checkpoint's (a rerun resumes it and rewrites
# them), or restarts once that is gone too, never beside another run's rows. recipe.json is not
# deleted but replaced by the new recipe (prepare_out_dir), as it makes the folder a run's
# (check_own_folder): interrupted without it, a leftover tb/ or a user's notes beside the run
# read as a user's folder, and the rerun refused it.
# "ray": Ray Train's own storage of a run trained on it (train_ray's default storage_path),
# whose logs and results would otherwise pile up under the new run's
_OVERWRITTEN = (RESULT, MODEL, METRICS, CHECKPOINT, "tb", "ray")
# a recipe.json of the user's own makes no folder a run's: its files would be replaced
_OURS = {RECIPE: json_object_with("name", "model", "dataset", "epochs")}
_LOCK = ".equifast-train.lock"  # held in a run folder while it is prepared and trained (run_lock)


def _delete_run(out: Path) -> None:
    """Delete the run files of ``out`` (:data:`_OVERWRITTEN`, in order); nothing else."""
    for name in _OVERWRITTEN:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def run_lock(out_dir: str) -> FolderLock:
    """The lock a process holds on a run folder while it prepares and trains it: a second
    process training the same folder (another terminal, a study started twice) is refused, as
    it would delete (``overwrite``) or interleave the first one's checkpoints and metrics. A
    folder of a user's own files is refused first, and gets no lock file."""
    check_own_folder(out_dir, [RECIPE], "a run folder", "`out_dir` (--out)", _OURS, lock=_LOCK)
    return FolderLock(out_dir, _LOCK, "training")


def trained_recipe(out_dir: Union[str, os.PathLike]) -> Optional[Recipe]:
    """The stored recipe of the run in ``out_dir``, or ``None`` where no epoch was trained (an
    untrained run's recipe.json is replaced when it trains: nothing to keep)."""
    out = Path(out_dir)
    if not ((out / RECIPE).is_file() and ((out / CHECKPOINT).is_file() or (out / RESULT).is_file())):
        return None
    return read_run_recipe(out / RECIPE)


def started_recipe(recipe: Recipe, out_dir: Union[str, os.PathLike]) -> Optional[Recipe]:
    """:func:`trained_recipe`, checked to describe the same run as ``recipe`` (``ValueError``)."""
    out = Path(out_dir)
    stored = trained_recipe(out)
    if stored is None:
        return None
    diff = stored.differences(recipe)
    if diff:
        raise ValueError(f"Expected `out_dir` (--out) {str(out)!r} to hold a run of the same recipe, "
                         f"but the stored recipe differs (stored, given): {diff}. Use another "
                         f"`out_dir` or pass overwrite=True (--overwrite) to replace it.")
    return stored


def prepare_out_dir(recipe: Recipe, out_dir: str, resume: bool = True,
                    overwrite: bool = False) -> Optional[TrainResult]:
    """Check ``out_dir`` before training; returns the result when the run is finished.

    - empty or missing: created, ``recipe.json`` written;
    - ``overwrite=True``: its run files are deleted first (``result.json`` first: interrupted,
      it leaves an unfinished run, never a finished one with files missing);
    - finished (``result.json``): the stored :class:`TrainResult` (nothing is retrained);
    - unfinished: resumed when ``resume`` (the recipe must describe the same run), else an
      error.

    Raises:
        FileExistsError: an unfinished run is there and ``resume=False``; or ``out_dir`` holds
            files but no run (they are never replaced, even with ``overwrite``).
        ValueError: the stored recipe differs from ``recipe``.
    """
    # not a run (no recipe.json): files of the user's, never replaced, even with overwrite
    out = check_own_folder(out_dir, [RECIPE], "a run folder", "`out_dir` (--out)", _OURS, lock=_LOCK)
    if overwrite and out.exists():
        _delete_run(out)
    out.mkdir(parents=True, exist_ok=True)
    # what a run killed while writing left: as large as a checkpoint, and never read
    remove_stale_temps(out, tuple(n for n in _OVERWRITTEN + (RECIPE,) if n not in ("tb", "ray")))
    stored = started_recipe(recipe, out)
    if stored is not None:
        if (out / RESULT).is_file():
            return _result_from_dir(out)
        # the device is compared where the one used is known (_fit: the checkpoint's record)
        if (out / CHECKPOINT).is_file() and resume and stored.num_workers != recipe.num_workers:
            warn(f"Resuming {str(out)!r} with another num_workers: the rest of the run draws "
                 "its augmentations differently, so it will not be bitwise the uninterrupted "
                 "run.")
        if (out / CHECKPOINT).is_file() and not resume:
            raise FileExistsError(f"Expected `out_dir` (--out) {str(out)!r} to be empty with resume=False, "
                                  f"but it holds an unfinished run. Pass resume=True to continue "
                                  f"it or overwrite=True (--overwrite) to start again.")
    write_text_atomic(out / RECIPE, json.dumps(recipe.to_dict(), indent=2))
    return None


# ------------------------------------------------------------------------------- fitting
class _Dist:
    """Rank, world size and sum-reduction; trivial without ``torch.distributed``."""

    def __init__(self):
        import torch.distributed as dist
        self.on = dist.is_available() and dist.is_initialized()
        self.dist = dist
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.on:
            nccl = self.dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
            t = t.cuda() if nccl else t
            self.dist.all_reduce(t)
            t = t.cpu()
        return t

    def min(self, t: torch.Tensor) -> torch.Tensor:
        """The ranks' element-wise minimum of ``t`` (kept on its device, as NCCL needs)."""
        if self.on:
            self.dist.all_reduce(t, op=self.dist.ReduceOp.MIN)
        return t

    def gather(self, obj) -> List:
        if not self.on:
            return [obj]
        out = [None] * self.world
        self.dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.on:
            self.dist.barrier()

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (batch norm's running statistics: those saved)."""
        if self.on and self.world > 1:
            for b in model.buffers():
                self.dist.broadcast(b, 0)


def _not_finite(model: nn.Module) -> List[str]:
    """Names of the model's floating-point parameters and buffers holding NaN or infinity."""
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    if not state:
        return []
    finite = torch.stack([torch.isfinite(v).all() for v in state.values()]).cpu()  # one sync
    return [k for k, ok in zip(state, finite.tolist()) if not ok]


def _check_finite(epoch: int, recipe: Recipe, row: Dict, model: nn.Module) -> None:
    """Raise :class:`TrainingDivergedError` when epoch ``epoch`` diverged (same on every rank:
    the losses are all-reduced, the weights kept equal by DDP and the buffers by rank 0's)."""
    losses = {k: row[k] for k in ("train_loss", "test_loss") if not math.isfinite(row[k])}
    bad = _not_finite(model)
    if not losses and not bad:
        return
    what = [f"{k.replace('_', ' ')} {v}" for k, v in losses.items()]
    if bad:
        what.append(f"NaN or infinity in {len(bad)} weight tensor(s), first {bad[0]!r}")
    kept = (f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else
            "the run has no checkpoint")
    raise TrainingDivergedError(
        f"Training diverged in epoch {epoch} of {recipe.epochs} at lr {row['lr']:g} "
        f"({', '.join(what)}). Nothing of epoch {epoch} was saved: {kept}. Resuming repeats it: "
        f"train the run with a lower learning rate (--lr) and --overwrite (overwrite=True).",
        epoch, row)


def _raise_diverged(epoch: int, recipe: Recipe, lr: float, stop: _Diverged, dist: _Dist,
                    rot: bool, seconds: float) -> None:
    """Raise :class:`TrainingDivergedError` for a training pass stopped within ``epoch``."""
    tr = _summarise(dist.sum(stop.sums), rot)  # every rank is here: a collective is safe
    row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
           "test_loss": math.nan, "test_acc": math.nan, "lr": lr, "seconds": round(seconds, 3)}
    if rot:
        row.update(train_rot_acc=tr["rot_acc"], test_rot_acc=math.nan)
    kept = (f"the checkpoint of epoch {epoch - 1} is kept" if epoch > 1 else
            "the run has no checkpoint")
    raise TrainingDivergedError(
        f"Training diverged in epoch {epoch} of {recipe.epochs} at lr {lr:g} (train loss not "
        f"finite from step {stop.first} of {stop.steps}; stopped at step {stop.at}). Nothing of "
        f"epoch {epoch} was saved: {kept}. Resuming repeats it: train the run with a lower "
        f"learning rate (--lr) and --overwrite (overwrite=True).", epoch, row, stop.first) from None


def _tensorboard(out: Path, purge_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: CSV only
        return None
    return SummaryWriter(str(out / "tb"), purge_step=purge_step)


def _datasets(recipe: Recipe) -> Tuple[Dataset, Dataset]:
    """The recipe's train and test sets (a missing or damaged data set fails here)."""
    data = dict(root=recipe.data_root, download=recipe.download, data_seed=recipe.data_seed)
    train_set = build_dataset(recipe.dataset, train=True, augment=recipe.augment,
                              subset=recipe.train_subset,
                              randaugment=(recipe.randaugment_ops, recipe.randaugment_magnitude),
                              **data)
    return train_set, build_dataset(recipe.dataset, train=False, subset=recipe.test_subset, **data)


def _fit(recipe: Recipe, out_dir: str, callback: Optional[Callable[[int, Dict], None]] = None,
         device: Optional[torch.device] = None,
         datasets: Optional[Tuple[Dataset, Dataset]] = None) -> TrainResult:
    """The training loop shared by :func:`train` and each Ray worker."""
    out, dist = Path(out_dir), _Dist()
    device = device or resolve_device(recipe.device)
    info = dataset_info(recipe.dataset)
    rot = info["num_rotations"] > 0
    train_set, test_set = datasets or _datasets(recipe)
    if dist.world > 1:  # every rank scores its own share; sums are reduced
        test_set = Subset(test_set, range(dist.rank, len(test_set), dist.world))

    torch.manual_seed(recipe.seed)
    model = build_model_for(recipe).to(device)
    optimizer = _optimizer(recipe, model)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones),
                                                     recipe.gamma)
    # Per-rank streams: the same as a single process on rank 0.
    seed = recipe.seed + 1_000_003 * dist.rank
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    generator = torch.Generator().manual_seed(seed)

    sampler, shares = None, None
    batch = recipe.batch_size
    if dist.world > 1:
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(train_set, dist.world, dist.rank, shuffle=True,
                                     seed=recipe.seed)
        batch = max(1, recipe.batch_size // dist.world)
        shares = _Shares(len(train_set), dist.rank, dist.world, batch)
    loader_kw = dict(num_workers=recipe.num_workers, pin_memory=device.type == "cuda")
    train_loader = DataLoader(train_set, batch_size=batch, shuffle=sampler is None,
                              sampler=sampler, generator=generator,
                              collate_fn=BatchCollate(recipe.augment, info["num_classes"],
                                                     recipe.cutmix_alpha, recipe.cutmix_prob),
                              **loader_kw)
    test_loader = DataLoader(test_set, batch_size=256, **loader_kw)

    start, history = 0, []
    devices = dist.gather(_device_record(device))  # every rank's, for the checkpoint
    if (out / CHECKPOINT).is_file():
        ckpt = _load_checkpoint(out / CHECKPOINT, recipe=recipe)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        states = ckpt["rng_per_rank"]
        # on another number of workers, the random streams restart from the seed
        if len(states) == dist.world:
            _set_rng_state(states[dist.rank], generator)
        if not dist.on:  # a Ray run's driver warns (a worker's warning stays in its log)
            _warn_if_resumed_otherwise(out, ckpt, devices, dist.world, recipe)
        start, history = ckpt["epoch"], ckpt["history"]

    net = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    writer = _tensorboard(out, start + 1) if dist.rank == 0 else None
    try:  # closed however the loop ends (a diverged epoch, Ctrl-C)
        for epoch in range(start + 1, recipe.epochs + 1):
            t0 = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            try:
                tr = _summarise(dist.sum(_run_epoch(net, train_loader, device, info["num_classes"],
                                                    optimizer, shares, _LossWatch(device, dist))), rot)
            except _Diverged as stop:  # on every rank at the same step: the ranks' minimum
                _raise_diverged(epoch, recipe, lr, stop, dist, rot, time.perf_counter() - t0)
            scheduler.step()
            # the plain model, with rank 0's statistics: DDP's forward broadcasts buffers, which a
            # rank without test images (fewer than the workers) never joined, and all waited
            dist.broadcast_buffers(model)
            te = _summarise(dist.sum(_run_epoch(model, test_loader, device, info["num_classes"])), rot)
            row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
                   "test_loss": te["loss"], "test_acc": te["acc"], "lr": lr,
                   "seconds": round(time.perf_counter() - t0, 3)}
            if rot:
                row.update(train_rot_acc=tr["rot_acc"], test_rot_acc=te["rot_acc"])
            _check_finite(epoch, recipe, row, model)
            history.append(row)
            states = dist.gather(_rng_state(generator))
            if dist.rank == 0:
                # TensorBoard first: a run stopped before its checkpoint is written resumes with
                # purge_step at this epoch, which drops it there; stopped after, it had no step
                if writer is not None:
                    for k, v in row.items():
                        if k != "epoch":
                            writer.add_scalar(k, v, epoch)
                    writer.flush()
                ckpt = {"format": 1, "epoch": epoch, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "rng": states[0], "rng_per_rank": states, "world_size": dist.world,
                        "devices": devices, "history": history, "recipe": recipe.to_dict()}
                save_torch_atomic(ckpt, out / CHECKPOINT)
                _write_csv(out / METRICS, history)
            dist.barrier()
            if callback is not None:
                callback(epoch, row)
    finally:
        if writer is not None:
            writer.close()

    last = history[-1] if history else {}
    result = TrainResult(out_dir=str(out), recipe=recipe, epochs=len(history),
                         test_acc=last.get("test_acc", math.nan),
                         test_loss=last.get("test_loss", math.nan),
                         test_rot_acc=last.get("test_rot_acc"), metrics=history,
                         resumed_from=start)
    if dist.rank == 0:
        save_torch_atomic(model.state_dict(), out / MODEL)
        _write_csv(out / METRICS, history)
        d = {k: v for k, v in asdict(result).items() if k not in ("metrics", "out_dir")}
        d["recipe"], d["devices"] = recipe.to_dict(), devices
        write_text_atomic(out / RESULT, json.dumps(d, indent=2))
    dist.barrier()
    return result


def check_run_args(recipe: Recipe, out_dir: str) -> None:
    """Raise ``TypeError`` unless ``recipe`` is a :class:`Recipe` and ``out_dir`` a path
    (checked by :func:`train` and :func:`~equifast.training.ray_train.train_ray`)."""
    if not isinstance(recipe, Recipe):  # a recipe's name: "'str' object has no attribute 'device'"
        raise TypeError(f"Expected `recipe` to be a Recipe (get_recipe({recipe!r}) for a recipe by "
                        f"name), but got {type(recipe).__name__} {recipe!r:.60}.")
    # "" is no folder: Path("") is the working directory, which a run would have filled
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
        raise TypeError(f"Expected `out_dir` to be the path of a run folder, but got {out_dir!r}.")


def train(recipe: Recipe, out_dir: str, resume: bool = True, overwrite: bool = False,
          callback: Optional[Callable[[int, Dict], None]] = None,
          say: Optional[Callable[[str], None]] = None,
          on_overwrite: Optional[Callable[[], None]] = None) -> TrainResult:
    """Train ``recipe`` in this process, writing checkpoints and metrics to ``out_dir``.

    Args:
        recipe: what to train (see :func:`~equifast.training.recipes.get_recipe`).
        out_dir: run folder (see the module docstring for its files).
        resume: continue an unfinished run found in ``out_dir``.
        overwrite: delete a previous run in ``out_dir`` first (finished or not).
        callback: ``callback(epoch, row)`` after each epoch's checkpoint is written.
        say: where the lines of :func:`start_lines` go, once the device and the data are
            found (before, a missing data set's error followed a line on the schedule).
        on_overwrite: with ``overwrite``, called once the device and the data are found and
            the run is locked, just before the old run is deleted (a study deletes the tables
            that measured it then, not when a missing data set stops the run first).

    Returns:
        The :class:`TrainResult`; for a finished ``out_dir``, the stored one (no training).

    Example:
        >>> from equifast.training import get_recipe, train
        >>> r = get_recipe("cnn7-fmnist6", epochs=1, train_subset=500, test_subset=200)
        >>> train(r, "/tmp/run").test_acc  # doctest: +SKIP
        0.62
    """
    check_run_args(recipe, out_dir)
    device = resolve_device(recipe.device)  # a missing GPU fails here, before the run folder is touched
    # and missing data too, whenever it will train: --overwrite deletes the old run
    datasets = _datasets(recipe) if _will_train(out_dir, overwrite) else None
    for line in start_lines(recipe, out_dir, overwrite, resume) if say is not None else ():
        say(line)
    with run_lock(out_dir):
        if overwrite and on_overwrite is not None:
            on_overwrite()
        done = prepare_out_dir(recipe, out_dir, resume=resume, overwrite=overwrite)
        if done is not None:
            return done
        return _fit(recipe, out_dir, callback, device, datasets)
