"""Reading the points' values in a forward pass (:class:`Representations`)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple

from torch import Tensor, nn

from ..warning import warn as _warn
from .layouts import _normalise
from .point import _REPEATED_HINT, Point
from .structure import (
    _eager,
    _first_tensor,
    _model_output,
    _returned,
    _version,
    modes_kept,
    unwrapped,
)
from .tracing import _fx_extractor


class Representations(nn.Module):
    """``forward(x) -> {point name: tensor}``: every point of a model in one forward pass.

    Tensors come in the points' order, normalised to ``[N, C, h, w]`` or ``[N, K]``.

    Args:
        model: the model the points were found in (shared, not copied).
        points: from :func:`split`.
        method: ``"fx"``, ``"hooks"`` or ``None`` (fx when every point has an fx node).

    Example:
        >>> import torch, torchvision, equifast as ef
        >>> model = torchvision.models.resnet18(num_classes=10).eval()
        >>> x = torch.rand(2, 3, 64, 64)
        >>> reps = ef.representations(model, ef.split(model, x))
        >>> {k: tuple(v.shape) for k, v in reps(x).items() if k in ("stem", "pool", "final")}
        {'stem': (2, 64, 16, 16), 'pool': (2, 512), 'final': (2, 10)}
    """

    def __init__(self, model: nn.Module, points: Sequence[Point], method: Optional[str] = None):
        super().__init__()
        points = list(points)
        if not points or not all(isinstance(p, Point) for p in points):
            raise TypeError(f"Expected `points` to be a non-empty list of Point (from equifast.split), "
                            f"but got {points!r}.")
        if len({p.name for p in points}) != len(points):
            raise ValueError(f"Expected distinct point names, but got {[p.name for p in points]}.")
        model = unwrapped(model)[0]  # as split named the points
        chosen = method
        if method is None:
            method = "fx" if all(p.node for p in points) else "hooks"
        if method not in ("fx", "hooks"):
            raise ValueError(f"Expected `method` to be 'fx', 'hooks' or None, but got {method!r}.")
        self.points = points
        self.method = method
        if method == "fx":
            missing = [p.name for p in points if not p.node]
            if missing:
                raise ValueError(f"Expected every point to have an fx node for method='fx', but "
                                 f"{missing} have none; split with method='fx' or use method='hooks'.")
            self._keys = {n: f"p{i}" for i, n in enumerate(dict.fromkeys(p.node for p in points))}
            try:
                self.graph = _fx_extractor(model, list(self._keys))
                object.__setattr__(self, "_model", model)  # mode sync only, not a submodule
            except Exception as e:  # noqa: BLE001 - e.g. the train-mode graph does not trace
                if chosen == "fx" or any(p.module is None for p in points):
                    raise
                _warn(f"torch.fx extraction failed ({type(e).__name__}: {e}); using forward "
                      "hooks instead.")
                method = self.method = "hooks"
        if method == "hooks":
            bad = [p.name for p in points if p.module is None]
            if bad:
                raise ValueError(f"Expected module points for method='hooks', but {bad} are fx nodes "
                                 "only; use method='fx'.")
            self.model = model
            # the points a later in-place op overwrites: copied as they are made (the others are
            # the model's own tensors, read as they are)
            self._copy: set = set()
            self._probed = False  # until a first pass has found what to copy

    def _hooked(self, x: Tensor) -> Dict[str, Tensor]:
        model = self.model
        n = int(x.shape[0])
        store: Dict[Tuple[str, str], Tensor] = {}
        versions: Dict[Tuple[str, str], Optional[int]] = {}
        handles = []

        def put(key, t):
            if key in store:  # a module run twice: which call is the point would be a guess
                raise RuntimeError(f"Module {key[0]!r} ran more than once in this forward pass, so "
                                   f"it is not one point. {_REPEATED_HINT}")
            store[key] = t.clone() if key in self._copy and isinstance(t, Tensor) else t
            versions[key] = _version(t)

        def keep(key, take):
            if take == "input":  # also by keyword: a head called as fc(input=x)
                return lambda m, args, kwargs: put(key, _first_tensor((args, kwargs), n))
            return lambda m, args, kwargs, out: put(key, _returned(out, args, kwargs, n))

        try:
            for key in dict.fromkeys((p.module, p.take) for p in self.points if p.module):
                mod = model.get_submodule(key[0])
                handles.append(mod.register_forward_pre_hook(keep(key, "input"), with_kwargs=True)
                               if key[1] == "input"
                               else mod.register_forward_hook(keep(key, "output"), with_kwargs=True))
            # the first pass may have to run again on x: one on a copy, so that a model that
            # writes into its input (x -= mean) leaves x for the second
            with _eager():
                out = _model_output(model(x if self._probed else x.clone()), n)
        finally:
            for h in handles:
                h.remove()
        self._probed = True
        overwritten = {k for k, t in store.items() if k not in self._copy and isinstance(t, Tensor)
                       and (versions[k] is None or _version(t) != versions[k])}
        if overwritten:
            # a later in-place op (nn.ReLU(inplace=True) after a named bn1) overwrote these
            # points, or inference mode hides whether one did: copy them, from this pass on
            self._copy |= overwritten
            return self._hooked(x)
        raw = {}
        for p in self.points:
            key = (p.module, p.take)
            if p.module == "" and p.take == "output":
                raw[p.name] = out
            elif key not in store or store[key] is None:
                raise RuntimeError(f"Point {p.name!r}: module {p.module!r} did not run in this forward pass.")
            else:
                raw[p.name] = store[key]
        return raw

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        if self.method == "fx":
            if self.graph.training != self._model.training:
                with modes_kept(self._model):  # the graph's own mode: its modules are the model's
                    self.graph.train(self._model.training)
            got = self.graph(x)
            raw = {p.name: got[self._keys[p.node]] for p in self.points}
        else:
            raw = self._hooked(x)
        n = int(x.shape[0])
        for p in self.points:
            t = raw[p.name]
            if not isinstance(t, Tensor) or t.dim() == 0 or int(t.shape[0]) != n:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"Expected point {p.name!r} to have the {n} images on its first "
                                 f"axis, but got {got}; split the model again (equifast.split "
                                 "skips or refuses such values).")
        return OrderedDict((p.name, _normalise(raw[p.name], p)) for p in self.points)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, points={[p.name for p in self.points]}"


def representations(model: nn.Module, points: Sequence[Point], method: Optional[str] = None) -> Representations:
    """The extractor of ``points``: ``extractor(x) -> {name: [N, C, h, w] or [N, K]}``.

    Args:
        model: the model :func:`split` was run on.
        points: the points from :func:`split` (or a subset of them).
        method: ``"fx"``, ``"hooks"``, or ``None``: fx when the points were traced.

    Returns:
        :class:`Representations`, an ``nn.Module`` sharing the model's parameters.

    Example:
        >>> import torch, torchvision, equifast as ef
        >>> model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
        >>> x = torch.rand(2, 3, 64, 64)
        >>> fx = ef.representations(model, ef.split(model, x))(x)
        >>> fx["stem"].shape, fx["final"].shape
        (torch.Size([2, 16, 32, 32]), torch.Size([2, 10]))
    """
    return Representations(model, points, method)
