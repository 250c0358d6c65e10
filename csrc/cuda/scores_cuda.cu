// CUDA kernels of `equifast::equivariance_scores`.
//
//   1. `position_offsets_kernel`: flat positions -> memory offsets (shared header rule).
//   2. `row_stats_kernel`: one warp per (image, channel) row of A = fx (through a_index) and
//      B = ftx (through b_index), reading through strides: float64 mean, then the centred and
//      raw sums of squares (two passes), and the defined rule of `scores.h`.
//   3. `similarity_tile_kernel`: grid over (row tile of K, image, column split). A 64 x 64
//      block tile of S = Â B̂ᵀ is built from shared-memory tiles of the normalised rows
//      (normalised as staged, float32 accumulation); its epilogue keeps, per row, the running
//      max / arg-max over defined columns in registers and captures the diagonal when the
//      column tile holds it. Only per-row partial results leave the block: S is never stored.
//      A step's raw values are loaded into registers all at once (`StepValues`), the next
//      step's during the current products, and the rows' kernel-2 statistics and B's defined
//      flags are read once per tile into shared memory.
//   3'. `tensor_core_tile_kernel` (the default on sm_80 and newer, `tensor_cores`): the same
//      block tile and epilogue, with the products on tensor cores through WMMA: TF32 for
//      float32 inputs, native float16 / bfloat16 otherwise (float32 accumulation). The rows
//      are normalised as staged as in 3, then rounded to the tensor-core type, so scores are
//      within about 1e-3 (TF32, float16) or 1e-2 (bfloat16) of the float64 reference;
//      `tensor_cores=false` takes kernel 3 (float32 FMA, 1e-5, as on the CPU). On sm_90, large
//      maps split their positions over a thread-block cluster whose partial tiles are summed
//      through distributed shared memory (`PositionRange`, `cluster_sum`).
//   4. `combine_kernel`: merges the column splits (ties: smallest k') and applies the
//      undefined rules and the score (ReLU).
// Everything runs on the current CUDA stream. Only c10/cuda headers are used (no
// ATen/cuda/CUDAContext.h), so the build needs just the CUDA runtime headers.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <limits>

#include "scores.h"

namespace equifast {
namespace {

constexpr int kTileM = 64;   // rows (channels k of fx) per block
constexpr int kTileN = 64;   // columns (channels k' of ftx) per column tile
constexpr int kTileP = 16;   // positions per shared-memory step
constexpr int kThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each
constexpr int kWarpsPerStatsBlock = 8;

__global__ void position_offsets_kernel(const int64_t* __restrict__ index, int64_t P,
                                        int64_t width, int64_t stride_h, int64_t stride_w,
                                        int64_t* __restrict__ out) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p < P) out[p] = position_offset(index[p], width, stride_h, stride_w);
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// One warp per row (n, k): mean, 1 / norm and the defined flag, all from float64 sums; only
// the rows of the images flagged in `only_images` when it is given (the single pass's fallback).
template <typename scalar_t>
__global__ void row_stats_kernel(const scalar_t* __restrict__ data, int64_t stride_n,
                                 int64_t stride_k, const int64_t* __restrict__ offsets,
                                 int64_t P, int64_t K, int64_t rows, bool centered, double eps,
                                 double* __restrict__ mean_out, double* __restrict__ inv_out,
                                 uint8_t* __restrict__ defined_out,
                                 const uint8_t* __restrict__ only_images) {
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarpsPerStatsBlock) + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps leave together
  const int64_t n = row / K, k = row - n * K;
  if (only_images != nullptr && !only_images[n]) return;
  const scalar_t* base = data + n * stride_n + k * stride_k;
  double mean = 0.0;
  if (centered) {
    double sum = 0.0;
    for (int64_t p = lane; p < P; p += 32) sum += static_cast<double>(static_cast<float>(base[offsets[p]]));
    mean = warp_sum(sum) / static_cast<double>(P);
  }
  double ss_centred = 0.0, ss_raw = 0.0;
  for (int64_t p = lane; p < P; p += 32) {
    const double v = static_cast<double>(static_cast<float>(base[offsets[p]]));
    const double d = v - mean;
    ss_centred += d * d;
    ss_raw += v * v;
  }
  ss_centred = warp_sum(ss_centred);
  ss_raw = warp_sum(ss_raw);
  if (lane == 0) {
    const RowStats st = finish_row_stats(mean, ss_centred, ss_raw, eps);
    mean_out[row] = st.mean;
    inv_out[row] = st.inv_norm;
    defined_out[row] = st.defined ? 1 : 0;
  }
}

template <typename scalar_t>
struct SideArgs {
  const scalar_t* data;
  int64_t stride_n, stride_k;
  const int64_t* offsets;
  const double* mean;  // [N * K]
  const double* inv;   // [N * K]
  bool k_fastest;      // channels adjacent in memory: let consecutive threads take channels
};

// Element e of a [kRows channels x kCols positions] tile: its channel r and position pp.
// Consecutive threads take consecutive channels when channels are adjacent in memory
// (channels-last), else consecutive positions, so that their reads coalesce.
template <int kRows, int kCols>
__device__ __forceinline__ void tile_element(bool k_fastest, int e, int& r, int& pp) {
  if (k_fastest) {
    r = e % kRows;
    pp = e / kRows;
  } else {
    r = e / kCols;
    pp = e % kCols;
  }
}

// The raw values of one side that a thread loads for one step of a [kRows channels x kCols
// positions] tile staged by kT threads (slot i: tile element threadIdx.x + i * kT, as
// tile_element places it), held in registers from their load to their staging, so that all of
// a step's loads are in flight at once and the next step's overlap the current products.
// Outside [0, K) x [0, P) a slot holds 0.
template <int kRows, int kCols, int kT>
struct StepValues {
  static_assert(kT % kRows == 0 && kT % kCols == 0 && (kRows * kCols) % kT == 0, "the slots");
  static constexpr int kCount = kRows * kCols / kT;
  float x[kCount];

  // Rows along positions: one position and rows c0 + threadIdx.x / kCols + i * kT / kCols;
  // channels-last: one row and positions p0 + threadIdx.x / kRows + i * kT / kRows.
  template <typename scalar_t>
  __device__ __forceinline__ void load(const SideArgs<scalar_t>& s, int64_t n, int64_t c0,
                                       int64_t p0, int64_t K, int64_t P) {
    const scalar_t* base = s.data + n * s.stride_n;
    if (!s.k_fastest) {
      constexpr int kRowStep = kT / kCols;
      const int64_t p = p0 + threadIdx.x % kCols, c = c0 + threadIdx.x / kCols;
      const scalar_t* at = base + c * s.stride_k + (p < P ? s.offsets[p] : 0);
#pragma unroll
      for (int i = 0; i < kCount; ++i)
        x[i] = (p < P && c + i * kRowStep < K)
                   ? static_cast<float>(at[static_cast<int64_t>(i * kRowStep) * s.stride_k])
                   : 0.f;
    } else {
      constexpr int kPositionStep = kT / kRows;
      const int64_t c = c0 + threadIdx.x % kRows, p = p0 + threadIdx.x / kRows;
      const scalar_t* row = base + c * s.stride_k;
#pragma unroll
      for (int i = 0; i < kCount; ++i)
        x[i] = (c < K && p + i * kPositionStep < P)
                   ? static_cast<float>(row[s.offsets[p + i * kPositionStep]])
                   : 0.f;
    }
  }
};

// Stage a step's values: tile element (r, pp) gets value(r, x) inside [0, K) x [0, P) and 0
// outside, written by store(r, pp, v).
template <int kRows, int kCols, int kT, typename Value, typename Store>
__device__ __forceinline__ void stage_step(const StepValues<kRows, kCols, kT>& v, bool k_fastest,
                                           int64_t c0, int64_t p0, int64_t K, int64_t P,
                                           Value value, Store store) {
#pragma unroll
  for (int i = 0; i < StepValues<kRows, kCols, kT>::kCount; ++i) {
    int r, pp;
    tile_element<kRows, kCols>(k_fastest, threadIdx.x + i * kT, r, pp);
    store(r, pp, c0 + r < K && p0 + pp < P ? value(r, v.x[i]) : 0.f);
  }
}

// Kernel 2's float64 mean and 1 / norm of a tile's rows (row j: channel c0 + j), read once per
// tile into shared memory rather than once per staged value.
struct TileRowNorms {
  double mean[kTileM], inv[kTileM];

  template <typename scalar_t>
  __device__ __forceinline__ void load(const SideArgs<scalar_t>& s, int64_t n, int64_t c0,
                                       int64_t K, int j) {
    const bool inside = c0 + j < K;
    mean[j] = inside ? s.mean[n * K + c0 + j] : 0.0;
    inv[j] = inside ? s.inv[n * K + c0 + j] : 0.0;
  }
  __device__ __forceinline__ float operator()(int r, float x) const {
    return normalise_value(x, mean[r], inv[r]);
  }
};

// What both tile kernels read and write: the two sides, defined_b [N * K], and per row the
// partial max / arg-max of each column split ([splits, N * K]) and the diagonal [N * K].
template <typename scalar_t>
struct TileArgs {
  SideArgs<scalar_t> A, B;
  const uint8_t* defined_b;
  int64_t N, K, P;
  int col_tiles_per_split;
  float* part_best;
  int64_t* part_index;
  float* diagonal;
  const uint8_t* only_images;  // [N] when given: the blocks of other images return at once
  int cluster;  // blocks per cluster that split the positions (tensor-core kernels; else 1)
};

// A block's place in the grid (row tile x cluster rank, image, column split) of the tile
// kernels: its first row, image, split and range of 64-wide column tiles; `partial` is where
// a row's partial max / arg-max goes ([splits, N * K]).
struct BlockPlace {
  int64_t row0, n, ct_begin, ct_end;
  int split;
  __device__ BlockPlace(int64_t K, int col_tiles_per_split, int cluster)
      : row0(static_cast<int64_t>(blockIdx.x / cluster) * kTileM),
        n(blockIdx.y),
        split(blockIdx.z) {
    const int64_t col_tiles = (K + kTileN - 1) / kTileN;
    ct_begin = static_cast<int64_t>(split) * col_tiles_per_split;
    ct_end = min(col_tiles, ct_begin + col_tiles_per_split);
  }
  __device__ int64_t partial(int64_t N, int64_t K, int64_t row) const {
    return (static_cast<int64_t>(split) * N + n) * K + row;
  }
};

// Block (row tile, image, column split): per-row max / arg-max over the defined columns of
// the split, and the diagonal when the split holds it.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
similarity_tile_kernel(const TileArgs<scalar_t> t) {
  const SideArgs<scalar_t>& A = t.A;
  const SideArgs<scalar_t>& B = t.B;
  const int64_t N = t.N, K = t.K, P = t.P;
  __shared__ __align__(16) float As[kTileP][kTileM + 4];
  __shared__ __align__(16) float Bs[kTileP][kTileN + 4];
  __shared__ TileRowNorms norms_a, norms_b;
  __shared__ uint8_t defined_cols[kTileN];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const BlockPlace place(K, t.col_tiles_per_split, 1);
  const int64_t row0 = place.row0, n = place.n;
  if (t.only_images != nullptr && !t.only_images[n]) return;
  if (threadIdx.x < kTileM) norms_a.load(A, n, row0, K, threadIdx.x);
  using Step = StepValues<kTileM, kTileP, kThreads>;
  auto normalised_a = [&](int r, float x) { return norms_a(r, x); };
  auto normalised_b = [&](int r, float x) { return norms_b(r, x); };

  float best[4];
  int64_t best_index[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    best[i] = -INFINITY;
    best_index[i] = -1;
  }

  for (int64_t ct = place.ct_begin; ct < place.ct_end; ++ct) {
    const int64_t col0 = ct * kTileN;
    // Summed in three levels: a step's kTileP products, then 16 steps (256 positions), then
    // the whole row. One float32 register taking every position in turn drifts on sparse
    // ReLU maps, whose centred background adds the same small product again and again:
    // 2.8e-5 off at 32 x 32 and 9e-5 at 56 x 56, against under 1e-6 up to 112 x 112 in three
    // levels (float32 emulation of this order; the CPU's streamed path sums blocks alike).
    float acc[4][4], mid[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = mid[i][j] = 0.f;
    int steps_in_mid = 0;

    if (threadIdx.x >= kTileM && threadIdx.x < kTileM + kTileN) {
      const int j = threadIdx.x - kTileM;
      norms_b.load(B, n, col0, K, j);
      defined_cols[j] = col0 + j < K ? t.defined_b[n * K + col0 + j] : 0;
    }
    Step va, vb;
    va.load(A, n, row0, 0, K, P);
    vb.load(B, n, col0, 0, K, P);
    __syncthreads();  // the row norms and flags

    for (int64_t p0 = 0; p0 < P; p0 += kTileP) {
      stage_step(va, A.k_fastest, row0, p0, K, P, normalised_a,
                 [&](int r, int pp, float v) { As[pp][r] = v; });
      stage_step(vb, B.k_fastest, col0, p0, K, P, normalised_b,
                 [&](int r, int pp, float v) { Bs[pp][r] = v; });
      __syncthreads();
      if (p0 + kTileP < P) {  // the next step's loads, in flight during the products
        va.load(A, n, row0, p0 + kTileP, K, P);
        vb.load(B, n, col0, p0 + kTileP, K, P);
      }
      float step[4][4];
#pragma unroll
      for (int pp = 0; pp < kTileP; ++pp) {
        const float4 a4 = *reinterpret_cast<const float4*>(&As[pp][ty * 4]);
        const float4 b4 = *reinterpret_cast<const float4*>(&Bs[pp][tx * 4]);
        const float a[4] = {a4.x, a4.y, a4.z, a4.w};
        const float b[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j)
            step[i][j] = pp == 0 ? a[i] * b[j] : fmaf(a[i], b[j], step[i][j]);
      }
      const bool flush = ++steps_in_mid == 16;
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          mid[i][j] += step[i][j];
          if (flush) {
            acc[i][j] += mid[i][j];
            mid[i][j] = 0.f;
          }
        }
      if (flush) steps_in_mid = 0;
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] += mid[i][j];

    // Tile epilogue: columns in increasing order, so a strict '>' keeps the smallest k'.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = row0 + ty * 4 + i;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t col = col0 + tx * 4 + j;
        if (row < K && col < K) {
          if (col == row) t.diagonal[n * K + row] = acc[i][j];
          if (defined_cols[col - col0] && better(acc[i][j], col, best[i], best_index[i])) {
            best[i] = acc[i][j];
            best_index[i] = col;
          }
        }
      }
    }
    __syncthreads();  // the next column tile rewrites the row norms and flags of B
  }

  // Combine the 16 threads of a row group (lanes with the same ty share a half warp).
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int offset = 8; offset > 0; offset >>= 1) {
      const float other = __shfl_xor_sync(0xffffffffu, best[i], offset);
      const int64_t other_index = __shfl_xor_sync(0xffffffffu, best_index[i], offset);
      if (better(other, other_index, best[i], best_index[i])) {
        best[i] = other;
        best_index[i] = other_index;
      }
    }
    const int64_t row = row0 + ty * 4 + i;
    if (tx == 0 && row < K) {
      const int64_t at = place.partial(N, K, row);
      t.part_best[at] = best[i];
      t.part_index[at] = best_index[i];
    }
  }
}

// ---------------------------------------------------------------------------------------
// Tensor-core tiles (WMMA)
// ---------------------------------------------------------------------------------------

constexpr int kTcTile = 64;      // 64 x 64 similarity tile per block, as kernel 3
constexpr int kTcP = 32;         // positions per shared-memory step
constexpr int kTcThreads = 128;  // 4 warps, each a 32 x 32 quadrant (2 x 2 fragments)
constexpr int kTcLd = kTcP + 8;  // staged rows, padded (a multiple of 8 elements, 32 bytes)
constexpr int kTcLdC = kTcTile + 4;
static_assert(kTcTile == kTileM && kTcTile == kTileN, "the grid and splits are shared");

// What the staged tiles hold and the WMMA shape, per input type.
template <typename scalar_t>
struct TensorCore;
template <>
struct TensorCore<float> {  // TF32: float staging, rounded to TF32 when staged
  using staged = float;
  using fragment_type = nvcuda::wmma::precision::tf32;
  static constexpr int kK = 8;
  __device__ static staged from_float(float x) { return nvcuda::wmma::__float_to_tf32(x); }
  __device__ static float to_float(staged x) { return x; }
};
template <>
struct TensorCore<at::Half> {
  using staged = __half;
  using fragment_type = __half;
  static constexpr int kK = 16;
  __device__ static staged from_float(float x) { return __float2half_rn(x); }
  __device__ static float to_float(staged x) { return __half2float(x); }
};
template <>
struct TensorCore<at::BFloat16> {
  using staged = __nv_bfloat16;
  using fragment_type = __nv_bfloat16;
  static constexpr int kK = 16;
  __device__ static staged from_float(float x) { return __float2bfloat16_rn(x); }
  __device__ static float to_float(staged x) { return __bfloat162float(x); }
};

// A thread's values of one side for one step of the tensor-core kernels, and the store of a
// staged value into tile[row][position] (the layout both WMMA operands read: A row-major, B^T
// column-major), rounded to the tensor-core type.
using TcStep = StepValues<kTcTile, kTcP, kTcThreads>;

template <typename scalar_t>
struct StoreStaged {
  typename TensorCore<scalar_t>::staged (*tile)[kTcLd];
  __device__ __forceinline__ void operator()(int r, int pp, float v) const {
    tile[r][pp] = TensorCore<scalar_t>::from_float(v);
  }
};

// Positions split over a thread-block cluster (sm_90): when the row tiles, images and column
// splits alone leave the device idle (few channels, large maps: 64 @ 56x56 gives 64 blocks
// for 132 SMs), the `cluster` blocks of a cluster take consecutive ranges of the positions of
// the same tile, and rank 0 sums their partial tiles through distributed shared memory, so
// that S still never leaves the chip. A block's range: whole kTcP steps, the last ones
// possibly empty.
struct PositionRange {
  int64_t begin, end;
  int rank;
  __device__ PositionRange(int64_t P, int cluster) : rank(blockIdx.x % cluster) {
    const int64_t steps = (P + kTcP - 1) / kTcP;
    const int64_t per_rank = (steps + cluster - 1) / cluster;
    begin = min(P, rank * per_rank * kTcP);
    end = min(P, (rank + 1) * per_rank * kTcP);
  }
};

// Add the `count` floats at `data` (shared memory, 16-byte aligned, count a multiple of 4) of
// every block of the cluster into rank 0's, in rank order. Every block of the cluster calls
// it; a cluster of 1 returns at once.
__device__ __forceinline__ void cluster_sum(float* data, int count, int cluster, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (cluster == 1) return;
  cooperative_groups::cluster_group blocks = cooperative_groups::this_cluster();
  blocks.sync();  // every block's partial values are in its shared memory
  if (rank == 0) {
    float4* mine = reinterpret_cast<float4*>(data);
    for (int q = 1; q < cluster; ++q) {
      const float4* other = reinterpret_cast<const float4*>(blocks.map_shared_rank(data, q));
#pragma unroll 4
      for (int e = threadIdx.x; e < count / 4; e += blockDim.x) {
        const float4 a = mine[e], b = other[e];
        mine[e] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
      }
    }
  }
  blocks.sync();  // the other blocks keep their shared memory until rank 0 has read it
#endif
}

// The shared memory of the tensor-core kernels: the staged rows of both sides for one step of
// positions, and the block's similarity tile read back for the epilogue.
template <typename scalar_t>
struct TensorCoreTiles {
  __align__(128) typename TensorCore<scalar_t>::staged A[kTcTile][kTcLd], B[kTcTile][kTcLd];
  __align__(128) float C[kTcTile][kTcLdC];
};

// A warp's 32 x 32 quadrant (rows wm.., columns wn..) of the block's 64 x 64 tile: 2 x 2
// accumulator fragments.
template <typename scalar_t>
struct Accumulators {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, TensorCore<scalar_t>::kK, float> f[2][2];
  __device__ void zero() {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(f[i][j], 0.f);
  }
};

// acc += the warp's quadrant of As Bs^T over the kTcP staged positions (values already in the
// tensor-core type: TF32-rounded floats, halves or bfloat16s).
template <typename scalar_t>
__device__ __forceinline__ void warp_tile_mma(
    const typename TensorCore<scalar_t>::staged (*As)[kTcLd],
    const typename TensorCore<scalar_t>::staged (*Bs)[kTcLd], int wm, int wn,
    Accumulators<scalar_t>& acc) {
  namespace wmma = nvcuda::wmma;
  using TC = TensorCore<scalar_t>;
#pragma unroll
  for (int kk = 0; kk < kTcP; kk += TC::kK) {
    wmma::fragment<wmma::matrix_a, 16, 16, TC::kK, typename TC::fragment_type, wmma::row_major> a[2];
    wmma::fragment<wmma::matrix_b, 16, 16, TC::kK, typename TC::fragment_type, wmma::col_major> b[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      wmma::load_matrix_sync(a[i], &As[wm + 16 * i][kk], kTcLd);
      wmma::load_matrix_sync(b[i], &Bs[wn + 16 * i][kk], kTcLd);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::mma_sync(acc.f[i][j], a[i], b[j], acc.f[i][j]);
  }
}

template <typename scalar_t>
__device__ __forceinline__ void store_warp_tile(const Accumulators<scalar_t>& acc, int wm, int wn,
                                                float (*Cs)[kTcLdC]) {
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      nvcuda::wmma::store_matrix_sync(&Cs[wm + 16 * i][wn + 16 * j], acc.f[i][j], kTcLdC,
                                      nvcuda::wmma::mem_row_major);
}

// The epilogue of a column tile in the tensor-core kernels: thread (row, half) walks its half of
// the tile's columns in increasing order (so a strict '>' keeps the smallest k'), value(j) being
// the similarity at tile column j; it writes the diagonal and keeps the running max / arg-max
// over the columns for which defined(j, col) holds.
template <typename Value, typename Defined>
__device__ __forceinline__ void half_row_epilogue(int64_t row, int64_t col0, int half, int64_t n,
                                                  int64_t K, float* diagonal, Value value,
                                                  Defined defined, float& best,
                                                  int64_t& best_index) {
  if (row >= K) return;
  for (int jj = 0; jj < kTcTile / 2; ++jj) {
    const int j = half * (kTcTile / 2) + jj;
    const int64_t col = col0 + j;
    if (col >= K) break;
    const float v = value(j);
    if (col == row) diagonal[n * K + row] = v;
    if (defined(j, col) && better(v, col, best, best_index)) {
      best = v;
      best_index = col;
    }
  }
}

// Merge the two halves of a row (threads 2r and 2r + 1, in the same warp) and store the row's
// partial max / arg-max for the block's column split.
template <typename scalar_t>
__device__ __forceinline__ void store_row_partial(float best, int64_t best_index, int half,
                                                  int64_t row, const BlockPlace& place,
                                                  const TileArgs<scalar_t>& t) {
  const float other = __shfl_xor_sync(0xffffffffu, best, 1);
  const int64_t other_index = __shfl_xor_sync(0xffffffffu, best_index, 1);
  if (better(other, other_index, best, best_index)) {
    best = other;
    best_index = other_index;
  }
  if (half == 0 && row < t.K) {
    const int64_t at = place.partial(t.N, t.K, row);
    t.part_best[at] = best;
    t.part_index[at] = best_index;
  }
}

// The products of a column tile in the tensor-core kernels, over the block's range of
// positions: each step's rows of A (channels row0..) and B (channels col0..) staged through
// value_a / value_b, the next step's loads in flight during the products; during_step() runs
// between the staging barrier and the products (the single pass's row sums).
template <typename scalar_t, typename ValueA, typename ValueB, typename DuringStep>
__device__ __forceinline__ void tile_products(const TileArgs<scalar_t>& t, int64_t n,
                                              int64_t row0, int64_t col0,
                                              const PositionRange& range, ValueA value_a,
                                              ValueB value_b, TensorCoreTiles<scalar_t>& tiles,
                                              int wm, int wn, Accumulators<scalar_t>& acc,
                                              DuringStep during_step) {
  const SideArgs<scalar_t>& A = t.A;
  const SideArgs<scalar_t>& B = t.B;
  const int64_t K = t.K, P = t.P;
  TcStep va, vb;
  va.load(A, n, row0, range.begin, K, P);
  vb.load(B, n, col0, range.begin, K, P);
  __syncthreads();  // what value_a / value_b read (row norms, shifts) and B's flags

  for (int64_t p0 = range.begin; p0 < range.end; p0 += kTcP) {
    stage_step(va, A.k_fastest, row0, p0, K, P, value_a, StoreStaged<scalar_t>{tiles.A});
    stage_step(vb, B.k_fastest, col0, p0, K, P, value_b, StoreStaged<scalar_t>{tiles.B});
    __syncthreads();
    if (p0 + kTcP < range.end) {  // the next step's loads, in flight during the products
      va.load(A, n, row0, p0 + kTcP, K, P);
      vb.load(B, n, col0, p0 + kTcP, K, P);
    }
    during_step();
    warp_tile_mma<scalar_t>(tiles.A, tiles.B, wm, wn, acc);
    __syncthreads();
  }
}

// Block (row tile, image, column split), as `similarity_tile_kernel`, with the 64 x 64 tile
// of S computed by four warps on tensor cores, then read back from shared memory by the
// epilogue: thread t keeps the running max / arg-max of row t / 2 over the columns of half
// t % 2 of each column tile, in increasing order; the two halves merge at the end.
// Three blocks per SM (at most 168 registers; a few bytes spill) hide more of the loads'
// latency than two.
template <typename scalar_t>
__global__ void __launch_bounds__(kTcThreads, 3)
tensor_core_tile_kernel(const TileArgs<scalar_t> t) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const SideArgs<scalar_t>& A = t.A;
  const SideArgs<scalar_t>& B = t.B;
  const int64_t K = t.K, P = t.P;
  __shared__ TensorCoreTiles<scalar_t> tiles;
  __shared__ TileRowNorms norms_a, norms_b;
  __shared__ uint8_t defined_cols[kTcTile];

  const int warp = threadIdx.x / 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;  // the warp's quadrant
  const int my_row = threadIdx.x / 2, half = threadIdx.x % 2;
  const BlockPlace place(K, t.col_tiles_per_split, t.cluster);
  const PositionRange range(P, t.cluster);
  const int64_t row0 = place.row0, n = place.n;
  if (t.only_images != nullptr && !t.only_images[n]) return;  // the whole cluster returns
  const int64_t row = row0 + my_row;
  if (threadIdx.x < kTcTile) norms_a.load(A, n, row0, K, threadIdx.x);
  auto normalised_a = [&](int r, float x) { return norms_a(r, x); };
  auto normalised_b = [&](int r, float x) { return norms_b(r, x); };

  float best = -INFINITY;
  int64_t best_index = -1;

  for (int64_t ct = place.ct_begin; ct < place.ct_end; ++ct) {
    const int64_t col0 = ct * kTcTile;
    if (threadIdx.x >= kTcTile) {
      const int j = threadIdx.x - kTcTile;
      norms_b.load(B, n, col0, K, j);
      defined_cols[j] = col0 + j < K ? t.defined_b[n * K + col0 + j] : 0;
    }
    Accumulators<scalar_t> acc;
    acc.zero();
    tile_products(t, n, row0, col0, range, normalised_a, normalised_b, tiles, wm, wn, acc,
                  [] {});
    store_warp_tile(acc, wm, wn, tiles.C);
    __syncthreads();
    cluster_sum(&tiles.C[0][0], kTcTile * kTcLdC, t.cluster, range.rank);

    if (range.rank == 0)
      half_row_epilogue(
          row, col0, half, n, K, t.diagonal, [&](int j) { return tiles.C[my_row][j]; },
          [&](int j, int64_t) { return defined_cols[j] != 0; }, best, best_index);
    __syncthreads();  // the next column tile rewrites tiles.C, B's row norms and flags
  }

  if (range.rank == 0) store_row_partial(best, best_index, half, row, place, t);
#else
  __trap();  // launched only on sm_80 and newer (see equivariance_scores_cuda)
#endif
}

// ---------------------------------------------------------------------------------------
// Single pass on tensor cores (opt-in: EQUIFAST_CUDA_SINGLE_PASS=1)
// ---------------------------------------------------------------------------------------
// Kernels 2 and 3' read each side twice from memory (statistics, then products), which caps
// them at half the bandwidth roofline where the products are cheap (64 channels of 56 x 56).
// The single pass reads each value once. Every row (a channel of A or of B) is shifted by its
// first compared value c (0 for cosine) as it is staged, and one thread per row keeps the
// float32 sums s = Σu' and q = Σu'^2 of its staged (rounded) values u'. The epilogue
// turns the tile of shifted products S' into the centred, normalised one with the shared rule
// of scores.h (`float32_shifted_row_stats`): (S'_ij - s_i s_j / P) / (||u_i - μ_i|| ||v_j - ν_j||).
// The shift keeps S' of the order of the centred products when c lies within a few standard
// deviations of the mean, the TF32 / float16 rounding of u' being what bounds the accuracy
// either way; a constant row has u' = 0 exactly and stays undefined. An image with a row that
// float32 sums cannot hold is flagged and computed again by kernels 2 and 3' (only the blocks
// of flagged images run). The loads of the next step are issued into registers before the
// products of the current one, so that memory and tensor cores overlap. Split over a cluster,
// each block sums its own positions and rank 0 adds up the partial tiles and row sums.
// It passes the CUDA tests on an H200 (benchmarks/gpu_check.sh) but is no faster than the two
// passes there (benchmarks/RESULTS.md: both are bound by the instructions of their staging and
// epilogue, not by memory), so it stays opt-in.

static_assert(kTcThreads == 2 * kTcTile, "one thread per row of each side for the statistics");

template <typename scalar_t>
struct SinglePassArgs {
  TileArgs<scalar_t> t;  // A/B mean and inv, defined_b and only_images are not read
  bool centered;
  double eps;
  uint8_t* defined_a;  // [N * K], written
  uint8_t* defined_b;  // [N * K], written
  uint8_t* fallback;   // [N]: set for an image to compute again
};

// Add a staged row's values and squares (as rounded: the values the products see) to s, q.
// Threads of a warp start at different positions (r + pp), so that their reads of rows kTcLd
// apart fall in different banks.
template <typename scalar_t>
__device__ __forceinline__ void add_row_sums(const typename TensorCore<scalar_t>::staged* row,
                                             int r, float& s, float& q) {
#pragma unroll 8
  for (int pp = 0; pp < kTcP; ++pp) {
    const float u = TensorCore<scalar_t>::to_float(row[(pp + r) % kTcP]);
    s += u;
    q = fmaf(u, u, q);
  }
}

// Block (row tile, image, column split), as `tensor_core_tile_kernel`, reading each value once.
template <typename scalar_t>
__global__ void __launch_bounds__(kTcThreads)
single_pass_tile_kernel(const SinglePassArgs<scalar_t> sp) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const TileArgs<scalar_t>& t = sp.t;
  const SideArgs<scalar_t>& A = t.A;
  const SideArgs<scalar_t>& B = t.B;
  const int64_t K = t.K, P = t.P;
  __shared__ TensorCoreTiles<scalar_t> tiles;
  // Per row of each side (0: A's rows, 1: B's columns): shift, Σu' and Σu'^2 (summed over the
  // cluster), 1 / norm, defined.
  __shared__ float shift[2][kTcTile], inv[2][kTcTile];
  __shared__ __align__(16) float sums[2][2][kTcTile];
  __shared__ uint8_t defined[2][kTcTile];

  const int warp = threadIdx.x / 32;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  const int my_row = threadIdx.x / 2, half = threadIdx.x % 2;
  const int side = threadIdx.x / kTcTile, side_row = threadIdx.x % kTcTile;  // statistics
  const BlockPlace place(K, t.col_tiles_per_split, t.cluster);
  const PositionRange range(P, t.cluster);
  const int64_t row0 = place.row0, n = place.n;
  const int64_t row = row0 + my_row;
  const float inv_p = 1.f / static_cast<float>(P);
  auto shifted_a = [&](int r, float x) { return x - shift[0][r]; };
  auto shifted_b = [&](int r, float x) { return x - shift[1][r]; };

  float best = -INFINITY;
  int64_t best_index = -1;

  for (int64_t ct = place.ct_begin; ct < place.ct_end; ++ct) {
    const int64_t col0 = ct * kTcTile;
    {  // each row's shift: its first compared value (correlation), 0 (cosine)
      const SideArgs<scalar_t>& s = side == 0 ? A : B;
      const int64_t c = (side == 0 ? row0 : col0) + side_row;
      shift[side][side_row] =
          sp.centered && c < K
              ? static_cast<float>(s.data[n * s.stride_n + c * s.stride_k + s.offsets[0]])
              : 0.f;
    }
    Accumulators<scalar_t> acc;
    acc.zero();
    float sum = 0.f, sum_sq = 0.f;  // of row side_row of side `side`, over the block's range
    tile_products(t, n, row0, col0, range, shifted_a, shifted_b, tiles, wm, wn, acc, [&] {
      add_row_sums<scalar_t>(side == 0 ? tiles.A[side_row] : tiles.B[side_row], side_row, sum,
                             sum_sq);
    });

    sums[side][0][side_row] = sum;
    sums[side][1][side_row] = sum_sq;
    store_warp_tile(acc, wm, wn, tiles.C);
    __syncthreads();
    cluster_sum(&tiles.C[0][0], kTcTile * kTcLdC, t.cluster, range.rank);
    cluster_sum(&sums[0][0][0], 4 * kTcTile, t.cluster, range.rank);

    if (range.rank == 0) {
      {  // statistics: thread side_row of each side
        const int64_t c = (side == 0 ? row0 : col0) + side_row;
        float inv_norm = 0.f;
        uint8_t def = 0;
        if (c < K) {
          RowStats st;
          if (float32_shifted_row_stats(shift[side][side_row], sums[side][0][side_row],
                                        sums[side][1][side_row], P, sp.centered, sp.eps, &st)) {
            inv_norm = static_cast<float>(st.inv_norm);
            def = st.defined ? 1 : 0;
          } else {
            sp.fallback[n] = 1;  // every writer stores the same 1
          }
          (side == 0 ? sp.defined_a : sp.defined_b)[n * K + c] = def;
        }
        inv[side][side_row] = inv_norm;
        defined[side][side_row] = def;
      }
      __syncthreads();  // the statistics

      // Epilogue: the centring and the norms applied to the shifted products.
      const float s_a = sp.centered ? sums[0][0][my_row] * inv_p : 0.f;
      const float inv_a = inv[0][my_row];
      half_row_epilogue(
          row, col0, half, n, K, t.diagonal,
          [&](int j) { return (tiles.C[my_row][j] - s_a * sums[1][0][j]) * inv_a * inv[1][j]; },
          [&](int j, int64_t) { return defined[1][j] != 0; }, best, best_index);
    }
    __syncthreads();  // the next column tile rewrites tiles.C, the shifts and the statistics
  }

  if (range.rank == 0) store_row_partial(best, best_index, half, row, place, t);
#else
  __trap();  // launched only on sm_80 and newer (see equivariance_scores_cuda)
#endif
}

__global__ void combine_kernel(const float* __restrict__ part_best,
                               const int64_t* __restrict__ part_index,
                               const float* __restrict__ diagonal,
                               const uint8_t* __restrict__ defined_a,
                               const uint8_t* __restrict__ defined_b, int64_t rows, int splits,
                               float* __restrict__ channel, float* __restrict__ layer,
                               int64_t* __restrict__ layer_index) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  if (!defined_a[r]) {
    channel[r] = nan_value();
    layer[r] = nan_value();
    layer_index[r] = -1;
    return;
  }
  float best = -INFINITY;
  int64_t index = -1;
  for (int s = 0; s < splits; ++s) {
    const float v = part_best[s * rows + r];
    const int64_t i = part_index[s * rows + r];
    if (better(v, i, best, index)) {
      best = v;
      index = i;
    }
  }
  channel[r] = defined_b[r] ? score(diagonal[r]) : nan_value();
  layer[r] = index < 0 ? nan_value() : score(best);
  layer_index[r] = index;
}

// Launch a tile kernel on `grid` (x: row tiles x cluster), with `cluster` blocks per cluster
// along x when it is more than 1 (sm_90 and newer).
template <typename Args>
void launch_tiles(void (*kernel)(Args), dim3 grid, int threads, int cluster, cudaStream_t stream,
                  const Args& args) {
  if (cluster == 1) {
    kernel<<<grid, threads, 0, stream>>>(args);
  } else {
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = dim3(threads);
    config.stream = stream;
    cudaLaunchAttribute attribute;
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = static_cast<unsigned>(cluster);
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = 1;
    config.attrs = &attribute;
    config.numAttrs = 1;
    C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, args));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Blocks per cluster for the tensor-core kernels: the largest power of two up to 8 (the
// portable cluster size) and `max_cluster` that leaves each block at least 8 steps of positions;
// 1 before sm_90. On an H200 (N = 64) a cluster of 8 halved the kernel time at 64 @ 56x56 (98
// steps), one of 2 cut 13% at 256 @ 28x28 (25 steps) where one of 4 gained nothing: below 8
// steps a block's share no longer pays for the reduction. It depends on P alone, not on the
// batch, so that an image's scores are the same bits whatever batch it is measured in (its sums
// over positions run in the same order).
int cluster_size(int64_t P, int major, int max_cluster) {
  if (major < 9) return 1;
  const int64_t limit = std::min<int64_t>(
      {8, static_cast<int64_t>(max_cluster), (P + kTcP - 1) / kTcP / 8});
  int cluster = 1;
  while (2 * cluster <= limit) cluster *= 2;
  return cluster;
}

at::Tensor position_offsets(const at::Tensor& index, int64_t width, int64_t stride_h,
                            int64_t stride_w, cudaStream_t stream) {
  at::Tensor idx = index.contiguous();
  at::Tensor out = at::empty_like(idx);
  const int64_t P = idx.size(0);
  const int threads = 256;
  const int64_t blocks = (P + threads - 1) / threads;
  position_offsets_kernel<<<blocks, threads, 0, stream>>>(
      idx.const_data_ptr<int64_t>(), P, width, stride_h, stride_w, out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> equivariance_scores_cuda(
    const at::Tensor& fx, const at::Tensor& ftx, const at::Tensor& a_index,
    const at::Tensor& b_index, bool centered, double eps, bool tensor_cores,
    bool check_indices) {
  check_inputs(fx, ftx, a_index, b_index, eps, check_indices);
  TORCH_INTERNAL_ASSERT(fx.device().is_cuda());
  const c10::cuda::CUDAGuard guard(fx.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const int64_t N = fx.size(0), K = fx.size(1), W = fx.size(3), P = a_index.size(0);
  at::Tensor channel, layer, layer_index;
  std::tie(channel, layer, layer_index) = empty_scores(fx);
  if (N == 0 || K == 0) return {channel, layer, layer_index};

  at::Tensor off_a = position_offsets(a_index, W, fx.stride(2), fx.stride(3), stream);
  at::Tensor off_b = position_offsets(b_index, W, ftx.stride(2), ftx.stride(3), stream);
  const int64_t rows = N * K;
  const auto fopts = fx.options().dtype(at::kFloat), dopts = fx.options().dtype(at::kDouble);
  auto bopts = fx.options().dtype(at::kByte);
  at::Tensor mean_a = at::empty({rows}, dopts), inv_a = at::empty({rows}, dopts);
  at::Tensor mean_b = at::empty({rows}, dopts), inv_b = at::empty({rows}, dopts);
  at::Tensor def_a = at::empty({rows}, bopts), def_b = at::empty({rows}, bopts);
  at::Tensor diagonal = at::empty({rows}, fopts);

  // Column splits: enough blocks to fill the device when N x row tiles alone does not.
  const int64_t row_tiles = (K + kTileM - 1) / kTileM;
  const int64_t col_tiles = (K + kTileN - 1) / kTileN;
  int sms = 0, major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, fx.get_device()));
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, fx.get_device()));
  // The kernels are built for sm_80 and newer (TF32 and bfloat16 need it): an older device
  // would fail at launch with no kernel image.
  TORCH_CHECK(major >= 8, "Expected a CUDA device of compute capability 8.0 or newer (the "
              "kernels are built for sm_80 and sm_90, with PTX for newer devices), but got ",
              major, ".x on ", fx.device(), "; measure on the CPU (device='cpu') or with "
              "backend='reference'.");
  const bool use_tensor_cores = tensor_cores;
  const int64_t want = 4LL * sms;
  int64_t splits = std::min<int64_t>(col_tiles, std::max<int64_t>(1, (want + N * row_tiles - 1) /
                                                                        (N * row_tiles)));
  const int64_t per_split = (col_tiles + splits - 1) / splits;
  splits = (col_tiles + per_split - 1) / per_split;
  TORCH_CHECK(row_tiles <= std::numeric_limits<int32_t>::max() / 8 && splits <= 65535,
              "equivariance_scores: K = ", K, " is too large for the CUDA kernel.");

  // The single pass (tensor cores only) stays opt-in: on an H200 it is no faster.
  const char* single_pass_env = std::getenv("EQUIFAST_CUDA_SINGLE_PASS");
  const bool single_pass = use_tensor_cores && single_pass_env != nullptr &&
                           std::string(single_pass_env) == "1";
  // EQUIFAST_CUDA_MAX_CLUSTER=1 turns the position split off (to compare, or to rule it out).
  const char* max_cluster_env = std::getenv("EQUIFAST_CUDA_MAX_CLUSTER");
  const int max_cluster = max_cluster_env != nullptr ? std::max(1, std::atoi(max_cluster_env)) : 8;
  at::Tensor fallback;
  if (single_pass) fallback = at::zeros({N}, bopts);

  EQUIFAST_DISPATCH_INPUT_TYPES(
      fx.scalar_type(), "equivariance_scores_cuda", [&] {
        // Statistics of images [n0, n0 + nc) (kernel 2), only those flagged in `only` if given.
        auto row_stats = [&](int64_t n0, int64_t nc, const uint8_t* only) {
          const int64_t count = nc * K;
          const int64_t blocks = (count + kWarpsPerStatsBlock - 1) / kWarpsPerStatsBlock;
          // gridDim.x is at most 2^31 - 1: past it the launch would cover only some rows
          TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "equivariance_scores: ", nc,
                      " images of K = ", K, " channels are too many rows for the CUDA kernel; "
                      "pass fewer images at a time.");
          for (int side = 0; side < 2; ++side) {
            const at::Tensor& f = side == 0 ? fx : ftx;
            row_stats_kernel<scalar_t><<<blocks, 32 * kWarpsPerStatsBlock, 0, stream>>>(
                f.const_data_ptr<scalar_t>() + n0 * f.stride(0), f.stride(0), f.stride(1),
                (side == 0 ? off_a : off_b).const_data_ptr<int64_t>(), P, K, count, centered,
                eps, (side == 0 ? mean_a : mean_b).data_ptr<double>() + n0 * K,
                (side == 0 ? inv_a : inv_b).data_ptr<double>() + n0 * K,
                (side == 0 ? def_a : def_b).data_ptr<uint8_t>() + n0 * K, only);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
        };

        // gridDim.y <= 65535: images in chunks, pointers offset per chunk.
        constexpr int64_t kMaxImages = 65535;
        for (int64_t n0 = 0; n0 < N; n0 += kMaxImages) {
          const int64_t nc = std::min(kMaxImages, N - n0);
          SideArgs<scalar_t> A{fx.const_data_ptr<scalar_t>() + n0 * fx.stride(0), fx.stride(0),
                               fx.stride(1), off_a.const_data_ptr<int64_t>(),
                               mean_a.const_data_ptr<double>() + n0 * K,
                               inv_a.const_data_ptr<double>() + n0 * K, channels_fastest(fx)};
          SideArgs<scalar_t> B{ftx.const_data_ptr<scalar_t>() + n0 * ftx.stride(0),
                               ftx.stride(0), ftx.stride(1), off_b.const_data_ptr<int64_t>(),
                               mean_b.const_data_ptr<double>() + n0 * K,
                               inv_b.const_data_ptr<double>() + n0 * K, channels_fastest(ftx)};
          // Per-row partial results of each column split: [splits, nc * K].
          at::Tensor pb = at::empty({splits, nc * K}, fopts);
          at::Tensor pi = at::empty({splits, nc * K}, fx.options().dtype(at::kLong));
          const int cluster = use_tensor_cores ? cluster_size(P, major, max_cluster) : 1;
          dim3 grid(static_cast<unsigned>(row_tiles * cluster), static_cast<unsigned>(nc),
                    static_cast<unsigned>(splits));
          TileArgs<scalar_t> args{A, B, def_b.const_data_ptr<uint8_t>() + n0 * K,
                                  nc, K, P, static_cast<int>(per_split),
                                  pb.data_ptr<float>(), pi.data_ptr<int64_t>(),
                                  diagonal.data_ptr<float>() + n0 * K, nullptr, cluster};
          if (single_pass) {
            uint8_t* flags = fallback.data_ptr<uint8_t>() + n0;
            const SinglePassArgs<scalar_t> sp{args, centered, eps,
                                              def_a.data_ptr<uint8_t>() + n0 * K,
                                              def_b.data_ptr<uint8_t>() + n0 * K, flags};
            launch_tiles(single_pass_tile_kernel<scalar_t>, grid, kTcThreads, cluster, stream, sp);
            // Flagged images again, by kernels 2 and 3' (the other blocks return at once).
            row_stats(n0, nc, flags);
            args.only_images = flags;
          } else {
            row_stats(n0, nc, nullptr);
          }
          if (use_tensor_cores)
            launch_tiles(tensor_core_tile_kernel<scalar_t>, grid, kTcThreads, cluster, stream,
                         args);
          else
            launch_tiles(similarity_tile_kernel<scalar_t>, grid, kThreads, 1, stream, args);
          const int64_t crow = nc * K;
          combine_kernel<<<(crow + 255) / 256, 256, 0, stream>>>(
              pb.const_data_ptr<float>(), pi.const_data_ptr<int64_t>(),
              diagonal.const_data_ptr<float>() + n0 * K, def_a.const_data_ptr<uint8_t>() + n0 * K,
              def_b.const_data_ptr<uint8_t>() + n0 * K, crow, static_cast<int>(splits),
              channel.data_ptr<float>() + n0 * K, layer.data_ptr<float>() + n0 * K,
              layer_index.data_ptr<int64_t>() + n0 * K);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
  return {channel, layer, layer_index};
}

}  // namespace

TORCH_LIBRARY_IMPL(equifast, CUDA, m) {
  m.impl("equivariance_scores", &equivariance_scores_cuda);
}

}  // namespace equifast
