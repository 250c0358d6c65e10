"""The oracle: SPEC section 1 in plain PyTorch, in float64.

Written for clarity, not speed: it materialises ``T_l(f(x))`` and the whole ``K x K``
similarity matrix of every image. Tests check the fused operator against it, and
:func:`equifast.functional.equivariance_scores` falls back to it when the compiled operator
is missing.

Undefined pairs. A vector ``u`` over the compared positions is *undefined* when
``||v|| <= TOLERANCE * ||u||``, where ``v`` is ``u`` centred (correlation) or ``u`` itself
(cosine). So an all-zero vector is undefined for both metrics and a constant one for
correlation, while a vector that varies by more than ``TOLERANCE`` of its size is compared.
Every backend uses this one rule. Non-finite inputs are not scored: a row holding NaN or an
infinity makes its pairs undefined here, and the public function rejects such inputs before
any backend runs.
"""
from __future__ import annotations

import math
import numbers
import sys
from typing import NamedTuple, Optional, Tuple

import torch

from .transforms import Identity, Transform, check_size

__all__ = ["TOLERANCE", "METRICS", "VECTOR_MODES", "Scores", "equivariance_scores",
           "compared_pairs", "similarity_matrix", "scores_from_similarity", "check_options",
           "check_pair", "check_transform", "check_input_size"]

TOLERANCE = 1e-5
METRICS = ("correlation", "cosine")
VECTOR_MODES = ("per_image", "across_images")
_SCORED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Scores(NamedTuple):
    """Scores of one representation under one transform.

    Attributes:
        channel: ``[N, K]`` float32, channel score ``c[n, k]`` (NaN where undefined).
        layer: ``[N, K]`` float32, layer score ``l[n, k]`` (NaN where undefined).
        layer_index: ``[N, K]`` int64, the ``k'`` that gives ``l[n, k]`` (-1 where undefined).
    """

    channel: torch.Tensor
    layer: torch.Tensor
    layer_index: torch.Tensor


def is_vector(f: torch.Tensor) -> bool:
    """True for ``[N, K]`` tensors and maps of size 1x1 (``T_l`` is the identity there)."""
    return f.dim() == 2 or (f.dim() == 4 and f.shape[-2] == 1 and f.shape[-1] == 1)


def compared_pairs(fx: torch.Tensor, ftx: torch.Tensor, transform: Optional[Transform],
                   input_size) -> Tuple[torch.Tensor, torch.Tensor]:
    """``T_l(fx)`` and ``ftx`` at the compared positions, both ``[N, K, P]``."""
    if transform is None or isinstance(transform, Identity):
        return fx.flatten(2), ftx.flatten(2)
    moved = transform.on_map(fx, input_size, fill=float("nan"))
    ones = torch.ones(fx.shape[-2:], dtype=torch.float64, device=fx.device)
    valid = transform.on_map(ones, input_size, fill=0.0) > 0
    return moved[..., valid], ftx[..., valid]


def _normalise(u: torch.Tensor, metric: str, eps: float):
    """Rows of ``u`` (``[..., P]``) scaled to unit norm, and a mask of defined rows."""
    # each row over its largest magnitude first: both metrics ignore a row's scale, and the
    # squares of float64 rows beyond about 1e154 (or below 1e-160) overflowed (underflowed),
    # leaving every row undefined
    scale = u.abs().amax(dim=-1, keepdim=True)
    u = u / torch.where(scale > 0, scale, torch.ones_like(scale))
    v = u - u.mean(dim=-1, keepdim=True) if metric == "correlation" else u
    norm = v.norm(dim=-1, keepdim=True)
    defined = norm > eps * u.norm(dim=-1, keepdim=True)
    return v / torch.where(defined, norm, torch.ones_like(norm)), defined.squeeze(-1)


def similarity_matrix(a: torch.Tensor, b: torch.Tensor, metric: str = "correlation",
                      eps: float = TOLERANCE) -> torch.Tensor:
    """Similarities of every row of ``a`` with every row of ``b``.

    Args:
        a, b: ``[..., K, P]``.

    Returns:
        ``[..., K, K]`` float64: entry ``[k, k']`` compares ``a[k]`` with ``b[k']``; NaN where
        either row is undefined.
    """
    an, da = _normalise(a.double(), metric, eps)
    bn, db = _normalise(b.double(), metric, eps)
    s = an @ bn.transpose(-1, -2)
    undefined = ~(da.unsqueeze(-1) & db.unsqueeze(-2))
    return s.masked_fill(undefined, float("nan"))


def scores_from_similarity(s: torch.Tensor) -> Scores:
    """Channel and layer scores from similarity matrices ``[N, K, K]`` (SPEC section 1)."""
    channel = torch.diagonal(s, dim1=-2, dim2=-1).clamp_min(0)  # clamp keeps NaN
    filled = torch.nan_to_num(s, nan=float("-inf"))
    best, index = filled.max(dim=-1)
    none = torch.isneginf(best)
    layer = best.clamp_min(0).masked_fill(none, float("nan"))
    index = index.masked_fill(none, -1)
    return Scores(channel.float(), layer.float(), index)


def check_pair(fx: torch.Tensor, ftx: torch.Tensor) -> None:
    """``TypeError``/``ValueError`` unless ``fx`` and ``ftx`` are dense float16, bfloat16, float32
    or float64 tensors of one shape, ``[N, K, H, W]`` or ``[N, K]`` with no empty dim, on one
    device (a batch of one would broadcast silently)."""
    for name, t in (("fx", fx), ("ftx", ftx)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"Expected `{name}` to be a torch.Tensor, but got {type(t).__name__}.")
        if t.dim() not in (2, 4):
            hint = (" Token sequences [N, L, C] must be put on their patch grid first "
                    "(equifast.split does this for known models)." if t.dim() == 3 else "")
            raise ValueError(
                f"Expected `{name}` to be [N, K, H, W] or [N, K], but got shape {tuple(t.shape)}.{hint}"
            )
    if fx.shape != ftx.shape:
        raise ValueError(
            f"Expected `fx` and `ftx` to have the same shape, but got {tuple(fx.shape)} and "
            f"{tuple(ftx.shape)}."
        )
    if fx.device != ftx.device:  # else a backend fails deep inside
        raise ValueError(f"Expected `fx` and `ftx` on the same device, but got {fx.device} and "
                         f"{ftx.device}; move one (ftx.to(fx.device)).")
    for name, t in (("fx", fx), ("ftx", ftx)):
        # complex maps lost their imaginary part, integer ones were scored as they came
        if not t.is_floating_point():
            raise TypeError(f"Expected `{name}` to be a floating tensor, but got {t.dtype}.")
        if t.dtype not in _SCORED_DTYPES:  # float8: torch's aminmax and flip raised deep inside
            raise TypeError(f"Expected `{name}` to be float16, bfloat16, float32 or float64, but "
                            f"got {t.dtype}; widen it (`{name}.float()`, which is exact).")
        if t.layout != torch.strided:  # sparse, mkldnn: reshape or as_strided raised deep inside
            raise TypeError(f"Expected `{name}` to be a dense (strided) tensor, but got layout "
                            f"{t.layout}; make it dense (`{name}.to_dense()`).")
    if 0 in fx.shape:  # no channel crashed the layer max, a 0xW map gave NaN everywhere
        raise ValueError(f"Expected at least one image and one channel (and maps of one position "
                         f"or more), but got shape {tuple(fx.shape)}.")


def check_transform(transform) -> None:
    """``TypeError`` unless ``transform`` is an equifast transform or ``None``."""
    if transform is not None and not isinstance(transform, Transform):
        raise TypeError(f"Expected `transform` to be an equifast transform (ef.Rotation(1), "
                        f"ef.Translation(1, 1), ...) or None, but got {transform!r}.")


def check_input_size(size) -> Tuple[int, int]:
    """``size`` as ``(H, W)``, two positive ints; ``ValueError`` otherwise."""
    return check_size(size, "`input_size`")


def check_options(metric: str = METRICS[0], vector_mode: str = VECTOR_MODES[0],
                  eps: float = TOLERANCE) -> None:
    """``ValueError`` unless ``metric``, ``vector_mode`` and ``eps`` are ones SPEC defines."""
    if metric not in METRICS:
        raise ValueError(f"Expected `metric` to be one of {METRICS}, but got {metric!r}.")
    if vector_mode not in VECTOR_MODES:
        raise ValueError(f"Expected `vector_mode` to be one of {VECTOR_MODES}, but got {vector_mode!r}.")
    # NaN made every score undefined, a negative eps made constant rows defined, and an int
    # beyond any float (10**400) failed later in float() with a bare OverflowError
    if (isinstance(eps, bool) or not isinstance(eps, numbers.Real)
            or not 0 <= eps < math.inf or eps > sys.float_info.max):
        raise ValueError(f"Expected `eps` to be a finite number >= 0, but got {eps!r:.40}.")


def vector_scores(fx: torch.Tensor, ftx: torch.Tensor, metric: str, vector_mode: str,
                  eps: float = TOLERANCE) -> Scores:
    """Scores of vectors ``[N, K]`` (``T_l`` is the identity)."""
    n, k = fx.shape
    if vector_mode == "per_image":
        s = similarity_matrix(fx.unsqueeze(1), ftx.unsqueeze(1), metric, eps)  # [N, 1, 1]
        value = s.reshape(n, 1).clamp_min(0).float().expand(n, k).contiguous()
        index = torch.arange(k, device=fx.device).expand(n, k).masked_fill(torch.isnan(value), -1)
        return Scores(value, value.clone(), index.contiguous())
    if n < 2:
        raise ValueError(
            f"Expected at least two images for vector_mode='across_images', but got {n}."
        )
    s = similarity_matrix(fx.T, ftx.T, metric, eps).unsqueeze(0)  # [1, K, K] over images
    sc = scores_from_similarity(s)
    return Scores(*(t.expand(n, k).contiguous() for t in sc))


def equivariance_scores(fx: torch.Tensor, ftx: torch.Tensor, transform: Optional[Transform] = None,
                        metric: str = "correlation", input_size=None,
                        vector_mode: str = "per_image", eps: float = TOLERANCE) -> Scores:
    """Channel and layer scores of one representation, the plain way (see module docs).

    Args:
        fx: ``f_l(x)``, ``[N, K, h, w]`` or ``[N, K]``.
        ftx: ``f_l(T(x))``, same shape.
        transform: ``T``; ``T_l`` is applied to ``fx`` here. ``None`` means the identity.
        metric: ``"correlation"`` or ``"cosine"``.
        input_size: ``(H, W)`` of the image ``T`` acted on; defaults to the map's size.
        vector_mode: ``"per_image"`` or ``"across_images"`` (vectors only).
        eps: the tolerance for undefined vectors.

    Returns:
        :class:`Scores`, each ``[N, K]``.
    """
    check_pair(fx, ftx)
    check_options(metric, vector_mode, eps)
    check_transform(transform)
    if input_size is not None:
        input_size = check_input_size(input_size)
    fx, ftx = fx.detach(), ftx.detach()  # scores are measurements: no gradient, as every backend
    if is_vector(fx):
        if transform is not None and input_size is not None:
            transform.check_input(input_size)
        return vector_scores(fx.flatten(1), ftx.flatten(1), metric, vector_mode, eps)
    size = input_size or (int(fx.shape[-2]), int(fx.shape[-1]))
    if transform is not None:
        transform.check_input(size)  # a shift as large as the map wrapped around to the identity
    a, b = compared_pairs(fx, ftx, transform, size)
    return scores_from_similarity(similarity_matrix(a, b, metric, eps))
