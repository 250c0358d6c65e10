"""The thesis' method check (section 4.1.2) and metric check (Fig. 5a), runnable.

Two 3-layer CNNs with hand-made filters, where the right answer is known exactly:

* :func:`gaussian_cnn`: every filter is a 2D isotropic Gaussian (invariant to 90-degree
  rotations), so each feature map rotates with the input: **channel** rotation
  equivariance is 1 at every layer.
* :func:`rotated_copies_cnn`: the same Gaussians with one corner cut, arranged so that the
  filters of a layer are rotated copies of one another (a p4 group convolution): a rotation
  of the input permutes the channels, so **layer** equivariance is 1 while channel
  equivariance stays below 1.

``python -m equifast.method_check`` prints both tables and the metric check.
"""
from __future__ import annotations

import sys
from typing import Dict, List

import torch
from torch import nn

from .functional import equivariance_scores
from .transforms import Transform, rotations

__all__ = ["gaussian_kernel", "gaussian_cnn", "rotated_copies_cnn", "layer_scores", "metric_check", "main"]

SIGMAS = (0.8, 1.2, 1.6, 2.0)


def gaussian_kernel(size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """A ``size x size`` isotropic Gaussian (odd ``size``), summing to 1."""
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).float()


def _conv(weight: torch.Tensor, bias: float) -> nn.Conv2d:
    out_ch, in_ch, k, _ = weight.shape
    conv = nn.Conv2d(in_ch, out_ch, k, padding=k // 2)  # zero padding on both sides: commutes with rot90
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.fill_(bias)
    return conv


def gaussian_cnn(channels: int = 4, in_channels: int = 3, size: int = 5) -> nn.Sequential:
    """Three conv + ReLU layers whose filters are all isotropic Gaussians (channel-equivariant).

    The mixing weights are positive, so that on images in [0, 1] no channel dies (a dead
    channel is undefined, and would leave the check with fewer channels than it claims)."""
    layers: List[nn.Module] = []
    cin = in_channels
    for depth in range(3):
        w = torch.stack([torch.stack([gaussian_kernel(size, SIGMAS[(o + i + depth) % len(SIGMAS)])
                                      * (1.0 if (o + i) % 2 == 0 else 0.5)
                                      for i in range(cin)]) for o in range(channels)])
        layers += [_conv(w, bias=0.05 * (depth + 1)), nn.ReLU()]
        cin = channels
    return nn.Sequential(*layers)


def _cut(kernel: torch.Tensor, cut: int = 2) -> torch.Tensor:
    """The kernel with its top-left ``cut x cut`` corner set to zero."""
    out = kernel.clone()
    out[:cut, :cut] = 0
    return out


def rotated_copies_cnn(in_channels: int = 3, size: int = 5) -> nn.Sequential:
    """Three conv + ReLU layers of 4 channels whose filters are rotated copies of each other.

    Layer 1: filter ``o`` is the cut Gaussian rotated by ``o`` quarter turns. Layers 2-3:
    ``W[o, i] = rot90(psi[(i - o) mod 4], o)``, so rotating the input shifts the channel index
    by one at every layer.
    """
    base = [_cut(gaussian_kernel(size, s)) for s in SIGMAS]
    first = torch.stack([torch.stack([torch.rot90(base[c % 4], o) for c in range(in_channels)])
                         for o in range(4)])
    layers: List[nn.Module] = [_conv(first, bias=0.05), nn.ReLU()]
    for depth in (1, 2):
        w = torch.stack([torch.stack([torch.rot90(base[(i - o) % 4] * (1.0 if (i - o) % 2 == 0 else -0.5), o)
                                      for i in range(4)]) for o in range(4)])
        layers += [_conv(w, bias=0.05 * (depth + 1)), nn.ReLU()]
    return nn.Sequential(*layers)


@torch.no_grad()
def layer_scores(net: nn.Sequential, x: torch.Tensor, transforms: List[Transform],
                 metric: str = "correlation") -> List[Dict[str, float]]:
    """Mean channel and layer score after each ReLU of ``net``, averaged over ``transforms``,
    with the fraction of undefined (dead or constant) channel scores beside them."""
    rows = []
    for t in transforms:
        fx, ftx, depth = x, t(x), 0
        for module in net:
            fx, ftx = module(fx), module(ftx)
            if isinstance(module, nn.ReLU):
                depth += 1
                s = equivariance_scores(fx, ftx, t, metric=metric, input_size=x.shape[-2:])
                rows.append({"layer": depth, "transform": t.name,
                             "channel": float(s.channel.nanmean()), "layer_score": float(s.layer.nanmean()),
                             "undefined_fraction": float(s.channel.isnan().float().mean())})
    out = []
    for depth in sorted({r["layer"] for r in rows}):
        rs = [r for r in rows if r["layer"] == depth]
        out.append({key: sum(r[key] for r in rs) / len(rs)
                    for key in ("channel", "layer_score", "undefined_fraction")})
        out[-1]["layer"] = depth
    return out


def metric_check(shift: float = 0.5, seed: int = 0) -> Dict[str, float]:
    """Fig. 5a: feature maps moved by a constant keep their correlation, not their cosine.

    Compares random maps with themselves plus ``shift`` (the identity transform): correlation
    stays 1 while cosine drops below 1.
    """
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(8, 16, 12, 12, generator=gen)
    out = {}
    for metric in ("correlation", "cosine"):
        s = equivariance_scores(f, f + shift, None, metric=metric)
        out[metric] = float(s.channel.mean())
    return out


def main(argv=None) -> int:
    """``python -m equifast.method_check``: run the check and print what it should show."""
    import argparse

    argparse.ArgumentParser(prog="python -m equifast.method_check",
                            description="The thesis' method check (section 4.1.2) and metric check "
                                        "(Fig. 5a) on hand-made networks; takes no options.").parse_args(argv)
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    try:
        print("Method check (thesis 4.1.2): mean scores over rotations 90/180/270\n")
        for title, net, expect in (("isotropic Gaussian filters", gaussian_cnn(), "channel = 1"),
                                   ("rotated copies (cut corners)", rotated_copies_cnn(),
                                    "layer = 1, channel < 1")):
            print(f"{title} (expected: {expect})")
            for r in layer_scores(net, x, rotations()):
                print(f"  layer {r['layer']}: channel {r['channel']:.6f}  layer {r['layer_score']:.6f}"
                      f"  undefined {r['undefined_fraction']:.0%}")
        mc = metric_check()
        print(f"\nMetric check (Fig. 5a): maps + 0.5 vs maps: correlation {mc['correlation']:.6f}, "
              f"cosine {mc['cosine']:.6f}")
        sys.stdout.flush()  # a closed pipe fails here, not in Python's flush at exit
    except BrokenPipeError:  # `| head`: what was read is kept
        from ._console import closed_pipe

        return closed_pipe()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
