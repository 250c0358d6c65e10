"""Representation points of a model and their parts (SPEC section 3).

A **point** is a representation the measure compares: the output of the stem and of every
top-level block, in execution order, up to global pooling; then ``pool`` (the pooled vector
that enters the classifier) and ``final`` (the logits). The points before pooling are split
into three contiguous parts with :func:`numpy.array_split` semantics (the earlier parts take
the extra points): ``early``, ``middle``, ``late``; then ``pool`` and ``final``.

How the points are found (one generic rule, no per-model table). One forward pass of
``example_input`` with hooks on every module records the execution order, the inputs and the
outputs. Then, from the model down:

- a *weight layer* is a convolution or a linear layer;
- a *unit* is a called module with at most one weight layer inside (``Conv2d``, ``BatchNorm``,
  ``ReLU``, ``MaxPool``, torchvision's ``Conv2dNormActivation``, Inception's ``BasicConv2d``,
  timm's ``PatchEmbed``, a downsampling layer);
- a *container* (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``) with two or more
  weight layers is opened: its children take its place, in call order; so is a container
  the model iterates without calling it (``for blk in self.blocks: x = blk(x)``) when its
  called children are chained, each reading the very tensor the previous one returned, or
  those tokens with prefix tokens put in front (BEiT, EVA-02, XCiT, FastViT, torchvision
  MaxViT; ConViT adds its class token before block 10), reshaped or permuted, or plus a
  parameter of the model (VOLO adds its position embedding between the stages of its
  ``network``); containers iterated together (Twins zips ``patch_embeds``, ``pos_drops``,
  ``blocks`` and ``pos_block``) are opened together when their calls, in call order, chain so;
  a small container that holds the
  global pooling (SqueezeNet's ``classifier``); an iterated container whose blocks ran but
  are not chained gives no point, with a warning (CaiT's class-attention blocks, HRNet's
  ``incre_modules``);
- a *stage* is opened too: a module with a container child that holds at least two modules
  of one class with two or more weight layers each (timm ``ConvNeXtStage``,
  ``SwinTransformerStage``), or that has two such children itself (chained blocks held as
  attributes; two ``nn.Sequential`` do not count) and returns the last one's output, or that
  output normalised, permuted or reshaped, with no other block beside them (timm
  ``swinv2_cr``, PVT-v2); a block of a stage is a stage itself only by blocks held as
  attributes (DLA's trees; torchvision's MaxViT block, an ``nn.Sequential`` of MBConv,
  window and grid attention, is one block); blocks
  whose output does not hold the images on its first axis (MobileViT's transformer on
  unfolded patches ``[N*P, L, C]``) never make a stage, nor blocks whose values the module
  returns moved to other positions (NesT's levels un-block their blocks'
  ``[N, blocks, tokens, C]``: the level is the block); nor blocks whose output the module
  returns added to a shortcut (timm Xception's modules: their ``stack`` of separable
  convolutions plus the input, also written in place, ``x += skip``) or under a layer of
  weights (CSPNet's cross stages, HGNetV2's blocks, the ``root`` of a DLA tree of one level):
  such a module is one block (PiT's stages, which return
  their blocks' tokens less the class token on the map, are stages); a module that iterates
  a container of repeated blocks beside other blocks and returns the last one's output so
  (GCViT's stage: a downsampling and a global-query block, then its blocks, a norm and NHWC
  -> NCHW) is a stage too, and its other modules are transitions;
- any other module with two or more weight layers is a **block** (residual blocks, inception
  modules, MBConv, ConvNeXt, transformer and mixer blocks); a block that changes only the
  prefix tokens (VOLO's class attention) is no point, with a warning: its patch tokens are
  those it read, the point before it.

Global pooling ends the search: the first unit or block whose output is no longer a map
(``[N, K]``), an adaptive pooling layer, or a weightless layer that pools a map to 1x1 with
no convolution wider than 1x1 after it (a small input's downsampling is no global pooling).
Units are grouped into *layers*: a unit with a weight layer starts a layer, weightless units
that follow it on the same tensor (normalisation, activation, pooling) join it; the layer's
point is its last unit's output. A weightless unit that reads the layer's output plus a
position embedding (a ViT without a class token: ``pos_drop``) or that the next module does
not read after (Gemma 4's ``rotary_emb`` reads the patch tokens, the blocks read them
again) does not join; one that hands the tensor on as it got it (dropout in eval) leaves
the point at the layer's own output. A block returning several tensors chains with the
next by any of them (EfficientViM's stages return their map, it downsampled for the next
stage, and a hidden state); a module that returns its last block's output first, beside
what ran after it, is a stage. Layers before the first block are stem points (one layer:
named ``"stem"``; several: named by their last module); layers between blocks are
transitions (ConvNeXt downsampling, Swin patch merging, DenseNet transitions) and are not
points; a layer with a weight layer after the last block (the 1x1 ``conv_head`` of
MobileNet/EfficientNet) is a point. Weightless layers (a final ``LayerNorm``, dropout) are
never points; neither is a module that reads no tensor (XCiT's ``pos_embed(B, H, W)``) or
whose output does not hold the ``N`` images on its first axis (TNT's pixel tokens
``[N*L, 16, C]``; skipped with a warning, refused when named; of a tuple output the first
tensor with ``N`` first is the value), nor a 4-D value whose two spatial sizes cannot both
come from the image by downsampling (strides ``H/h`` and ``W/w`` more than 2.5 times apart;
skipped with a warning, refused when named; named blocked tokens that an enclosing module
rearranges into its map are refused even where their sizes fit, as NesT's ``[N, 16 blocks,
16 tokens, C]`` at 64 px do). A module run more than once in a pass (one ReLU shared by several layers, tied
weights) is no point and joins no layer, since hooks would see its last call only (with a
warning if it has weights); name its calls by their fx node names to measure them (a leaf
module's first call is named as the module, ``relu``, the next ``relu_1``: named so, the module is
that first call, with a warning; without fx it is refused). A model
without blocks (VGG, a plain ``nn.Sequential`` CNN) has one point per
layer. ``pool`` is the input of the first weight layer after global pooling: an ``nn.Linear``
on the vector or a convolution on the pooled ``[N, K, 1, 1]`` map (timm DLA's ``fc``, the
``conv_head`` of timm's MobileNetV3, LCNet, GhostNet and MobileNetV4);
when no weight layer runs after global pooling (SqueezeNet's conv classifier runs on the map;
a timm model built with ``num_classes=0`` has no classifier, and its ``final`` is the pooled
features) there is no ``pool`` point, with a warning; ``final`` is the model's output (of a
dict or an output object its ``logits``, as Hugging Face models return them; of a tuple its first
tensor, as torchvision's Inception and GoogLeNet put the logits before the auxiliary ones; a dict
of several tensors and no ``logits`` is refused).

=========================================  =====================================================  ==========================
family                                     points before pooling                                  pool (input of)
=========================================  =====================================================  ==========================
torchvision ResNet / ResNeXt / WideResNet  ``stem`` (conv1, bn1, relu, maxpool), every            ``fc``
                                           Bottleneck/BasicBlock ``layer1.0`` ... (resnet50: 17)
VGG                                        one point per conv layer (conv, ReLU and a following   ``classifier.0`` (flattened
                                           max-pool), named by its last module, e.g.              7x7 adaptive pool; VGG has
                                           ``features.2`` (vgg11: 8)                              no global pooling)
MobileNet v2 / v3 (torchvision)            every entry of ``features``: ``stem`` = features.0,    first ``Linear`` of
                                           the inverted residuals, the last 1x1 conv              ``classifier``
MobileNetV3 / LCNet / GhostNet (timm)      ``stem`` (conv_stem, bn1), every block ``blocks.i.j``  ``conv_head`` (1x1 conv
                                                                                                  after pooling)
Inception v3 (eval, no aux logits)         the five stem convs (``Conv2d_1a_3x3``,                ``fc``
                                           ``Conv2d_2a_3x3``, ``maxpool1``, ``Conv2d_3b_1x1``,
                                           ``maxpool2``) and every ``Mixed_*`` (16)
EfficientNet (torchvision)                 ``stem`` = features.0, every MBConv ``features.i.j``,  ``classifier.1``
                                           the 1x1 conv head ``features.8`` (b0: 18)
EfficientNet / -lite (timm)                ``stem`` (conv_stem, bn1), every block                 ``classifier``
                                           ``blocks.i.j``, conv_head + ``bn2`` (b0, lite0: 18)
ConvNeXt (torchvision and timm)            ``stem``, every ConvNeXt block (downsampling layers    ``classifier.2`` / ``head.fc``
                                           are transitions; tiny: 19)                             (after the head's norm)
ViT / DeiT (timm)                          ``stem`` = ``patch_embed`` (patch grid, before the     ``head`` (the token after
                                           position embedding), every ``blocks.i``; prefix        timm's pool: cls token or
                                           tokens (class, distillation, register) dropped         average)
MLP-Mixer (timm)                           ``stem``, every ``blocks.i``                           ``head``
Swin (timm)                                ``stem`` = ``patch_embed``, every                      ``head.fc``
                                           ``layers.i.blocks.j`` (NHWC -> NCHW; patch merging is
                                           a transition; tiny: 13)
Swin v1/v2 (torchvision)                   ``stem`` = features.0, every ``features.i.j`` (NHWC    ``head``
                                           by the width rule below; tiny: 13)
BEiT / EVA-02 / XCiT (timm)                ``stem``/``patch_embed``, every iterated ``blocks.i``  ``head``
                                           (XCiT: then ``cls_attn_blocks.i``, no ``pos_embed``)
ConViT (timm)                              ``stem``, every ``blocks.i`` (10 and 11 carry the      ``head``
                                           class token)
Swin v2 CR / PVT-v2 (timm)                 ``stem``, every ``stages.i.blocks.j``                  ``head.fc`` / ``head``
MaxViT (torchvision and timm)              the stem, one point per MaxViT block (MBConv, window   ``classifier.3`` /
                                           and grid attention together; tiny: 11)                 ``head.pre_logits.fc``
Twins (timm)                               ``stem`` = ``patch_embeds.0``, every ``blocks.i.j``    ``head``
                                           (tokens on each stage's grid; the patch embeddings
                                           and position convs between are transitions)
VOLO (timm)                                ``patch_embed``, every ``network.i.j`` (NHWC; the      ``head``
                                           class-attention ``post_network`` is no point)
GCViT (timm)                               ``stem``, every ``stages.i.blocks.j`` (NHWC; a stage   ``head.fc``
                                           of one block is one point)
NesT (timm)                                ``stem``, every ``levels.i`` (its blocks' blocked      ``head``
                                           tokens are no map)
SqueezeNet (torchvision)                   ``stem``, every Fire module, the class map             none (no ``pool``)
                                           ``classifier.2`` (1_1: 10)
plain CNN (``nn.Sequential`` or modules    one point per conv layer up to global pooling; with    the first ``Linear``
called in order)                           residual blocks: the stem layers and the blocks        after pooling
=========================================  =====================================================  ==========================

Every representation is returned as ``[N, C, h, w]`` (feature maps; token sequences
``[N, L, C]`` drop their ``L - h*w`` prefix tokens and are laid out on the patch grid;
sequences a convolution made last, ``[N, C, L]`` (a ``Conv1d`` block on a flattened map), are
laid out on the grid of ``L`` tokens with their channels first;
channels-last maps are permuted) or ``[N, K]`` (``pool``, ``final``). A 4-D point is
channels-last when the last ``Linear`` / ``LayerNorm`` that ran inside its module has the width
of the last axis and not of dim 1 (torchvision Swin, timm TinyViT), channels-first when that
width (or a last convolution's) is dim 1 only; otherwise timm's ``output_fmt`` marker decides,
then for a map either layout could be (as many channels as rows and columns, or a last layer
as wide as dim 1 and the last axis) the one reading with the image's aspect, then the axis
that moves when the image rolls by half its width (timm PVT-v2's and GCViT's stems at some
sizes, SAM-ViT's blocks at 256x384 with 16 channels), then the nearest point that the width
decided, then NCHW. Tokens that a
model keeps unrolled (timm Hiera) are put back in grid order by its own ``reroll``. Token prefixes are ``num_prefix_tokens`` or the model's ``cls_token`` / ``dist_token`` /
``reg_token`` tokens (PiT); token grids are the patch grid or its stride-2 downsamplings
(LeViT, PiT at non-square sizes).

Extraction: with ``method="fx"`` a :mod:`torch.fx` graph from
:func:`torchvision.models.feature_extraction.create_feature_extractor` (with timm's leaf
modules and autowrapped functions, so timm models trace); a module's point is the last node
inside the module (torchvision's naming, e.g. ``layer1.0.relu_2``); a module that returns
several tensors (HRNet stages, PiT pooling, TNT, CrossViT and CoaT blocks; its point is the
first tensor it computed, not an input it hands back) gets no node and is read with hooks, so ``representations`` uses hooks for that model. With ``method="hooks"``
forward hooks on the modules, for code that fx cannot trace, and for a model with forward
hooks on itself (a graph of its ``forward`` leaves them out). ``"auto"`` tries fx and falls
back to hooks with a warning. Graphs are traced for evaluation mode (the mode measurements
run in).

Names of your own: ``split(model, x, points=["layer1", "layer2.1", "layer3"])`` takes
module names or fx node names (list them with
:func:`torchvision.models.feature_extraction.get_graph_node_names` or
``[n for n, _ in model.named_modules()]``); they become the points before pooling, in
execution order, with parts assigned by the same rule; ``pool`` and ``final`` are appended
(name them in the list to place them yourself). A named vector computed by global pooling or
after it (``avgpool``, ``fc``, a head's hidden layer) is refused: it would be averaged into
``early``/``middle``/``late``.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import operator
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .warning import warn as _warn

__all__ = ["Point", "PARTS", "split", "representations", "Representations"]

PARTS = ("early", "middle", "late", "pool", "final")
METHODS = ("auto", "fx", "hooks")
LAYOUTS = ("NCHW", "NHWC", "NLC", "NCL", "NC")
_RESERVED = ("pool", "final")

_LIST_HINT = (
    "List candidate names with `[n for n, _ in model.named_modules()]` or "
    "`torchvision.models.feature_extraction.get_graph_node_names(model)`."
)
_REPEATED_HINT = (
    "Name one of its calls by its fx node name instead, with method='fx' or 'auto' (`relu` for "
    "the first call of module `relu`, `relu_1` for the second; list them with "
    "`torchvision.models.feature_extraction.get_graph_node_names(model)`)."
)
_HINT = (
    "Name the points yourself: `equifast.split(model, x, points=[...])` with module names "
    "(`[n for n, _ in model.named_modules()]`) or fx node names (list them with "
    "`torchvision.models.feature_extraction.get_graph_node_names(model)`)."
)


@dataclass(frozen=True)
class Point:
    """One representation of a model.

    Attributes:
        name: the point's name: ``"stem"``, a module name (``"layer1.0"``), ``"pool"``, ``"final"``.
        part: ``"early"``, ``"middle"``, ``"late"``, ``"pool"`` or ``"final"``.
        index: position in execution order (0-based).
        module: qualified name of the module whose output (or input, see ``take``) is the
            point; ``""`` is the model itself; ``None`` for an fx node that is no module's output.
        take: ``"output"`` or ``"input"`` (``pool`` is the input of the classifier).
        node: the fx node name (torchvision's naming) of the value, ``""`` when not traced.
        layout: how the raw value comes: ``"NCHW"``, ``"NHWC"``, ``"NLC"`` (tokens), ``"NCL"``
            (tokens with their channels first, as a ``Conv1d`` makes them) or ``"NC"``.
        prefix_tokens: tokens dropped from the front of an ``"NLC"`` sequence.
        grid: ``(h, w)`` patch grid of an ``"NLC"`` or ``"NCL"`` sequence at the example size.
        shape: the normalised shape (without the batch dim) at the example input.
        token_order: for tokens that come in another order than row by row (timm Hiera's
            unrolled stages), the index of the token at each position of the grid, row by row.
    """

    name: str
    part: str
    index: int
    module: Optional[str] = None
    take: str = "output"
    node: str = ""
    layout: str = "NCHW"
    prefix_tokens: int = 0
    grid: Optional[Tuple[int, int]] = None
    shape: Tuple[int, ...] = ()
    token_order: Optional[Tuple[int, ...]] = field(default=None, repr=False)

    @property
    def is_vector(self) -> bool:
        """Whether the point is a vector (``[K]``, or ``K`` maps of 1x1: ``T_l`` is the identity
        there), as :func:`equifast.reference.is_vector` says of its values."""
        return len(self.shape) != 3 or self.shape[1] * self.shape[2] == 1


# ----------------------------------------------------------------------------- analysis
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


# ---------------------------------------------------------------------------------- fx
def _tracer_kwargs() -> Dict[str, Any]:
    kwargs: Dict[str, Any] = {}
    try:
        from timm.models._features_fx import get_notrace_functions, get_notrace_modules

        kwargs = {"leaf_modules": list(get_notrace_modules()),
                  "autowrap_functions": list(get_notrace_functions())}
    except ImportError:  # timm is optional for tracing torchvision and plain models
        pass
    try:  # torchvision's defaults (torchvision.ops leaves), exactly as create_feature_extractor
        from torchvision.models.feature_extraction import _set_default_tracer_kwargs

        kwargs = _set_default_tracer_kwargs(kwargs)
    except ImportError:
        pass
    return kwargs


class _HooksOfItsOwn(RuntimeError):
    """A model fx cannot read right: its own forward hooks are not in a graph of its forward."""


def _check_no_hooks_of_its_own(model: nn.Module) -> None:
    """fx traces ``model.forward``: forward (pre-)hooks on the model itself are not in its
    graph (those on its submodules are). An input normalised by a pre-hook, or logits scaled
    by a hook, came out as if the hooks were not there."""
    if model._forward_pre_hooks or model._forward_hooks:
        raise _HooksOfItsOwn(f"{type(model).__name__} has forward hooks of its own, which a "
                             "torch.fx graph of its forward leaves out")


class _Graph:
    """The eval-mode graph of ``model`` with torchvision's node names."""

    def __init__(self, model: nn.Module):
        from torchvision.models.feature_extraction import NodePathTracer

        _check_no_hooks_of_its_own(model)
        with modes_kept(model):
            model.eval()
            tracer = NodePathTracer(**_tracer_kwargs())
            graph = tracer.trace(model)
        self.nodes = [n for n in graph.nodes]
        self.qualname = {n: tracer.node_to_qualname[n] for n in self.nodes if n in tracer.node_to_qualname}
        self.order = {self.qualname[n]: i for i, n in enumerate(self.nodes) if n in self.qualname}

    def output_of(self, module: str) -> str:
        """The last node inside ``module`` ('' is the model: the node it returns)."""
        if module == "":
            out = [n for n in self.nodes if n.op == "output"][-1]
            arg = out.args[0]
            if not isinstance(arg, torch.fx.Node) or arg not in self.qualname:
                raise RuntimeError("the model's output is not a single traced tensor")
            return self.qualname[arg]
        pat = re.compile(rf"^{re.escape(module)}(\.|$)")
        hits = [q for q in self.order if pat.match(q)]
        if not hits:
            raise RuntimeError(f"no fx node inside module {module!r}")
        return max(hits, key=self.order.__getitem__)

    def input_of(self, module: str) -> str:
        for n in self.nodes:
            if n.op == "call_module" and n.target == module:
                # its first argument, also where given by keyword (a head called as fc(input=x))
                arg = n.args[0] if n.args else next(iter(n.kwargs.values()), None)
                if isinstance(arg, torch.fx.Node) and arg in self.qualname:
                    return self.qualname[arg]
        raise RuntimeError(f"module {module!r} is not called as a leaf on a traced value")

    def resolve(self, name: str) -> Optional[str]:
        """A node name or a prefix of node names (torchvision's shortcut) -> the full name."""
        if name in self.order:
            return name
        try:
            return self.output_of(name)
        except RuntimeError:
            return None


def _fx_extractor(model: nn.Module, nodes: Sequence[str]) -> nn.Module:
    from torchvision.models.feature_extraction import create_feature_extractor

    _check_no_hooks_of_its_own(model)
    ret = {n: f"p{i}" for i, n in enumerate(dict.fromkeys(nodes))}
    # it traces in train and eval mode, then sets every module to the model's own mode: a
    # frozen batch norm of a model being fine-tuned would train after
    with modes_kept(model):
        ext = create_feature_extractor(model, eval_return_nodes=ret, train_return_nodes=ret,
                                       tracer_kwargs=_tracer_kwargs(), suppress_diff_warning=True)
    for graph in {id(g): g for g in (ext.train_graph, ext.eval_graph)}.values():
        _copy_what_is_overwritten(ext, graph)
    ext.graph = ext.train_graph if ext.training else ext.eval_graph  # recompiled
    return ext


# Ops that write into their first argument: Python's augmented assignments, and setitem.
_AUGMENTED = {getattr(operator, f"i{op}") for op in (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "lshift",
    "rshift", "matmul")} | {operator.setitem}
# Ops whose result may share its first argument's memory (a write into it is a write into that).
_ALIASING = {"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute",
             "transpose", "t", "expand", "expand_as", "narrow", "select", "squeeze", "unsqueeze",
             "contiguous", "getitem", "chunk", "split", "unbind", "movedim", "moveaxis",
             "swapaxes", "as_strided", "detach", "unfold", "diagonal", "tensor_split", "to",
             "type_as", "float", "type", "real", "imag",
             # dropout in eval hands its input back as it got it
             "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
             "feature_alpha_dropout"}


def _op_name(target) -> str:
    return getattr(target, "__name__", str(target)).strip("_")


def _writes_first_argument(node, module: nn.Module) -> bool:
    """Whether an fx node may write into its first argument in place (``relu_``, ``+=``,
    ``nn.ReLU(inplace=True)``, ``F.relu(x, inplace=True)``)."""
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_module":
        return getattr(module.get_submodule(node.target), "inplace", False) is True
    if node.op in ("call_function", "call_method"):
        name = getattr(node.target, "__name__", str(node.target))
        return node.target in _AUGMENTED or (name.endswith("_") and not name.endswith("__"))
    return False


def _overwritten(node, module: nn.Module) -> bool:
    """Whether a later node writes in place into what ``node`` computed, or into a view of it."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        for user in n.users:
            if not user.args or user.args[0] is not n:
                continue
            if _writes_first_argument(user, module):
                return True
            if user.op in ("call_function", "call_method") and _op_name(user.target) in _ALIASING:
                todo.append(user)
            elif user.op == "call_module" and next(
                    module.get_submodule(user.target).parameters(), None) is None:
                # a leaf without weights may hand its input back (nn.Identity, nn.Dropout in
                # eval) or a view of it (nn.Flatten): `x = relu_(drop(block(x)))` overwrote the
                # block's point
                todo.append(user)
    return False


def _copy_what_is_overwritten(module: nn.Module, graph) -> None:
    """Return a copy of each point that a later node overwrites in place: the extractor returns
    the very tensor, which is read after the whole forward pass (resnet's ``bn1`` feeds
    ``ReLU(inplace=True)``: its scores were those of the ReLU's output)."""
    out = next(n for n in graph.nodes if n.op == "output")
    returned = dict(out.args[0])
    for key, node in returned.items():
        if _overwritten(node, module):
            with graph.inserting_after(node):
                returned[key] = graph.call_function(torch.clone, (node,))
    out.args = (returned,)


# ------------------------------------------------------------------------------ layouts
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


def _num_prefix_tokens(model: nn.Module) -> Optional[int]:
    """timm's ``num_prefix_tokens``; without it, the tokens of the model's own ``cls_token``,
    ``dist_token`` and ``reg_token`` parameters (PiT: ``cls_token`` is ``[1, 1 or 2, C]``)."""
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int):
        return n
    tokens = [getattr(model, a, None) for a in ("cls_token", "dist_token", "reg_token")]
    tokens = [t for t in tokens if isinstance(t, Tensor) and t.dim() == 3]
    return sum(int(t.shape[1]) for t in tokens) if tokens else None


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


# ---------------------------------------------------------------------------- extractor
def _version(t) -> Optional[int]:
    """A tensor's version counter (bumped by every in-place write); ``None`` where it is not
    kept (inference-mode tensors)."""
    try:
        return t._version if isinstance(t, Tensor) else None
    except RuntimeError:
        return None


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


# -------------------------------------------------------------------------------- split
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
        points: names of your own (module names or fx node names) for the points before
            pooling (a vector from pooling or after it is a ``ValueError``); ``"pool"`` /
            ``"final"`` in the list place those two, otherwise both are appended. ``None``: find
            the points automatically.
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
