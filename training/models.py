"""The networks of the thesis studies (section 4.2): the 7-layer CNN, ResNet-44 and WRN-40.

All are plain :class:`torch.nn.Module` s whose top-level children are the representation
points in order, so :func:`equifast.split` (and a reader) finds them without tracing:

- ``stem``: the first convolution (block) (its output is the first point);
- the blocks: ``layers`` (CNN, an ``nn.Sequential``) or ``layer1``, ``layer2``, ``layer3``
  (ResNet and WideResNet, one ``nn.Sequential`` of blocks per stage; every block is a point);
- ``pool``: global average pooling and flatten, ``[N, C, h, w] -> [N, C]`` (the **pool**
  part; WideResNet's final BN-ReLU comes first);
- ``head``: one ``nn.Linear`` (the **final** part, the logits).

:meth:`point_names` lists the qualified names of the points before pooling, for users who
name the points themselves.

Example:
    >>> model = build_model("cnn7", num_classes=6)
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 6])
    >>> model.point_names()[:3]
    ['stem', 'layers.0', 'layers.1']
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CNN7", "ResNet", "BasicBlock", "WideResNet", "WideBasicBlock", "cnn7", "resnet44",
           "wrn40", "build_model", "MODELS"]


# --------------------------------------------------------------------------------- blocks
def _conv_bn_relu(c_in: int, c_out: int, padding: int) -> List[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=padding, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class BasicBlock(nn.Module):
    """The CIFAR ResNet basic block: two 3x3 conv + BN, ReLU after the residual sum.

    The shortcut is He et al.'s **option A** (parameter free, as in the original CIFAR
    ResNets): identity when the shape is kept; otherwise the input is subsampled with
    stride 2 and the new channels are zero-padded.

    Args:
        c_in: input channels.
        c_out: output channels.
        stride: 1, or 2 for the first block of a stage that halves the resolution.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride = stride
        self.pad = c_out - c_in

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Option-A shortcut: subsample by ``stride``, zero-pad the extra channels."""
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _Backbone(nn.Module):
    """Shared ``forward_features`` / ``forward_head`` / ``point_names`` plumbing."""

    block_names: tuple = ()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and blocks: ``[N, C_in, H, W] -> [N, C, h, w]`` (before global pooling)."""
        x = self.stem(x)
        for name in self.block_names:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Global pooling and the linear head: ``[N, C, h, w] -> [N, num_outputs]``."""
        return self.head(self.pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def point_names(self) -> List[str]:
        """Qualified module names of the points before pooling, in execution order."""
        names = ["stem"]
        for name in self.block_names:
            names += [f"{name}.{i}" for i in range(len(getattr(self, name)))]
        return names


class _ThreeStages(_Backbone):
    """The CIFAR ResNets' body: a stem, three stages of ``n`` blocks (``block``) with ``16, 32,
    64`` times ``width`` channels, stride 2 at the start of stages 2 and 3, a pooling head and
    one linear layer; Kaiming-initialised convolutions. Subclasses give the block, the depth's
    form ``6n + outside`` and, where they differ from the CIFAR ResNet's, the stem and what
    comes before pooling."""

    block_names = ("layer1", "layer2", "layer3")
    block: type = BasicBlock
    default_depth, outside, depths = 44, 2, "20, 32, 44, 56"  # 6n + outside; examples

    def __init__(self, depth: Optional[int] = None, num_classes: int = 10, width: int = 1,
                 in_channels: int = 3):
        super().__init__()
        n, c = _stage_sizes(self.default_depth if depth is None else depth, self.outside,
                            self.depths, width)
        self.num_classes, self.num_rotations = num_classes, 0
        self.stem, c_in = self._stem(in_channels, c)
        for name, (a, b, stride) in zip(self.block_names,
                                        ((c_in, c, 1), (c, 2 * c, 2), (2 * c, 4 * c, 2))):
            setattr(self, name, nn.Sequential(self.block(a, b, stride),
                                              *[self.block(b, b) for _ in range(n - 1)]))
        self.pool = nn.Sequential(*self._before_pooling(4 * c), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(1))
        self.head = nn.Linear(4 * c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stem(self, in_channels: int, c: int):
        """The stem module and its output channels: He et al.'s CIFAR stem, a 3x3 conv, BN and
        ReLU with the first stage's channels."""
        return nn.Sequential(*_conv_bn_relu(in_channels, c, 1)), c

    def _before_pooling(self, c: int) -> List[nn.Module]:
        return []


def _stage_sizes(depth: int, outside: int, examples: str, width) -> tuple:
    """``(blocks per stage, channels of stage 1)`` of a ``6n + outside`` deep network."""
    if (depth - outside) % 6 or depth < 6 + outside:
        raise ValueError(f"Expected `depth` to be 6n+{outside} ({examples}, ...), but got {depth}.")
    if int(width) != width or width < 1:
        raise ValueError(f"Expected `width` to be a positive integer, but got {width!r}.")
    return (depth - outside) // 6, 16 * int(width)


# ---------------------------------------------------------------------------------- models
class CNN7(_Backbone):
    """The 7-layer CNN of the objective study (Cohen & Welling's Z2CNN baseline).

    Seven 3x3 convolutions with ``width`` (20) channels, each followed by batch norm and
    ReLU; 2x2 max-pooling after layer 2; global average pooling; one linear head.

    Padding: ``padding=0`` (valid convolutions, as in Z2CNN) by default. A 28x28 input gives
    maps 26, 24 -> pool 12, 10, 8, 6, 4, 2. Valid convolutions and the even-sized pooling
    crop symmetrically, so a quarter turn of the input is exactly a quarter turn of every
    map (no border asymmetry). ``padding=1`` keeps 28 then 14.

    Heads (``num_outputs`` logits from one ``nn.Linear``):

    - MNIST6 / Rot-Inv: ``num_classes=6`` logits.
    - Rot-Eq: ``num_classes=6, num_rotations=4``: one linear layer with ``6 + 4`` outputs;
      the first 6 are the class logits, the last 4 the quarter-turn logits (two linear
      heads sharing one module). The loss is the sum of the two cross-entropies. With
      ``class_logits_only`` set (as the measuring side loads a run) the model returns the
      class logits alone: the **final** point. A rotation of the input permutes the turn
      logits (the equivariance the objective asks for), which the final point's identity
      comparison would score as a loss of invariance.

    Module tree: ``stem`` (layer 1), ``layers`` (layers 2..7; layer 2 ends with the
    max-pool), ``pool``, ``head``.

    Args:
        num_classes: number of classes.
        num_rotations: 0, or 4 to also predict the quarter turn (Rot-Eq).
        in_channels: image channels (1 for (Fashion-)MNIST).
        width: channels of every convolution.
        padding: 0 (valid, default) or 1 (same).
    """

    block_names = ("layers",)

    def __init__(self, num_classes: int = 6, num_rotations: int = 0, in_channels: int = 1,
                 width: int = 20, padding: int = 0):
        super().__init__()
        if padding not in (0, 1):
            raise ValueError(f"Expected `padding` to be 0 or 1, but got {padding!r}.")
        self.num_classes, self.num_rotations = num_classes, num_rotations
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width, padding))
        blocks = [nn.Sequential(*_conv_bn_relu(width, width, padding), nn.MaxPool2d(2))]
        blocks += [nn.Sequential(*_conv_bn_relu(width, width, padding)) for _ in range(5)]
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.head = nn.Linear(width, num_classes + num_rotations)
        self.class_logits_only = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out[:, :self.num_classes] if self.class_logits_only else out


class ResNet(_ThreeStages):
    """CIFAR ResNet-(6n+2) with a width multiplier (ResNet-44: ``n=7``).

    A 3x3 stem conv (+BN, ReLU) with ``16*width`` channels, three stages of ``n`` basic
    blocks with ``16, 32, 64`` times ``width`` channels (stride 2 at the start of stages 2
    and 3), global average pooling, one linear head. Shortcuts are option A (see
    :class:`BasicBlock`).

    Capacity study: the thesis text trains WideResNet-40 at widths ``s in {1, 2, 4, 8}``;
    SPEC section 6 uses ResNet-44 at several widths. Here ``width`` scales every stage of
    ResNet-44 (the WideResNet widening applied to ResNet-44), so ``width=1`` is exactly the
    augmentation-study network.

    Module tree: ``stem``, ``layer1``, ``layer2``, ``layer3`` (each an ``nn.Sequential`` of
    blocks), ``pool``, ``head``. With ``n=7`` there are 22 points before pooling; split
    8/7/7 they give early = 32x32, middle = 16x16, late = 8x8 maps.

    Unlike :class:`CNN7`'s, its maps do not turn exactly with the input: a stride-2
    convolution (and the option-A shortcut) samples the even rows and columns, which a
    quarter turn of a 32-pixel image maps onto the odd ones. So even rotation-invariant
    filters score below 1 in the middle and late parts at a quarter turn.

    Args:
        depth: ``6n + 2`` (44 for ResNet-44).
        num_classes: classes (10 for CIFAR-10).
        width: channel multiplier (1, 2, 4, 8 in the capacity study).
        in_channels: image channels.
    """

    block = BasicBlock
    default_depth, outside, depths = 44, 2, "20, 32, 44, 56"


class WideBasicBlock(nn.Module):
    """The WideResNet block (Zagoruyko & Komodakis, 2016): pre-activation, BN-ReLU-conv3x3
    twice, with a 1x1 convolution as the shortcut where the shape changes (it reads the
    activated input, as theirs does), identity elsewhere. No dropout.

    Args:
        c_in: input channels.
        c_out: output channels.
        stride: 1, or 2 for the first block of a stage that halves the resolution.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.shortcut = None if stride == 1 and c_in == c_out else \
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(_ThreeStages):
    """WideResNet-``depth``-``width`` for CIFAR (WRN-40-k: ``depth=40``, 6 blocks a stage).

    A 3x3 stem conv with 16 channels, three stages of ``(depth - 4) / 6`` pre-activation
    blocks (:class:`WideBasicBlock`) with ``16, 32, 64`` times ``width`` channels (stride 2 at
    the start of stages 2 and 3), then BN-ReLU, global average pooling and one linear head.
    The network the thesis' text names for the capacity study (``s in {1, 2, 4, 8}``); its
    parameters: 0.6M, 2.2M, 8.9M, 35.7M (their table 1 for WRN-40-1, 2, 4, 8).

    Module tree: ``stem`` (a conv; its output is the first point), ``layer1``, ``layer2``,
    ``layer3`` (every block is a point: its residual sum, before the next block's BN-ReLU,
    as a pre-activation block has no non-linearity after it), ``pool`` (the final BN-ReLU, pooling, flatten: the
    **pool** part), ``head``.

    Args:
        depth: ``6n + 4`` (40 for WRN-40).
        num_classes: classes (10 for CIFAR-10).
        width: the widening factor ``k``.
        in_channels: image channels.
    """

    block = WideBasicBlock
    default_depth, outside, depths = 40, 4, "16, 22, 28, 40"

    def _stem(self, in_channels: int, c: int):
        return nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), 16

    def _before_pooling(self, c: int) -> List[nn.Module]:
        return [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]


# ------------------------------------------------------------------------- entry points
def cnn7(num_classes: int = 6, num_rotations: int = 0, **kwargs) -> CNN7:
    """The 7-layer, 20-channel CNN of the objective study (see :class:`CNN7`)."""
    return CNN7(num_classes=num_classes, num_rotations=num_rotations, **kwargs)


def _named_depth(name: str, cls: type, depth: int, kwargs: dict) -> None:
    """Refuse a ``depth`` for a model whose name fixes it (Python's "got multiple values for
    keyword argument 'depth'" said neither which model nor what to do)."""
    if "depth" in kwargs:
        raise ValueError(f"Expected no `depth` for {name!r}, whose depth is {depth}, but got "
                         f"depth={kwargs['depth']!r}; build another depth with "
                         f"equifast.training.models.{cls.__name__}(depth=...).")


def resnet44(num_classes: int = 10, width: int = 1, **kwargs) -> ResNet:
    """ResNet-44 for CIFAR-10, optionally widened (see :class:`ResNet`)."""
    _named_depth("resnet44", ResNet, 44, kwargs)
    return ResNet(depth=44, num_classes=num_classes, width=width, **kwargs)


def wrn40(num_classes: int = 10, width: int = 1, **kwargs) -> WideResNet:
    """WideResNet-40-``width`` for CIFAR-10 (see :class:`WideResNet`)."""
    _named_depth("wrn40", WideResNet, 40, kwargs)
    return WideResNet(depth=40, num_classes=num_classes, width=width, **kwargs)


MODELS = {"cnn7": cnn7, "resnet44": resnet44, "wrn40": wrn40}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name (``"cnn7"``, ``"resnet44"`` or ``"wrn40"``); ``kwargs`` go to its
    class (``width``: :class:`CNN7`'s channel count, the ResNets' channel multiplier).

    Example:
        >>> build_model("resnet44", width=2).head.in_features
        128
    """
    if name not in MODELS:
        raise ValueError(f"Expected `name` to be one of {sorted(MODELS)}, but got {name!r}.")
    return MODELS[name](**kwargs)
