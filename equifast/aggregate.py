"""Streaming aggregation (SPEC section 1, "Aggregation"), in states that merge exactly.

Each state is a set of sums with an ``update`` (one batch), a ``merge`` (another state of
the same quantity: another batch stream, process or Ray worker) and a ``compute``. Score
sums are kept as integers in fixed point (``2**-40``, Python ints, so they never overflow;
a batch's sums on the device are split in high and low bits so that int64 cannot wrap):
addition of integers is associative, so a result does not depend on how the images were cut
into batches or workers. Activation moments are float64 sums; the ``across_images`` means and
centred moments are float64 (the K x K cross products float32, scaled to correlations) and
combine by Chan's pairwise formulas.
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

from .reference import TOLERANCE, Scores, check_options, scores_from_similarity

__all__ = ["flat_in_memory_order", "ScoreState", "VectorState", "ActivationState", "FIXED_POINT"]

FIXED_POINT = 2 ** 40


_LOW_BITS = 20  # a batch's fixed-point values are summed as high and low bits (see batch_sums)


def flat_in_memory_order(t: torch.Tensor) -> torch.Tensor:
    """The values of ``t`` as one flat tensor in the order they lie in memory: a view of a dense
    tensor in any layout, else a copy. Reductions over it read memory once, in order; across a
    channels-last tensor's own axes they run 5-9x slower."""
    order = sorted(range(t.dim()), key=t.stride, reverse=True)
    return t.permute(order).reshape(-1)


@dataclass
class ScoreState:
    """Sums of the channel and layer scores of one (point, transform) over the images seen."""

    channel_sum: int = 0
    layer_sum: int = 0
    channel_defined: int = 0
    layer_defined: int = 0
    entries: int = 0
    offdiagonal: int = 0  # layer maxima found at k' != k: rotated copies live in other channels
    n_images: int = 0

    def update(self, scores: Scores) -> "ScoreState":
        """Add the scores of one batch (each ``[N, K]``)."""
        n, k = scores.channel.shape
        return self.add(self.batch_sums([scores])[0].tolist(), n, k)

    @staticmethod
    def batch_sums(batches: Sequence[Scores]) -> torch.Tensor:
        """The sums :meth:`add` takes, for each of several batches of scores (``[N, K]`` each,
        any sizes), as int64 ``[len(batches), 7]`` where the scores live.

        No host transfer, so that a caller fetches the sums of many batches (points, transforms)
        at once; and one set of kernels for all of them (a few dozen, not a few dozen each: on a
        GPU each launch costs more than these small sums). Scores are summed in fixed point,
        ``round(v * 2**40)``, as their high and low 20 bits: each sum stays below
        ``entries * 2**20``, where one int64 sum of whole values would wrap past 2**23 entries.
        """
        device = batches[0].channel.device
        sizes = [s.channel.numel() for s in batches]
        total = sum(sizes)
        channel, layer, index = (torch.cat([t.detach().reshape(-1) for t in ts])
                                 for ts in zip(*batches))
        # batch of each entry, and the entry's own channel k (its position modulo K)
        starts, widths, counts = torch.tensor(
            [[0, *itertools.accumulate(sizes[:-1])], [s.channel.shape[1] for s in batches],
             sizes]).to(device, non_blocking=True)
        batch = torch.repeat_interleave(torch.arange(len(batches), device=device), counts,
                                        output_size=total)
        own = (torch.arange(total, device=device) - starts[batch]) % widths[batch]
        both = torch.stack([channel, layer])
        fixed = torch.round(torch.nan_to_num(both.double(), nan=0.0) * FIXED_POINT).long()
        values = torch.cat([fixed >> _LOW_BITS, fixed & ((1 << _LOW_BITS) - 1),
                            (both == both).long(),  # defined: not NaN
                            ((index >= 0) & (index != own)).long().view(1, -1)])
        sums = torch.zeros(values.shape[0], len(batches), dtype=torch.long, device=device)
        return sums.index_add_(1, batch, values).T  # integer sums: exact in any order

    def add(self, sums: Sequence[int], n: int, k: int) -> "ScoreState":
        """Add :meth:`batch_sums` of a batch of ``n`` images and ``k`` channels (as ints)."""
        self.channel_sum += (sums[0] << _LOW_BITS) + sums[2]
        self.layer_sum += (sums[1] << _LOW_BITS) + sums[3]
        self.channel_defined += sums[4]
        self.layer_defined += sums[5]
        self.offdiagonal += sums[6]
        self.entries += n * k
        self.n_images += n
        return self

    def merge(self, other: "ScoreState") -> "ScoreState":
        """Add another state's sums (exact)."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def compute(self) -> Dict[str, float]:
        """Means over the defined entries, and the fraction of undefined ones beside them."""
        nan = float("nan")
        return {
            "channel": self.channel_sum / FIXED_POINT / self.channel_defined if self.channel_defined else nan,
            "layer": self.layer_sum / FIXED_POINT / self.layer_defined if self.layer_defined else nan,
            "undefined_fraction": 1 - self.channel_defined / self.entries if self.entries else nan,
            "layer_undefined_fraction": 1 - self.layer_defined / self.entries if self.entries else nan,
            "offdiagonal_fraction": self.offdiagonal / self.layer_defined if self.layer_defined else nan,
            "n_images": self.n_images,
        }


def _scale(c: torch.Tensor) -> torch.Tensor:
    """``sqrt(c)`` of centred sums of squares, 1 where a channel has no spread (its centred
    cross products are zero there too)."""
    return torch.where(c > 0, c.sqrt(), torch.ones_like(c))


_BLOCK = 1 << 20  # float64 values of one transient block of VectorState's K x K matrix: 8 MiB


def _row_blocks(k: int):
    step = max(1, _BLOCK // max(k, 1))
    return [slice(i, min(i + step, k)) for i in range(0, k, step)]


@dataclass
class VectorState:
    """Statistics for ``vector_mode="across_images"``: per channel, similarity across all images.

    Holds, in float64, the means of ``u`` and ``v`` per channel and their centred second
    moments ``sum (u - mean u)^2``, ``sum (v - mean v)^2`` and the diagonal of
    ``C = sum (u - mean u)(v - mean v)^T``; and ``C`` itself (``K x K``, the one term that grows
    with the width; the layer score's maximum over ``k'`` needs all of it) as ``corr``: ``C``
    divided by the square roots of those moments (their correlations, within [-1, 1]), in
    float32: 16 MiB for 2048 channels. Bounded, it neither overflows nor underflows float32 for
    activations of any size; each batch rounds it once (6e-8 of a score), as the operator
    accumulates its dot products in float32 (SPEC section 5) while the channel scores keep the
    float64 diagonal. So any number of images fits in memory. Batches and states combine by
    Chan's parallel formulas, in float64 blocks of at most 8 MiB: raw sums of squares would lose
    the spread of vectors whose mean is large beside it (logits near 1e3 that differ by 1e-2),
    more so the more batches they came in.
    The moments serve every metric: :meth:`scores` takes the metric.
    """

    eps: float = TOLERANCE
    n: int = 0
    mu: Optional[torch.Tensor] = None
    mv: Optional[torch.Tensor] = None
    cuu: Optional[torch.Tensor] = None
    cvv: Optional[torch.Tensor] = None
    cdiag: Optional[torch.Tensor] = None
    corr: Optional[torch.Tensor] = None

    def __setstate__(self, state: dict) -> None:
        # a state kept before corr (a sweep's shard): float64 C as ``cuv``
        cuv = state.pop("cuv", None)
        self.__dict__.update(state)
        if cuv is not None:
            self.cdiag = cuv.diagonal().clone()
            self.corr = (cuv / torch.outer(_scale(self.cuu), _scale(self.cvv))).float()

    def update(self, fx: torch.Tensor, ftx: torch.Tensor) -> "VectorState":
        """Add a batch of vectors ``fx = f(x)``, ``ftx = f(T(x))`` (``[N, K]``)."""
        # where the vectors live: on a GPU, no wait for each point and transform
        u, v = fx.detach().flatten(1).double(), ftx.detach().flatten(1).double()
        mu, mv = u.mean(0), v.mean(0)
        cu, cv = u - mu, v - mv  # the batch's own centred moments, in two passes
        cuu, cvv, cdiag = (cu * cu).sum(0), (cv * cv).sum(0), (cu * cv).sum(0)
        cu, cv = cu / _scale(cuu), cv / _scale(cvv)
        return self._add(u.shape[0], mu, mv, cuu, cvv, cdiag, lambda rows: cu[:, rows].T @ cv)

    def merge(self, other: "VectorState") -> "VectorState":
        """Add another state's images (Chan et al.'s pairwise update of means and moments)."""
        if other.eps != self.eps:
            raise ValueError(f"Expected a state of the same eps, but got {other.eps} beside "
                             f"{self.eps}.")
        if other.n == 0:
            return self
        device = self.mu.device if self.n else other.mu.device
        o = copy.copy(other).to(device)
        return self._add(o.n, o.mu, o.mv, o.cuu, o.cvv, o.cdiag,
                         lambda rows: o.corr[rows].double())

    def _add(self, m, mu, mv, cuu, cvv, cdiag, corr_rows) -> "VectorState":
        """Add ``m`` images of these moments; ``corr_rows(rows)``: their ``corr[rows]``, float64."""
        k = mu.numel()
        if self.n == 0:
            self.n, self.mu, self.mv, self.cuu, self.cvv, self.cdiag = (
                m, mu.clone(), mv.clone(), cuu.clone(), cvv.clone(), cdiag.clone())
            self.corr = torch.empty(k, k, dtype=torch.float32, device=mu.device)
            for rows in _row_blocks(k):
                self.corr[rows] = corr_rows(rows)
            return self
        n = self.n + m
        du, dv = mu - self.mu, mv - self.mv
        w = self.n * m / n
        new_uu = self.cuu + cuu + w * du * du
        new_vv = self.cvv + cvv + w * dv * dv
        su, sv = _scale(new_uu), _scale(new_vv)
        # every factor is a ratio to the new scale, at most 1: nothing overflows
        au, av = _scale(self.cuu) / su, _scale(self.cvv) / sv
        bu, bv = _scale(cuu) / su, _scale(cvv) / sv
        wu, wv = w ** 0.5 * du / su, w ** 0.5 * dv / sv
        for rows in _row_blocks(k):
            block = self.corr[rows].double() * torch.outer(au[rows], av)
            block += corr_rows(rows) * torch.outer(bu[rows], bv)
            block += torch.outer(wu[rows], wv)
            self.corr[rows] = block  # float32: one rounding a batch
        self.cdiag = self.cdiag + cdiag + w * du * dv
        self.cuu, self.cvv = new_uu, new_vv
        self.mu = self.mu + du * (m / n)
        self.mv = self.mv + dv * (m / n)
        self.n = n
        return self

    def to(self, device) -> "VectorState":
        """Move the statistics to ``device`` (in place; returns this state)."""
        for name in ("mu", "mv", "cuu", "cvv", "cdiag", "corr"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self

    def scores(self, metric: str = "correlation") -> Scores:
        """Channel and layer scores ``[1, K]`` of ``metric`` across the images seen."""
        if self.n < 2:
            raise ValueError(
                f"Expected at least two images for vector_mode='across_images', but got {self.n}."
            )
        n = self.n
        # the raw sums of squares (cosine, and the tolerance's scale) from the centred ones:
        # adding positive terms loses nothing
        suu, svv = self.cuu + n * self.mu * self.mu, self.cvv + n * self.mv * self.mv
        check_options(metric)
        if metric == "correlation":
            nu, nv = self.cuu.sqrt(), self.cvv.sqrt()
        else:
            nu, nv = suu.sqrt(), svv.sqrt()
        du = nu > self.eps * suu.sqrt()
        dv = nv > self.eps * svv.sqrt()
        nu, nv = torch.where(du, nu, 1.0), torch.where(dv, nv, 1.0)
        # C / (|u| |v|) from corr = C / (sqrt(cuu) sqrt(cvv)); cosine adds n mu mv^T to C
        s = self.corr.double() * torch.outer(_scale(self.cuu) / nu, _scale(self.cvv) / nv)
        diag = self.cdiag
        if metric == "cosine":
            s += torch.outer(n ** 0.5 * self.mu / nu, n ** 0.5 * self.mv / nv)
            diag = diag + n * self.mu * self.mv
        s = s.masked_fill(~(du.unsqueeze(1) & dv.unsqueeze(0)), float("nan"))
        # the maximum over k' of one matrix, its diagonal too: equal channels tie as in the
        # reference (the smallest k'), where the float64 diagonal beside float32 entries did not
        _, layer, index = scores_from_similarity(s.unsqueeze(0))
        channel = (diag / (nu * nv)).masked_fill(~(du & dv), float("nan")).clamp_min(0).float()
        channel = channel.unsqueeze(0)
        own = index == torch.arange(index.shape[-1], device=index.device)
        layer = torch.where(own, channel, torch.fmax(layer, channel))  # l >= c, as SPEC says
        return Scores(channel, layer, index)


@dataclass
class ActivationState:
    """Mean and mean magnitude of a representation's activations (the metric-bias analysis)."""

    total: float = 0.0
    magnitude: float = 0.0
    count: int = 0

    def update(self, f: torch.Tensor) -> "ActivationState":
        """Add a batch of activations."""
        return self.add(self.finite_sums(f, self.batch_sums(f).tolist()), f.numel())

    @staticmethod
    def batch_sums(f: torch.Tensor, wide: bool = False) -> torch.Tensor:
        """The sum and sum of magnitudes of ``f`` (float64), where ``f`` lives (no host transfer).

        Each image's values are summed in float32 (float64 for a float64 ``f``, or ``wide``)
        by torch's cascaded sums (relative error about 1e-8, whatever the map's size), the
        images' sums in float64: a float64 sum of the whole map would first copy it to float64
        on the CPU, 10x slower. (``vector_norm(ord=1)`` adds one value after another on the
        CPU: 6e-4 off for 64 x 300 x 300 values.) An image's float32 sum past 3.4e38 is
        infinite: :meth:`finite_sums` sums that batch again, ``wide``.
        """
        if f.numel() == 0:
            return torch.zeros(2, dtype=torch.float64, device=f.device)
        acc = torch.float64 if wide else torch.promote_types(f.dtype, torch.float32)
        # any split of the values into rows gives the same total; the images' is one
        rows = flat_in_memory_order(f.detach()).view(f.shape[0] if f.dim() else 1, -1)
        return torch.stack([rows.sum(1, dtype=acc).sum(dtype=torch.float64),
                            rows.abs().sum(1, dtype=acc).sum(dtype=torch.float64)])

    @classmethod
    def finite_sums(cls, f: torch.Tensor, sums: Sequence[float]) -> Sequence[float]:
        """``sums``, :meth:`batch_sums` of ``f`` (as floats), or where they overflowed float32
        (activations near 1e36 and more), those of float64 sums."""
        if all(math.isfinite(v) for v in sums):
            return sums
        return cls.batch_sums(f, wide=True).tolist()

    def add(self, sums: Sequence[float], count: int) -> "ActivationState":
        """Add :meth:`batch_sums` of ``count`` activations (as floats)."""
        self.total += sums[0]
        self.magnitude += sums[1]
        self.count += count
        return self

    def merge(self, other: "ActivationState") -> "ActivationState":
        """Add ``other``'s sums into this state; returns this state."""
        self.total += other.total
        self.magnitude += other.magnitude
        self.count += other.count
        return self

    def compute(self) -> Dict[str, float]:
        """``mean_activation`` and ``mean_magnitude`` (NaN before any value)."""
        nan = float("nan")
        return {"mean_activation": self.total / self.count if self.count else nan,
                "mean_magnitude": self.magnitude / self.count if self.count else nan}
