"""Measure a model: stream batches, score every representation under every transform.

For each batch, one forward pass of ``x`` and one of the transformed batches (several
transforms stacked into one pass where ``batch_size`` allows); ``f(x)`` is computed once and
reused for every transform. Scores go into :class:`MeasureState`, whose sums merge exactly,
so memory does not grow with the number of images and a set split over workers gives the
single-process result.

Memory of a batch: ``f(x)`` of every point, and one pass' ``f(T(x))`` (``batch_size`` images;
the previous pass' is freed before the next forward), plus the model's own transient
activations and the score sums: ResNet-50 at 224 pixels, 16 images, 349 MiB of features a pass
and a peak of 810 MiB (its plain forward: 159 MiB). ``vector_mode="across_images"`` adds a
float32 ``K x K`` matrix per vector point and transform for the whole run (ResNet-50's pool and
logits: 20 MiB a transform, on the model's device; see :class:`~equifast.aggregate.VectorState`).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import os
import re
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import data as data_mod
from .aggregate import ActivationState, ScoreState, VectorState
from .cpu_memory import keep_freed_memory
from .devices import resolve_device
from .functional import backend as backend_name
from .functional import _BACKENDS, _index_map, equivariance_scores, finite_marker, raise_unless_finite
from ._checks import checked_seed
from ._hints import did_you_mean, without_download_advice
from .reference import METRICS, TOLERANCE, check_options, is_vector
from .report import Report
from .points import Point, representations, split
from .points.point import METHODS as SPLIT_METHODS
from .points.structure import model_dtype, modes_kept, unwrapped
from .transforms import (Transform, check_distinct, check_labels, diagonal_shifts, parse_transforms,
                         rotations)
from .warning import EquifastWarning, warn

__all__ = ["measure", "MeasureState", "Measurer"]

Key = Tuple[str, str, str]  # (point, transform, metric)


@dataclass
class MeasureState:
    """Everything a measurement has summed so far; ``merge`` adds another worker's state."""

    points: List[Point]
    transforms: List[Transform]
    metrics: List[str]
    vector_mode: str = "per_image"
    eps: float = TOLERANCE
    scores: Dict[Key, ScoreState] = field(default_factory=dict)
    # across_images moments per (point, transform): one state serves every metric
    vectors: Dict[Tuple[str, str], VectorState] = field(default_factory=dict)
    activations: Dict[str, ActivationState] = field(default_factory=dict)
    correct: int = 0
    labelled: int = 0
    n_images: int = 0
    shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    # what the model ran at (its dtype, or amp's) and a fingerprint of its weights
    # (:func:`weights_fingerprint`); "" where unknown (a state built by hand)
    precision: str = ""
    weights: str = ""

    def merge(self, other: "MeasureState") -> "MeasureState":
        """Add another :class:`MeasureState` measured with the same points, transforms, metrics,
        vector mode and eps, at the same map shapes (input size), precision and weights, into
        this one (in place; ``other`` is left as it was) and return this one."""
        if not isinstance(other, MeasureState):
            raise TypeError(f"Expected a MeasureState (measure(..., return_state=True)), but got "
                            f"{type(other).__name__}.")
        differ = [what for what, mine, theirs in (
            ("points", [p.name for p in self.points], [p.name for p in other.points]),
            ("transforms", [t.name for t in self.transforms], [t.name for t in other.transforms]),
            ("metrics", self.metrics, other.metrics),
            ("vector mode", self.vector_mode, other.vector_mode), ("eps", self.eps, other.eps),
            # another input size scales every shift otherwise: two geometries in one mean
            ("map shapes", {p: s for p, s in self.shapes.items() if p in other.shapes},
             {p: s for p, s in other.shapes.items() if p in self.shapes}),
            # another model's scores, or float16 ones, were averaged in as the same model's
            ("precision", self.precision or other.precision, other.precision or self.precision),
            ("weights", self.weights or other.weights, other.weights or self.weights))
            if mine != theirs]
        if differ:
            raise ValueError(f"Expected states of the same points, transforms, metrics, vector "
                             f"mode, eps, map shapes, precision and weights, but their "
                             f"{' and '.join(differ)} differ; measure every shard of the same "
                             "model with the same settings and input size.")
        for mine, theirs in ((self.scores, other.scores), (self.vectors, other.vectors),
                             (self.activations, other.activations)):
            for key, state in theirs.items():
                if key in mine:
                    mine[key].merge(state)
                else:  # a copy: later merges into this state must not change the other
                    mine[key] = copy.deepcopy(state)
        self.correct += other.correct
        self.labelled += other.labelled
        self.n_images += other.n_images
        self.shapes.update(other.shapes)
        self.precision, self.weights = self.precision or other.precision, self.weights or other.weights
        return self

    def report(self, meta: Optional[dict] = None) -> Report:
        """The :class:`~equifast.report.Report` of what was summed."""
        if not self.n_images:  # a report of NaN scores over 0 images otherwise
            raise ValueError("Expected a state of at least one measured image, but it holds none; "
                             "score batches first (Measurer.update(x)) or merge in a shard that "
                             "has images.")
        rows = []
        for order, p in enumerate(self.points):
            act = self.activations.get(p.name, ActivationState()).compute()
            for t in self.transforms:
                for m in self.metrics:
                    vector = self.vectors.get((p.name, t.name))
                    if vector is not None:
                        values = ScoreState().update(vector.scores(m)).compute()
                        values["n_images"] = vector.n
                    else:
                        values = self.scores.get((p.name, t.name, m), ScoreState()).compute()
                    rows.append({"point": p.name, "part": p.part, "transform": t.name,
                                 "family": t.family, "metric": m, **values,
                                 "order": order, "shape": "x".join(map(str, self.shapes.get(p.name, ()))),
                                 **act})
        meta = dict(meta or {})
        # eps too: another tolerance leaves other entries undefined, so other scores (a float:
        # np.float32 is no JSON number)
        meta.update(n_images=self.n_images, metrics=self.metrics, vector_mode=self.vector_mode,
                    eps=float(self.eps), transforms=[t.name for t in self.transforms],
                    accuracy=self.correct / self.labelled if self.labelled else None,
                    # 0.5 may be 1 of 2 labelled images among many measured
                    accuracy_images=self.labelled or None)
        return Report.from_rows(rows, meta)


def library_versions() -> Dict[str, str]:
    """The versions a measurement depends on, as plain strings (torch's is a ``TorchVersion``):
    equifast's and torch's, and timm's and torchvision's with them: a model by name is their
    definition, its "default" weights their tag of the day and its preprocess theirs. A report's
    ``meta["versions"]``, and what a sweep's kept shard must match to be merged."""
    import timm
    import torchvision

    from . import __version__

    return {"equifast": str(__version__), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "timm": str(timm.__version__)}


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of ``model``'s tensor shapes and the first values of each: the same for the same
    weights on any device, in any memory format, and (but for a rare collision) another for
    another checkpoint or initialisation. A whole hash would copy every weight to the host."""
    tensors = [t.detach() for t in itertools.chain(model.parameters(), model.buffers())]
    heads = [t.reshape(-1)[:4].to(torch.float64) for t in tensors if t.numel() and not t.is_complex()]
    digest = hashlib.sha256(repr([tuple(t.shape) for t in tensors]).encode())
    if heads:  # one copy to the host
        digest.update(torch.cat([h.to(heads[0].device) for h in heads]).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def metric_list(metric: Union[str, Sequence[str]], name: str = "`metric`") -> List[str]:
    """``metric`` as a list of distinct metric names; ``ValueError`` (naming ``name``) otherwise."""
    if not isinstance(metric, (str, list, tuple)):  # None: "'NoneType' object is not iterable"
        raise ValueError(f"Expected {name} to be one of {METRICS} or a list of them, but got "
                         f"{metric!r}.")
    metrics = [metric] if isinstance(metric, str) else list(metric)
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"Expected {name} to be one of {METRICS}, but got {m!r}"
                             f"{did_you_mean(m, METRICS) or '.'}")
    if not metrics or len(set(metrics)) != len(metrics):
        raise ValueError(f"Expected {name} to be one or more distinct metrics, but got {metrics}.")
    return metrics


def _transform_list(transforms):
    """``transforms`` as :func:`measure` and :class:`Measurer` take them: one transform, a list,
    or specs (``"translation:1-8,rotation"`` or a list of such strings); ``None`` is kept."""
    if isinstance(transforms, Transform):  # one transform
        return [transforms]
    if isinstance(transforms, str) or (isinstance(transforms, (list, tuple)) and transforms
                                       and all(isinstance(t, str) for t in transforms)):
        return parse_transforms(transforms)  # "rotation" was read letter by letter
    return transforms


def checked_settings(transforms, amp: Optional[str], batch_size: int, device,
                     backend: str, split_method: str = "auto") -> Tuple[List[Transform], torch.device]:
    """``transforms`` as a list and ``device`` resolved, or the error of a setting a measurement
    cannot run with: :func:`measure` checks them before its model loads (a large timm model takes
    minutes), :class:`Measurer` for its own callers."""
    transforms = list(transforms)
    if not transforms or not all(isinstance(t, Transform) for t in transforms):
        raise TypeError(f"Expected `transforms` to be a non-empty list of equifast transforms "
                        f"(or, for measure, specs like 'translation:1-8,rotation'), but got "
                        f"{transforms!r}.")
    check_labels(transforms)
    check_distinct(transforms)
    if amp not in (None, "float16", "bfloat16"):
        raise ValueError(f"Expected `amp` to be None, 'float16' or 'bfloat16', but got {amp!r}.")
    data_mod.check_batch_size(batch_size)
    if backend not in _BACKENDS:
        raise ValueError(f"Expected `backend` to be one of {_BACKENDS}, but got {backend!r}.")
    if split_method not in SPLIT_METHODS:  # split's own error named its `method`, after the data loaded
        raise ValueError(f"Expected `split_method` to be one of {SPLIT_METHODS}, but got "
                         f"{split_method!r}.")
    return transforms, resolve_device(device)


@contextlib.contextmanager
def placement_kept(model):
    """Put back the very parameter and buffer tensors of ``model`` (if it is one) afterwards:
    measuring moves it to its device and to channels-last in place."""
    if not isinstance(model, nn.Module):
        yield
        return
    lazy = torch.nn.parameter.is_lazy  # materialised by the first forward: left as it became
    params = [(m, name, p, p.data, p.grad, None if p.grad is None else p.grad.data)
              for m in model.modules() for name, p in m._parameters.items()
              if p is not None and not lazy(p)]
    buffers = [(m, name, b) for m in model.modules() for name, b in m._buffers.items()
               if b is None or not lazy(b)]
    try:
        yield
    finally:
        for m, name, p, data, grad, grad_data in params:
            p.data = data
            if grad is not None:  # Module.to moved it too
                grad.data = grad_data
            p.grad = grad
            m._parameters[name] = p
        for m, name, b in buffers:
            m._buffers[name] = b


class Measurer:
    """The streaming face of :func:`measure`: ``update`` per batch, ``state`` at any time.

    Args: as :func:`measure`; ``example`` is one batch used to find the points. Unlike
    :func:`measure`, it leaves ``model`` in eval mode on its device (channels-last if asked).
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, transforms: Sequence[Transform], *,
                 metric: Union[str, Sequence[str]] = "correlation", points=None,
                 vector_mode: str = "per_image", device=None, amp: Optional[str] = None,
                 batch_size: int = 64, eps: float = TOLERANCE, backend: str = "auto",
                 split_method: str = "auto", channels_last: bool = True,
                 tensor_cores: bool = True):
        if not isinstance(model, nn.Module):  # a name: measure loads it, Measurer does not
            raise TypeError(f"Expected `model` to be an nn.Module, but got "
                            f"{type(model).__name__}; load a model by name with "
                            "equifast.load_model(name) first.")
        data_mod._check_images(example, "`example`")
        metrics = metric_list(metric)
        check_options(metrics[0], vector_mode, eps)
        transforms, self.device = checked_settings(_transform_list(transforms), amp, batch_size,
                                                   device, backend, split_method)
        empty = next((name for name, t in itertools.chain(model.named_parameters(),
                                                          model.named_buffers()) if t.is_meta), None)
        if empty is not None:  # torch's "Cannot copy out of meta tensor" advised to_empty(): garbage weights
            raise ValueError(f"Expected `model` to hold its weights, but {empty!r} is a meta tensor "
                             "(a model built under torch.device('meta') has shapes only); load its "
                             "weights first (model.load_state_dict(state_dict, assign=True)).")
        self.model = model.eval().to(self.device)
        if self.device.type == "cpu":  # the passes' freed features reused, not faulted in again
            keep_freed_memory()
        # Convolutions run faster channels-last on CPUs and tensor cores; the operator reads any strides.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:  # 4-D weights only: Module.to refuses a 5-D one (timm's LambdaLayer's Conv3d)
            self.model = self.model._apply(
                lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t)
        # images come at the model's precision (float32 images into a float16, bfloat16 or
        # float64 model); under amp the model stays float32 and autocast casts
        inner = unwrapped(model)[0]
        self.input_dtype = model_dtype(inner)
        if amp and self.input_dtype not in (None, torch.float32, getattr(torch, amp)):
            # autocast casts float32 work only: a float64 model ran in float64 under a report
            # saying amp='float16', and a float16 one under bfloat16 failed in its batch norm
            raise ValueError(f"Expected `amp` with a float32 model (or one already in {amp}), "
                             f"but the model is {str(self.input_dtype).replace('torch.', '')}, "
                             f"which autocast does not run in {amp}; pass amp=None to measure it "
                             f"at its own precision, or model.float() to measure it under amp.")
        if backend == "operator" and self.input_dtype == torch.float64:
            # found after the first batch's passes otherwise, advising a cast of maps it never had
            raise ValueError("Expected backend='operator' with a float32, float16 or bfloat16 "
                             "model, but the model is float64, whose maps the operator does not "
                             "score; pass backend='auto' or 'reference' (float64 maps scored in "
                             "float64), or model.float().")
        # eval mode does not make these per image: each pass is normalised by its own batch
        by_batch = [n for n, m in inner.named_modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats]
        if by_batch:
            warn(f"{type(inner).__name__}'s {', '.join(map(repr, by_batch[:3]))}"
                 f"{', ...' if len(by_batch) > 3 else ''} (BatchNorm with track_running_stats="
                 "False) normalise by the statistics of each batch, in eval mode too: its scores "
                 "depend on which images share a pass (batch_size, the transforms stacked "
                 "together), not on each image alone.")
        self.amp = amp
        example = self._to_model(example)
        size = tuple(example.shape[-2:])
        self.input_channels = int(example.shape[1])
        for t in transforms:
            t.check_input(size)
        self.input_size = (int(size[0]), int(size[1]))
        given = isinstance(points, (list, tuple)) and points and isinstance(points[0], Point)
        if given:
            # their shapes are of the input they were split at, which may be another size: the
            # checks below (a transform on each map, which points are vectors) take this one's
            self.extract = representations(self.model, points)
            with torch.no_grad():  # on a copy, as every pass: the images may be the caller's
                got = self._forward(example[:2].clone())
            self.points = [replace(p, shape=tuple(got[p.name].shape[1:])) for p in points]
        else:
            with torch.no_grad(), self._autocast():
                self.points = split(self.model, example[:2], points=points, method=split_method)
        # every transform must act on every map point before any image is measured (a rotation
        # of a non-square map would fail after forward passes, naming no point). The maps are
        # held for the run: the cache finds them again even where its bound cannot keep them all
        self._index_maps = []
        for p in self.points:
            if len(p.shape) == 3 and p.shape[1] * p.shape[2] > 1:  # 1x1 maps are vectors
                for t in transforms:
                    try:
                        self._index_maps.append(
                            _index_map(t, (p.shape[1], p.shape[2]), size, self.device))
                    except ValueError as e:
                        raise ValueError(f"Point {p.name!r} ({p.shape[1]}x{p.shape[2]} map at a "
                                         f"{size[0]}x{size[1]} input) cannot take {t.name}: {e} Or "
                                         "leave the transform out, or name other points "
                                         "(points=[...]).") from e
        if not given:  # after the checks: fx's trace runs the model too
            self.extract = representations(self.model, self.points)
        self.transforms = transforms
        self.batch_size = batch_size
        self.eps = eps
        self.backend = backend
        self.tensor_cores = tensor_cores
        self.state = MeasureState(self.points, transforms, metrics, vector_mode, eps,
                                  precision=f"amp {amp}" if amp else str(self.input_dtype or "").replace("torch.", ""),
                                  weights=weights_fingerprint(self.model))
        # labels -> the model's classes (class folders: see equifast.data.model_classes)
        self.label_classes: Optional[torch.Tensor] = None
        # top-1 of the logits [N, K] only: a map's arg-max over its last dim (a fully
        # convolutional model's `final`) was compared with the labels, an accuracy of 4.25
        final = next((p for p in self.points if p.name == "final"), None)
        self.count_accuracy = final is not None and len(final.shape) == 1
        self.map_dtypes: set = set()  # of the maps scored: float64 ones go to the reference

    def _autocast(self):
        """``amp``'s autocast; without it, none: an autocast the caller left on around the call
        would run the model in lower precision than the report's ``amp`` says."""
        if self.amp:
            return torch.autocast(self.device.type, dtype=getattr(torch, self.amp))
        if torch.amp.is_autocast_available(self.device.type):
            return torch.autocast(self.device.type, enabled=False)
        return contextlib.nullcontext()

    def _to_model(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the model's device, at its precision when it has one."""
        dtype = self.input_dtype if x.is_floating_point() else None
        return x.to(self.device, dtype=dtype, non_blocking=True)

    def _forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        with self._autocast():
            return self.extract(x)

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> None:
        """Score one batch ``x`` (``[B, C, H, W]``, model-ready, of the example's ``H x W``:
        another size is a ``ValueError``) with optional labels ``y``."""
        st = self.state
        data_mod._check_images(x, "`x`")  # a 3-D batch failed in channels_last, uint8 in the model
        if x.shape[0] == 0:  # divided by zero
            raise ValueError(f"Expected a batch of at least one image, but got shape "
                             f"{tuple(x.shape)}; leave empty batches out.")
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if size != self.input_size:
            # every shift scales with the input: the state would mix two geometries under one
            # name (and the transforms and maps were checked at the example's size only)
            raise ValueError(f"Expected a batch of {self.input_size[0]}x{self.input_size[1]} images "
                             f"(the example's size, at which the points were found), but got "
                             f"{size[0]}x{size[1]}; measure each input size with a Measurer of "
                             "its own.")
        if x.shape[1] != self.input_channels:  # else the model's own error, deep inside
            raise ValueError(f"Expected a batch of {self.input_channels}-channel images (as the "
                             f"example), but got {x.shape[1]} channels (shape {tuple(x.shape)}).")
        x = self._to_model(x).contiguous(memory_format=self.memory_format)
        # the model gets a copy: one that writes into its input (x -= mean in its forward) would
        # change the images T(x) is taken from, and the caller's
        fx = self._forward(x.clone())
        # What a batch adds to the state stays on the device until the batch is done, then comes
        # back at once, after the finiteness of every f(x) and f(T(x)) is known: on a GPU, one wait
        # a batch rather than one a check, an activation sum or a score.
        names = [f"f(x) at point {p.name!r}" for p in self.points]
        markers = [finite_marker(fx[p.name]) for p in self.points]
        activations = torch.stack([ActivationState.batch_sums(fx[p.name]) for p in self.points])
        for p in self.points:
            st.shapes[p.name] = tuple(fx[p.name].shape[1:])
        counts = bounds = None
        b = x.shape[0]
        if y is not None and "final" in fx and self.count_accuracy:  # top-1 of the logits
            y = _label_tensor(y, b)
            if self.label_classes is None and y.numel():
                # labels on the host are checked now (no sync), on a device with the batch's wait
                bounds = torch.stack(torch.aminmax(y))
                if y.device.type == "cpu":
                    _check_label_bounds(bounds, fx["final"].shape[-1])
                    bounds = None
            y = y.to(self.device, non_blocking=True)
            known = y >= 0  # -1: an image without a label (outside the class folders)
            if self.label_classes is not None:
                y = self.label_classes[y.clamp(min=0)]
            # fetched together after the batch's wait: one transfer
            counts = torch.stack([((fx["final"].argmax(-1) == y) & known).sum(), known.sum()])
        per_pass = max(1, self.batch_size // b)
        keys, sums, vectors = [], [], []  # sums: per pass, [scores of the pass, 7] where they live
        for start in range(0, len(self.transforms), per_pass):
            scores = []
            group = self.transforms[start:start + per_pass]
            ftx = bt = None  # the previous pass' features: freed before this pass makes its own
            ftx = self._forward(torch.cat([t(x) for t in group]).contiguous(memory_format=self.memory_format))
            names += [f"f(T(x)) at point {p.name!r}" for p in self.points]
            markers += [finite_marker(ftx[p.name]) for p in self.points]
            for i, t in enumerate(group):
                for p in self.points:
                    a, bt = fx[p.name], ftx[p.name][i * b:(i + 1) * b]
                    if is_vector(a) and st.vector_mode == "across_images":
                        # a copy: a view (a ViT's class token, x[:, 0]) held the pass' whole
                        # token sequence until the batch was done, for every pass
                        vectors.append(((p.name, t.name), a, bt.clone()))
                        continue
                    if not is_vector(a):
                        self.map_dtypes.add(a.dtype)
                    for m in st.metrics:
                        key = (p.name, t.name, m)
                        s = equivariance_scores(a, bt, t, metric=m, input_size=size,
                                                eps=self.eps, backend=self.backend, check=False,
                                                tensor_cores=self.tensor_cores)
                        keys.append((key, tuple(s.channel.shape)))
                        scores.append(s)
            if scores:  # the pass's scores summed together: a few dozen kernels, not each
                sums.append(ScoreState.batch_sums(scores))
        ftx = bt = scores = None  # the last pass' maps, before the K x K moments below
        raise_unless_finite(names, markers)  # the one wait
        if bounds is not None:
            _check_label_bounds(bounds, fx["final"].shape[-1])
        for p, moments in zip(self.points, activations.tolist()):
            moments = ActivationState.finite_sums(fx[p.name], moments)  # f(x) is finite
            st.activations.setdefault(p.name, ActivationState()).add(moments, fx[p.name].numel())
        if counts is not None:
            correct, labelled = counts.tolist()
            st.correct += correct
            st.labelled += labelled
        for key, a, bt in vectors:
            st.vectors.setdefault(key, VectorState(self.eps)).update(a, bt)
        if sums:
            for (key, (n, k)), batch in zip(keys, torch.cat(sums).tolist()):
                st.scores.setdefault(key, ScoreState()).add(batch, n, k)
        st.n_images += b


def _label_tensor(y, n: int) -> torch.Tensor:
    """``y`` as the ``[n]`` integer class indices of a batch of ``n`` images, or a clear error."""
    y = data_mod.class_indices(y, "`labels`", "first")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"Expected `labels` to be integer class indices, but got {y.dtype}.")
    if tuple(y.shape) != (n,):
        raise ValueError(f"Expected `labels` to be [N] class indices, one per image ({n} in this "
                         f"batch), but got shape {tuple(y.shape)}; for one-hot or [N, 1] labels pass "
                         "labels.argmax(1) or labels.squeeze(1).")
    return y


def _check_label_bounds(bounds, classes: int) -> None:
    """``ValueError`` unless the labels' least and largest values (``bounds``, a tensor of the
    two) lie in [-1, classes): class indices of the logits, or -1 for an image without a label."""
    lo, hi = bounds.tolist()
    if lo < -1 or hi >= classes:
        raise ValueError(f"Expected `labels` to be class indices in [0, {classes}) of the model's "
                         f"logits (or -1: no label), but got values in [{lo}, {hi}].")


def measure(model: Union[nn.Module, str], images=None, transforms: Optional[Sequence[Transform]] = None,
            metric: Union[str, Sequence[str]] = "correlation", batch_size: int = 64,
            n_images: Optional[int] = None, labels: Optional[torch.Tensor] = None, points=None,
            vector_mode: str = "per_image", device=None, amp: Optional[str] = None, seed: int = 0,
            progress: bool = False, preprocess=None, eps: float = TOLERANCE, backend: str = "auto",
            weights: Optional[str] = "default", split_method: str = "auto",
            channels_last: bool = True, tensor_cores: bool = True, return_state: bool = False,
            num_workers: int = 0, num_classes: Optional[int] = None):
    """Channel and layer equivariance of every representation of ``model``.

    Args:
        model: an ``nn.Module`` (a classifier), a torchvision/timm name (see
            :func:`equifast.models.load_model`, with ``weights``), or the folder of an
            ``equifast train`` run (then ``images`` defaults to its data set's test images,
            and a path given as ``images`` is that data set's root).
        images: a tensor ``[N, C, H, W]`` (model-ready), ``(images, labels)``, a
            ``DataLoader``, a ``Dataset`` or a folder path (preprocessed with ``preprocess``,
            by default the model's own when it is given by name, else ImageNet's 224-pixel
            centre crop; see :class:`equifast.data.ImageFiles` for its labels).
            ``None``: the embedded photos, cropped to the model's input size.
        transforms: a list of transforms, or one, or specs as the command line takes them
            (``"translation:1-16,rotation"`` or a list of such strings, see
            :func:`equifast.parse_transforms`); default:
            diagonal shifts 1..32 and the three rotations.
        metric: ``"correlation"``, ``"cosine"``, or both (a list) in the same passes.
        batch_size: images per forward pass (transformed batches are stacked up to it).
        n_images: at most this many images; a warning says when the input holds fewer. Of
            a tensor or a ``DataLoader``, the first ``n_images``; of a ``Dataset`` or a folder, a
            subset drawn with ``seed`` and kept in their order (the same seed, the same images);
            of a run folder's test set, the first (default: its recipe's ``measure_images``).
        labels: class indices for a tensor input (``[N]``; -1 marks an image without a label;
            with another input a ``ValueError``): top-1 accuracy over the labelled images goes
            into ``report.meta`` (``accuracy``, and ``accuracy_images``: how many labelled images).
        points: names of representations to use instead of :func:`equifast.split`'s.
        vector_mode: ``"per_image"`` or ``"across_images"`` for vectors (pool, logits); the
            latter needs two images or more (one is refused before measuring, but for
            ``return_state``: a shard).
        device: default CUDA when present. amp: ``"float16"``/``"bfloat16"`` autocast.
        seed: seeds torch (random weights by name) and the dataset subset, so a run is
            reproducible; the caller's own random stream is left as it was. The model is
            given back as it came: modes, device and memory format; it runs on copies of the
            images (one that writes into its input leaves them as they were).
        progress: show a progress bar (tqdm).
        preprocess: PIL image -> model-ready tensor, for folders and datasets of PIL images
            (default: the model's own: of its weights by name, timm's for a timm module, else
            ImageNet's 224-pixel centre crop; a module of one input size is cropped to it). Tensors, a DataLoader's batches and a Dataset's
            tensor items are taken as model-ready.
        backend: ``"auto"``, ``"operator"`` or ``"reference"``.
        channels_last: run the model channels-last (faster convolutions on CPU and GPU). On
            the CPU, glibc's malloc is set to keep freed memory for reuse, process-wide (see
            :func:`equifast.cpu_memory.keep_freed_memory`; ``EQUIFAST_MALLOC=default`` opts out).
        tensor_cores: on CUDA, let the operator multiply on tensor cores (TF32 for float32
            features, native float16/bfloat16; scores within about 1e-3 of float32 arithmetic).
            ``False`` keeps float32 arithmetic everywhere, as on the CPU.
        return_state: return the mergeable :class:`MeasureState` instead of a report.
        num_classes: for a model by name, the size of its classifier (as
            :func:`equifast.models.load_model` takes it): a new head of that many classes, or 0
            for a model timm builds without one (``final`` is then its pooled features).
        num_workers: processes that decode and preprocess the images of a folder or
            map-style ``Dataset`` while the model runs (``DataLoader`` workers; 0: in this
            process; an ``IterableDataset``, which each would read whole, by one at most,
            with a warning).
            Decoding ImageNet JPEGs takes several ms an image, as long as a GPU's whole
            measurement of it. The images, their order and the scores are the same either way.

    Returns:
        :class:`~equifast.report.Report` with ``points`` (one row per point, transform and
        metric) and ``parts`` (one row per part and transform family) DataFrames; its ``meta``
        says how it was measured (a folder of images, a run folder or a checkpoint as an
        absolute path), and how fast: ``seconds`` (the forward passes and scores of
        every batch, and the reading of the images after the first; the model's loading and
        split left out) and ``images_per_second``.

    Example:
        >>> import torch, torchvision, equifast as ef
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> report = ef.measure(model, torch.rand(4, 3, 64, 64), transforms=ef.rotations())
        >>> list(report.parts.part.unique())
        ['early', 'middle', 'late', 'pool', 'final']
    """
    if isinstance(model, os.PathLike):  # a run folder as a Path was "no ... run folder"
        model = os.fspath(model)
    if not isinstance(model, (nn.Module, str)):
        raise TypeError(f"Expected `model` to be an nn.Module, a torchvision/timm name or a run "
                        f"folder, but got {type(model).__name__}.")
    transforms = _transform_list(transforms)
    check_options(metric_list(metric)[0], vector_mode, eps)  # before the model and the data load
    transforms = checked_settings(diagonal_shifts(1, 32) + rotations() if transforms is None
                                  else transforms, amp, batch_size, device, backend,
                                  split_method)[0]
    # the module a wrapper runs (DataParallel, torch.compile) for what is read off the model;
    # TorchScript is refused before the data load
    inner = unwrapped(model)[0] if isinstance(model, nn.Module) else None
    data_mod.check_num_workers(num_workers)
    if preprocess is not None and not callable(preprocess):  # it failed on the first image
        raise TypeError(f"Expected `preprocess` to be a callable (an image -> tensor transform, "
                        f"as torchvision's transforms), but got {type(preprocess).__name__} "
                        f"{preprocess!r:.80}.")
    seed = checked_seed(seed)  # before the model and the data load
    # A model being trained is put back as it was after: its modes (measuring runs it in eval
    # mode), its device and memory format; the caller's random stream is left alone.
    given_preprocess = preprocess is not None
    with modes_kept(model), placement_kept(model), torch.random.fork_rng(devices=[]):
        from .models import load_model

        n_images = data_mod._check_n_images(n_images)  # "5" failed on `<` in a TypeError
        torch.default_generator.manual_seed(seed)  # CPU only: the caller's CUDA stream is theirs
        meta = {"seed": seed, "backend": backend_name() if backend == "auto" else backend}
        if isinstance(model, str):
            from .models import _is_run_folder, _user_path, _weights_argument, checkpoint_path

            # as load_model reads them: "~/runs/x", a Path's checkpoint and "~/ckpt.pt" go into
            # meta absolute
            model, weights = _user_path(model), _weights_argument(weights)
            run = model if _is_run_folder(model) else None
            # paths absolute: the report says what was measured wherever it is read
            meta.update(model=model if run is None else _absolute(model),
                        weights=None if weights is None else str(weights))  # JSON null
            if weights is not None and checkpoint_path(model, weights):  # a checkpoint file
                meta["weights"] = _absolute(weights)
            model, model_preprocess = load_model(model, weights=weights, num_classes=num_classes)
            if num_classes is not None:  # checked by load_model: a whole number (np.int64 too)
                meta["num_classes"] = int(num_classes)
            inner = model
            preprocess = preprocess or model_preprocess
            if run is not None:  # an unfinished run's report says so (load_model warned)
                from .training.trainer import trained_epochs

                meta["trained_epochs"], meta["recipe_epochs"] = trained_epochs(run)
                # the file load_model read (it said "default", the hub's weights)
                final = os.path.join(run, "model.pt")
                meta["weights"] = _absolute(final if os.path.isfile(final)
                                            else os.path.join(run, "checkpoint.pt"))
            if run is not None and (images is None or isinstance(images, (str, os.PathLike))):
                images, run_labels = _run_images(run, images, n_images)
                labels = run_labels if labels is None else labels
                meta["images"] = "test set of the run's recipe"
        else:
            from .models import given_model_args

            given = [f"{k}={v!r}" for k, v in given_model_args(weights, num_classes).items()]
            if given:  # they were ignored: the module was measured as it is
                raise ValueError(f"Expected `weights` and `num_classes` only with a model given by "
                                 f"name, but got {' and '.join(given)} with a module "
                                 f"({type(inner).__name__}), which is measured as it is: load "
                                 "its weights into it (module.load_state_dict(torch.load(path))) "
                                 "or pass the model's name.")
            meta["model"] = type(inner).__name__  # not DataParallel's
        if given_preprocess and (isinstance(images, (torch.Tensor, tuple, list, DataLoader))
                                 or _tensor_items(images)):
            warn("`preprocess` is not applied to a tensor, a DataLoader's batches or a "
                 "Dataset's tensor items: they are taken as model-ready (resized and "
                 "normalised).")
        if preprocess is None and not isinstance(images, torch.Tensor):
            from .models import module_preprocess

            preprocess = module_preprocess(inner)
        if isinstance(images, (str, os.PathLike)):
            meta["images"] = _absolute(images)  # what was measured, read back from the report
            images = data_mod.ImageFiles(images)
        folder = data_mod.image_folder(images)
        if images is None:
            # cut as they are measured: all at once they grow with n_images (2000: 1.2 GB)
            images = data_mod.EmbeddedPhotos(n_images or 256, size=data_mod.input_shape(preprocess),
                                             seed=seed, preprocess=preprocess)
            meta["images"] = "embedded scikit-image photos"
        stream = data_mod.batches(images, labels, batch_size, n_images, preprocess, seed,
                                  num_workers=num_workers)
        first = next(stream, None)
        if first is None:
            raise ValueError("Expected at least one image, but the input is empty.")
        measurer = Measurer(model, first[0], transforms, metric=metric, points=points,
                            vector_mode=vector_mode, device=device, amp=amp, batch_size=batch_size,
                            eps=eps, backend=backend, split_method=split_method,
                            channels_last=channels_last, tensor_cores=tensor_cores)
        final = next((p for p in measurer.points if p.name == "final"), None)
        # labels come with the images: why they count toward no accuracy is said
        labelled = labels is not None or isinstance(images, (tuple, list)) or (
            folder is not None and folder.labelled)
        if final is not None and len(final.shape) != 1:  # the Measurer counts no accuracy of it
            if labelled:
                warn(f"No accuracy: {type(inner).__name__}'s output (the `final` point) is a "
                     f"{'x'.join(map(str, final.shape))} map, not the class logits [N, K] that "
                     "labels are compared with.")
        elif final is not None and getattr(inner, "num_classes", None) == 0:
            # timm built it headless: `final` is its pooled features, whose arg-max is no class
            measurer.count_accuracy = False
            if labelled:
                warn(f"No accuracy: {type(inner).__name__} has no classifier "
                     "(num_classes=0), so its `final` is pooled features, not class "
                     "logits; build it with num_classes=N for a classifier.")
        elif folder is None and labels is None and data_mod.folders_disagree(images):
            warn("No accuracy: the datasets joined in the ConcatDataset are class folders of "
                 "different classes, so their labels are indices of different folders, not "
                 "the model's classes; join folders of the same classes.")
            measurer.count_accuracy = False
        elif folder is not None and folder.labelled and final is not None and len(final.shape) == 1:
            classes = data_mod.model_classes(folder, final.shape[0])
            measurer.label_classes = None if classes is None else classes.to(measurer.device)
            if measurer.label_classes is None:
                names = ", ".join(folder.classes[:3]) + (", ..." if len(folder.classes) > 3 else "")
                warn(f"No accuracy: which of the model's {final.shape[0]} classes the "
                     f"{len(folder.classes)} class folders ({names}) are is unknown (not "
                     f"one folder per class, nor folders numbered 0 to {final.shape[0] - 1}, "
                     "nor ImageNet-1k synsets for 1000 classes).")
                measurer.count_accuracy = False
            elif folder.strays:
                why = getattr(folder, "strays_why", "") or (  # a flat val folder's say which
                    f"lie beside the class folders, not in one (e.g. {str(folder.strays[0])!r})")
                warn(f"{len(folder.strays)} image(s) {why}: they are measured, but have no "
                     "label and are left out of the top-1 accuracy.")
        started = time.perf_counter()  # the measurement proper: the model is loaded and split
        total = data_mod.count(images)
        total = min(total, n_images) if (total is not None and n_images) else (total or n_images)
        given = labels if isinstance(images, torch.Tensor) else (
            images[1] if isinstance(images, (tuple, list)) and len(images) == 2 else None)
        if (given is not None and final is not None and len(final.shape) == 1
                and measurer.count_accuracy and measurer.label_classes is None):
            # all of them now: a class index beyond the logits in the last batch was found
            # after every other batch was measured
            given = data_mod.class_indices(given, "`labels`", "first")[:total]
            if given.dim() == 1 and given.numel() and not (given.is_floating_point() or given.is_complex()
                                                           or given.dtype == torch.bool):
                _check_label_bounds(torch.stack(torch.aminmax(given)), final.shape[0])
        vectors = [p.name for p in measurer.points if p.is_vector]
        if vector_mode == "across_images" and vectors and total == 1 and not return_state:
            # the report could not be made: found now, not after every image is measured (a
            # state may hold one image: a shard, merged with others)
            raise ValueError(f"Expected at least two images for vector_mode='across_images', but "
                             f"got 1 (its vectors: {', '.join(vectors[:3])}"
                             f"{', ...' if len(vectors) > 3 else ''}); measure more images, or "
                             "use vector_mode='per_image'.")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="img", desc="measuring")
        try:
            for x, y in _chain(first, stream):
                size = tuple(int(s) for s in x.shape[-2:])
                if x.dim() == 4 and size != measurer.input_size:
                    # images of several sizes in different batches (batch_size=1, or one size a
                    # batch): the Measurer's advice, a Measurer per size, is no fix for `measure`
                    h, w = measurer.input_size
                    raise ValueError(
                        f"Expected every image to have one size after preprocessing, but a batch "
                        f"holds {size[0]}x{size[1]} images after {h}x{w} ones: give a "
                        "`preprocess` that resizes and crops to one size (as the models' own do: "
                        "Resize(256), CenterCrop(224)), or tensors of one size.")
                measurer.update(x, y)
                if bar is not None:
                    bar.update(len(x))
        finally:  # an interrupted run's bar stayed open (the traceback holds it), and the next
            if bar is not None:  # run's was drawn below it
                bar.close()
        if n_images is not None and measurer.state.n_images < n_images:
            warnings.warn(f"Measured {measurer.state.n_images} images, fewer than the n_images="
                          f"{n_images} asked for: that is all the input holds.",
                          category=EquifastWarning, stacklevel=2)
        for state in measurer.state.vectors.values():  # summed on the device; the host's now
            state.to("cpu")
        if return_state:
            return measurer.state
        # whether tensor cores did the products: the operator uses them on CUDA sm_80 and newer only
        on_tensor_cores = (tensor_cores and measurer.device.type == "cuda"
                           and torch.cuda.get_device_capability(measurer.device)[0] >= 8)
        # channels_last as batch_size: the model's convolutions round otherwise without it
        meta.update(device=str(measurer.device), amp=amp, batch_size=batch_size,
                    channels_last=bool(channels_last), tensor_cores=bool(on_tensor_cores),
                    versions=library_versions())  # to repeat it
        if backend == "auto" and torch.float64 in measurer.map_dtypes:  # scored in float64
            meta["backend"] = ("reference" if measurer.map_dtypes == {torch.float64}
                               else "operator, reference for float64 maps")
        report = measurer.state.report(meta)
        # every batch waited for the device at its end: the clock holds the GPU's work too
        seconds = time.perf_counter() - started
        report.meta.update(seconds=seconds, images_per_second=measurer.state.n_images / seconds)
        _warn_undefined(report, measurer)
        return report


def _warn_undefined(report: Report, measurer: "Measurer") -> None:
    """One warning naming the points whose every entry is undefined under a transform (their
    score and maybe their part's is NaN), and why: a silent NaN told nothing. Entries left
    undefined by a single logit or a single compared position are warned of where scored."""
    dead = report.points[report.points["channel"].isna()]
    if dead.empty:
        return
    st = measurer.state
    points = {p.name: p for p in st.points}
    by_name = {t.name: t for t in st.transforms}
    named: Dict[str, Dict[str, list]] = {}  # point -> {"metrics": [...], "transforms": [...]}
    single: Dict[str, List[str]] = {}  # point -> transforms leaving it one compared position
    for point, tname, m in dead[["point", "transform", "metric"]].itertuples(index=False):
        shape, vector = points[point].shape, points[point].is_vector
        if m == "correlation" and vector and st.vector_mode == "per_image" and shape[0] == 1:
            continue  # a single logit: warned of where scored, naming no map
        if m == "correlation" and not vector and _index_map(
                by_name[tname], (shape[1], shape[2]), measurer.input_size,
                measurer.device)[0].numel() == 1:
            # warned of where scored by map size alone: which points is said here
            if tname not in single.setdefault(point, []):
                single[point].append(tname)
            continue
        entry = named.setdefault(point, {"metrics": [], "transforms": []})
        for key, value in (("metrics", m), ("transforms", tname)):
            if value not in entry[key]:
                entry[key].append(value)
    if single:
        said = [f"{p!r} ({points[p].shape[1]}x{points[p].shape[2]} map; "
                f"{', '.join(ts[:3])}{', ...' if len(ts) > 3 else ''})" for p, ts in single.items()]
        warn(f"Correlation scores at point(s) {', '.join(said[:5])}{', ...' if len(said) > 5 else ''} "
             "are undefined (NaN): the transform leaves one position to compare there; use cosine, "
             "smaller shifts or mode='circular'.")
    if not named:
        return
    described = []
    for point, entry in named.items():
        shape = points[point].shape
        if not points[point].is_vector:
            what = f"each channel's {shape[1]}x{shape[2]} map"
        elif st.vector_mode == "per_image":
            what = f"its {shape[0]} values in each image"
        else:
            what = f"each of its {shape[0]} values across the images"
        under = ("every transform" if len(entry["transforms"]) == len(st.transforms)
                 else ", ".join(entry["transforms"][:3]) + (", ..." if len(entry["transforms"]) > 3 else ""))
        if len(st.metrics) > 1:
            under += f"; {', '.join(entry['metrics'])}"
        described.append(f"{point!r} ({what}; {under})")
    metrics = {m for e in named.values() for m in e["metrics"]}
    why = " or ".join(text for m, text in (
        ("correlation", "constant (zero centred norm: correlation's undefined case)"),
        ("cosine", "zero (zero norm: cosine's undefined case)")) if m in metrics)
    parts = report.parts[report.parts["channel"].isna()]["part"].astype(str).unique().tolist()
    warn(f"Every score at point(s) {', '.join(described[:5])}{', ...' if len(described) > 5 else ''} "
         f"is undefined (NaN, undefined_fraction 1.0): the compared values of f(x) or f(T(x)) are "
         f"{why} for every image, up to eps={st.eps:g}, as a zero-initialised layer gives (torchvision's ViT "
         "classifiers with weights=None, --weights none) or dead units"
         + (f"; so part(s) {', '.join(map(repr, parts))} have no score." if parts else "."))


def _absolute(path) -> str:
    """``path`` absolute and resolved where it exists (as typed where it does not)."""
    return str(Path(path).resolve()) if os.path.exists(path) else os.fspath(path)


def _run_images(run: str, root, n: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images of a training run's data set (``None``: its recipe's
    ``measure_images``, a study's default) and their classes (``root`` overrides the
    recipe's data folder), whatever the measurement's seed."""
    import json

    from .training import measure_images
    from .training.recipes import Recipe

    recipe = json.loads(Path(run, "recipe.json").read_text())  # closed (open() was left open)
    root = str(root) if root else recipe.get("data_root")
    try:
        # the first images of the whole test split, turned as the run's were (its test_subset
        # is not taken): a recipe without data_seed trained with Recipe's default (the
        # measurement's seed drew other turns of a rotated test set)
        # its study's count: 2000 was measured where the study measured its own (a report of
        # the run did not match the study's)
        n = n or recipe.get("measure_images", Recipe.measure_images)
        return measure_images(recipe["dataset"], root, n, recipe.get("data_seed", Recipe.data_seed),
                              labels=True)
    except (FileNotFoundError, ValueError) as err:
        why = _as_measure_advice(str(err))
        raise FileNotFoundError(
            f"The run {run!r} is measured on the test set of its recipe ({recipe['dataset']}), "
            f"which could not be read from {root!r}: {why}"
            + ("" if "`images`" in why else " Pass the folder that holds it as `images` (--data "
               "on the command line).")) from err


# Training's advice on its data sets, in its options: measure takes the folder as `images`
# (--data) and downloads nothing (_hints.without_download_advice).
_TRAIN_ADVICE = (
    (re.compile(r"--data-root\b"), "--data"),
    (re.compile(r"\ba `root`"), "`images`"),
    (re.compile(r"`root`"), "`images`"),
    (re.compile(r"\broot="), "images="),
)


def _as_measure_advice(message: str) -> str:
    """A data error of ``equifast.training`` (whose advice names train's ``root``,
    ``--data-root`` and ``--download``) in measure's options, whole."""
    message = without_download_advice(message)
    for pattern, replacement in _TRAIN_ADVICE:
        message = pattern.sub(replacement, message)
    message = message.strip()
    return message if message.endswith((".", "!", "?")) else message + "."


def _tensor_items(images) -> bool:
    """Whether ``images`` is a map-style Dataset whose first item's image is a tensor (taken as
    model-ready, so a ``preprocess`` given with it is not applied): one item is read."""
    if (not isinstance(images, torch.utils.data.Dataset)
            or isinstance(images, torch.utils.data.IterableDataset)):
        return False
    try:
        if len(images) == 0:
            return False
        item = images[0]
    except (TypeError, NotImplementedError, IndexError, KeyError):  # no length or no index 0
        return False
    return isinstance(data_mod._image_and_label(item)[0], torch.Tensor)


def _chain(first, rest):
    yield first
    yield from rest
