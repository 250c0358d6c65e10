// CPU kernel of `equifast::equivariance_scores`.
//
// Per image n, with u_k = fx[n, k, a_index] and v_k' = ftx[n, k', b_index] (length P):
//   1. pack B = the normalised rows v̂ of the image (stored transposed, [P, K] float32, read through strides and
//      the index map; float16/bfloat16 are widened here) with per-row statistics in float64;
//   2. for each row tile of Kt channels: pack the normalised A tile û ([Kt, P]), compute the
//      similarity tile S = Â B̂ᵀ ([Kt, K], a plain row-major GEMM on the packed tiles) with one BLAS call (float32 accumulation), and take
//      the diagonal and the masked row max / arg-max in the tile's epilogue, while S is in
//      cache. The K x K matrix of an image, let alone of the batch, is never stored.
//
// With many images, threads take whole images (B packed once per image, all in per-thread
// buffers that stay in cache); with few images and many channels, B is packed for a chunk of
// images in parallel and threads take (image, row tile) tasks. Memory is bounded either way.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "scores.h"

// The row statistics and the epilogue are plain loops that gcc vectorises under
// `omp simd`; compile them for AVX-512 and AVX2 too, picked at load time by the CPU.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define EQUIFAST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define EQUIFAST_CLONES
#endif

namespace equifast {
namespace {

constexpr int64_t kSimilarityTileFloats = 64 * 1024;  // S tile: 256 KiB, stays in L2
constexpr int64_t kRowTileFloats = 256 * 1024;         // A tile: at most 1 MiB
constexpr int64_t kPackedBudgetFloats = 16 * 1024 * 1024;  // shared B chunk: 64 MiB

// Rows per tile: S tile (Kt x K) and A tile (Kt x P) bounded, a multiple of 8, at most K.
int64_t row_tile(int64_t K, int64_t P) {
  int64_t kt = std::min(kSimilarityTileFloats / K, kRowTileFloats / P);
  kt = std::max<int64_t>(8, kt / 8 * 8);
  return std::min(kt, K);
}

// Runs of compared positions whose memory offsets are consecutive (offset, offset + 1,
// ...): translations and flips of contiguous maps are a few long runs, which are copied
// with vector loads instead of one indexed load per position.
struct Run {
  int64_t p, length, offset;
};

std::vector<Run> contiguous_runs(const int64_t* offsets, int64_t P) {
  std::vector<Run> runs;
  for (int64_t p = 0; p < P;) {
    int64_t q = p + 1;
    while (q < P && offsets[q] == offsets[q - 1] + 1) ++q;
    runs.push_back({p, q - p, offsets[p]});
    p = q;
  }
  return runs;
}

// Widen src[0, n) into dst (a plain copy for float32).
template <typename scalar_t>
inline void copy_widen(const scalar_t* src, int64_t n, float* dst) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    std::memcpy(dst, src, n * sizeof(float));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  }
}

// Gather `rows` rows of one image (`base` points at channel k0 of image n) at the compared
// positions into dst [rows, P] as float32. `k_fastest`: channels are adjacent in memory
// (channels-last), so walk positions outer and channels inner; `runs` are used when they
// are long on average.
template <typename scalar_t>
void gather_rows(const scalar_t* base, int64_t stride_k, const int64_t* offsets, int64_t P,
                 const std::vector<Run>& runs, int64_t rows, bool k_fastest, float* dst) {
  if (k_fastest) {
    for (int64_t p = 0; p < P; ++p) {
      const scalar_t* src = base + offsets[p];
      for (int64_t r = 0; r < rows; ++r) dst[r * P + p] = static_cast<float>(src[r * stride_k]);
    }
    return;
  }
  const bool use_runs = static_cast<int64_t>(runs.size()) * 8 <= P;
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* src = base + r * stride_k;
    float* out = dst + r * P;
    if (use_runs) {
      for (const Run& run : runs) copy_widen(src + run.offset, run.length, out + run.p);
    } else {
      for (int64_t p = 0; p < P; ++p) out[p] = static_cast<float>(src[offsets[p]]);
    }
  }
}

// Normalise one gathered row in place (two passes in float64: mean, then the sums of
// squares); returns whether the row is defined.
EQUIFAST_CLONES uint8_t normalise_row(float* x, int64_t P, bool centered, double eps) {
  double mean = 0.0;
  if (centered) {
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t p = 0; p < P; ++p) sum += static_cast<double>(x[p]);
    mean = sum / static_cast<double>(P);
  }
  double ss_centred = 0.0, ss_raw = 0.0;
#pragma omp simd reduction(+ : ss_centred, ss_raw)
  for (int64_t p = 0; p < P; ++p) {
    const double v = static_cast<double>(x[p]);
    const double d = v - mean;
    ss_centred += d * d;
    ss_raw += v * v;
  }
  const RowStats st = finish_row_stats(mean, ss_centred, ss_raw, eps);
  const double inv = st.inv_norm;
#pragma omp simd
  for (int64_t p = 0; p < P; ++p) x[p] = normalise_value(x[p], mean, inv);
  return st.defined ? 1 : 0;
}

template <typename scalar_t>
struct Side {
  const scalar_t* data;
  int64_t stride_n, stride_k;
  const int64_t* offsets;  // [P] memory offsets of the compared positions
  bool k_fastest;
  std::vector<Run> runs;
};

// Pack and normalise rows [k0, k0 + rows) of image n into dst [rows, P] and defined[rows].
template <typename scalar_t>
void pack_rows(const Side<scalar_t>& side, int64_t n, int64_t k0, int64_t rows, int64_t P,
               bool centered, double eps, float* dst, uint8_t* defined) {
  gather_rows(side.data + n * side.stride_n + k0 * side.stride_k, side.stride_k, side.offsets,
              P, side.runs, rows, side.k_fastest, dst);
  for (int64_t r = 0; r < rows; ++r) defined[r] = normalise_row(dst + r * P, P, centered, eps);
}

// Pack and normalise rows [k0, k0 + rows) of image n transposed, into columns
// [k0, k0 + rows) of the image's bt [P, K] and entries [k0, k0 + rows) of its defined [K]
// (so the similarity GEMM is the fast "NN" case), through a small row block `tmp` [16, P].
template <typename scalar_t>
void pack_rows_transposed(const Side<scalar_t>& side, int64_t n, int64_t k0, int64_t rows,
                          int64_t P, int64_t K, bool centered, double eps,
                          std::vector<float>& tmp, float* bt, uint8_t* defined) {
  constexpr int64_t kBlock = 16;
  tmp.resize(kBlock * P);
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t nr = std::min(kBlock, rows - r0);
    pack_rows(side, n, k0 + r0, nr, P, centered, eps, tmp.data(), defined + k0 + r0);
    for (int64_t p = 0; p < P; ++p) {
      float* out = bt + p * K + k0 + r0;
      for (int64_t r = 0; r < nr; ++r) out[r] = tmp[r * P + p];
    }
  }
}

// S [rows, K] = A [rows, P] @ Bt [P, K], single-threaded (we are inside parallel_for).
void similarity_tile(const float* a, const float* bt, int64_t rows, int64_t K, int64_t P,
                     float* s) {
  auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor ta = at::from_blob(const_cast<float*>(a), {rows, P}, opts);
  at::Tensor tb = at::from_blob(const_cast<float*>(bt), {P, K}, opts);
  at::Tensor ts = at::from_blob(s, {rows, K}, opts);
  at::mm_out(ts, ta, tb);
}

// Row max of s[0, K) and the first index holding it (ties: smallest index).
EQUIFAST_CLONES void row_max(const float* s, int64_t K, float* best, int64_t* index) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < K; ++j) m = s[j] > m ? s[j] : m;
  int64_t i = 0;
  while (i < K && !(s[i] == m)) ++i;
  *best = m;
  *index = i < K ? i : -1;
}

// Epilogue of one tile: rows [k0, k0 + rows) of image n. Undefined columns are set to -inf
// in the tile first, so a row's max is over defined k' only (-inf: none defined).
void tile_epilogue(float* s, int64_t rows, int64_t K, int64_t k0, const uint8_t* def_a,
                   const uint8_t* def_b, const std::vector<int64_t>& undefined_cols,
                   float* channel, float* layer, int64_t* layer_index) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (int64_t c : undefined_cols)
    for (int64_t r = 0; r < rows; ++r) s[r * K + c] = kNegInf;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t k = k0 + r;
    if (!def_a[r]) {
      channel[k] = nan_value();
      layer[k] = nan_value();
      layer_index[k] = -1;
      continue;
    }
    const float* row = s + r * K;
    channel[k] = def_b[k] ? score(row[k]) : nan_value();
    float best;
    int64_t index;
    row_max(row, K, &best, &index);
    if (best == kNegInf || index < 0) {
      layer[k] = nan_value();
      layer_index[k] = -1;
    } else {
      layer[k] = score(best);
      layer_index[k] = index;
    }
  }
}

struct Buffers {
  std::vector<float> b, a, s, tmp;  // b: packed B transposed [P, K]
  std::vector<uint8_t> def_b, def_a;
  std::vector<int64_t> undefined_cols;
};

// Per-thread tiles, kept between calls: fresh pages for every call would cost page faults
// comparable to the packing itself. They hold one image's B and one row tile (a few MiB).
Buffers& thread_buffers() {
  static thread_local Buffers buffers;
  return buffers;
}

template <typename scalar_t>
struct Problem {
  Side<scalar_t> A, B;
  int64_t N, K, P, Kt;
  bool centered;
  double eps;
  float *channel, *layer;
  int64_t* layer_index;

  void undefined_columns(const uint8_t* def_b, std::vector<int64_t>& out) const {
    out.clear();
    for (int64_t c = 0; c < K; ++c)
      if (!def_b[c]) out.push_back(c);
  }

  // One row tile of image n against its packed B (b [K, P], def_b [K]).
  void tile(int64_t n, int64_t t, const float* b, const uint8_t* def_b,
            const std::vector<int64_t>& undefined_cols, Buffers& buf) const {
    const int64_t k0 = t * Kt, rows = std::min(Kt, K - k0);
    buf.a.resize(Kt * P);
    buf.s.resize(Kt * K);
    buf.def_a.resize(Kt);
    pack_rows(A, n, k0, rows, P, centered, eps, buf.a.data(), buf.def_a.data());
    similarity_tile(buf.a.data(), b, rows, K, P, buf.s.data());
    tile_epilogue(buf.s.data(), rows, K, k0, buf.def_a.data(), def_b, undefined_cols,
                  channel + n * K, layer + n * K, layer_index + n * K);
  }

  // Many images: a thread takes whole images.
  void run_per_image() const {
    const int64_t tiles = (K + Kt - 1) / Kt;
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      Buffers& buf = thread_buffers();
      buf.b.resize(K * P);
      buf.def_b.resize(K);
      for (int64_t n = begin; n < end; ++n) {
        pack_rows_transposed(B, n, 0, K, P, K, centered, eps, buf.tmp, buf.b.data(),
                             buf.def_b.data());
        undefined_columns(buf.def_b.data(), buf.undefined_cols);
        for (int64_t t = 0; t < tiles; ++t)
          tile(n, t, buf.b.data(), buf.def_b.data(), buf.undefined_cols, buf);
      }
    });
  }

  // Few images, many channels: B packed for a chunk of images, then (image, tile) tasks.
  void run_shared_b() const {
    const int64_t chunk = std::max<int64_t>(1, std::min(N, kPackedBudgetFloats / (K * P)));
    const int64_t tiles = (K + Kt - 1) / Kt;
    std::vector<float> b(chunk * K * P);
    std::vector<uint8_t> def_b(chunk * K);
    std::vector<std::vector<int64_t>> undefined(chunk);
    constexpr int64_t kPackRows = 16;
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      const int64_t nc = std::min(chunk, N - n0);
      const int64_t blocks_per_image = (K + kPackRows - 1) / kPackRows;
      at::parallel_for(0, nc * blocks_per_image, 1, [&](int64_t begin, int64_t end) {
        Buffers& buf = thread_buffers();
        for (int64_t i = begin; i < end; ++i) {
          const int64_t n = i / blocks_per_image, k0 = (i % blocks_per_image) * kPackRows;
          const int64_t rows = std::min(kPackRows, K - k0);
          pack_rows_transposed(B, n0 + n, k0, rows, P, K, centered, eps, buf.tmp,
                               b.data() + n * K * P, def_b.data() + n * K);
        }
      });
      for (int64_t n = 0; n < nc; ++n) undefined_columns(def_b.data() + n * K, undefined[n]);
      at::parallel_for(0, nc * tiles, 1, [&](int64_t begin, int64_t end) {
        Buffers& buf = thread_buffers();
        for (int64_t i = begin; i < end; ++i) {
          const int64_t n = i / tiles, t = i % tiles;
          tile(n0 + n, t, b.data() + n * K * P, def_b.data() + n * K, undefined[n], buf);
        }
      });
    }
  }
};

at::Tensor position_offsets(const at::Tensor& index, int64_t width, int64_t stride_h,
                            int64_t stride_w) {
  at::Tensor idx = index.contiguous();
  at::Tensor out = at::empty({idx.size(0)}, idx.options());
  const int64_t* src = idx.data_ptr<int64_t>();
  int64_t* dst = out.data_ptr<int64_t>();
  for (int64_t p = 0; p < idx.size(0); ++p)
    dst[p] = position_offset(src[p], width, stride_h, stride_w);
  return out;
}

// Channels adjacent in memory and closer than neighbouring positions (channels-last).
bool channels_fastest(const at::Tensor& f) {
  return f.size(1) > 1 && f.stride(1) == 1 && f.stride(2) != 1 && f.stride(3) != 1;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> equivariance_scores_cpu(
    const at::Tensor& fx, const at::Tensor& ftx, const at::Tensor& a_index,
    const at::Tensor& b_index, bool centered, double eps) {
  check_inputs(fx, ftx, a_index, b_index, eps);
  TORCH_INTERNAL_ASSERT(fx.device().is_cpu());
  const int64_t N = fx.size(0), K = fx.size(1), W = fx.size(3), P = a_index.size(0);
  auto fopts = fx.options().dtype(at::kFloat);
  at::Tensor channel = at::empty({N, K}, fopts);
  at::Tensor layer = at::empty({N, K}, fopts);
  at::Tensor layer_index = at::empty({N, K}, fx.options().dtype(at::kLong));
  if (N == 0 || K == 0) return {channel, layer, layer_index};

  at::Tensor off_a = position_offsets(a_index, W, fx.stride(2), fx.stride(3));
  at::Tensor off_b = position_offsets(b_index, W, ftx.stride(2), ftx.stride(3));

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, fx.scalar_type(), "equivariance_scores_cpu", [&] {
        Problem<scalar_t> pb;
        pb.A = {fx.const_data_ptr<scalar_t>(), fx.stride(0), fx.stride(1),
                off_a.const_data_ptr<int64_t>(), channels_fastest(fx),
                contiguous_runs(off_a.const_data_ptr<int64_t>(), P)};
        pb.B = {ftx.const_data_ptr<scalar_t>(), ftx.stride(0), ftx.stride(1),
                off_b.const_data_ptr<int64_t>(), channels_fastest(ftx),
                contiguous_runs(off_b.const_data_ptr<int64_t>(), P)};
        pb.N = N;
        pb.K = K;
        pb.P = P;
        pb.Kt = row_tile(K, P);
        pb.centered = centered;
        pb.eps = eps;
        pb.channel = channel.data_ptr<float>();
        pb.layer = layer.data_ptr<float>();
        pb.layer_index = layer_index.data_ptr<int64_t>();
        if (N >= 2 * at::get_num_threads())
          pb.run_per_image();
        else
          pb.run_shared_b();
      });
  return {channel, layer, layer_index};
}

}  // namespace

TORCH_LIBRARY_IMPL(equifast, CPU, m) {
  m.impl("equivariance_scores", &equivariance_scores_cpu);
}

}  // namespace equifast
