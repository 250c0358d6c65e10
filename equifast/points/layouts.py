"""How each point's raw value is laid out (NCHW, NHWC, tokens NLC/NCL, vectors), told from the
model, and its normalisation to ``[N, K, H, W]`` or ``[N, K]``."""
from __future__ import annotations

import itertools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .point import _HINT, LAYOUTS, Point
from .structure import _Analysis, _Call, _record


def _output_fmt(model: nn.Module, module: Optional[str]) -> Optional[str]:
    """``"NHWC"`` / ``"NCHW"`` from timm's ``output_fmt`` marker on the module or the nearest
    module above it (channels-last models and stems); ``None`` without a marker."""
    names = [""]
    if module:
        parts = module.split(".")
        names = [".".join(parts[:i]) for i in range(len(parts), -1, -1)]
    for n in names:
        try:
            m = model.get_submodule(n)
        except AttributeError:
            continue
        fmt = getattr(m, "output_fmt", None)
        if fmt is not None:
            return "NHWC" if str(getattr(fmt, "value", fmt)).upper().endswith("NHWC") else "NCHW"
    return None


_LAST_AXIS = (nn.Linear, nn.LayerNorm)  # layers that act on the last axis of what they get


def _width_evidence(an: _Analysis, module: Optional[str], raw: Optional[Tensor]) -> Optional[str]:
    """The layout of a 4-D point from the width of the last layer that ran inside its module.

    A ``Linear`` or ``LayerNorm`` (``LayerNorm2d`` included) of width ``C`` last: ``"NHWC"``
    when ``C`` is the last axis and not dim 1 (torchvision Swin, timm TinyViT), ``"NCHW"`` when
    it is dim 1 and not the last axis (ConvNeXt blocks, which permute back), ``"?"`` when it is
    both. A convolution last says ``"NCHW"`` (its output is channels-first; a concatenation
    after it, as in Inception, says nothing), or ``"?"`` where its width is the last axis and
    not dim 1 (a channels-last block that permutes back after a depthwise convolution, read as
    channels-first, or a concatenation after it). ``None``: no evidence.

    Of a 3-D point, only a convolution last says something: ``"NCL"``, tokens with their
    channels first (a ``Conv1d`` block on ``x.flatten(2)``), which read as ``[N, L, C]`` were
    as many tokens as channels on a false grid.
    """
    if not module or raw is None or raw.dim() not in (3, 4):
        return None
    pre = module + "."
    inside = [c for c in an.calls.values() if (c.name == module or c.name.startswith(pre))
              and isinstance(c.module, _LAST_AXIS + (nn.modules.conv._ConvNd,))]
    if not inside:
        # a weightless module (the GELU of Swin's MLP, a layer's activation or pooling): the
        # layer whose output it carries on says its layout
        carried = _carried(an, module)
        inside = [carried] if carried is not None else []
    if not inside:
        return None
    last = max(inside, key=lambda c: c.end).module
    first, end = int(raw.shape[1]), int(raw.shape[-1])
    if isinstance(last, nn.modules.conv._ConvNd):
        if last.out_channels == end != first and raw.dim() == 4:
            # its channels on the last axis: a channels-last module that permuted them there
            # after it, or a concatenation after it (Inception) as wide as the last axis
            return "?"
        return ("NCL" if raw.dim() == 3 else "NCHW") if last.out_channels == first != end else None
    if raw.dim() == 3:
        return None
    if isinstance(last, nn.LayerNorm) and len(last.normalized_shape) != 1:
        return None  # LayerNorm([C, H, W]) normalises a whole map, not the channels of one axis
    width = last.out_features if isinstance(last, nn.Linear) else int(last.normalized_shape[-1])
    if width == end != first:
        # a Linear along the width of an NCHW map (spatial MLPs) also has the last axis' width:
        # a convolution in the module that made dim-1 channels says the map is channels-first,
        # unless its last convolution made the last axis' channels (MambaOut's stem, conv 24 ->
        # LN -> conv 48 -> NHWC LN, at 96 px is 24 high: its first convolution's width); a
        # 1-wide last axis is no such evidence (CSATv2's blocks at a 1x1 map end in a 1-channel
        # spatial gate)
        convs = [c for c in inside if isinstance(c.module, nn.modules.conv._ConvNd)]
        last_made_end = convs and end > 1 and max(convs, key=lambda c: c.end).module.out_channels == end
        if not last_made_end and any(c.module.out_channels == first for c in convs):
            return "NCHW"
        return "NHWC"
    if width == first != end:
        return "NCHW"
    return "?" if width == first == end else None


def _carried(an: _Analysis, module: str) -> Optional[_Call]:
    """The ``Linear``, ``LayerNorm`` or convolution whose output the weightless ``module``
    carries on, through the weightless modules between (a GELU after a ``Linear``; a pooling
    after a ReLU after a batch norm after a convolution); ``None`` when it reads another value."""
    c, seen = an.calls.get(module), set()
    while c is not None and c.inp is not None and c.name not in seen:
        seen.add(c.name)
        # the first module that returned that tensor: the innermost (a container returns its
        # last child's output too; an in-place ReLU its input)
        c = min((k for k in an.calls.values() if k.out is c.inp and k.end <= c.start),
                key=lambda k: k.end, default=None)
        if c is None or an.weights(c.name) > 1:
            return None
        pre = c.name + "."  # it, or the last such layer inside it (a unit: conv, norm, act)
        layers = [k for k in an.calls.values() if (k is c or k.name.startswith(pre))
                  and isinstance(k.module, _LAST_AXIS + (nn.modules.conv._ConvNd,))]
        if layers:
            return max(layers, key=lambda k: k.end)
    return None


_WIDTH_AXIS = {"NCHW": 3, "NHWC": 2}  # where the image's columns are in a 4-D value


def _aspect_layout(t: Tensor, size: Tuple[int, int]) -> Optional[str]:
    """The layout whose map has the image's aspect, where only one has it (``None``: both or
    neither, as for any map of a square image): a 48x32 reading of a 128x192 image's 32x48 map
    has strides 2.7 and 6."""
    off = {layout: abs(math.log((size[0] / int(t.shape[axis - 1])) / (size[1] / int(t.shape[axis]))))
           for layout, axis in _WIDTH_AXIS.items()}
    best, other = sorted(off, key=off.get)
    return best if off[other] - off[best] > math.log(1.25) else None


def _rolled_layouts(model: nn.Module, x: Tensor,
                    points: Sequence[Tuple[str, Optional[str], str, Tensor]]) -> Dict[str, str]:
    """The layouts of maps that either one could be (``[N, C, H, W]`` with ``C == H == W``, or
    whose last layer is as wide as dim 1 and the last axis), read off how each moves when the
    image rolls by half its width: along its columns, the axis of one layout, far closer than
    along the other's (a guess from the other points had read timm PVT-v2's and GCViT's stems
    at 256 pixels as the other layout). A point without a clear answer, or whose columns would
    move by a fraction of a pixel, is left out."""
    W = int(x.shape[-1])
    wanted = [(name, module, take, t) for name, module, take, t in points
              if W % 2 == 0 and all(W % (w := int(t.shape[axis])) == 0 and w % 2 == 0
                                    for axis in _WIDTH_AXIS.values())]
    if not wanted:
        return {}
    calls, _ = _record(model, torch.roll(x, W // 2, dims=-1))
    out: Dict[str, str] = {}
    for name, module, take, t in wanted:
        c = calls.get(module)
        moved = None if c is None else (c.inp if take == "input" else c.made)
        if moved is None or moved.shape != t.shape:
            continue
        err = {layout: float((moved.double() - torch.roll(t.double(), int(t.shape[axis]) // 2,
                                                          dims=axis)).norm())
               for layout, axis in _WIDTH_AXIS.items()}
        best, other = sorted(err, key=err.get)
        if err[best] < 0.5 * err[other]:
            out[name] = best
    return out


def _map_layouts(model: nn.Module, an: _Analysis, x: Tensor,
                 points: Sequence[Tuple[str, Optional[str], str, Optional[Tensor]]]) -> Dict[str, str]:
    """``"NCHW"`` or ``"NHWC"`` for every 4-D point ``(name, module, take, value)``: the
    width evidence, else timm's ``output_fmt`` marker, else for a map either layout could be
    (as many channels as rows and columns, or width evidence that cannot tell) the one reading
    with the image's aspect (:func:`_aspect_layout`), else how it moves with the image
    (:func:`_rolled_layouts`), else the nearest point with evidence, else ``"NCHW"``."""
    ev = {name: _width_evidence(an, module, t) for name, module, _, t in points}
    mods = {name: module for name, module, _, _ in points}
    order = [name for name, _, _, t in points if t is not None and t.dim() == 4]
    decided = [name for name in order if ev[name] in ("NCHW", "NHWC")]
    # maps either layout could be: as many channels as rows and columns, or a last layer as
    # wide as dim 1 and the last axis (PVT-v2's stem at 128x192: NHWC [N, 32, 48, 32])
    either = [(name, module, take, t) for name, module, take, t in points
              if name in order and ev[name] not in ("NCHW", "NHWC") and module is not None
              and _output_fmt(model, module) is None and (len(set(t.shape[1:])) == 1 or ev[name] == "?")]
    shaped = {name: a for name, _, _, t in either if (a := _aspect_layout(t, an.input_size))}
    rolled = _rolled_layouts(model, x, [p for p in either if p[0] not in shaped]) if either else {}
    rolled.update(shaped)
    out: Dict[str, str] = {}
    for name, module, _, t in points:
        if t is not None and t.dim() == 3 and ev[name] == "NCL":
            out[name] = "NCL"
        if t is None or t.dim() != 4:
            continue
        if ev[name] in ("NCHW", "NHWC"):
            out[name] = ev[name]
            continue
        fmt = _output_fmt(model, module)
        if fmt is not None:
            out[name] = fmt
        elif name in rolled:
            out[name] = rolled[name]
        elif ev[name] == "?" and decided:
            # the nearest point of the same module class that the width decided (TinyViT at a size
            # where a stage's width equals its channels: its conv stage is nearer, but NCHW)
            i = order.index(name)
            kind = type(an.calls[module].module) if module in an.calls else None
            same = [d for d in decided if kind is not None and type(an.calls[mods[d]].module) is kind]
            out[name] = ev[min(same or decided, key=lambda d: (abs(order.index(d) - i), order.index(d) > i))]
        else:
            out[name] = "NCHW"
    return out


def _token_grids(grid: Optional[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """The patch grid, then its stride-2 downsamplings level by level: ``ceil(h / 2)`` (LeViT,
    PiT) and ``floor(h / 2)`` (Twins' patch embeddings of kernel and stride 2: at 72 pixels its
    9x9 grid becomes 4x4, not 5x5)."""
    chains = []
    for down in ((lambda g: (-(-g[0] // 2), -(-g[1] // 2))), (lambda g: (g[0] // 2, g[1] // 2))):
        chain, g = [], grid
        while g is not None and min(g) >= 1 and g not in chain:
            chain.append(g)
            g = down(g)
        chains.append(chain)
    return list(dict.fromkeys(g for level in itertools.zip_longest(*chains) for g in level if g is not None))


def _layout(model, module, raw: Tensor, grid, num_prefix,
            layout: Optional[str] = None) -> Tuple[str, int, Optional[Tuple[int, int]]]:
    if raw.dim() == 2:
        return "NC", 0, None
    if raw.dim() == 4:
        if layout is None:
            layout = _output_fmt(model, module) or "NCHW"
        return layout, 0, None
    if raw.dim() == 3 and layout == "NCL":
        # [N, C, L]: all L tokens on a grid, no prefix; a convolution on tokens [N, L, C] whose
        # channels are the tokens (token mixing) leaves a last axis that fills no grid
        length = int(raw.shape[2])
        side = math.isqrt(length)
        g = next((g for g in _token_grids(grid) if g[0] * g[1] == length),
                 (side, side) if side * side == length else None)
        if g is not None:
            return "NCL", 0, g
    if raw.dim() == 3:
        length = int(raw.shape[1])
        # the patch grid or a stride-2 downsampling of it, after a few prefix tokens (class,
        # distillation, registers; CoaT's stages each carry a class token of their own); first
        # one the tokens fill after the model's own prefix or none (a 4x4 grid's 16 tokens were
        # read as a 3x3 one after 7 prefix tokens)
        grids = _token_grids(grid)
        exact = {0, num_prefix or 0}
        for g in [g for g in grids if length - g[0] * g[1] in exact] + grids:
            if 0 <= length - g[0] * g[1] <= max(8, num_prefix or 0):
                return "NLC", length - g[0] * g[1], tuple(g)
        prefixes = list(dict.fromkeys(([num_prefix] if num_prefix else []) + [0]))
        for prefix in prefixes:
            side = math.isqrt(max(length - prefix, 0))
            if side > 0 and side * side == length - prefix:
                return "NLC", prefix, (side, side)
        raise ValueError(
            f"Cannot lay the tokens of point {module!r} ({tuple(raw.shape)}) out on a patch grid: "
            f"{length} tokens are neither the patch grid {grid} (or a stride-2 downsampling of it) "
            f"nor a square, after {prefixes} prefix tokens. {_HINT}")
    raise ValueError(f"Expected point {module!r} to be a map, tokens or a vector, but got shape "
                     f"{tuple(raw.shape)}. {_HINT}")


def _token_orders(model: nn.Module) -> Dict[int, Tuple[Tuple[int, int], Tuple[int, ...]]]:
    """Token count -> (grid, the token at each grid position) for a model whose stages keep
    their tokens unrolled (timm Hiera: laid out row by row, its maps are scrambled), read off
    its own ``reroll`` module by passing the tokens' indices through it. Empty for others."""
    reroll = getattr(model, "reroll", None)
    schedule = getattr(reroll, "schedule", None)
    if not (isinstance(reroll, nn.Module) and isinstance(schedule, dict)):
        return {}
    orders = {}
    for block, (_, size) in schedule.items():
        if len(size) != 2 or math.prod(size) in orders:
            continue
        n = math.prod(size)
        with torch.no_grad():
            grid = reroll(torch.arange(n, dtype=torch.float64).view(1, n, 1), block)
        orders[n] = (tuple(int(v) for v in grid.shape[1:3]),
                     tuple(int(v) for v in grid.flatten().tolist()))
    return orders


def _unrolled_after(an: _Analysis) -> int:
    """The step after which the model's tokens are unrolled: the end of its ``unroll`` call
    (Hiera's patch embedding, before it, is in raster order); -1 without one."""
    unroll = getattr(an.model, "unroll", None)
    return next((c.end for c in an.calls.values() if c.module is unroll), -1)


def _normalise(t: Tensor, p: Point) -> Tensor:
    if p.layout == "NC":
        return t.flatten(1)
    if p.layout == "NCHW":
        return t
    if p.layout == "NHWC":
        return t.permute(0, 3, 1, 2)
    if p.layout == "NLC":
        t = t[:, p.prefix_tokens:]
        n = int(t.shape[1])
        if p.token_order is not None:
            if n != len(p.token_order):
                raise ValueError(
                    f"Point {p.name!r} has {n} tokens, not the {len(p.token_order)} of its grid "
                    f"{p.grid}; measure at the size the points were found at.")
            t = t.index_select(1, torch.tensor(p.token_order, device=t.device))
        h, w = p.grid if p.grid is not None and p.grid[0] * p.grid[1] == n else (math.isqrt(n),) * 2
        if h * w != n:
            raise ValueError(
                f"Point {p.name!r} has {n} patch tokens, which is not its {p.grid} grid nor a square; "
                "measure at the size the points were found at (or split again at this size).")
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)
    if p.layout == "NCL":
        n = int(t.shape[2])
        h, w = p.grid if p.grid is not None and p.grid[0] * p.grid[1] == n else (math.isqrt(n),) * 2
        if h * w != n:
            raise ValueError(
                f"Point {p.name!r} has {n} tokens, which is not its {p.grid} grid nor a square; "
                "measure at the size the points were found at (or split again at this size).")
        return t.reshape(t.shape[0], t.shape[1], h, w)
    raise ValueError(f"Expected `layout` to be one of {LAYOUTS}, but got {p.layout!r}.")
