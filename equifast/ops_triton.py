"""The operator's CUDA kernels written in Triton (opt-in: ``EQUIFAST_CUDA_KERNEL=triton``).

Same contract as :func:`equifast.ops.equivariance_scores` (SPEC sections 1 and 5), for CUDA
tensors; ``equifast.ops`` calls it instead of ``csrc/cuda`` when the variable is set (calls of
``torch.ops.equifast.equivariance_scores`` itself keep the compiled kernels). Issue #6
measured those hand-written WMMA kernels at 2-9% of their roofline, bound by the instructions
of their staging and of an epilogue that reads the tile back from shared memory. Here Triton
schedules the tensor cores (``wgmma`` on sm_90) and pipelines the loads (``cp.async``), and
the row max is taken on the accumulators in registers. Three kernels:

1. ``_row_stats``: per (image, block of 16 rows) of one side, read once through its index map:
   float64 sums of ``u - c`` and ``(u - c)^2``, ``c`` the row's first compared value (scores.h's
   shifted sums; 0 for cosine), giving the mean, ``1 / norm`` and the undefined rule of
   ``csrc/scores.h`` (``1 / norm`` is 0 where undefined).
2. ``_similarity_tiles``: per (row tile, image, column split): for each column tile of the
   split, the tile of S = Â B̂ᵀ over all compared positions, each value normalised in float32 as
   it is loaded (the float64 mean split in two floats) and rounded to the multiplication type
   (TF32, float16 or bfloat16 on tensor cores; float32 FMA with ``tensor_cores=False``, whose
   sums run in two levels, as the CUDA float32 kernel's, for sparse maps); then its row max /
   arg-max over the defined columns (ties: the smallest ``k'``) and the diagonal. Only per-row
   partial results leave the program: S is never stored.
3. ``_combine``: merges the column splits in order and applies the undefined rules and the
   score (ReLU).

The tiles depend on ``K``, ``P`` and the input type only, never on the batch, so an image's
scores do not depend on its batch. The kernels run on a CPU under Triton's interpreter, which
is how the tests check them on machines without a GPU (``tests/test_ops_triton.py``), and
:func:`compile_kernels` compiles them for sm_80 / sm_90 without a GPU. They have not yet run
on a GPU: ``benchmarks/gpu_check.sh`` tests and times them beside the compiled kernels.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
from torch import Tensor

import triton
import triton.language as tl

__all__ = ["equivariance_scores", "tiles_for", "compile_kernels"]

# Exact float32 (no tensor cores): dot products of BK positions summed per group of _GROUP
# before the row's float32 sum. TF32 / float16 rounding dominates otherwise (one level).
_GROUP = 16


@triton.jit
def _row_stats(a_ptr, b_ptr, a_idx, b_idx, stats_ptr, N, K, P, W,
               sa_n, sa_k, sa_h, sa_w, sb_n, sb_k, sb_h, sb_w, eps,
               CENTERED: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr):
    n = tl.program_id(1).to(tl.int64)
    side = tl.program_id(2)  # 0: A = fx through a_idx, 1: B = ftx through b_idx
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    row_ok = rows < K
    if side == 0:
        image = a_ptr + n * sa_n
        idx_ptr = a_idx
        s_k = sa_k
        s_h = sa_h
        s_w = sa_w
    else:
        image = b_ptr + n * sb_n
        idx_ptr = b_idx
        s_k = sb_k
        s_h = sb_h
        s_w = sb_w
    # One read: float64 sums of u - c, c the row's first compared value (scores.h's
    # shifted_sums; 0 for cosine), so that a constant row sums to exactly 0.
    if CENTERED:
        first = tl.load(idx_ptr).to(tl.int32)
        c = tl.load(image + rows * s_k + (first // W) * s_h + (first % W) * s_w, mask=row_ok,
                    other=0.0).to(tl.float64)
    else:
        c = tl.zeros([BR], dtype=tl.float64)
    s = tl.zeros([BR], dtype=tl.float64)
    q = tl.zeros([BR], dtype=tl.float64)
    for p0 in range(0, P, BP):
        p = p0 + tl.arange(0, BP)
        ok = row_ok[:, None] & (p < P)[None, :]
        pos = tl.load(idx_ptr + p, mask=p < P, other=0).to(tl.int32)
        offset = (pos // W) * s_h + (pos % W) * s_w
        x = tl.load(image + (rows[:, None] * s_k + offset[None, :]), mask=ok, other=0.0)
        d = tl.where(ok, x.to(tl.float64) - c[:, None], 0.0)
        s += tl.sum(d, axis=1)
        q += tl.sum(d * d, axis=1)
    if CENTERED:
        m = s / P
        mean = c + m
        ss_centred = tl.maximum(q - s * m, 0.0)
        ss_raw = q + c * (2.0 * s + P * c)
    else:
        mean = c
        ss_centred = q
        ss_raw = q
    # scores.h's is_defined: ||u - mean|| > eps ||u|| (false for NaN)
    defined = tl.sqrt(ss_centred) > eps * tl.sqrt(ss_raw)
    inv = tl.where(defined, 1.0 / tl.sqrt(tl.where(defined, ss_centred, 1.0)), 0.0)
    # stats: [side, mean / inv, N, K]
    out = (2 * side) * N * K + n * K + rows
    tl.store(stats_ptr + out, mean, mask=row_ok)
    tl.store(stats_ptr + out + N * K, inv, mask=row_ok)


@triton.jit
def _normalised(x_ptr, rows_offset, idx_ptr, p, P, W, s_h, s_w, mean_hi, mean_lo, inv, row_ok,
                DOT: tl.constexpr):
    """The values of a block of rows at positions p, normalised, in the multiplication type.

    float32 arithmetic, the float64 mean split in two floats (as scores.h's
    normalise_value_split): each value is within a few float32 roundings of the float64 one.
    """
    pos = tl.load(idx_ptr + p, mask=p < P, other=0).to(tl.int32)
    offset = (pos // W) * s_h + (pos % W) * s_w
    ok = (row_ok & (inv > 0))[:, None] & (p < P)[None, :]
    x = tl.load(x_ptr + (rows_offset[:, None] + offset[None, :]), mask=ok, other=0.0).to(tl.float32)
    return tl.where(ok, ((x - mean_hi[:, None]) - mean_lo[:, None]) * inv[:, None], 0.0).to(DOT)


@triton.jit
def _split_stats(mean_ptr, inv_ptr, i, ok):
    """A block of rows' float64 mean as two floats (hi + lo) and 1 / norm as a float."""
    mean = tl.load(mean_ptr + i, mask=ok, other=0.0)
    hi = mean.to(tl.float32)
    return hi, (mean - hi.to(tl.float64)).to(tl.float32), tl.load(inv_ptr + i, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _similarity_tiles(a_ptr, b_ptr, a_idx, b_idx, mean_a, inv_a, mean_b, inv_b,
                      max_ptr, arg_ptr, diag_ptr, channel_ptr, layer_ptr, index_ptr, N, K, P, W,
                      sa_n, sa_k, sa_h, sa_w, sb_n, sb_k, sb_h, sb_w, tiles_per_split,
                      DOT: tl.constexpr, PRECISION: tl.constexpr, GROUP: tl.constexpr,
                      FINAL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    n = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    row_ok = rows < K
    ma_hi, ma_lo, ia = _split_stats(mean_a, inv_a, n * K + rows, row_ok)
    a_image = a_ptr + n * sa_n  # 64-bit base; offsets within an image fit 32 bits
    b_image = b_ptr + n * sb_n
    best = tl.full([BM], float("-inf"), dtype=tl.float32)
    best_k = tl.zeros([BM], dtype=tl.int32)
    diag = tl.zeros([BM], dtype=tl.float32)
    first = split * tiles_per_split
    last = tl.minimum(first + tiles_per_split, tl.cdiv(K, BN))
    for t in range(first, last):
        cols = t * BN + tl.arange(0, BN)
        col_ok = cols < K
        mb_hi, mb_lo, ib = _split_stats(mean_b, inv_b, n * K + cols, col_ok)
        s = tl.zeros([BM, BN], dtype=tl.float32)
        if GROUP > 1:
            # exact float32: a group's dot products summed apart, then added to the row's sum
            # (one float32 sum over every position drifts on sparse maps)
            for g0 in range(0, P, BK * GROUP):
                part = tl.zeros([BM, BN], dtype=tl.float32)
                for p0 in range(g0, tl.minimum(g0 + BK * GROUP, P), BK):
                    p = p0 + tl.arange(0, BK)
                    a = _normalised(a_image, rows * sa_k, a_idx, p, P, W, sa_h, sa_w, ma_hi, ma_lo,
                                    ia, row_ok, DOT)
                    b = _normalised(b_image, cols * sb_k, b_idx, p, P, W, sb_h, sb_w, mb_hi, mb_lo,
                                    ib, col_ok, DOT)
                    part = tl.dot(a, tl.trans(b), part, input_precision=PRECISION)
                s += part
        else:
            for p0 in range(0, P, BK):
                p = p0 + tl.arange(0, BK)
                a = _normalised(a_image, rows * sa_k, a_idx, p, P, W, sa_h, sa_w, ma_hi, ma_lo, ia,
                                row_ok, DOT)
                b = _normalised(b_image, cols * sb_k, b_idx, p, P, W, sb_h, sb_w, mb_hi, mb_lo, ib,
                                col_ok, DOT)
                s = tl.dot(a, tl.trans(b), s, input_precision=PRECISION)
        candidates = tl.where((col_ok & (ib > 0))[None, :], s, float("-inf"))
        tile_best, tile_k = tl.max(candidates, axis=1, return_indices=True,
                                   return_indices_tie_break_left=True)
        better = tile_best > best  # strict: an earlier column keeps a tie
        best_k = tl.where(better, t * BN + tile_k, best_k)
        best = tl.where(better, tile_best, best)
        diag += tl.sum(tl.where(rows[:, None] == cols[None, :], s, 0.0), axis=1)
    if FINAL:  # one split: the scores themselves
        _finish(best, best_k, diag, n * K + rows, row_ok, inv_a, inv_b, channel_ptr, layer_ptr,
                index_ptr)
    else:
        out = split * N * K + n * K + rows
        tl.store(max_ptr + out, best, mask=row_ok)
        tl.store(arg_ptr + out, best_k, mask=row_ok)
        tl.store(diag_ptr + out, diag, mask=row_ok)


@triton.jit
def _finish(best, best_k, diag, i, ok, inv_a, inv_b, channel_ptr, layer_ptr, index_ptr):
    """Store the scores of rows i: the undefined rules and the score (ReLU)."""
    row_defined = tl.load(inv_a + i, mask=ok, other=0.0) > 0
    scored = row_defined & (best > float("-inf"))
    pair_defined = row_defined & (tl.load(inv_b + i, mask=ok, other=0.0) > 0)
    nan = float("nan")
    tl.store(channel_ptr + i, tl.where(pair_defined, tl.maximum(diag, 0.0), nan), mask=ok)
    tl.store(layer_ptr + i, tl.where(scored, tl.maximum(best, 0.0), nan), mask=ok)
    tl.store(index_ptr + i, tl.where(scored, best_k.to(tl.int64), -1), mask=ok)


@triton.jit
def _combine(max_ptr, arg_ptr, diag_ptr, inv_a, inv_b, channel_ptr, layer_ptr, index_ptr,
             NK, splits, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
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
    _finish(best, best_k, diag, i, ok, inv_a, inv_b, channel_ptr, layer_ptr, index_ptr)


def tiles_for(k: int, p: int, dtype: torch.dtype, tensor_cores: bool) -> Tuple[int, int, int, int, int]:
    """``(BM, BN, BK, num_warps, num_stages)`` of the tile kernel for ``K`` channels and ``P``
    positions; ``EQUIFAST_TRITON_TILES="BM,BN,BK,WARPS,STAGES"`` overrides it (to tune on a GPU).

    Few channels get short row tiles, so that a batch of large maps still fills the device
    (64 @ 56x56: 4 row tiles an image). For sm_90 (Triton 3.8) the choices use 128-242
    registers a thread; a few spill up to 52 bytes (``benchmarks/triton_registers.py``).
    """
    override = os.environ.get("EQUIFAST_TRITON_TILES")
    if override:
        try:
            bm, bn, bk, warps, stages = (int(v) for v in override.split(","))
        except ValueError:
            raise ValueError(f"Expected EQUIFAST_TRITON_TILES to be five integers "
                             f"'BM,BN,BK,WARPS,STAGES', but got {override!r}.") from None
        return bm, bn, bk, warps, stages
    if not tensor_cores:  # float32 FMA, two-level sums: shorter steps
        return (16, 64, 16, 4, 3) if k <= 64 else (64, 64, 16, 8, 3)
    bk = 16 if p <= 16 else 32
    if k <= 64:
        return 16, 64, bk, 4, 3
    if k <= 256:
        return 64, 64, bk, 8, 3
    return 128, 64, bk, 8, 3


def _dot_type(dtype: torch.dtype, tensor_cores: bool):
    """The type the normalised values are multiplied in, and tl.dot's input precision."""
    if not tensor_cores:
        return tl.float32, "ieee"
    if dtype == torch.float16:
        return tl.float16, "ieee"
    if dtype == torch.bfloat16:
        return tl.bfloat16, "ieee"
    return tl.float32, "tf32"


def _device_programs(device: torch.device) -> int:
    """About how many programs keep the device busy (four per SM; 528 off a GPU)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 528


def equivariance_scores(fx: Tensor, ftx: Tensor, a_index: Tensor, b_index: Tensor,
                        centered: bool, eps: float, tensor_cores: bool = True,
                        splits: Optional[int] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`equifast.ops.equivariance_scores` by the Triton kernels (inputs checked there).

    ``splits`` fixes the number of column splits (default: enough programs for the device);
    the scores do not depend on it.
    """
    n, k, _, w = fx.shape
    p = int(a_index.shape[0])
    device = fx.device
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        tensor_cores = False  # TF32 and tl.dot's tensor cores need sm_80
    stats = torch.empty(2, 2, n, k, dtype=torch.float64, device=device)  # side, mean / inv
    br = 16
    _row_stats[(triton.cdiv(k, br), n, 2)](fx, ftx, a_index, b_index, stats, n, k, p, w,
                                           *fx.stride(), *ftx.stride(), float(eps),
                                           CENTERED=bool(centered), BR=br, BP=64)
    bm, bn, bk, warps, stages = tiles_for(k, p, fx.dtype, tensor_cores)
    col_tiles = triton.cdiv(k, bn)
    if splits is None:
        splits = min(col_tiles, max(1, triton.cdiv(_device_programs(device), triton.cdiv(k, bm) * n)))
    per_split = triton.cdiv(col_tiles, splits)
    splits = triton.cdiv(col_tiles, per_split)
    channel = torch.empty(n, k, dtype=torch.float32, device=device)
    layer = torch.empty(n, k, dtype=torch.float32, device=device)
    layer_index = torch.empty(n, k, dtype=torch.int64, device=device)
    final = splits == 1
    if final:  # the tiles write the scores; the partial results' pointers are never read
        best, best_k, diag = channel, layer_index, layer
    else:  # per split: row max, its column, diagonal
        best = torch.empty(splits, n, k, dtype=torch.float32, device=device)
        best_k = torch.empty(splits, n, k, dtype=torch.int32, device=device)
        diag = torch.empty(splits, n, k, dtype=torch.float32, device=device)
    dot, precision = _dot_type(fx.dtype, tensor_cores)
    (mean_a, inv_a), (mean_b, inv_b) = stats
    _similarity_tiles[(triton.cdiv(k, bm), n, splits)](
        fx, ftx, a_index, b_index, mean_a, inv_a, mean_b, inv_b, best, best_k, diag, channel,
        layer, layer_index, n, k, p, w, *fx.stride(), *ftx.stride(), per_split, DOT=dot,
        PRECISION=precision, GROUP=_GROUP if precision == "ieee" and dot == tl.float32 else 1,
        FINAL=final, BM=bm, BN=bn, BK=bk, num_warps=warps, num_stages=stages)
    if not final:
        block = 256
        _combine[(triton.cdiv(n * k, block),)](best, best_k, diag, inv_a, inv_b, channel, layer,
                                              layer_index, n * k, splits, BLOCK=block)
    return channel, layer, layer_index


_POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def compile_kernels(arch: int = 90):
    """Compile every kernel, for every input type and tile choice of :func:`tiles_for`, ahead of
    time for ``sm_<arch>`` (no GPU needed). Yields ``(name, ptx)``."""
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", arch, 32)

    def build(fn, pointers, constants, **options):
        signature = {name: "constexpr" if name in constants else pointers.get(name, "i32")
                     for name in fn.arg_names}
        signature.update({"eps": "fp32"} if "eps" in signature else {})
        source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constants)
        return triton.compile(source, target=target, options=options).asm["ptx"]

    for dtype, pointer in _POINTER.items():
        for centered in (True, False):
            yield (f"row_stats {pointer[1:]} centered={centered}",
                   build(_row_stats, {"a_ptr": pointer, "b_ptr": pointer, "a_idx": "*i64",
                                      "b_idx": "*i64", "stats_ptr": "*fp64"},
                         {"CENTERED": centered, "BR": 16, "BP": 64}, num_warps=4))
    tiles = {"a_idx": "*i64", "b_idx": "*i64", "mean_a": "*fp64", "inv_a": "*fp64",
             "mean_b": "*fp64", "inv_b": "*fp64", "max_ptr": "*fp32", "arg_ptr": "*i32",
             "diag_ptr": "*fp32", "channel_ptr": "*fp32", "layer_ptr": "*fp32",
             "index_ptr": "*i64"}
    for dtype, pointer in _POINTER.items():
        for tensor_cores in (True, False):
            dot, precision = _dot_type(dtype, tensor_cores)
            group = _GROUP if precision == "ieee" and dot == tl.float32 else 1
            chosen = {tiles_for(k, p, dtype, tensor_cores)
                      for k, p in ((64, 3136), (256, 784), (2048, 49), (512, 9))}
            for bm, bn, bk, warps, stages in sorted(chosen):
                for final in (True, False):
                    on = "tensor-cores" if tensor_cores else "float32"
                    yield (f"tiles {pointer[1:]} {on} {bm}x{bn}x{bk}{'' if final else ' split'}",
                           build(_similarity_tiles, {**tiles, "a_ptr": pointer, "b_ptr": pointer},
                                 {"DOT": dot, "PRECISION": precision, "GROUP": group,
                                  "FINAL": final, "BM": bm, "BN": bn, "BK": bk},
                                 num_warps=warps, num_stages=stages))
    yield "combine", build(_combine, {"max_ptr": "*fp32", "arg_ptr": "*i32", "diag_ptr": "*fp32",
                                      "inv_a": "*fp64", "inv_b": "*fp64", "channel_ptr": "*fp32",
                                      "layer_ptr": "*fp32", "index_ptr": "*i64"},
                           {"BLOCK": 256}, num_warps=4)
