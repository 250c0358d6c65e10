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
DenseNet (torchvision)                     ``stem``, every dense layer                            ``classifier``
                                           ``features.denseblockI.denselayerJ``: the growth-rate
                                           maps it adds (the concatenation the next layer reads
                                           holds the earlier ones, measured at their own points;
                                           transitions are transitions; 121: 59)
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
from .extractor import Representations, representations
from .point import PARTS, Point
from .splitting import split

__all__ = ["Point", "PARTS", "split", "representations", "Representations"]
