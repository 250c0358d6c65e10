"""One forward pass recorded with hooks, and what it shows of the model's structure: units,
layers, blocks, stages and global pooling, and the automatic points (the rule of
:mod:`equifast.points`)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..warning import warn as _warn
from .point import _HINT, _LIST_HINT, _REPEATED_HINT


def _version(t) -> Optional[int]:
    """A tensor's version counter (bumped by every in-place write); ``None`` where it is not
    kept (inference-mode tensors)."""
    try:
        return t._version if isinstance(t, Tensor) else None
    except RuntimeError:
        return None


def _num_prefix_tokens(model: nn.Module) -> Optional[int]:
    """timm's ``num_prefix_tokens``; without it, the tokens of the model's own ``cls_token``,
    ``dist_token`` and ``reg_token`` parameters (PiT: ``cls_token`` is ``[1, 1 or 2, C]``)."""
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int):
        return n
    tokens = [getattr(model, a, None) for a in ("cls_token", "dist_token", "reg_token")]
    tokens = [t for t in tokens if isinstance(t, Tensor) and t.dim() == 3]
    return sum(int(t.shape[1]) for t in tokens) if tokens else None


@dataclass
class _Call:
    name: str
    module: nn.Module
    start: int
    end: int = -1
    inp: Any = None
    out: Any = None
    calls: int = 0
    several: bool = False  # returned a tuple/list/dict, not one tensor (TNT, PiT pooling, CrossViT)
    version: Optional[int] = None  # of ``out`` when it was returned: a later in-place write bumps it
    made: Optional[Tensor] = None  # its value as a point (_returned); ``out`` chains the blocks
    rest: Tuple[Tensor, ...] = ()  # the other tensors it returned, which may chain it instead


def _tensors(obj):
    if isinstance(obj, Tensor):
        yield obj
        return
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)


def _first_tensor(obj, n: Optional[int] = None) -> Optional[Tensor]:
    """The first tensor in ``obj`` (nested tuples, lists, dicts). With ``n`` (the image count),
    the first whose first axis is ``n`` when there is one: TNT blocks return
    ``(pixel tokens [N*L, 16, C], patch tokens [N, L, C])``, and the patch tokens are the point."""
    first = None
    for t in _tensors(obj):
        if n is None or _has_images_first(t, n):
            return t
        if first is None:
            first = t
    return first


def _returned(out, args, kwargs, n: int) -> Optional[Tensor]:
    """A module call's value as a point: its output; of several tensors, the first it made
    (:func:`_first_tensor` of them), not an input it hands back unchanged (CoaT's parallel
    blocks return their first scale as they got it, beside the three they update)."""
    if isinstance(out, Tensor):
        return out
    given = {id(t) for t in _tensors((args, kwargs))}
    made = [t for t in _tensors(out) if id(t) not in given]
    return _first_tensor(made if made else out, n)


def _model_output(obj, n: int) -> Optional[Tensor]:
    """The logits in what a model returns (the ``final`` point): the tensor itself; else a
    ``logits`` entry or attribute (Hugging Face outputs, a namedtuple); of another tuple or
    list its first tensor (torchvision's InceptionOutputs and GoogLeNetOutputs come first);
    of another dict its one tensor with the images first.

    Raises:
        ValueError: a dict of several such tensors and no ``logits``: which is the logits
            would be a guess (the first was taken: ``{"features", "logits"}`` scored features).
    """
    if isinstance(obj, Tensor):
        return obj
    logits = obj.get("logits") if isinstance(obj, dict) else getattr(obj, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(obj, dict):
        keys = [k for k, v in obj.items() if isinstance(v, Tensor) and _has_images_first(v, n)]
        if len(keys) > 1:
            raise ValueError(f"Expected the model's output to be its logits (a tensor, or a dict "
                             f"with a 'logits' entry), but got a dict of {len(keys)} tensors "
                             f"{keys}: which is the `final` point is unknown. Wrap the model in a "
                             "module whose forward returns the logits.")
        if keys:
            return obj[keys[0]]
    return _first_tensor(obj, n)


@contextlib.contextmanager
def modes_kept(model):
    """Put back the train/eval mode of every module of ``model`` (if it is one) afterwards."""
    modes = {m: m.training for m in model.modules()} if isinstance(model, nn.Module) else {}
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def unwrapped(model: nn.Module) -> Tuple[nn.Module, str]:
    """The module a wrapper runs, and the prefix the wrappers put before its module names:
    ``nn.DataParallel`` and ``DistributedDataParallel`` (``.module``; their forward would
    scatter the batch or synchronise buffers with other processes) and ``torch.compile``'s
    ``OptimizedModule`` (``._orig_mod``), stacked in any order. Measuring reads the module's
    own layers, so it is measured itself: the points are named as the plain model's.

    Raises:
        TypeError: a TorchScript module (``torch.jit.script``/``trace``), which has neither
            forward hooks nor a Python forward to trace.
    """
    prefix = ""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner, attribute = model.module, "module"
        elif _is_compiled(model):
            inner, attribute = model._orig_mod, "_orig_mod"
        else:
            break
        hooks = len(model._forward_hooks) + len(model._forward_pre_hooks)
        if hooks:  # the module inside is run: the wrapper's hooks (on the logits, say) were skipped
            raise ValueError(f"Expected the forward hooks of the model on the module it wraps, but "
                             f"its {type(model).__name__} wrapper holds {hooks}, which measuring "
                             f"would skip (it runs the wrapped module, .{attribute}); register them "
                             f"on model.{prefix}{attribute} instead.")
        model, prefix = inner, prefix + attribute + "."
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(f"Expected a Python nn.Module, but got a TorchScript module "
                        f"({type(model).__name__}, from torch.jit.script or torch.jit.trace): its "
                        "layers cannot be hooked or traced, so its representations cannot be read. "
                        "Pass the nn.Module it was scripted or traced from.")
    return model, prefix


def _is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is ``torch.compile``'s ``OptimizedModule``, which runs ``._orig_mod``."""
    return type(model).__name__ == "OptimizedModule" and isinstance(
        getattr(model, "_orig_mod", None), nn.Module)


def _eager():
    """Run ``torch.compile``'d submodules as written, so that hooks on the modules inside them
    fire: compiled code does not check for hooks added after it was compiled (it ran the hooks
    of an earlier pass, and a point inside "did not run")."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def model_dtype(model: nn.Module) -> Optional[torch.dtype]:
    """The floating dtype ``model`` takes its input in: the one of its parameters and buffers,
    or for a model of several (float16 layers beside float32 batch norms) its first floating
    parameter's, in registration order the first layer's; ``None`` without any."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return tensors[0].dtype if tensors else None


def _record(model: nn.Module, x: Tensor) -> Tuple[Dict[str, _Call], Any]:
    """Run ``model(x)`` once in eval mode with hooks everywhere; restore every mode after."""
    calls: Dict[str, _Call] = {}
    step = [0]
    handles = []
    n = int(x.shape[0])

    def pre(name):
        def hook(mod, args, kwargs):  # kwargs too: a block called as blk(x=x) reads a tensor
            step[0] += 1
            if name not in calls:
                calls[name] = _Call(name, mod, step[0])
            calls[name].inp = _first_tensor((args, kwargs), n)
        return hook

    def post(name):
        def hook(mod, args, kwargs, out):
            step[0] += 1
            c = calls[name]
            c.end, c.out, c.calls = step[0], _first_tensor(out, n), c.calls + 1
            c.made = _returned(out, args, kwargs, n)
            c.version = _version(c.out)
            c.several = not isinstance(out, Tensor)
            c.rest = tuple(t for t in _tensors(out) if t is not c.out) if c.several else ()
        return hook

    with modes_kept(model):
        try:
            for name, mod in model.named_modules():
                handles.append(mod.register_forward_pre_hook(pre(name), with_kwargs=True))
                handles.append(mod.register_forward_hook(post(name), with_kwargs=True))
            model.eval()
            with torch.no_grad(), _eager():
                try:
                    out = model(x.clone())  # a model that writes into its input spoils no other pass
                except (RuntimeError, AssertionError) as e:  # usually an input the model cannot take
                    # (ViTs assert their one size)
                    fixed = _fixed_input_size(model)
                    dtype = model_dtype(model)
                    if x.is_floating_point() and dtype is not None and x.dtype != dtype:
                        why = (f"its weights are {dtype} and the input {x.dtype}: cast the input "
                               f"(x.to({dtype})).")
                    elif not x.is_floating_point() and dtype is not None:
                        why = (f"the input is {x.dtype} and its weights {dtype}: pass images as "
                               f"floating point, scaled and normalised as the model takes them.")
                    elif fixed is not None and fixed != tuple(x.shape[-2:]):
                        why = f"this model takes only {fixed[0]}x{fixed[1]} images."
                    else:
                        why = "is the image too small for it, or of another channel count?"
                    raise ValueError(
                        f"{type(model).__name__} failed on an example input of shape "
                        f"{tuple(x.shape)}; {why} The model said: {e}") from e
        finally:
            for h in handles:
                h.remove()
    return calls, out


def _fixed_input_size(model: nn.Module) -> Optional[Tuple[int, int]]:
    """The one input size ``(H, W)`` a model takes, ``None`` if it takes others: torchvision
    ViT's ``image_size``; torchvision MaxViT's first block's grid (a quarter of the image: its
    window partitions fit no other); timm's strict patch embedding (unless
    ``dynamic_img_size``) or its config's ``fixed_input_size``."""
    size = getattr(model, "image_size", None)
    if isinstance(size, int):
        return size, size
    blocks = getattr(model, "blocks", None)
    if hasattr(model, "partition_size") and isinstance(blocks, nn.ModuleList) and len(blocks):
        grid = getattr(blocks[0], "grid_size", None)
        if isinstance(grid, (tuple, list)) and len(grid) == 2:
            return 4 * int(grid[0]), 4 * int(grid[1])
    if getattr(model, "dynamic_img_size", False):
        return None
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if getattr(embed, "strict_img_size", False) and isinstance(size, (tuple, list)) and len(size) == 2:
        return int(size[0]), int(size[1])
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    if cfg.get("fixed_input_size") and isinstance(size, (tuple, list)) and len(size) == 3:
        return int(size[1]), int(size[2])
    return None


def _is_weight(m: nn.Module) -> bool:
    return isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))


def _is_container(m: nn.Module) -> bool:
    while _is_compiled(m):  # torch.compile(nn.Sequential(...))
        m = m._orig_mod
    return isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


def _is_adaptive_pool(m: nn.Module) -> bool:
    cls = type(m).__name__
    return isinstance(m, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)) or (
        "Adaptive" in cls and "Pool" in cls)


def _prepended(a: Tensor, b: Tensor) -> bool:
    """Whether tokens ``b`` are tokens ``a`` with prefix tokens put in front (``[N, L, C]``)."""
    return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.dim() == b.dim() == 3
            and a.shape[0] == b.shape[0] and a.shape[2] == b.shape[2] and b.shape[1] > a.shape[1]
            and torch.equal(b[:, -a.shape[1]:], a))


def _moved(block: Optional[Tensor], stage: Optional[Tensor]) -> Optional[bool]:
    """How a stage's output ``stage`` holds the values of ``block`` (its last block's output,
    or a norm of it): ``False`` as they are, NHWC -> NCHW or reshaped to another rank (timm
    swinv2_cr, PVT-v2); ``True`` 4-D to 4-D with the values moved to other positions (NesT's
    blocks return blocked tokens ``[N, blocks, tokens, C]``, no map of the image, which the
    stage un-blocks into its map); ``False`` too for tokens ``[N, L, C]`` returned without
    their prefix tokens on the map ``[N, C, h, w]`` (PiT's stages); ``None``: other values."""
    if not (isinstance(block, Tensor) and isinstance(stage, Tensor)):
        return None
    if _unprefixed(block, stage):
        return False
    if block.numel() != stage.numel():
        return None
    if block is stage:
        return False
    four = block.dim() == stage.dim() == 4
    for kept in (block, block.permute(0, 3, 1, 2)) if four else ():
        if kept.shape == stage.shape and torch.equal(kept, stage):
            return False
    if block.numel() and not (torch.equal(block.amax(), stage.amax()) and torch.equal(block.amin(), stage.amin())):
        return None  # the same values have the same extremes: no sort needed
    if not torch.equal(block.flatten().sort().values, stage.flatten().sort().values):
        return None
    return four


def _prefix_only(inp: Optional[Tensor], out: Optional[Tensor], prefix: int) -> bool:
    """Whether tokens ``out`` ``[N, L, C]`` are tokens ``inp`` with only their first ``prefix``
    (class) tokens changed: a class-attention block (VOLO's, CaiT's), whose patch tokens
    repeat the representation it reads."""
    return (isinstance(inp, Tensor) and isinstance(out, Tensor) and inp.dim() == 3
            and inp.shape == out.shape and inp.shape[1] > prefix
            and torch.equal(inp[:, prefix:], out[:, prefix:]) and not torch.equal(inp[:, :prefix], out[:, :prefix]))


def _unprefixed(tokens: Tensor, grid: Tensor) -> bool:
    """Whether ``grid`` ``[N, C, h, w]`` is ``tokens`` ``[N, L, C]`` less their first
    ``L - h*w`` (prefix) tokens, laid out on the ``h x w`` grid."""
    if tokens.dim() != 3 or grid.dim() != 4 or tuple(grid.shape[:2]) != (tokens.shape[0], tokens.shape[2]):
        return False
    prefix = tokens.shape[1] - grid.shape[2] * grid.shape[3]
    return prefix > 0 and torch.equal(tokens[:, prefix:].transpose(1, 2).reshape(grid.shape), grid)


def _fits(hw: Tuple[int, int], size: Tuple[int, int]) -> bool:
    """Whether an ``h x w`` map can be an ``H x W`` image downsampled: its two strides ``H / h``
    and ``W / w`` agree within a factor 2.5 (padding and rounding leave them a little apart;
    NesT's 16 blocks of 196 tokens read as a 16x196 map are 12 apart); maps of at most 2x2 fit."""
    (h, w), (H, W) = (int(v) for v in hw), size
    if max(h, w) <= 2:
        return True
    if min(h, w) < 1:
        return False
    ratio = (H / h) / (W / w)
    return 1 / 2.5 <= ratio <= 2.5


def _spatial_size(t: Optional[Tensor]) -> int:
    return int(t.shape[-1] * t.shape[-2]) if t is not None and t.dim() == 4 else -1


class _Analysis:
    """The recorded forward pass and the module tree, with the block rule on top."""

    def __init__(self, model: nn.Module, x: Tensor):
        self.model = model
        self.calls, self.output = _record(model, x)
        # the parameters a position embedding can be (one of batch 1), for _follows: gathered once,
        # not for every pair of calls it compares; after the pass, which materialises lazy ones
        self._embeddings = [p for p in model.parameters() if p.dim() and p.shape[0] == 1]
        self.input_size = (int(x.shape[-2]), int(x.shape[-1]))
        self.n = int(x.shape[0])
        weights = [n for n, c in self.calls.items() if _is_weight(c.module)]
        self._weights = weights
        self._wcount: Dict[str, int] = {}
        self.dropped: List[str] = []  # iterated containers whose blocks items() left out
        self.lean: set = set()  # stages of iterated blocks beside other blocks, which are transitions

    def weights(self, name: str) -> int:
        if name not in self._wcount:
            pre = name + "." if name else ""
            self._wcount[name] = sum(1 for w in self._weights if w == name or w.startswith(pre))
        return self._wcount[name]

    def batched(self, c: _Call) -> bool:
        """Whether ``c``'s output has the images on its first axis (TNT's pixel tokens
        ``[N*L, 16, C]`` and MobileViT's unfolded patches ``[N*P, L, C]`` do not)."""
        return _has_images_first(c.out, self.n)

    def children(self, name: str, dropped: Optional[List[str]] = None) -> List[_Call]:
        """The called children of module ``name``, in call order. A container the model
        iterates instead of calling (``for blk in self.blocks: x = blk(x)``: timm BEiT, EVA,
        XCiT, MetaFormer heads, torchvision MaxViT) is opened in place when its called children
        are chained (each one's input is the very tensor the previous one returned; a single
        child keeps its input's shape); containers iterated otherwise (HRNet's per-branch
        ``incre_modules`` and ``downsamp_modules``, CaiT's class-attention ``blocks_token_only``, which read the patch
        tokens and return the class token) stay out; their names go into ``dropped`` when
        blocks (two or more weight layers) of theirs ran. A block may read the previous one's
        tokens with prefix tokens put in front (ConViT adds its class token before block 10)."""
        mod = self.calls[name].module if name in self.calls else self.model.get_submodule(name)
        pre = name + "." if name else ""
        kids: List[_Call] = []
        loose: List[Tuple[str, List[_Call]]] = []  # iterated containers not chained on their own
        while _is_compiled(mod):
            # a torch.compile'd submodule runs its module, hooks and all: its children are that
            # one's (a compiled backbone was one block, and its own blocks no points)
            mod, pre = mod._orig_mod, pre + "_orig_mod."
        for n, child in mod.named_children():
            if pre + n in self.calls:
                kids.append(self.calls[pre + n])
            elif _is_container(child):
                inside: List[str] = []
                inner = self.children(pre + n, inside)
                if self._chained(inner):
                    kids.extend(inner)
                    if dropped is not None:
                        dropped.extend(inside)
                else:
                    loose.append((pre + n, inner))
        if len(loose) >= 2:
            # parallel containers iterated together (Twins: ``for embed, drop, blocks, pos_blk in
            # zip(self.patch_embeds, ...)``): their calls, in call order, may make one chain
            merged = sorted((c for n, _ in loose for c in self._iterated(n)), key=lambda c: c.start)
            if self._chained(merged):
                kids.extend(merged)
                loose = []
        for n, inner in loose:
            if dropped is not None and any(self.weights(k.name) >= 2 for k in inner):
                dropped.append(n)  # blocks that ran and are no points
        return sorted(kids, key=lambda c: c.start)

    def _iterated(self, name: str) -> List[_Call]:
        """The called modules inside container ``name``, through containers that were not called."""
        out: List[_Call] = []
        for n, child in self.model.get_submodule(name).named_children():
            if f"{name}.{n}" in self.calls:
                out.append(self.calls[f"{name}.{n}"])
            elif _is_container(child):
                out.extend(self._iterated(f"{name}.{n}"))
        return out

    def _chained(self, calls: List[_Call]) -> bool:
        if not calls or any(c.inp is None or c.out is None for c in calls):
            return False
        if len(calls) == 1:
            return calls[0].inp.shape == calls[0].out.shape
        # the next may read another tensor it returned: EfficientViM's stages return (their
        # map, it downsampled for the next stage, the hidden state)
        return all(a.end <= b.start and any(self._follows(o, b.inp) for o in (a.out,) + a.rest)
                   for a, b in zip(calls, calls[1:]))

    def _follows(self, a: Tensor, b: Tensor) -> bool:
        """Whether a module reading ``b`` reads what the one before returned, ``a``: the very
        tensor; those tokens with prefix tokens put in front (ConViT); them reshaped or permuted
        (Twins lays its tokens out on the map before the next stage's patch embedding); or them
        plus a parameter of the model, a position embedding (VOLO's between its stages)."""
        return b is a or _prepended(a, b) or _moved(a, b) is False or self.embedded(a, b)

    def embedded(self, a: Tensor, b: Tensor) -> bool:
        """Whether ``b`` is ``a`` plus a parameter of the model: a position embedding."""
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and any(
            p.dim() == a.dim() and all(s in (1, t) for s, t in zip(p.shape, a.shape))
            and torch.equal(a + p, b) for p in self._embeddings)

    def _wrapper(self, c: _Call) -> bool:
        """Whether ``c`` wraps one weighted module that is no container (``Residual(m)``:
        EfficientViT's sub-units), so that repeats of it make a block, not a stage of blocks."""
        weighted = [k for k in self.children(c.name) if self.weights(k.name)]
        return len(weighted) == 1 and not _is_container(weighted[0].module)

    def _repeats(self, calls: List[_Call], containers: bool = True) -> List[_Call]:
        """The calls of ``calls`` that are repeated blocks: two or more of one module class
        with two or more weight layers each (``[]``: none)."""
        seen: Dict[type, List[_Call]] = {}
        for c in calls:
            if self.weights(c.name) >= 2 and self.batched(c) and (containers or not (
                    _is_container(c.module) or self._wrapper(c))):
                seen.setdefault(type(c.module), []).append(c)
        return [c for group in seen.values() if len(group) >= 2 for c in group]

    def stage_blocks(self, call: _Call, nested: bool = False) -> List[_Call]:
        """The repeated blocks that make ``call`` a stage (``[]``: it is none). ``nested``:
        ``call`` is a block of a stage, a stage itself only by blocks held as attributes (DLA's
        trees of trees), not by an ``nn.Sequential`` of its layers (torchvision's MaxViT
        block: MBConv, window and grid attention, two of a class). A stage whose blocks are
        all of a container it iterates goes into :attr:`lean`."""
        blocks = self._stage_blocks(call, nested)
        if blocks or nested or call.out is None:
            return blocks
        # blocks iterated beside other blocks (GCViT's stage: a downsampling block and the
        # global-query block, then ``for blk in self.blocks: x = blk(x, global_query)``, a norm
        # and NHWC -> NCHW): a stage when it returns their output; its other modules are transitions
        kids = self.children(call.name)
        for n, child in call.module.named_children():
            full = f"{call.name}.{n}"
            if full in self.calls or not _is_container(child):
                continue
            inner = [k for k in kids if k.name.startswith(full + ".")]
            blocks = self._repeats(inner, containers=False)
            if blocks and len(blocks) == len(inner) and self._returns(call, kids, max(blocks, key=lambda c: c.end)):
                self.lean.add(call.name)
                return blocks
        return []

    def _stage_blocks(self, call: _Call, nested: bool) -> List[_Call]:
        kids = self.children(call.name)
        for k in kids if not nested else ():
            blocks = self._repeats(self.children(k.name)) if _is_container(k.module) else []
            if blocks:
                # it returns its last block's output, or the container's normalised or
                # reshaped; not a sum with a shortcut (timm Xception's module: its `stack` of
                # separable convs plus the input) nor a layer of weights on it (CSPNet's stage)
                moved = self._moved(max(blocks, key=lambda c: c.end), call)
                return blocks if moved is False or (moved is None and self._returns(call, kids, k)) else []
        blocks = self._repeats(kids, containers=False) if kids else []  # two nn.Sequential are no blocks of a class
        if not blocks or call.out is None:
            return []
        final = max(kids, key=lambda c: c.end)  # a block, not a layer on them (HGNetV2's aggregation)
        if final in blocks and call.out is final.out and call.version == final.version:
            return blocks
        last = max(blocks, key=lambda c: c.end)
        if call.several and call.out is last.out and call.version == last.version:
            # it returns its last block's output first, beside what modules after them made
            # (EfficientViM's stage: its map, then it downsampled for the next stage)
            return blocks
        # what it returns may be its last block's output normalised, permuted or reshaped (timm
        # swinv2_cr's NHWC -> NCHW, PVT-v2's norm and reshape): only modules that read that
        # output, without weights, run after it (a shortcut of a residual sum is no such one:
        # GhostNet's two GhostModules make a block), and no block of another class beside the
        # repeated ones (timm's MaxViT block, MBConv then window and grid attention, is one)
        if not all(k in blocks or self.weights(k.name) <= 1 for k in kids):
            return []
        return blocks if self._returns(call, kids, last) else []

    def _returns(self, call: _Call, kids: List[_Call], last: _Call) -> bool:
        """Whether ``call`` returns ``last``'s output as it is, NHWC -> NCHW or reshaped, or
        after weightless modules that each read the previous one's output (a norm); its
        values moved to other positions (NesT) or other values (a residual sum) are not."""
        value = last
        for k in sorted(kids, key=lambda c: c.start):
            if k.start > last.end:
                if k.inp is not value.out or self.weights(k.name):
                    return False
                value = k  # a norm of the last block's output
        return self._moved(value, call) is False

    @staticmethod
    def _moved(inner: _Call, outer: _Call) -> Optional[bool]:
        """:func:`_moved` of ``inner``'s output in ``outer``'s; ``None`` (other values) for the
        same tensor written into in place after ``inner`` returned it (legacy Xception's
        ``x += skip``, which makes a residual sum of its ``rep``'s output)."""
        if inner.out is outer.out and inner.version != outer.version:
            return None
        return _moved(inner.out, outer.out)

    def items(self, name: str = "", blocks: frozenset = frozenset()) -> List[Tuple[str, _Call]]:
        """``("unit" | "block", call)`` in execution order, below module ``name``. ``blocks``:
        the names of the enclosing stage's blocks (see :meth:`stage_blocks`'s ``nested``); the
        other modules of a :attr:`lean` stage are units."""
        out: List[Tuple[str, _Call]] = []
        for c in self.children(name, self.dropped):
            if name in self.lean and c.name not in blocks:
                out.append(("unit", c))
            elif _is_container(c.module) and self.weights(c.name) <= 1 and any(
                    _is_adaptive_pool(m) for m in c.module.children()):
                out.extend(self.items(c.name))  # SqueezeNet's classifier: conv, ReLU, pool
            elif self.weights(c.name) <= 1:
                out.append(("unit", c))
            elif _is_container(c.module):
                out.extend(self.items(c.name, blocks))
            elif inner := self.stage_blocks(c, nested=c.name in blocks):
                out.extend(self.items(c.name, frozenset(b.name for b in inner)))
            else:
                out.append(("block", c))
        return out

    def body(self, name: str = "") -> Tuple[List[Tuple[str, _Call]], Optional[_Call]]:
        """The items before global pooling, and the item that pools (``None``: none found). A
        head block that pools inside (timm EfficientViT's ``head``: a 1x1 conv on the map, then
        pooling and the classifier) is opened: its layers on the map come before pooling."""
        items = self.items(name)
        for i, (kind, c) in enumerate(items):
            if c.out is None or not self.batched(c):
                continue
            pools = (c.out.dim() < 3 or _is_adaptive_pool(c.module) or (
                kind == "unit" and self.weights(c.name) == 0 and _spatial_size(c.out) == 1
                and _spatial_size(c.inp) > 1 and not self.spatial_conv_after(c)))
            if pools:
                before = [it for it in items[:i] if it[1].out is not None]
                if kind == "block":
                    inner, inner_pooling = self.body(c.name)
                    if inner_pooling is not None and inner:
                        return before + inner, inner_pooling
                return before, c
        return [it for it in items if it[1].out is not None], None

    def spatial_conv_after(self, c: _Call) -> bool:
        """Whether a convolution wider than 1x1 runs after ``c``: then a layer of ``c``'s that
        leaves a 1x1 map is a downsampling of a small input (DLA's stage max-pool at 32 px), not
        global pooling, after which only the head's 1x1 convolutions and Linears run."""
        return any(isinstance(k.module, nn.modules.conv._ConvNd) and k.start > c.start
                   and any(int(s) > 1 for s in k.module.kernel_size) for k in self.calls.values())

    def classifier(self, after: _Call) -> Optional[_Call]:
        """The first weight layer that reads the pooled vector once pooling has started: an
        ``nn.Linear`` on ``[N, K]`` or a convolution on a pooled ``[N, K, 1, 1]`` map (timm DLA's
        1x1 ``fc``; the 1x1 ``conv_head`` that timm's MobileNetV3 family runs after pooling, the
        counterpart of the first ``Linear`` of torchvision's MobileNetV3 classifier)."""
        def reads_vector(c: _Call) -> bool:
            if c.inp is None or c.start < after.start or int(c.inp.shape[0]) != self.n:
                return False
            if isinstance(c.module, nn.Linear):
                return c.inp.dim() == 2
            return isinstance(c.module, nn.modules.conv._ConvNd) and c.inp.dim() == 4 and _spatial_size(c.inp) == 1
        cands = [c for c in self.calls.values() if reads_vector(c)]
        return min(cands, key=lambda c: c.start) if cands else None

    def unblocked_by(self, name: str, value: Tensor) -> Optional[str]:
        """The module that un-blocks the 4-D ``value`` of point ``name`` into a map (``None``:
        none does; ``""``: the model): an enclosing module that returns a called child's output
        with its values moved to other positions (:func:`_moved`), or hands them so to a later
        child, where ``name`` is that child, inside it or in a child chained before it, and
        ``value`` has that output's leading shape. NesT's levels un-block their blocks'
        ``[N, blocks, tokens, C]``: with as many blocks as tokens they read as a square map."""
        parts = name.split(".")
        for i in range(len(parts) - 1, -1, -1):
            outer = ".".join(parts[:i])
            if outer not in self.calls:
                continue
            kids = self.children(outer)
            at = next((j for j, k in enumerate(kids) if name == k.name or name.startswith(k.name + ".")), None)
            if at is None:
                continue
            for j in range(at, len(kids)):
                if j > at and not self._chained(kids[j - 1:j + 1]):
                    break
                out = kids[j].out
                if not (isinstance(out, Tensor) and out.dim() == 4 and out.shape[:3] == value.shape[:3]):
                    continue
                later = [self.calls[outer].out] + [k.inp for k in kids[j + 1:]]
                if any(_moved(out, v) for v in later):
                    return outer
        return None

    def token_grid(self) -> Optional[Tuple[int, int]]:
        """Spatial size of the last conv map computed before the first token sequence; without
        one, the image over the model's ``patch_size`` (NaFlexViT embeds its patches with a
        ``Linear``: at 128x192, 96 patches and 4 prefix tokens were read as a 10x10 square)."""
        grid = None
        for c in sorted(self.calls.values(), key=lambda c: c.end):
            if c.out is None:
                continue
            if c.out.dim() == 3 and c.name:
                break
            if isinstance(c.module, nn.modules.conv._ConvNd) and c.out.dim() == 4:
                grid = (int(c.out.shape[-2]), int(c.out.shape[-1]))
        return grid if grid is not None else self._patch_grid()

    def _patch_grid(self) -> Optional[Tuple[int, int]]:
        for m in self.model.modules():
            size = getattr(m, "patch_size", None)
            size = (size, size) if isinstance(size, int) else size
            if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
                h, w = self.input_size
                return (h // size[0], w // size[1]) if h % size[0] == 0 and w % size[1] == 0 else None
        return None


def _auto_points(an: _Analysis) -> List[Tuple[str, str, str]]:
    """``(point name, module, take)`` found by the block rule (see the module docstring)."""
    body, pooling = an.body()
    # group units into layers; blocks stand alone
    seq: List[Tuple[str, List[_Call]]] = []
    repeated: List[str] = []
    unbatched: List[str] = []
    prefix_only: List[str] = []
    for i, (kind, c) in enumerate(body):
        if isinstance(c.module, nn.Identity):
            continue
        if c.inp is None:
            continue  # reads no tensor (XCiT's pos_embed(B, H, W)): not a representation of the image
        if not an.batched(c):
            # TNT's pixel tokens [N*L, 16, C], MobileViT's unfolded patches [N*P, L, C]: no map per image
            unbatched.append(f"{c.name!r} {tuple(c.out.shape)}")
            continue
        if c.calls > 1:
            # One module run several times in a pass (a shared ReLU, tied weights, CoaT's
            # position encodings): its recorded output is its last call's, so it cannot stand for
            # the first; it is no point (its calls can be named, see the warning).
            if an.weights(c.name):
                repeated.append(f"{c.name!r} ({c.calls} times)")
            continue
        if kind == "block":
            if _prefix_only(c.inp, c.out, _num_prefix_tokens(an.model) or 1):
                # class attention (VOLO's post_network): its patch tokens are its input's, the
                # point before it again
                prefix_only.append(repr(c.name))
                continue
            seq.append(("block", [c]))
            continue
        if an.weights(c.name) >= 1:
            seq.append(("layer", [c]))
            continue
        prev = seq[-1] if seq else None
        if prev is not None and prev[0] != "block" and _goes_on(an, prev[1][-1], c, body[i + 1:]):
            last = prev[1][-1]
            if not (c.out is last.out and c.version == last.version):
                # a pass-through (Dropout in eval: SAM-ViT's pos_drop) leaves the point the
                # layer's own output, with its layout marker (NHWC)
                prev[1].append(c)
        else:
            seq.append(("weightless", [c]))
    if repeated:
        _warn(f"Modules of {type(an.model).__name__} that run more than once in one forward "
              f"pass are not points: {', '.join(repeated)}. {_REPEATED_HINT}")
    if prefix_only:
        _warn(f"Blocks of {type(an.model).__name__} that change only the prefix (class) tokens are "
              f"not points: their patch tokens are those they read, the point before them: "
              f"{', '.join(prefix_only)}.")
    if unbatched:
        _warn(f"Modules of {type(an.model).__name__} whose output does not have the {an.n} "
              f"images on its first axis are not points: {', '.join(unbatched)}.")
    # iterated containers whose modules do not read each other's outputs give no point: say so
    # (CaiT's class-attention blocks, HRNet's branch heads; a model whose blocks it cannot chain)
    start = lambda name: min(c.start for n, c in an.calls.items() if n.startswith(name + "."))  # noqa: E731
    dropped = [n for n in dict.fromkeys(an.dropped) if pooling is None or start(n) < pooling.start]
    if dropped:
        _warn(f"Blocks of {type(an.model).__name__} in containers its code iterates without "
              f"chaining them (a block does not read what the one before returned: CaiT's "
              f"class-attention blocks, HRNet's per-branch heads) are not points: "
              f"{', '.join(map(repr, dropped))}. {_HINT}")
    kinds = [k for k, _ in seq]
    blocks = [i for i, k in enumerate(kinds) if k == "block"]
    layer = lambda i: kinds[i] == "layer" and any(an.weights(c.name) for c in seq[i][1])  # noqa: E731
    found: List[Tuple[str, str, str]] = []
    if not blocks:
        found = [(seq[i][1][-1].name, seq[i][1][-1].name, "output") for i in range(len(seq)) if layer(i)]
    else:
        first, last = blocks[0], blocks[-1]
        stem = [i for i in range(first) if layer(i)]
        if len(stem) == 1:
            found.append(("stem", seq[stem[0]][1][-1].name, "output"))
        else:
            found += [(seq[i][1][-1].name, seq[i][1][-1].name, "output") for i in stem]
        found += [(seq[i][1][0].name, seq[i][1][0].name, "output") for i in blocks]
        found += [(seq[i][1][-1].name, seq[i][1][-1].name, "output")
                  for i in range(last + 1, len(seq)) if layer(i)]
    if not found:
        raise ValueError(
            f"Could not find the stem or any block of {type(an.model).__name__} before global "
            f"pooling (no convolution or block runs on a feature map). {_HINT}")
    return found + _head_points(an, pooling)


def _goes_on(an: _Analysis, last: _Call, c: _Call, after: List[Tuple[str, _Call]]) -> bool:
    """Whether weightless unit ``c`` carries layer ``last``'s output on, so that it joins the
    layer: it reads that output (or it activated by the forward code: the same shape), not it
    plus a position embedding (timm's ViT without a class token: ``pos_drop`` reads the patch
    tokens plus ``pos_embed``; the stem is the patch embedding, as with a class token), and
    the next module reads ``c``'s output, not ``last``'s again (Gemma 4's ``rotary_emb``
    reads the patch tokens and returns the rotary tables; the blocks read the tokens)."""
    a = last.out
    if a is None or c.inp is None or not (c.inp is a or (c.inp.shape == a.shape and not an.embedded(a, c.inp))):
        return False
    nxt = next((k for _, k in after if k.inp is not None), None)
    return c.out is a or nxt is None or nxt.inp is not a


def _head_points(an: _Analysis, pooling: Optional[_Call] = None,
                 warn: bool = True) -> List[Tuple[str, str, str]]:
    """``pool`` (the input of the classifier) and ``final`` (the model's output); only ``final``
    when no weight layer runs after global pooling (SqueezeNet: the classifier is a convolution
    on the map, then pooling), with a warning."""
    name = type(an.model).__name__
    if pooling is None:
        pooling = an.body()[1]
    if pooling is None:
        out = _model_output(an.output, an.n)
        shape = tuple(out.shape) if out is not None else None
        if out is not None and out.dim() == 2:
            raise ValueError(
                f"Could not find global pooling in {name}: its output is a vector {shape}, but no "
                f"module (called on the example input) outputs a vector or pools a map to 1x1 before "
                f"it; the pooling may be in its forward code. {_HINT}")
        raise ValueError(
            f"Could not find global pooling in {name}: its output {shape} is not a vector [N, K]. "
            f"equifast needs a classifier ending in a vector. {_HINT}")
    out = _model_output(an.output, an.n)
    if out is not None and out.dim() > 2:  # scored as `final`, a map beside the logits' vector
        first = " (the first tensor of the tuple it returns)" if isinstance(an.output, (tuple, list)) else ""
        raise ValueError(
            f"Expected the output of {name} (the `final` point: its logits) to be a vector [N, K], "
            f"but it is a map {tuple(out.shape)}{first}; return the logits first (or a dict with "
            f"'logits'), or build it with its classifier (timm: num_classes=N and its global "
            f"pooling). {_HINT}")
    head = an.classifier(pooling)
    if head is None:
        after = [c for c in an.calls.values() if _is_weight(c.module) and c.start > pooling.start]
        # timm built it headless: weights inside an attention pool (SigLIP's MAP head) are no head
        headless = getattr(an.model, "num_classes", None) == 0 and all(c.end <= pooling.end for c in after)
        if not after or headless:
            if warn and getattr(an.model, "num_classes", None) == 0:  # timm built it headless
                _warn(
                    f"{name} has no classifier (num_classes=0): `final` is its pooled features, "
                    f"not logits, and there is no `pool` point; build it with num_classes=N to "
                    f"measure a classifier.")
            elif warn:
                _warn(
                    f"No weight layer of {name} runs after its global pooling ({pooling.name!r}): "
                    f"its classifier runs on the map before pooling (SqueezeNet), or it has none "
                    f"and `final` is its pooled features; either way there is no `pool` point, and "
                    f"`final` (the output) follows the points before pooling.")
            return [("final", "", "output")]
        raise ValueError(
            f"Could not find the classifier of {name}: no nn.Linear is applied to the pooled "
            f"vector and no convolution to a pooled 1x1 map, so the `pool` point is undefined. {_HINT}")
    return [("pool", head.name, "input"), ("final", "", "output")]


def _has_images_first(t: Optional[Tensor], n: int) -> bool:
    return t is not None and t.dim() >= 1 and int(t.shape[0]) == n


def _check_batched(name: str, t: Optional[Tensor], n: int) -> None:
    if t is not None and not _has_images_first(t, n):
        raise ValueError(
            f"Expected point {name!r} to have the {n} images on its first axis, but it is "
            f"{tuple(t.shape)} (e.g. TNT's pixel tokens [N*L, 16, C] or MobileViT's unfolded "
            f"patches [N*P, L, C]): it holds no map per image, so it cannot be measured. Name the "
            f"module that folds it back instead. {_LIST_HINT}")
