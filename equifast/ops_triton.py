"""The operator's CUDA kernels written in Triton (opt-in: ``EQUIFAST_CUDA_KERNEL=triton``).

Same contract as :func:`equifast.ops.equivariance_scores` (SPEC sections 1 and 5), for CUDA
tensors; ``equifast.ops`` calls it instead of ``csrc/cuda`` when the variable is set (calls of
``torch.ops.equifast.equivariance_scores`` itself keep the compiled kernels). Issue #6
measured those hand-written WMMA kernels at 2-9% of their roofline, bound by the instructions
of their staging and of an epilogue that reads the tile back from shared memory. Here Triton
schedules the tensor cores (``wgmma`` on sm_90) and pipelines the loads (``cp.async``), and
the row max is taken on the accumulators in registers. Two ways, chosen by ``K`` alone
(:func:`single_pass`), so that an image's scores never depend on its batch:

- **Single pass** (``K <= 256`` by default, where reading the maps outlasts the products):
  ``_single_pass_tiles`` reads each value once. Every row is shifted by the mean of 64 of its
  values spread over the map and scaled by a power of two (``_sample_shift``); the tile's
  products of the shifted values, rounded to the multiplication type, and float64 sums of the
  same values give S = (Σ u'v' - s_u s_v / P) / (||u - μ|| ||v - ν||) in the epilogue, the
  statistics and undefined rule being those of ``csrc/scores.h``. An image with a row whose
  scaled values could leave the products' range (a row much larger or smaller than its
  sample) is flagged, and the two passes below score it again, on the device, without a sync.
- **Two passes**: ``_row_stats``, per (block of 16 rows, image, side), reads the values once for
  float64 shifted sums (mean, ``1 / norm``, 0 where undefined); ``_similarity_tiles``, per
  (row tile, image, column split), builds each column tile of S = Â B̂ᵀ from values normalised
  in float32 as they are loaded (the row pre-scaled by a power of two and the float64 mean split
  in two floats); ``_combine`` merges the column splits in order when there are several.

Either way the running max / arg-max over the defined columns (ties: the smallest ``k'``) and
the diagonal are kept per row, and S never leaves the program. ``tensor_cores=False`` multiplies
in float32 FMA, with sums in two levels (as the CUDA float32 kernel, for sparse maps).

The kernels run on a CPU under Triton's interpreter, which is how the tests check them on
machines without a GPU (``tests/test_ops_triton.py``), and :func:`compile_kernels` compiles them
for sm_80 / sm_90 without a GPU. They have not yet run on a GPU: ``benchmarks/gpu_check.sh``
tests and times them beside the compiled kernels.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

import triton
import triton.language as tl

# The oldest Triton known to run these kernels: by hand, tests/test_ops_triton.py compiled
# them for sm_80 / sm_90 with 3.3.1, 3.4, 3.5.1, 3.6 and 3.8, and its interpreter battery
# passed with 3.3.1, 3.6 (NumPy 2.3) and 3.8. Older ones are unchecked: the compile check
# cannot run on 3.2, whose compiler API (ASTSource) differs.
MIN_TRITON = (3, 3)


def _triton_version(text: str) -> Tuple[int, int]:
    found = re.match(r"(\d+)\.(\d+)", text)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


if _triton_version(triton.__version__) < MIN_TRITON:
    raise ImportError(f"equifast's Triton kernels need Triton >= {MIN_TRITON[0]}.{MIN_TRITON[1]}, "
                      f"found {triton.__version__}")

__all__ = ["equivariance_scores", "tiles_for", "single_pass", "sample_positions",
           "compile_kernels"]

# Exact float32 (no tensor cores): dot products of BK positions summed per group of _GROUP
# before the row's float32 sum. TF32 / float16 rounding dominates otherwise (one level).
_GROUP = 16
_MAX_IMAGES = 65535  # a launch's images (the grid's second dimension)


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------

@triton.jit
def _offsets(idx_ptr, p, ok, W, s_h, s_w, WIDE: tl.constexpr):
    """Memory offsets of the compared positions p (flat i * W + j, read from idx_ptr), 64-bit
    when the tensors' extents or H * W need it (the positions are read in 32 bits otherwise)."""
    # (each constexpr branch assigns: Triton types a function by all of its returns)
    if WIDE:
        pos = tl.load(idx_ptr + p, mask=ok, other=0)
    else:
        pos = tl.load(idx_ptr + p, mask=ok, other=0).to(tl.int32)
    return (pos // W) * s_h + (pos % W) * s_w


@triton.jit
def _plane(N, K):
    """N * K in 64 bits: a plane of the [side, ..., N, K] buffers (N * K >= 2^31 in one call
    with millions of images)."""
    # tl.cast, not N.to: N or K may be specialised to the constant 1
    return tl.cast(N, tl.int64) * K


@triton.jit
def _rows_offset(rows, s_k, WIDE: tl.constexpr):
    if WIDE:
        out = rows.to(tl.int64) * s_k
    else:
        out = rows * s_k
    return out


@triton.jit
def _side(side, n, rows, a_ptr, b_ptr, a_idx, b_idx, sa_n, sa_k, sa_h, sa_w, sb_n, sb_k, sb_h,
          sb_w, WIDE: tl.constexpr):
    """Image n of one side (0: A = fx through a_idx, 1: B = ftx through b_idx): its start, index
    map, the offsets of rows and its H and W strides."""
    image = tl.where(side == 0, a_ptr + n * sa_n, b_ptr + n * sb_n)
    rows_offset = _rows_offset(rows, tl.where(side == 0, sa_k, sb_k), WIDE)
    return (image, tl.where(side == 0, a_idx, b_idx), rows_offset,
            tl.where(side == 0, sa_h, sb_h), tl.where(side == 0, sa_w, sb_w))


@triton.jit
def _power_of_two(exponent):
    """2^exponent as float32, exactly, for integer exponents in [-126, 127]."""
    return ((127 + exponent) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _to_dot(x, DOT: tl.constexpr, PRECISION: tl.constexpr):
    """float32 values in the multiplication type: for TF32, rounded to nearest (ties away, as
    cvt.rna.tf32) here, since the tensor cores would drop the low 13 bits (a bias of up to
    2^-10 a value, all towards zero); the interpreter multiplies these same values exactly."""
    if PRECISION == "tf32":
        out = ((x.to(tl.int32, bitcast=True) + 0x1000) & -8192).to(tl.float32, bitcast=True)
    else:
        out = x.to(DOT)
    return out


@triton.jit
def _row_statistics(c, s, q, P, eps, CENTERED: tl.constexpr):
    """Rows' float64 mean and 1 / norm (0 where undefined) from their sums s = Σ(u - c) and
    q = Σ(u - c)^2 over the P compared positions (scores.h's shifted_sums and is_defined)."""
    if CENTERED:
        m = s / P
        mean = c + m
        ss_centred = tl.maximum(q - s * m, 0.0)
        ss_raw = q + c * (2.0 * s + P * c)
    else:
        mean = c
        ss_centred = q
        ss_raw = q
    # ||u - mean|| > eps ||u|| (false for NaN)
    defined = tl.sqrt(ss_centred) > eps * tl.sqrt(ss_raw)
    return mean, tl.where(defined, 1.0 / tl.sqrt(tl.where(defined, ss_centred, 1.0)), 0.0)


@triton.jit
def _fold(s, col_defined, rows, cols, col0, best, best_k, diag):
    """A column tile of similarities s folded into the rows' running max / arg-max over the
    defined columns (ties: the smallest k') and their diagonal."""
    candidates = tl.where(col_defined[None, :], s, float("-inf"))
    tile_best, tile_k = tl.max(candidates, axis=1, return_indices=True,
                               return_indices_tie_break_left=True)
    better = tile_best > best  # strict: an earlier column keeps a tie
    best_k = tl.where(better, col0 + tile_k, best_k)
    best = tl.where(better, tile_best, best)
    diag += tl.sum(tl.where(rows[:, None] == cols[None, :], s, 0.0), axis=1)
    return best, best_k, diag


@triton.jit
def _finish(best, best_k, diag, row_defined, pair_defined, i, ok, channel_ptr, layer_ptr,
            index_ptr):
    """Store the scores of rows i: the undefined rules and scores.h's score (clamped to [0, 1])."""
    scored = row_defined & (best > float("-inf"))
    nan = float("nan")
    channel = tl.minimum(tl.maximum(diag, 0.0), 1.0)
    layer = tl.minimum(tl.maximum(best, 0.0), 1.0)
    tl.store(channel_ptr + i, tl.where(pair_defined, channel, nan), mask=ok)
    tl.store(layer_ptr + i, tl.where(scored, layer, nan), mask=ok)
    tl.store(index_ptr + i, tl.where(scored, best_k.to(tl.int64), -1), mask=ok)


# ---------------------------------------------------------------------------------------
# Two passes
# ---------------------------------------------------------------------------------------

# The batch-size arguments are not specialised (equal to 1, divisible by 16): they only offset
# whole images, and each specialisation is one more compile of every tile kernel.
@triton.jit(do_not_specialize=["n0", "N"])
def _row_stats(a_ptr, b_ptr, a_idx, b_idx, stats_ptr, flags_ptr, n0, N, K, P, W,
               sa_n, sa_k, sa_h, sa_w, sb_n, sb_k, sb_h, sb_w, eps_hi, eps_lo,
               CENTERED: tl.constexpr, ONLY_FLAGGED: tl.constexpr, WIDE: tl.constexpr,
               BR: tl.constexpr, BP: tl.constexpr):
    n = n0 + tl.program_id(1).to(tl.int64)
    if ONLY_FLAGGED:  # the single pass's images to score again, alone
        if tl.load(flags_ptr + n) == 0:
            return
    side = tl.program_id(2)
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    row_ok = rows < K
    image, idx_ptr, rows_offset, s_h, s_w = _side(side, n, rows, a_ptr, b_ptr, a_idx, b_idx, sa_n,
                                                  sa_k, sa_h, sa_w, sb_n, sb_k, sb_h, sb_w, WIDE)
    # One read: float64 sums of u - c, c the row's first compared value (scores.h's
    # shifted_sums; 0 for cosine), so that a constant row sums to exactly 0.
    if CENTERED:
        first = _offsets(idx_ptr, 0, True, W, s_h, s_w, WIDE)
        c = tl.load(image + rows_offset + first, mask=row_ok, other=0.0).to(tl.float64)
    else:
        c = tl.zeros([BR], dtype=tl.float64)
    s = tl.zeros([BR], dtype=tl.float64)
    q = tl.zeros([BR], dtype=tl.float64)
    for p0 in range(0, P, BP):
        p = p0 + tl.arange(0, BP)
        ok = row_ok[:, None] & (p < P)[None, :]
        offset = _offsets(idx_ptr, p, p < P, W, s_h, s_w, WIDE)
        x = tl.load(image + (rows_offset[:, None] + offset[None, :]), mask=ok, other=0.0)
        d = tl.where(ok, x.to(tl.float64) - c[:, None], 0.0)
        s += tl.sum(d, axis=1)
        q += tl.sum(d * d, axis=1)
    eps = tl.cast(eps_hi, tl.float64) + tl.cast(eps_lo, tl.float64)
    mean, inv = _row_statistics(c, s, q, P, eps, CENTERED)
    nk = _plane(N, K)
    out = (2 * side) * nk + n * K + rows  # stats: [side, mean / inv, N, K]
    tl.store(stats_ptr + out, mean, mask=row_ok)
    tl.store(stats_ptr + out + nk, inv, mask=row_ok)


@triton.jit
def _normalising(mean_ptr, inv_ptr, i, ok):
    """How a block of rows is normalised in float32: value -> ((value f - m_hi) - m_lo) r.

    f = 2^e brings 1 / norm (float64) near 1 (r = (1 / norm) / f in [1, 2)), so that rows of
    any magnitude, subnormal ones included, normalise without overflow or loss; m_hi + m_lo is
    the float64 mean times f split in two floats (as scores.h's normalise_value_split)."""
    inv = tl.load(inv_ptr + i, mask=ok, other=0.0)
    exponent = ((inv.to(tl.int64, bitcast=True) >> 52) & 0x7FF) - 1023
    exponent = tl.where(inv > 0, tl.minimum(tl.maximum(exponent, -126), 127), 0).to(tl.int32)
    f = _power_of_two(exponent)
    mean = tl.load(mean_ptr + i, mask=ok, other=0.0) * f.to(tl.float64)
    m_hi = mean.to(tl.float32)
    return f, m_hi, (mean - m_hi.to(tl.float64)).to(tl.float32), (inv / f.to(tl.float64)).to(tl.float32)


@triton.jit
def _normalised(image, rows_offset, idx_ptr, p, P, W, s_h, s_w, f, m_hi, m_lo, r, row_ok,
                WIDE: tl.constexpr):
    """A block of rows' values at positions p, normalised, in float32 (0 outside them)."""
    offset = _offsets(idx_ptr, p, p < P, W, s_h, s_w, WIDE)
    ok = (row_ok & (r > 0))[:, None] & (p < P)[None, :]
    x = tl.load(image + (rows_offset[:, None] + offset[None, :]), mask=ok, other=0.0).to(tl.float32)
    value = ((x * f[:, None] - m_hi[:, None]) - m_lo[:, None]) * r[:, None]
    return tl.where(ok, value, 0.0)


@triton.jit
def _similarity_step(a_image, b_image, a_idx, b_idx, p, P, W, a_rows, b_cols, row_ok, col_ok,
                     sa_h, sa_w, sb_h, sb_w, fa, ma_hi, ma_lo, ra, fb, mb_hi, mb_lo, rb, acc,
                     DOT: tl.constexpr, PRECISION: tl.constexpr, WIDE: tl.constexpr):
    """One step of BK positions of the two passes' tiles: acc plus the products of the rows'
    and columns' normalised values, rounded to the multiplication type."""
    a = _normalised(a_image, a_rows, a_idx, p, P, W, sa_h, sa_w, fa, ma_hi, ma_lo, ra, row_ok, WIDE)
    b = _normalised(b_image, b_cols, b_idx, p, P, W, sb_h, sb_w, fb, mb_hi, mb_lo, rb, col_ok, WIDE)
    return tl.dot(_to_dot(a, DOT, PRECISION), tl.trans(_to_dot(b, DOT, PRECISION)), acc,
                  input_precision=PRECISION)


@triton.jit(do_not_specialize=["n0", "N", "tiles_per_split"])
def _similarity_tiles(a_ptr, b_ptr, a_idx, b_idx, mean_a, inv_a, mean_b, inv_b,
                      max_ptr, arg_ptr, diag_ptr, channel_ptr, layer_ptr, index_ptr, flags_ptr,
                      n0, N, K, P, W, sa_n, sa_k, sa_h, sa_w, sb_n, sb_k, sb_h, sb_w,
                      tiles_per_split, DOT: tl.constexpr, PRECISION: tl.constexpr,
                      GROUP: tl.constexpr, FINAL: tl.constexpr, ONLY_FLAGGED: tl.constexpr,
                      WIDE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    n = n0 + tl.program_id(1).to(tl.int64)
    if ONLY_FLAGGED:
        if tl.load(flags_ptr + n) == 0:
            return
    split = tl.program_id(2)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    row_ok = rows < K
    fa, ma_hi, ma_lo, ra = _normalising(mean_a, inv_a, n * K + rows, row_ok)
    a_image = a_ptr + n * sa_n  # 64-bit base; offsets within an image fit 32 bits unless WIDE
    b_image = b_ptr + n * sb_n
    a_rows = _rows_offset(rows, sa_k, WIDE)
    best = tl.full([BM], float("-inf"), dtype=tl.float32)
    best_k = tl.zeros([BM], dtype=tl.int32)
    diag = tl.zeros([BM], dtype=tl.float32)
    first = split * tiles_per_split
    last = tl.minimum(first + tiles_per_split, tl.cdiv(K, BN))
    for t in range(first, last):
        cols = t * BN + tl.arange(0, BN)
        col_ok = cols < K
        fb, mb_hi, mb_lo, rb = _normalising(mean_b, inv_b, n * K + cols, col_ok)
        b_cols = _rows_offset(cols, sb_k, WIDE)
        s = tl.zeros([BM, BN], dtype=tl.float32)
        if GROUP > 1:
            # exact float32: a group's dot products summed apart, then added to the row's sum
            # (one float32 sum over every position drifts on sparse maps)
            for g0 in range(0, P, BK * GROUP):
                part = tl.zeros([BM, BN], dtype=tl.float32)
                for p0 in range(g0, tl.minimum(g0 + BK * GROUP, P), BK):
                    part = _similarity_step(
                        a_image, b_image, a_idx, b_idx, p0 + tl.arange(0, BK), P, W, a_rows,
                        b_cols, row_ok, col_ok, sa_h, sa_w, sb_h, sb_w, fa, ma_hi, ma_lo, ra, fb,
                        mb_hi, mb_lo, rb, part, DOT, PRECISION, WIDE)
                s += part
        else:
            for p0 in range(0, P, BK):
                s = _similarity_step(
                    a_image, b_image, a_idx, b_idx, p0 + tl.arange(0, BK), P, W, a_rows, b_cols,
                    row_ok, col_ok, sa_h, sa_w, sb_h, sb_w, fa, ma_hi, ma_lo, ra, fb, mb_hi, mb_lo,
                    rb, s, DOT, PRECISION, WIDE)
        best, best_k, diag = _fold(s, col_ok & (rb > 0), rows, cols, t * BN, best, best_k, diag)
    if FINAL:  # one split: the scores themselves
        i = n * K + rows
        row_defined = ra > 0
        pair_defined = row_defined & (tl.load(inv_b + i, mask=row_ok, other=0.0) > 0)
        _finish(best, best_k, diag, row_defined, pair_defined, i, row_ok, channel_ptr, layer_ptr,
                index_ptr)
    else:
        out = split * _plane(N, K) + n * K + rows
        tl.store(max_ptr + out, best, mask=row_ok)
        tl.store(arg_ptr + out, best_k, mask=row_ok)
        tl.store(diag_ptr + out, diag, mask=row_ok)


@triton.jit(do_not_specialize=["NK", "splits"])
def _combine(max_ptr, arg_ptr, diag_ptr, inv_a, inv_b, channel_ptr, layer_ptr, index_ptr,
             NK, splits, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = i < NK
    best = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    best_k = tl.zeros([BLOCK], dtype=tl.int32)
    diag = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(0, splits):  # in column order, so a strict '>' keeps the smallest k'
        m = tl.load(max_ptr + s * NK + i, mask=ok, other=float("-inf"))
        better = m > best
        best_k = tl.where(better, tl.load(arg_ptr + s * NK + i, mask=ok, other=0), best_k)
        best = tl.where(better, m, best)
        diag += tl.load(diag_ptr + s * NK + i, mask=ok, other=0.0)
    row_defined = tl.load(inv_a + i, mask=ok, other=0.0) > 0
    pair_defined = row_defined & (tl.load(inv_b + i, mask=ok, other=0.0) > 0)
    _finish(best, best_k, diag, row_defined, pair_defined, i, ok, channel_ptr, layer_ptr, index_ptr)


# ---------------------------------------------------------------------------------------
# Single pass
# ---------------------------------------------------------------------------------------

@triton.jit
def _sample_shift(image, rows_offset, idx_ptr, P, W, s_h, s_w, row_ok, CENTERED: tl.constexpr,
                  WIDE: tl.constexpr):
    """Each row's shift c and scale from up to 64 compared positions spread over it.

    c (float64) is their mean (0 for cosine): close to the row's mean wherever its features lie
    in the map, and a constant row's value exactly. The scale is the power of two that brings
    their largest |u - c| into [1, 2) (1 when they are all c), so that the products of the
    shifted values stay in range for rows of any magnitude.
    """
    i = tl.arange(0, 64)
    count = tl.minimum(P, 64)
    used = i < count
    # one position in each of 64 equal runs, at a varying place in the run: a stride of a
    # multiple of W alone would sample one column of the map (its border, often)
    run = P // count
    offset = _offsets(idx_ptr, i * run + (i * 37) % run, used, W, s_h, s_w, WIDE)
    ok = row_ok[:, None] & used[None, :]
    x = tl.load(image + (rows_offset[:, None] + offset[None, :]), mask=ok, other=0.0).to(tl.float64)
    if CENTERED:
        c = tl.sum(x, axis=1) / count
    else:
        c = tl.zeros_like(tl.sum(x, axis=1))
    spread = tl.max(tl.where(ok, tl.abs(x - c[:, None]), 0.0), axis=1).to(tl.float32)
    # -floor(log2(spread)) from the float's exponent bits (exact, unlike exp2 / log2)
    exponent = 127 - ((spread.to(tl.int32, bitcast=True) >> 23) & 0xFF)
    exponent = tl.where(spread > 0, tl.minimum(tl.maximum(exponent, -100), 100), 0)
    return c, _power_of_two(exponent)


@triton.jit(do_not_specialize=["n0", "N"])
def _sample_shifts(a_ptr, b_ptr, a_idx, b_idx, shift_ptr, n0, N, K, P, W,
                   sa_n, sa_k, sa_h, sa_w, sb_n, sb_k, sb_h, sb_w, CENTERED: tl.constexpr,
                   WIDE: tl.constexpr, BR: tl.constexpr):
    """_sample_shift of every row of both sides, per (block of rows, image, side), into
    shift_ptr [side, shift / scale, N, K] (float64): 64 values a row, a small read beside the
    single pass's, which would otherwise hold these samples in its registers."""
    n = n0 + tl.program_id(1).to(tl.int64)
    side = tl.program_id(2)
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    row_ok = rows < K
    image, idx_ptr, rows_offset, s_h, s_w = _side(side, n, rows, a_ptr, b_ptr, a_idx, b_idx, sa_n,
                                                  sa_k, sa_h, sa_w, sb_n, sb_k, sb_h, sb_w, WIDE)
    c, scale = _sample_shift(image, rows_offset, idx_ptr, P, W, s_h, s_w, row_ok, CENTERED, WIDE)
    nk = _plane(N, K)
    out = (2 * side) * nk + n * K + rows
    tl.store(shift_ptr + out, c, mask=row_ok)
    tl.store(shift_ptr + out + nk, scale.to(tl.float64), mask=row_ok)


@triton.jit
def _load_shift(shift_ptr, side, N, K, i, ok):
    """A block of rows' shift (float64, and as two floats) and scale, from _sample_shifts."""
    nk = _plane(N, K)
    c = tl.load(shift_ptr + (2 * side) * nk + i, mask=ok, other=0.0)
    c_hi = c.to(tl.float32)
    scale = tl.load(shift_ptr + (2 * side + 1) * nk + i, mask=ok, other=1.0).to(tl.float32)
    return c, c_hi, (c - c_hi.to(tl.float64)).to(tl.float32), scale


@triton.jit
def _shifted(image, rows_offset, idx_ptr, p, P, W, s_h, s_w, c_hi, c_lo, scale, row_ok,
             WIDE: tl.constexpr):
    """A block of rows' values at positions p less the rows' shifts c (c_hi + c_lo), times the
    rows' scales, in float32 (0 outside the rows and positions)."""
    offset = _offsets(idx_ptr, p, p < P, W, s_h, s_w, WIDE)
    ok = row_ok[:, None] & (p < P)[None, :]
    x = tl.load(image + (rows_offset[:, None] + offset[None, :]), mask=ok, other=0.0).to(tl.float32)
    return tl.where(ok, ((x - c_hi[:, None]) - c_lo[:, None]) * scale[:, None], 0.0)


@triton.jit
def _single_pass_step(a_image, b_image, a_idx, b_idx, p, P, W, a_rows, b_cols, row_ok, col_ok,
                      sa_h, sa_w, sb_h, sb_w, ca_hi, ca_lo, a_scale, cb_hi, cb_lo, b_scale, acc,
                      sums_a, sums_b, DOT: tl.constexpr, PRECISION: tl.constexpr,
                      WIDE: tl.constexpr):
    """One step of BK positions of the single pass: the products of the shifted, scaled values
    (rounded to the multiplication type) and each side's sums of the same values (float32
    within the step, float64 across steps) and largest |value|: sums = (s, q, largest)."""
    a = _shifted(a_image, a_rows, a_idx, p, P, W, sa_h, sa_w, ca_hi, ca_lo, a_scale, row_ok, WIDE)
    b = _shifted(b_image, b_cols, b_idx, p, P, W, sb_h, sb_w, cb_hi, cb_lo, b_scale, col_ok, WIDE)
    acc = tl.dot(_to_dot(a, DOT, PRECISION), tl.trans(_to_dot(b, DOT, PRECISION)), acc,
                 input_precision=PRECISION)
    return acc, _add_sums(sums_a, a), _add_sums(sums_b, b)


@triton.jit
def _add_sums(sums, x):
    s, q, largest = sums
    return (s + tl.sum(x, axis=1).to(tl.float64), q + tl.sum(x * x, axis=1).to(tl.float64),
            tl.maximum(largest, tl.max(tl.abs(x), axis=1)))


@triton.jit
def _no_sums(like):
    zero = tl.zeros_like(like).to(tl.float64)
    return zero, zero, tl.zeros_like(like).to(tl.float32)


@triton.jit
def _out_of_range(largest, s_scaled, q_scaled, P, CENTERED: tl.constexpr,
                  RANGE_LOG2: tl.constexpr):
    """Rows (as int32 0 / 1) that the single pass may have scored wrong, for the two passes:
    - a largest scaled |u - c| outside [2^-(RANGE_LOG2 / 2), 2^(RANGE_LOG2 / 2)] (float32 squares
      or products that may overflow or underflow, float16 values out of its range), zero rows
      (dead channels) excepted;
    - squares that overflowed (a sum that is not finite; NaN input too);
    - a shift far from the row's mean (q more than 16 times the centred sum of squares): its
      float32 cancellation in the epilogue would lose that factor (a sample of 64 that misses
      where the row's values lie)."""
    limit = 2.0 ** (RANGE_LOG2 // 2)
    out = (largest > limit) | ((largest > 0) & (largest < 1.0 / limit))
    broken = (q_scaled != q_scaled) | (q_scaled == float("inf"))
    if CENTERED:
        far = q_scaled > 16.0 * (q_scaled - s_scaled * s_scaled / P)
    else:
        far = q_scaled != q_scaled  # no shift for cosine
    return (out | broken | far).to(tl.int32)


@triton.jit
def _scaled_statistics(c, scale, s_scaled, q_scaled, P, eps, CENTERED: tl.constexpr):
    """1 / norm of rows from the sums of their shifted values times scale (a power of two), as
    _row_statistics gives it from the unscaled sums."""
    f = scale.to(tl.float64)
    _, inv = _row_statistics(c, s_scaled / f, q_scaled / (f * f), P, eps, CENTERED)
    return inv


@triton.jit(do_not_specialize=["n0", "N"])
def _single_pass_tiles(a_ptr, b_ptr, a_idx, b_idx, shift_ptr, channel_ptr, layer_ptr, index_ptr,
                       flags_ptr, n0, N, K, P, W, sa_n, sa_k, sa_h, sa_w, sb_n, sb_k, sb_h, sb_w, eps_hi,
                       eps_lo, CENTERED: tl.constexpr, DOT: tl.constexpr,
                       PRECISION: tl.constexpr, GROUP: tl.constexpr, RANGE_LOG2: tl.constexpr,
                       WIDE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Per (row tile, image): every column tile of S from one read of the values (module
    docstring). An image with a row that _out_of_range names is flagged in flags_ptr, for the
    two passes to score again."""
    n = n0 + tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    row_ok = rows < K
    a_image = a_ptr + n * sa_n
    b_image = b_ptr + n * sb_n
    a_rows = _rows_offset(rows, sa_k, WIDE)
    eps = tl.cast(eps_hi, tl.float64) + tl.cast(eps_lo, tl.float64)
    ca, ca_hi, ca_lo, a_scale = _load_shift(shift_ptr, 0, N, K, n * K + rows, row_ok)
    best = tl.full([BM], float("-inf"), dtype=tl.float32)
    best_k = tl.zeros([BM], dtype=tl.int32)
    diag = tl.zeros([BM], dtype=tl.float32)
    diag_defined = tl.zeros([BM], dtype=tl.int32)
    unsafe = tl.zeros([BM], dtype=tl.int32)
    inv_a = tl.zeros([BM], dtype=tl.float64)
    s_a = tl.zeros([BM], dtype=tl.float64)
    q_a = tl.zeros([BM], dtype=tl.float64)
    largest_a = tl.zeros([BM], dtype=tl.float32)
    for t in range(0, tl.cdiv(K, BN)):
        cols = t * BN + tl.arange(0, BN)
        col_ok = cols < K
        b_cols = _rows_offset(cols, sb_k, WIDE)
        cb, cb_hi, cb_lo, b_scale = _load_shift(shift_ptr, 1, N, K, n * K + cols, col_ok)
        # sums of the scaled, shifted values; the rows' are taken again with every column tile
        # (the same values, the same sums)
        sums_a = _no_sums(rows)
        sums_b = _no_sums(cols)
        acc = tl.zeros([BM, BN], dtype=tl.float32)
        if GROUP > 1:  # exact float32: as in _similarity_tiles
            for g0 in range(0, P, BK * GROUP):
                part = tl.zeros([BM, BN], dtype=tl.float32)
                for p0 in range(g0, tl.minimum(g0 + BK * GROUP, P), BK):
                    part, sums_a, sums_b = _single_pass_step(
                        a_image, b_image, a_idx, b_idx, p0 + tl.arange(0, BK), P, W, a_rows,
                        b_cols, row_ok, col_ok, sa_h, sa_w, sb_h, sb_w, ca_hi, ca_lo, a_scale,
                        cb_hi, cb_lo, b_scale, part, sums_a, sums_b, DOT, PRECISION, WIDE)
                acc += part
        else:
            for p0 in range(0, P, BK):
                acc, sums_a, sums_b = _single_pass_step(
                    a_image, b_image, a_idx, b_idx, p0 + tl.arange(0, BK), P, W, a_rows, b_cols,
                    row_ok, col_ok, sa_h, sa_w, sb_h, sb_w, ca_hi, ca_lo, a_scale, cb_hi, cb_lo,
                    b_scale, acc, sums_a, sums_b, DOT, PRECISION, WIDE)
        s_a, q_a, largest_a = sums_a
        s_b, q_b, largest_b = sums_b
        inv_a = _scaled_statistics(ca, a_scale, s_a, q_a, P, eps, CENTERED)
        inv_b = _scaled_statistics(cb, b_scale, s_b, q_b, P, eps, CENTERED)
        # in the scaled values' units: S = (Σ u'v' - s'_u s'_v / P) (1 / ||u'||) (1 / ||v'||)
        inv_a_scaled = (inv_a / a_scale.to(tl.float64)).to(tl.float32)
        inv_b_scaled = (inv_b / b_scale.to(tl.float64)).to(tl.float32)
        if CENTERED:
            acc = acc - (s_a / P).to(tl.float32)[:, None] * s_b.to(tl.float32)[None, :]
        s = acc * inv_a_scaled[:, None] * inv_b_scaled[None, :]
        col_defined = col_ok & (inv_b > 0)
        best, best_k, diag = _fold(s, col_defined, rows, cols, t * BN, best, best_k, diag)
        diag_defined += tl.sum(tl.where(rows[:, None] == cols[None, :],
                                        col_defined.to(tl.int32)[None, :], 0), axis=1)
        unsafe += tl.sum(_out_of_range(largest_b, s_b, q_b, P, CENTERED, RANGE_LOG2) * col_ok,
                         axis=0)
    row_defined = inv_a > 0
    unsafe += _out_of_range(largest_a, s_a, q_a, P, CENTERED, RANGE_LOG2) * row_ok
    tl.atomic_max(flags_ptr + n, tl.max(unsafe, axis=0))
    _finish(best, best_k, diag, row_defined, row_defined & (diag_defined > 0), n * K + rows,
            row_ok, channel_ptr, layer_ptr, index_ptr)


def tiles_for(k: int, p: int, dtype: torch.dtype, tensor_cores: bool,
              single: bool = False) -> Tuple[int, int, int, int, int]:
    """``(BM, BN, BK, num_warps, num_stages)`` of the tile kernels for ``K`` channels and ``P``
    positions (``single``: the single pass's); ``EQUIFAST_TRITON_TILES="BM,BN,BK,WARPS,STAGES"``
    overrides it (to tune on a GPU).

    Few channels get short row tiles, so that a batch of large maps still fills the device
    (64 @ 56x56: 4 row tiles an image). Steps of 16 positions where 32 would spill (the single
    pass, 128-row tiles, float32 FMA); ``benchmarks/triton_registers.py`` tables the registers.
    """
    override = os.environ.get("EQUIFAST_TRITON_TILES")
    if override:
        try:
            bm, bn, bk, warps, stages = (int(v) for v in override.split(","))
        except ValueError:
            raise ValueError(f"Expected EQUIFAST_TRITON_TILES to be five integers "
                             f"'BM,BN,BK,WARPS,STAGES', but got {override!r}.") from None
        return bm, bn, bk, warps, stages
    bk = 16 if p <= 16 or single or not tensor_cores else 32
    if k <= 64:
        return 16, 64, bk, 4, 3
    if k <= 256:
        return 64, 64, bk, 8, 3
    return 128, 64, 16, 8, 3


def single_pass(k: int) -> bool:
    """Whether ``K`` channels take the single pass: by default up to 256, where the two passes'
    second read of the values weighs most (a map's reading outlasts its products on an H200 up
    to K of about 400); ``EQUIFAST_TRITON_SINGLE_PASS=1`` or ``0`` forces it on or off. It
    depends on ``K`` alone, never on the batch."""
    setting = os.environ.get("EQUIFAST_TRITON_SINGLE_PASS", "auto") or "auto"
    if setting not in ("auto", "0", "1"):
        raise ValueError(f"Expected EQUIFAST_TRITON_SINGLE_PASS to be 'auto', '0' or '1', but got "
                         f"{setting!r}.")
    return k <= 256 if setting == "auto" else setting == "1"


def _multiplication(dtype: torch.dtype, tensor_cores: bool) -> dict:
    """The tile kernels' multiplication constants: DOT, the type the values are multiplied in;
    PRECISION, tl.dot's input precision; GROUP, the steps whose products are summed apart
    (exact float32 only)."""
    if not tensor_cores:
        dot, precision = tl.float32, "ieee"
    elif dtype in (torch.float16, torch.bfloat16):
        dot, precision = (tl.float16 if dtype == torch.float16 else tl.bfloat16), "ieee"
    else:
        dot, precision = tl.float32, "tf32"
    group = _GROUP if precision == "ieee" and dot == tl.float32 else 1
    return {"DOT": dot, "PRECISION": precision, "GROUP": group}


def _range_log2(dot) -> int:
    """The single pass's range of scaled values (RANGE_LOG2): float16 holds them up to 2^15
    (squares summing to 2^30), float32 up to 2^50."""
    return 30 if dot == tl.float16 else 100


def _device_programs(device: torch.device) -> int:
    """About how many programs keep the device busy (four per SM; 528 off a GPU)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 528


def equivariance_scores(fx: Tensor, ftx: Tensor, a_index: Tensor, b_index: Tensor,
                        centered: bool, eps: float, tensor_cores: bool = True,
                        splits: Optional[int] = None, *, _flags: Optional[list] = None
                        ) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`equifast.ops.equivariance_scores` by the Triton kernels (inputs checked there).

    ``splits`` fixes the number of column splits of the two passes (default: enough programs
    for the device); the scores do not depend on it. ``_flags`` (tests): a list that receives
    the single pass's per-image flags (nonzero: scored again by the two passes). The kernels run
    on ``fx``'s device (Triton launches on the current one) and its current stream.
    """
    if fx.device.type != "cuda":  # the CPU: Triton's interpreter
        return _scores(fx, ftx, a_index, b_index, centered, eps, tensor_cores, splits, _flags)
    with torch.cuda.device(fx.device):
        return _scores(fx, ftx, a_index, b_index, centered, eps, tensor_cores, splits, _flags)


def _scores(fx, ftx, a_index, b_index, centered, eps, tensor_cores, splits, _flags):
    n, k, h, w = fx.shape
    p = int(a_index.shape[0])
    device = fx.device
    channel = torch.empty(n, k, dtype=torch.float32, device=device)
    layer = torch.empty(n, k, dtype=torch.float32, device=device)
    layer_index = torch.empty(n, k, dtype=torch.int64, device=device)
    if n * k == 0:
        return channel, layer, layer_index
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        tensor_cores = False  # TF32 and tl.dot's tensor cores need sm_80
    a_index, b_index = a_index.contiguous(), b_index.contiguous()
    single = single_pass(k)
    bm, bn, bk, warps, stages = tiles_for(k, p, fx.dtype, tensor_cores, single)
    mult = _multiplication(fx.dtype, tensor_cores)
    # an image's offsets, and the flat positions they come from, in 32 bits unless its extent
    # or its H * W (past the extent where a map is expanded: stride 0) needs more
    wide = max(_extent(fx), _extent(ftx), h * w - 1) >= 2 ** 31
    eps_hi = float(np.float32(eps))
    eps_lo = float(eps) - eps_hi  # the kernels add them back in float64
    strides = (*fx.stride(), *ftx.stride())
    flags = None
    if single:
        flags = torch.zeros(n, dtype=torch.int32, device=device)
        shifts = torch.empty(2, 2, n, k, dtype=torch.float64, device=device)
        for n0, count in _image_chunks(n):
            _sample_shifts[(triton.cdiv(k, 16), count, 2)](
                fx, ftx, a_index, b_index, shifts, n0, n, k, p, w, *strides,
                CENTERED=bool(centered), WIDE=wide, BR=16)
            _single_pass_tiles[(triton.cdiv(k, bm), count)](
                fx, ftx, a_index, b_index, shifts, channel, layer, layer_index, flags, n0, n, k, p, w,
                *strides, eps_hi, eps_lo, CENTERED=bool(centered), **mult,
                RANGE_LOG2=_range_log2(mult["DOT"]), WIDE=wide, BM=bm, BN=bn, BK=bk,
                num_warps=warps, num_stages=stages)
        if _flags is not None:
            _flags.append(flags)
        splits = 1  # then the two passes score the flagged images again (no host sync)
        bm, bn, bk, warps, stages = tiles_for(k, p, fx.dtype, tensor_cores)
    only = flags is not None
    stats = torch.empty(2, 2, n, k, dtype=torch.float64, device=device)  # side, mean / inv
    flags_ptr = flags if only else stats  # never read without ONLY_FLAGGED
    for n0, count in _image_chunks(n):
        _row_stats[(triton.cdiv(k, 16), count, 2)](
            fx, ftx, a_index, b_index, stats, flags_ptr, n0, n, k, p, w, *strides, eps_hi, eps_lo,
            CENTERED=bool(centered), ONLY_FLAGGED=only, WIDE=wide, BR=16, BP=64)
    col_tiles = triton.cdiv(k, bn)
    if splits is None:
        splits = min(col_tiles, max(1, triton.cdiv(_device_programs(device), triton.cdiv(k, bm) * n)))
    per_split = triton.cdiv(col_tiles, splits)
    splits = triton.cdiv(col_tiles, per_split)
    final = splits == 1
    if final:  # the tiles write the scores; the partial results' pointers are never read
        best, best_k, diag = channel, layer_index, layer
    else:  # per split: row max, its column, diagonal
        best = torch.empty(splits, n, k, dtype=torch.float32, device=device)
        best_k = torch.empty(splits, n, k, dtype=torch.int32, device=device)
        diag = torch.empty(splits, n, k, dtype=torch.float32, device=device)
    (mean_a, inv_a), (mean_b, inv_b) = stats
    for n0, count in _image_chunks(n):
        _similarity_tiles[(triton.cdiv(k, bm), count, splits)](
            fx, ftx, a_index, b_index, mean_a, inv_a, mean_b, inv_b, best, best_k, diag, channel,
            layer, layer_index, flags_ptr, n0, n, k, p, w, *strides, per_split, **mult,
            FINAL=final, ONLY_FLAGGED=only, WIDE=wide, BM=bm, BN=bn, BK=bk, num_warps=warps,
            num_stages=stages)
    if not final:
        block = 256
        _combine[(triton.cdiv(n * k, block),)](best, best_k, diag, inv_a, inv_b, channel, layer,
                                              layer_index, n * k, splits, BLOCK=block)
    return channel, layer, layer_index


def sample_positions(p: int) -> list:
    """The compared positions (indices into the index map) that ``_sample_shift`` reads: one
    in each of ``min(P, 64)`` equal runs, at a varying place in its run."""
    count = min(p, 64)
    run = p // count
    return [i * run + (i * 37) % run for i in range(count)]


def _extent(x: Tensor) -> int:
    """The largest element offset within one image of x (its K, H and W strides)."""
    return sum((size - 1) * abs(stride) for size, stride in zip(x.shape[1:], x.stride()[1:]))


def _image_chunks(n: int):
    """(first image, count) of each launch: the grid's second dimension holds 65535 at most."""
    for n0 in range(0, n, _MAX_IMAGES):
        yield n0, min(_MAX_IMAGES, n - n0)


_POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def compile_kernels(arch: int = 90, dtypes=tuple(_POINTER)):
    """Compile every kernel, for each input type in ``dtypes`` and every tile choice of
    :func:`tiles_for`, ahead of time for ``sm_<arch>`` (no GPU needed). Yields ``(name, ptx)``."""
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", arch, 32)

    def build(fn, pointers, constants, **options):
        signature = {name: "constexpr" if name in constants else pointers.get(name, "i32")
                     for name in fn.arg_names}
        signature.update({name: "fp32" for name in ("eps_hi", "eps_lo") if name in signature})
        source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constants)
        return triton.compile(source, target=target, options=options).asm["ptx"]

    common = {"a_idx": "*i64", "b_idx": "*i64", "flags_ptr": "*i32", "channel_ptr": "*fp32",
              "layer_ptr": "*fp32", "index_ptr": "*i64"}

    def tiles_pointers(sides):
        return {**sides, "mean_a": "*fp64", "inv_a": "*fp64", "mean_b": "*fp64", "inv_b": "*fp64",
                "max_ptr": "*fp32", "arg_ptr": "*i32", "diag_ptr": "*fp32"}

    for dtype in dtypes:
        pointer = _POINTER[dtype]
        sides = {**common, "a_ptr": pointer, "b_ptr": pointer}
        for centered in (True, False):
            yield (f"sample_shifts {pointer[1:]} centered={centered}",
                   build(_sample_shifts, {**sides, "shift_ptr": "*fp64"},
                         {"CENTERED": centered, "WIDE": False, "BR": 16}, num_warps=4))
            yield (f"row_stats {pointer[1:]} centered={centered}",
                   build(_row_stats, {**sides, "stats_ptr": "*fp64"},
                         {"CENTERED": centered, "ONLY_FLAGGED": False, "WIDE": False, "BR": 16,
                          "BP": 64}, num_warps=4))
        for tensor_cores in (True, False):
            mult = _multiplication(dtype, tensor_cores)
            on = "tensor-cores" if tensor_cores else "float32"
            # K and P that reach every branch of tiles_for
            shapes = ((64, 3136), (64, 9), (256, 784), (256, 9), (2048, 49), (512, 9))
            for bm, bn, bk, warps, stages in sorted({tiles_for(k, p, dtype, tensor_cores)
                                                     for k, p in shapes}):
                for final in (True, False):
                    yield (f"tiles {pointer[1:]} {on} {bm}x{bn}x{bk}{'' if final else ' split'}",
                           build(_similarity_tiles, tiles_pointers(sides),
                                 {**mult, "FINAL": final, "ONLY_FLAGGED": False, "WIDE": False,
                                  "BM": bm, "BN": bn, "BK": bk},
                                 num_warps=warps, num_stages=stages))
            for bm, bn, bk, warps, stages in sorted({tiles_for(k, p, dtype, tensor_cores, True)
                                                     for k, p in shapes if k <= 256}):
                yield (f"single pass {pointer[1:]} {on} {bm}x{bn}x{bk}",
                       build(_single_pass_tiles, {**sides, "shift_ptr": "*fp64"},
                             {"CENTERED": True, **mult, "RANGE_LOG2": _range_log2(mult["DOT"]),
                              "WIDE": False, "BM": bm, "BN": bn, "BK": bk},
                             num_warps=warps, num_stages=stages))
    # the other variants, once (float32, tensor cores): 64-bit offsets, the fallback's
    # early return, cosine
    pointer = "*fp32"
    sides = {**common, "a_ptr": pointer, "b_ptr": pointer}
    tf32 = _multiplication(torch.float32, True)
    if torch.float32 in dtypes:
        for wide, only in ((True, False), (False, True), (True, True)):
            label = f"wide={wide} only_flagged={only}"
            yield (f"row_stats fp32 {label}",
                   build(_row_stats, {**sides, "stats_ptr": "*fp64"},
                         {"CENTERED": True, "ONLY_FLAGGED": only, "WIDE": wide, "BR": 16,
                          "BP": 64}, num_warps=4))
            yield (f"tiles fp32 tensor-cores 64x64x32 {label}",
                   build(_similarity_tiles, tiles_pointers(sides),
                         {**tf32, "FINAL": True, "ONLY_FLAGGED": only, "WIDE": wide, "BM": 64,
                          "BN": 64, "BK": 32},
                         num_warps=8, num_stages=3))
        for centered, wide in ((False, False), (True, True)):
            label = f"centered={centered} wide={wide}"
            yield (f"sample_shifts fp32 {label}",
                   build(_sample_shifts, {**sides, "shift_ptr": "*fp64"},
                         {"CENTERED": centered, "WIDE": wide, "BR": 16}, num_warps=4))
            yield (f"single pass fp32 tensor-cores 64x64x16 {label}",
                   build(_single_pass_tiles, {**sides, "shift_ptr": "*fp64"},
                         {"CENTERED": centered, **tf32, "RANGE_LOG2": _range_log2(tl.float32),
                          "WIDE": wide, "BM": 64, "BN": 64, "BK": 16}, num_warps=8, num_stages=3))
    yield "combine", build(_combine, {"max_ptr": "*fp32", "arg_ptr": "*i32", "diag_ptr": "*fp32",
                                      "inv_a": "*fp64", "inv_b": "*fp64", "channel_ptr": "*fp32",
                                      "layer_ptr": "*fp32", "index_ptr": "*i64"},
                           {"BLOCK": 256}, num_warps=4)
