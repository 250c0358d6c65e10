"""Choosing a model's points and parts: :func:`split` (automatic or named points)."""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..warning import warn as _warn
from .layouts import (
    _layout,
    _map_layouts,
    _normalise,
    _token_grids,
    _token_orders,
    _unrolled_after,
)
from .point import _HINT, _LIST_HINT, _REPEATED_HINT, _RESERVED, METHODS, PARTS, Point
from .structure import (
    _Analysis,
    _auto_points,
    _check_batched,
    _first_tensor,
    _fits,
    _head_points,
    _model_output,
    _num_prefix_tokens,
    _spatial_size,
    modes_kept,
    unwrapped,
)
from .tracing import _fx_extractor, _Graph, _HooksOfItsOwn


def _parts(n: int) -> List[str]:
    sizes = [len(a) for a in np.array_split(np.arange(n), 3)]
    return [part for part, k in zip(PARTS[:3], sizes) for _ in range(k)]


def split(model: nn.Module, example_input: Tensor, points: Optional[Sequence[str]] = None,
          method: str = "auto") -> List[Point]:
    """The representation points of ``model`` in execution order, each with its part.

    One forward pass of ``example_input`` in eval mode (modes are restored after; no
    gradients) finds the points with the rule of the module docstring.

    Args:
        model: an image classifier (torchvision, timm, or your own ``nn.Module``). Of a
            wrapper (``nn.DataParallel``, ``DistributedDataParallel``, ``torch.compile``) the
            module it wraps is split, and the points have the plain model's names (names with
            the wrapper's prefix, ``module.layer1``, are taken too); TorchScript is refused.
        example_input: ``[N, C, H, W]``, a batch of the size you will measure at.
        points: names of your own (module names or fx node names, or ``"stem"``: the
            automatic split's stem point, so that a report's point names are taken back) for
            the points before pooling (a vector from pooling or after it is a
            ``ValueError``); ``"pool"`` / ``"final"`` in the list place those two, otherwise
            both are appended. ``None``: find the points automatically.
        method: ``"fx"`` (trace with torch.fx), ``"hooks"`` (forward hooks), or ``"auto"``
            (fx, falling back to hooks with a warning when the model does not trace).

    Returns:
        ``list[Point]``: the points before pooling (parts early/middle/late, split as
        :func:`numpy.array_split`), then ``pool`` and ``final``.

    Raises:
        ValueError: the model has no recognisable stem/blocks, global pooling or classifier;
            the message says how to name the points yourself.

    Example:
        >>> import torch, torchvision, equifast as ef
        >>> model = torchvision.models.resnet50(num_classes=10)
        >>> pts = ef.split(model, torch.rand(2, 3, 64, 64))
        >>> [p.name for p in pts][:3], len(pts)
        (['stem', 'layer1.0', 'layer1.1'], 19)
        >>> [sum(p.part == part for p in pts) for part in ("early", "middle", "late", "pool", "final")]
        [6, 6, 5, 1, 1]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be an nn.Module, but got {type(model).__name__}.")
    model, prefix = unwrapped(model)
    if not isinstance(example_input, Tensor) or example_input.dim() != 4:
        got = (tuple(example_input.shape) if isinstance(example_input, Tensor)
               else type(example_input).__name__)
        raise ValueError(f"Expected `example_input` to be a tensor [N, C, H, W], but got {got}.")
    if method not in METHODS:
        raise ValueError(f"Expected `method` to be one of {METHODS}, but got {method!r}.")
    if points is not None and (isinstance(points, str) or not all(isinstance(p, str) for p in points)):
        raise TypeError(f"Expected `points` to be a list of names (str), but got {points!r}.")
    if points is not None and prefix:  # names read off the wrapper: "module.layer1"
        points = [p[len(prefix):] if p.startswith(prefix) else p for p in points]

    graph: Optional[_Graph] = None
    if method in ("fx", "auto"):
        try:
            graph = _Graph(model)
        except Exception as e:  # noqa: BLE001 - any tracing failure means: use hooks
            if method == "fx":
                # leaves are no help where the model's own hooks are what a graph leaves out
                leaves = "" if isinstance(e, _HooksOfItsOwn) else (
                    ", or register the untraceable modules/functions as leaves "
                    "(timm.layers.register_notrace_module / register_notrace_function)")
                raise ValueError(f"torch.fx cannot trace {type(model).__name__} "
                                 f"({type(e).__name__}: {e}). Use method='hooks'{leaves}.") from e
            _warn(f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {e}); "
                  "using forward hooks instead.")

    an = _Analysis(model, example_input)
    modules = dict(model.named_modules())
    if points is None:
        # a block the model itself names `pool` or `final`: its point was taken for the pooled
        # vector's or the logits' (a conv block's maps scored as part `final`, two points of one name)
        found = [(f"{name} (module)" if name in _RESERVED and module == name and take == "output"
                  else name, module, take) for name, module, take in _auto_points(an)]
    else:
        found = _named_points(list(points), an, modules, graph)

    # fx nodes for every point (a failure falls back to hooks, or fails for method='fx')
    nodes: Dict[str, str] = {}
    if graph is not None:
        try:
            for name, module, take in found:
                if module is None:
                    nodes[name] = graph.resolve(name) or ""
                elif take == "output" and module in an.calls and an.calls[module].several:
                    # fx's last node inside the module is one of its outputs, not necessarily the
                    # one taken (PiT's pooling returns (map, class token)): hooks take this point
                    if method == "fx":
                        raise RuntimeError(f"module {module!r} returns several tensors")
                    nodes[name] = ""
                elif take == "input":
                    nodes[name] = graph.input_of(module)
                else:
                    nodes[name] = graph.output_of(module)
        except RuntimeError as e:
            if method == "fx":
                raise ValueError(f"Cannot map the points of {type(model).__name__} to fx nodes ({e}). "
                                 "Use method='hooks'.") from e
            _warn(f"Cannot map the points to fx nodes ({e}); using forward hooks instead.")
            nodes = {}

    # raw values at the example, for layouts
    raw: Dict[str, Tensor] = {}
    fx_only = [name for name, module, _ in found if module is None]
    for name, module, take in found:
        if module == "" and take == "output":
            raw[name] = _model_output(an.output, an.n)
        elif module is not None and module in an.calls:
            raw[name] = an.calls[module].inp if take == "input" else an.calls[module].made
    if fx_only:
        ext = _fx_extractor(model, [nodes[n] for n in fx_only])
        with modes_kept(model):
            model.eval()
            ext.eval()
            with torch.no_grad():
                got = ext(example_input.clone())
        keys = {n: f"p{i}" for i, n in enumerate(dict.fromkeys(nodes[n] for n in fx_only))}
        for n in fx_only:
            raw[n] = _first_tensor(got[keys[nodes[n]]], an.n)

    layouts = _map_layouts(model, an, example_input,
                           [(name, module, take, raw.get(name)) for name, module, take in found])
    # one token [N, 1, C] made from tokens that lie on no grid of the image is a vector: laid
    # out as a 1x1 map it was averaged into a part before pooling as a map that moved not at all
    # (CoaT's `aggregate` of its three stages' class tokens); a 1x1 map of a small image is kept
    grid = an.token_grid()
    num_prefix = _num_prefix_tokens(model)
    on_grid = {g[0] * g[1] + p for g in _token_grids(grid) for p in {0, num_prefix or 0}}
    single = [name for name, module, take in found if name not in _RESERVED and take == "output"
              and (t := raw.get(name)) is not None and t.dim() == 3 and t.shape[1] == 1
              and module in an.calls and (i := an.calls[module].inp) is not None and i.dim() == 3
              and int(i.shape[1]) > 1 and int(i.shape[1]) not in on_grid]
    if single:
        said = (f"{', '.join(map(repr, single))} of {type(model).__name__} hold a single token "
                f"[N, 1, C] made from tokens on no grid of the image: a vector (as one computed "
                f"from class tokens), no map")
        if points is not None:
            raise ValueError(f"Expected each point to be a map, but {said}. {_LIST_HINT}")
        _warn(f"Outputs {said}, are not points. {_HINT}")
        found = [f for f in found if f[0] not in single]
    # a 4-D value whose two spatial sizes cannot both come from the image (NesT's blocked
    # tokens [N, 16 blocks, 196 tokens, C]) is no map: scores on it would be of a false grid
    misfits: Dict[str, str] = {}
    for name, _, _ in found:
        t = raw.get(name)
        if name not in _RESERVED and t is not None and t.dim() == 4:
            layout = layouts[name]
            hw = tuple(t.shape[1:3] if layout == "NHWC" else t.shape[2:])
            if not _fits(hw, an.input_size):
                misfits[name] = f"{name!r} ({hw[0]}x{hw[1]} read as {layout})"
    if misfits and points is not None:
        raise ValueError(f"Expected each point to be a map of the {an.input_size[0]}x"
                         f"{an.input_size[1]} image, but the spatial sizes of {', '.join(misfits.values())} "
                         f"cannot both come from it by downsampling; name the module that makes a map of "
                         f"it. {_LIST_HINT}")
    if points is not None:  # blocked tokens that fit as a map (as many blocks as tokens)
        blocked = {}
        for name, module, _ in found:
            t = raw.get(name)
            if name not in _RESERVED and t is not None and t.dim() == 4 and \
                    (outer := an.unblocked_by(module or name, t)) is not None:
                blocked[name] = (f"{name!r} {tuple(t.shape)} (rearranged into a map by "
                                 f"{outer or type(model).__name__!r})")
        if blocked:
            raise ValueError(f"Expected each point to be a map of the image, but these hold blocks of "
                             f"tokens [N, blocks, tokens, C] (timm NesT's blocks), not a map (read as one, "
                             f"each block is a row, even where the sizes fit): {'; '.join(blocked.values())}; "
                             f"name the module that rearranges them into a map instead. {_LIST_HINT}")
    if misfits:
        _warn(f"Outputs of {type(model).__name__} that are no map of the {an.input_size[0]}x"
              f"{an.input_size[1]} image (their two spatial sizes cannot both come from it "
              f"by downsampling) are not points: {', '.join(misfits.values())}. {_HINT}")
        found = [f for f in found if f[0] not in misfits]
    pre = [f for f in found if f[0] not in _RESERVED]
    parts = dict(zip([f[0] for f in pre], _parts(len(pre))))
    parts.update(pool="pool", final="final")
    result = []
    orders = _token_orders(model)
    unrolled_after = _unrolled_after(an) if orders else -1
    for i, (name, module, take) in enumerate(found):
        t = raw.get(name)
        if t is None:
            raise ValueError(f"Point {name!r} (module {module!r}) did not produce a tensor on the "
                             f"example input. {_HINT}")
        _check_batched(name, t, an.n)
        if name == "pool" and t.dim() == 4 and _spatial_size(t) == 1:
            layout, prefix, g = "NC", 0, None  # the pooled [N, K, 1, 1] map a 1x1 conv reads (DLA)
        else:
            layout, prefix, g = _layout(model, module, t, grid, num_prefix, layouts.get(name))
        order = None
        call = an.calls.get(module) if module else None  # None: the calls cannot tell
        if layout == "NLC" and int(t.shape[1]) - prefix in orders and (call is None or call.start > unrolled_after):
            g, order = orders[int(t.shape[1]) - prefix]
        p = Point(name=name, part=parts[name], index=i, module=module, take=take,
                  node=nodes.get(name, ""), layout=layout, prefix_tokens=prefix, grid=g,
                  token_order=order)
        result.append(replace(p, shape=tuple(_normalise(t, p).shape[1:])))
    if points is not None:
        _refuse_named_after_pooling(result, an, graph if nodes else None)
    return result


def _refuse_named_after_pooling(points: List[Point], an: _Analysis, graph: Optional[_Graph]) -> None:
    """A named vector computed once global pooling is done (the pooled vector, a head's hidden
    layer, the logits) would be scored inside the parts before pooling, changing their means
    silently: it is refused, naming the points the user meant."""
    try:
        pooling = an.body()[1]
    except ValueError:
        return
    if pooling is None:
        return
    pool_node = None
    if graph is not None:
        with contextlib.suppress(RuntimeError, KeyError):  # pooling outside the traced graph
            pool_node = graph.order[graph.output_of(pooling.name)]

    def after(p: Point) -> bool:
        if pool_node is not None and p.node in graph.order:
            return graph.order[p.node] >= pool_node
        call = an.calls.get(p.module) if p.module else None
        return call is not None and call.end >= pooling.end

    late = [p.name for p in points if p.name not in _RESERVED and p.is_vector and after(p)]
    if late:
        raise ValueError(
            f"Expected `points` to name representations before global pooling ({pooling.name!r} "
            f"in {type(an.model).__name__}), but {', '.join(map(repr, late))} "
            f"{'is a vector' if len(late) == 1 else 'are vectors'} computed by it or after it, "
            f"which would be averaged into the parts early/middle/late. The pooled vector and the "
            f"logits are the `pool` and `final` points, appended for you (name 'pool' or 'final' "
            f"in the list to place them). {_LIST_HINT}")


def _auto_stem(an: _Analysis) -> Optional[str]:
    """The module whose output :func:`split` names ``"stem"`` (a stem of one layer), if any."""
    try:
        with warnings.catch_warnings():  # the automatic split's own warnings are not the caller's
            warnings.simplefilter("ignore")
            found = _auto_points(an)
    except Exception:  # noqa: BLE001 -- a model split() cannot find blocks of: no stem
        return None
    return next((module for name, module, _ in found if name == "stem"), None)


def _warn_if_a_block_too(name: str, names: Sequence[str], an: _Analysis) -> None:
    """Warn where ``name`` (``pool`` or ``final``, the reserved point) is also a block that
    :func:`split` finds (as ``name (module)``) and ``names`` leave it out: the reserved point is
    measured, which may not be what was meant."""
    if f"{name} (module)" in names or name not in an.calls:
        return
    try:
        with warnings.catch_warnings():  # the automatic split's own warnings are not this one's
            warnings.simplefilter("ignore")
            blocks = _auto_points(an)
    except Exception:  # noqa: BLE001 -- a model split() cannot find blocks of: nothing to say
        return
    if (name, name, "output") in blocks:
        what = "the logits" if name == "final" else "the pooled vector that enters the classifier"
        _warn(f"Point {name!r} is {what}; the block {type(an.model).__name__} names {name!r} is the "
              f"point {name + ' (module)'!r}, as split(model, x) names it.")


def _named_points(names: List[str], an: _Analysis, modules: Dict[str, nn.Module],
                  graph: Optional[_Graph]) -> List[Tuple[str, Optional[str], str]]:
    if not names:
        raise ValueError(f"Expected `points` to name at least one point, but got an empty list. {_HINT}")
    if len(set(names)) != len(names):
        raise ValueError(f"Expected distinct point names, but got {names}.")
    try:
        special = {f[0]: f for f in _head_points(an, warn=False)}
    except ValueError:
        special = {"final": ("final", "", "output")}
    found: List[Tuple[Optional[int], Tuple[str, Optional[str], str]]] = []
    for n in names:
        if n in _RESERVED:
            if n not in special:
                raise ValueError(f"Could not find the `{n}` point of {type(an.model).__name__} "
                                 f"automatically; name the classifier's input node instead. {_HINT}")
            _warn_if_a_block_too(n, names, an)
            continue
        block = n[:-len(" (module)")] if n.endswith(" (module)") else None
        if block in _RESERVED and block in modules:  # the name split gives a block `pool`/`final`
            if block not in an.calls or an.calls[block].calls > 1:
                runs = an.calls[block].calls if block in an.calls else 0
                raise ValueError(f"Expected point {n!r} to run once in the forward pass, but module "
                                 f"{block!r} runs {runs} times. {_REPEATED_HINT}")
            _check_batched(n, an.calls[block].out, an.n)
            found.append((an.calls[block].end, (n, block, "output")))
            continue
        stem = _auto_stem(an) if n == "stem" else None
        if stem is not None and stem != n:
            # the name the automatic split gives the stem's output (a report's point): refused
            # as no module, so a report's points could not be named back; and where the model
            # has a module `stem` of more than that (timm's EfficientViT: in_conv, then res0),
            # that module was taken, another point than the report's under its name
            if n in modules:
                _warn(f"'stem' in `points` is the automatic split's stem point (module {stem!r}), "
                      f"as a report names it, not the module 'stem' of {type(an.model).__name__}: "
                      "name a module inside that one to take its output.")
            found.append((an.calls[stem].end, (n, stem, "output")))
            continue
        if n in modules:
            if n not in an.calls:
                raise ValueError(f"Expected point {n!r} to run in the forward pass, but module {n!r} "
                                 f"is never called on the example input. {_HINT}")
            if an.calls[n].calls > 1 and graph is not None and n in graph.order:
                # fx names a leaf module's first call as the module (`relu`, then `relu_1`): the
                # node is the point, and which call it is is said
                _warn(f"Module {n!r} runs {an.calls[n].calls} times in one forward pass: point "
                      f"{n!r} is its first call (fx node {n!r}); its later calls are fx nodes "
                      f"{n + '_1'!r} and on.")
                found.append((None, (n, None, "output")))
                continue
            if an.calls[n].calls > 1:
                raise ValueError(f"Expected point {n!r} to run once in the forward pass, but module "
                                 f"{n!r} runs {an.calls[n].calls} times. {_REPEATED_HINT}")
            _check_batched(n, an.calls[n].out, an.n)
            found.append((an.calls[n].end, (n, n, "output")))
        elif graph is not None and graph.resolve(n) is not None:
            found.append((None, (n, None, "output")))
        else:
            where = ("a module name or an fx node name" if graph is not None else
                     "a module name (fx node names need method='fx' or 'auto' and a traceable model)")
            raise ValueError(f"Expected each of `points` to be {where} of {type(an.model).__name__}, "
                             f"but got {n!r}. {_LIST_HINT}")
    # execution order: fx graph order when traced, else the order modules finish in
    if graph is not None:
        def key(item):
            name = item[1][0]
            q = graph.resolve(name) if item[1][1] is None else graph.resolve(item[1][1])
            return graph.order.get(q, -1) if q else -1
        if all(key(it) >= 0 for it in found):
            found.sort(key=key)
    elif all(k is not None for k, _ in found):
        found.sort(key=lambda it: it[0])
    out = [f for _, f in found]
    explicit = [n for n in names if n in _RESERVED]
    if not explicit and "pool" not in special:
        _warn(f"Could not find the `pool` point of {type(an.model).__name__}; only `final` "
              "is appended to the named points.")
    return out + [special[r] for r in (explicit or [r for r in _RESERVED if r in special])]
