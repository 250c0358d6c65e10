// CPU kernel of `equifast::equivariance_scores`.
//
// Per image n, with u_k = fx[n, k, a_index] and v_k' = ftx[n, k', b_index] (length P), the
// layer score is a normalised GEMM followed by a row max, so the GEMM bounds its speed:
//   1. B: when ftx's compared positions form a matrix BLAS can read (the identity map of every
//      transform's B side, NCHW or channels-last, float32), B is read where it lies and only
//      its statistics are taken, after the first GEMM has brought it into cache; the epilogue
//      scales the columns (see "B read in place"). Otherwise pack B = the normalised rows v̂
//      ([K, P] float32, read through strides and the index map; float16/bfloat16 are widened
//      here), row by row (`pack_rows`): one read of the row takes its float64 sums (shifted
//      one-pass sums, see LaneSums), and the normalisation reads it again while it is in L1,
//      writing the packed row. Float32 rows made of long contiguous runs are read in place;
//      others are gathered into the packed row first (runs copied in memory order, or one
//      indexed load per position) and processed there. A float32 channels-last side is summed
//      and packed by columns instead (see "Channels-last sides");
//   2. for each row tile of Kt channels: pack the normalised A tile û ([Kt, P]) the same way
//      (rows, or columns for channels-last),
//      compute the similarity tile S = Â B̂ᵀ ([Kt, K]) with one BLAS call (float32
//      accumulation on centred, unit-norm rows: no cancellation), and take the diagonal and
//      the masked row max / arg-max in the tile's epilogue, while S is in cache. The K x K
//      matrix of an image, let alone of the batch, is never stored.
//
// With many images, threads take whole images (B packed once per image, all in per-thread
// buffers that stay in cache); with few images and many channels, B is packed for a chunk of
// images in parallel and threads take (image, row tile) tasks. Memory is bounded either way.
// The BLAS call runs inside `at::parallel_for`, so it is single-threaded: no nested
// parallelism, and each call is a whole row tile (at least 8 rows x K x P).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

#include "scores.h"

// The inner loops (copies, transpositions, float64 sums, normalisation, arg-max, the streamed
// GEMM) are written once, with GCC's vector extensions or as loops gcc vectorises, and compiled
// for AVX-512, AVX2 and the baseline (EQUIFAST_PER_ISA), picked at every call: the CPU's widest,
// or a narrower one named by EQUIFAST_CPU_ISA, so that the tests on any machine can check the
// code the others run.

namespace equifast {
namespace {

constexpr int64_t kSimilarityTileFloats = 64 * 1024;  // S tile: 256 KiB, stays in L2
constexpr int64_t kRowTileFloats = 256 * 1024;         // A tile: at most 1 MiB
constexpr int64_t kPackedBudgetFloats = 16 * 1024 * 1024;  // shared B chunk: 64 MiB

// Packed rows and similarity rows start on a cache line: their leading dimension is rounded up
// to 16 floats (64 bytes), and the buffers are 64-byte aligned (see AlignedFloats).
constexpr int64_t kAlignFloats = 16;
int64_t padded(int64_t n) { return (n + kAlignFloats - 1) / kAlignFloats * kAlignFloats; }

// 64-byte aligned float storage (std::vector's is only 16-byte aligned), so that packed rows
// start on a cache line and no AVX-512 load of the GEMM or of our loops straddles two lines.
// `resize` keeps no contents: every user rewrites its buffer.
class AlignedFloats {
 public:
  float* data() { return data_.get(); }
  void resize(int64_t n) {
    if (n <= capacity_) return;
    const size_t bytes = static_cast<size_t>(padded(n)) * sizeof(float);
    data_.reset(static_cast<float*>(std::aligned_alloc(kAlignFloats * sizeof(float), bytes)));
    TORCH_CHECK(data_ != nullptr, "equivariance_scores: out of memory (", bytes, " bytes)");
    capacity_ = n;
  }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> data_;
  int64_t capacity_ = 0;
};

// Rows per tile: S tile (Kt x K) and A tile (Kt x P) bounded, a multiple of 8, at most K.
int64_t row_tile(int64_t K, int64_t P) {
  int64_t kt = std::min(kSimilarityTileFloats / K, kRowTileFloats / P);
  kt = std::max<int64_t>(8, kt / 8 * 8);
  return std::min(kt, K);
}

// ---------------------------------------------------------------------------------------
// Gathering rows through the index map
// ---------------------------------------------------------------------------------------

// Runs of compared positions whose memory offsets are consecutive (offset, offset + 1,
// ...): the identity and translations of contiguous maps are a few long runs, which are read
// as such instead of with one indexed load per position.
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

// Functions whose vector width must be the register width (gcc lowers wider vectors badly):
// impl<64> compiled for AVX-512 (x86-64-v4), impl<32> for AVX2 + FMA (x86-64-v3), impl<16>
// otherwise. Their bodies are always inlined into the wrappers, so each wrapper's target
// compiles the whole loop. cpu_isa() is set by select_cpu_isa() at the start of every call.
enum class Isa { kV4, kV3, kBaseline };  // widest first
constexpr const char* kIsaNames[] = {"x86-64-v4", "x86-64-v3", "baseline"};

std::atomic<Isa> g_isa{Isa::kBaseline};

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
Isa cpu_isa() { return g_isa.load(std::memory_order_relaxed); }

Isa widest_isa() {
  static const Isa isa = __builtin_cpu_supports("x86-64-v4")   ? Isa::kV4
                         : __builtin_cpu_supports("x86-64-v3") ? Isa::kV3
                                                               : Isa::kBaseline;
  return isa;
}

#define EQUIFAST_PER_ISA(ret, name, impl, params, args)                                    \
  __attribute__((target("arch=x86-64-v4"))) ret name##_v4 params { return impl<64> args; } \
  __attribute__((target("arch=x86-64-v3"))) ret name##_v3 params { return impl<32> args; } \
  ret name params {                                                                        \
    switch (cpu_isa()) {                                                                   \
      case Isa::kV4: return name##_v4 args;                                                \
      case Isa::kV3: return name##_v3 args;                                                \
      default: return impl<16> args;                                                       \
    }                                                                                      \
  }
#else
Isa widest_isa() { return Isa::kBaseline; }

#define EQUIFAST_PER_ISA(ret, name, impl, params, args) \
  ret name params { return impl<16> args; }
#endif

// EQUIFAST_CPU_ISA (unset or empty: the CPU's widest) may name a narrower instruction set
// than the CPU's; one it lacks, or an unknown name, is an error rather than a silent fallback.
void select_cpu_isa() {
  Isa isa = widest_isa();
  const char* asked = std::getenv("EQUIFAST_CPU_ISA");
  if (asked != nullptr && *asked != '\0') {
    const auto* name = std::find_if(std::begin(kIsaNames), std::end(kIsaNames),
                                    [&](const char* n) { return std::strcmp(n, asked) == 0; });
    TORCH_CHECK(name != std::end(kIsaNames), "EQUIFAST_CPU_ISA='", asked,
                "' is not an instruction set equifast builds: use baseline, x86-64-v3 or "
                "x86-64-v4, or unset it");
    const auto wanted = static_cast<Isa>(name - std::begin(kIsaNames));
    TORCH_CHECK(wanted >= isa, "EQUIFAST_CPU_ISA=", asked,
                " is not available on this CPU or build (the widest here is ",
                kIsaNames[static_cast<int>(isa)], ")");
    isa = wanted;
  }
  g_isa.store(isa, std::memory_order_relaxed);
}

// Vectors of 8 floats, and unaligned loads and stores of any vector.
// (gcc warns that vector arguments change the ABI of the baseline build: these functions are
// always inlined, so no call passes a vector.)
#pragma GCC diagnostic ignored "-Wpsabi"
using f8 = float __attribute__((vector_size(32)));

// A register of doubles and the floats that widen into it (gcc takes no vector size that
// depends on a template parameter).
template <int kBytes>
struct Widening;
// `widen` is written element by element: gcc makes that one vcvtps2pd, where it splits
// __builtin_convertvector into halves.
template <>
struct Widening<64> {
  typedef double doubles __attribute__((vector_size(64)));
  typedef float floats __attribute__((vector_size(32)));
  static doubles widen(floats x) { return doubles{x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]}; }
};
template <>
struct Widening<32> {
  typedef double doubles __attribute__((vector_size(32)));
  typedef float floats __attribute__((vector_size(16)));
  static doubles widen(floats x) { return doubles{x[0], x[1], x[2], x[3]}; }
};
template <>
struct Widening<16> {
  typedef double doubles __attribute__((vector_size(16)));
  typedef float floats __attribute__((vector_size(8)));
  static doubles widen(floats x) { return doubles{x[0], x[1]}; }
};

// (Through a packed struct rather than memcpy: gcc expands a memcpy before the function is
// inlined into its instruction set's wrapper, into 16-byte moves through the stack.)
template <typename V>
__attribute__((always_inline)) inline V load_vector(const void* p) {
  struct __attribute__((packed, may_alias)) Unaligned {
    V v;
  };
  return static_cast<const Unaligned*>(p)->v;
}

template <typename V>
__attribute__((always_inline)) inline void store_vector(void* p, V v) {
  struct __attribute__((packed, may_alias)) Unaligned {
    V v;
  };
  static_cast<Unaligned*>(p)->v = v;
}

// dst[j * ldd + i] = rows[i][j] for i, j < 8: unpack pairs, then quads, then 128-bit halves
// (gcc emits the classic vunpck / vshufps / vperm2f128 sequence for these shuffles).
__attribute__((always_inline)) inline void transpose_8x8(const float* const* rows, float* dst,
                                                        int64_t ldd) {
  f8 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = load_vector<f8>(rows[i]);
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    for (int h = 0; h < 2; ++h) {
      r[i + h] = __builtin_shufflevector(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      r[i + h + 2] = __builtin_shufflevector(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  }
  // r[0..3] hold rows 0-3 of columns (0, 4), (2, 6), (1, 5), (3, 7) as 128-bit halves
  constexpr int kColumn[4] = {0, 2, 1, 3};
  for (int i = 0; i < 4; ++i) {
    store_vector(dst + kColumn[i] * ldd,
                 __builtin_shufflevector(r[i], r[i + 4], 0, 1, 2, 3, 8, 9, 10, 11));
    store_vector(dst + (kColumn[i] + 4) * ldd,
                 __builtin_shufflevector(r[i], r[i + 4], 4, 5, 6, 7, 12, 13, 14, 15));
  }
}

// Software prefetch distance of the streaming read of the sums, in floats (1 KiB ahead).
// Measured on a 2-core Xeon VM: worth a few per cent at most (the read runs at about the
// single-core memory bandwidth either way); larger distances and L2-only hints were no better.
constexpr int64_t kPrefetchFloats = 256;

// Float32 runs copied with 8-float moves (the runs of a translated map are a map row or
// shorter, where a memcpy call per run costs more than the copy itself).
template <int>
__attribute__((always_inline)) inline void copy_runs_body(
    const float* src, const std::vector<Run>& runs, float* out) {
  for (const Run& run : runs) {
    const float* from = src + run.offset;
    float* to = out + run.p;
    int64_t i = 0;
    for (; i + 8 <= run.length; i += 8) {
      __builtin_prefetch(from + i + kPrefetchFloats);
      store_vector(to + i, load_vector<f8>(from + i));
    }
    for (; i < run.length; ++i) to[i] = from[i];
  }
}
EQUIFAST_PER_ISA(void, copy_runs, copy_runs_body,
                 (const float* src, const std::vector<Run>& runs, float* out),
                 (src, runs, out))

// One row (one channel of one image, `src` at its channel start) at the compared positions,
// as float32, into out[0, P).
template <typename scalar_t>
void gather_row(const scalar_t* src, const int64_t* offsets, int64_t P,
                const std::vector<Run>& runs, bool use_runs, float* out) {
  if (use_runs) {
    if constexpr (std::is_same_v<scalar_t, float>) return copy_runs(src, runs, out);
    for (const Run& run : runs) copy_widen(src + run.offset, run.length, out + run.p);
  } else {
    for (int64_t p = 0; p < P; ++p) out[p] = static_cast<float>(src[offsets[p]]);
  }
}

// Channels adjacent in memory (channels-last, float16/bfloat16; float32 is packed by columns):
// gather `rows` rows at once, positions outer and a block of 16 channels inner, so that each
// position reads one contiguous run of channels and writes 16 row streams.
template <typename scalar_t>
void gather_rows_channels_last(const scalar_t* base, int64_t stride_k, const int64_t* offsets,
                               int64_t P, int64_t rows, float* dst, int64_t ld) {
  constexpr int64_t kBlock = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t nr = std::min(kBlock, rows - r0);
    const scalar_t* block = base + r0 * stride_k;
    float* out = dst + r0 * ld;
    for (int64_t p = 0; p < P; ++p) {
      const scalar_t* src = block + offsets[p];
      for (int64_t r = 0; r < nr; ++r) out[r * ld + p] = static_cast<float>(src[r * stride_k]);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Row statistics (float64) and normalisation
// ---------------------------------------------------------------------------------------

// Lanes of independent float64 partial sums: a single vector accumulator would make every
// reduction wait on the add latency (about 4x slower than the loads it consumes). The sums
// use four vectors of doubles per sum: 32 lanes with AVX-512, 16 with AVX2, 8 otherwise.
constexpr int64_t kLanes = 32;

// Partial sums of one row, shifted by its first value c:  Σ(x - c)  and  Σ(x - c)^2, per lane.
// The shift makes the one-pass centred sum of squares  Σ(x-c)^2 - (Σ(x-c))^2 / P  safe: it is
// exactly 0 for a constant row (so the undefined rule holds for any eps, as with two passes),
// and its relative rounding error is at most about 2 P^2 2^-53 (c is one of the values, so
// (mean - c)^2 <= P var): below 1e-6 for maps up to 224 x 224, far under the 1e-5 agreement
// the scores are held to. So the statistics take one read of the row, not two.
struct LaneSums {
  double shifted[kLanes] = {}, shifted_sq[kLanes] = {};
};

// Accumulate the runs of a row (`src` at its channel start) into the lane sums, with vectors
// of kBytes (the register width of the instruction set it is compiled for). The eight
// accumulators are vector variables, so they stay in registers across the runs (gcc spills
// arrays of partial sums to the stack, and the read would no longer keep up with memory); each
// vector of floats costs a widening, a subtraction, an add and an FMA. A run's last partial
// vector is padded with the shift, which adds exactly 0 to both sums: short runs (the rows of a
// translated map) cost a vector per run, not a scalar loop.
template <int kBytes>
__attribute__((always_inline)) inline void accumulate_lanes(const float* src, const Run* runs,
                                                            int64_t n_runs, double shift,
                                                            LaneSums& acc) {
  using dv = typename Widening<kBytes>::doubles;
  using fv = typename Widening<kBytes>::floats;
  constexpr int kWidth = kBytes / 8, kStep = 4 * kWidth;
  static_assert(kStep <= kLanes, "LaneSums holds every lane");
  dv s[4], q[4];
  for (int v = 0; v < 4; ++v) {
    s[v] = load_vector<dv>(acc.shifted + v * kWidth);
    q[v] = load_vector<dv>(acc.shifted_sq + v * kWidth);
  }
  const dv c = dv{} + shift;
  auto add = [&](int v, fv x) {
    const dv d = Widening<kBytes>::widen(x) - c;
    s[v] += d;
    q[v] += d * d;
  };
  float padded_tail[kWidth];
  for (int64_t r = 0; r < n_runs; ++r) {
    const float* x = src + runs[r].offset;
    const int64_t n = runs[r].length;
    int64_t i = 0;
    for (; i + kStep <= n; i += kStep) {
      __builtin_prefetch(x + i + kPrefetchFloats);
      if constexpr (kStep > 16) __builtin_prefetch(x + i + kPrefetchFloats + 16);
      for (int v = 0; v < 4; ++v) add(v, load_vector<fv>(x + i + v * kWidth));
    }
    for (int v = 0; i < n; i += kWidth, ++v) {  // at most three whole vectors and a part
      if (i + kWidth <= n) {
        add(v, load_vector<fv>(x + i));
      } else {
        std::fill(padded_tail, padded_tail + kWidth, static_cast<float>(shift));
        std::memcpy(padded_tail, x + i, (n - i) * sizeof(float));
        add(v, load_vector<fv>(padded_tail));
      }
    }
  }
  for (int v = 0; v < 4; ++v) {
    store_vector(acc.shifted + v * kWidth, s[v]);
    store_vector(acc.shifted_sq + v * kWidth, q[v]);
  }
}

EQUIFAST_PER_ISA(void, accumulate_runs, accumulate_lanes,
                 (const float* src, const Run* runs, int64_t n_runs, double shift,
                  LaneSums& acc),
                 (src, runs, n_runs, shift, acc))

// Accumulate x[0, n): one run.
void accumulate(const float* x, int64_t n, double shift, LaneSums& acc) {
  const Run whole{0, n, 0};
  accumulate_runs(x, &whole, 1, shift, acc);
}

// The statistics of scores.h from the lane sums of a row shifted by c (c = 0 for cosine).
RowStats stats_from_sums(double sum, double sum_sq, double shift, int64_t P, bool centered,
                         double eps) {
  const ShiftedSums r = shifted_sums(shift, sum, sum_sq, P, centered);
  return finish_row_stats(r.mean, r.ss_centred, r.ss_raw, eps);
}

RowStats stats_from_sums(const LaneSums& acc, double shift, int64_t P, bool centered,
                         double eps) {
  double sum = 0.0, sum_sq = 0.0;
  for (int64_t l = 0; l < kLanes; ++l) {
    sum += acc.shifted[l];
    sum_sq += acc.shifted_sq[l];
  }
  return stats_from_sums(sum, sum_sq, shift, P, centered, eps);
}

// dst <- (src - mean) / norm, in float32 through the shared `normalise_value_split` (the mean
// split into two floats, so the centring keeps float64 accuracy: see scores.h). Three float
// operations per value instead of two widenings, two float64 operations and a narrowing.
// `src` may be `dst` (in place).
template <int>
__attribute__((always_inline)) inline void normalise_values_body(
    const float* src, int64_t n, float* dst, SplitMean mean, float inv_norm) {
#pragma omp simd
  for (int64_t p = 0; p < n; ++p) dst[p] = normalise_value_split(src[p], mean, inv_norm);
}
EQUIFAST_PER_ISA(void, normalise_values, normalise_values_body,
                 (const float* src, int64_t n, float* dst, SplitMean mean, float inv_norm),
                 (src, n, dst, mean, inv_norm))

// dst <- normalised src for a defined row with statistics st: in float32 where scores.h's
// `split_normalisable` allows it, else in float64 (`normalise_value`).
void normalise_into(const float* src, int64_t n, float* dst, const RowStats& st) {
  if (split_normalisable(st.inv_norm)) {
    normalise_values(src, n, dst, split_mean(st.mean), static_cast<float>(st.inv_norm));
    return;
  }
  for (int64_t p = 0; p < n; ++p) dst[p] = normalise_value(src[p], st.mean, st.inv_norm);
}

// Sums and normalisation of a row already gathered into x (in L1), in place; returns whether
// the row is defined. An undefined row is zeroed: it is masked out of the scores anyway, and
// zeros (unlike a non-finite input scaled by 0) cannot leak NaN into the similarity tile.
uint8_t normalise_gathered_row(float* x, int64_t P, bool centered, double eps) {
  const double shift = centered ? static_cast<double>(x[0]) : 0.0;
  LaneSums acc;
  accumulate(x, P, shift, acc);
  const RowStats st = stats_from_sums(acc, shift, P, centered, eps);
  if (!st.defined) {
    std::memset(x, 0, P * sizeof(float));
    return 0;
  }
  normalise_into(x, P, x, st);
  return 1;
}

// The same for a float32 row made of contiguous runs, read straight from the input: the sums
// take one streaming read (no stores, so the core keeps the most misses in flight), and the
// normalisation reads the row again, now from L1/L2, writing the packed row.
uint8_t normalise_runs(const float* src, const std::vector<Run>& runs, int64_t P, bool centered,
                       double eps, float* out) {
  const double shift = centered ? static_cast<double>(src[runs[0].offset]) : 0.0;
  LaneSums acc;
  accumulate_runs(src, runs.data(), static_cast<int64_t>(runs.size()), shift, acc);
  const RowStats st = stats_from_sums(acc, shift, P, centered, eps);
  if (!st.defined) {
    std::memset(out, 0, P * sizeof(float));
    return 0;
  }
  for (const Run& run : runs) normalise_into(src + run.offset, run.length, out + run.p, st);
  return 1;
}

// Runs at least this long on average are read in place by the sums; shorter ones are copied
// into the packed row first (per-run work costs more than the copy).
constexpr int64_t kLongRun = 128;

template <typename scalar_t>
struct Side {
  const scalar_t* data;
  int64_t stride_n, stride_k;
  const int64_t* offsets;  // [P] memory offsets of the compared positions
  bool k_fastest;
  std::vector<Run> runs;
  bool use_runs;   // runs of 8 or more on average: copied run by run, not position by position
  bool long_runs;  // runs of kLongRun or more on average: float32 rows read in place
  // Float32 with adjacent channels (channels-last): summed and packed by columns (see
  // "Channels-last sides").
  bool columns;
  // Columns only, computed once per call of the operator: the positions in the order of their
  // offsets (memory order), and those offsets.
  std::vector<int64_t> order, memory_offsets;
  // Positions `step` apart (offsets[p] = offsets[0] + p * step) with unit-stride rows
  // (step == 1) or channels (columns), in float32: a matrix BLAS can read where it lies.
  int64_t step;
  bool in_place;
};

// ---------------------------------------------------------------------------------------
// B read in place
// ---------------------------------------------------------------------------------------
// When ftx's compared positions form such a matrix (the identity map, which is B's map for
// every transform of equifast.transforms, on a map contiguous in its positions, NCHW or
// channels-last), the GEMM reads B where it lies, unnormalised, and only its statistics are
// taken (one streaming read):
//   S[a, b] = <û_a, v_b - μ_b> / ||v_b - μ_b|| = <û_a, v_b> / ||v_b - μ_b||,
// since û_a sums to zero; the epilogue scales the tile's columns by 1 / ||v_b - μ_b||. That
// saves normalising and writing B, half of the packing. The float32 GEMM then sums terms of
// size |v_b| rather than |v_b - μ_b|, so its rounding error (and that of Σ û_a = 0, at most
// 2^-23 f) grows by f = ||v_b|| / ||v_b - μ_b||. An image in which a defined row has
// f > kMaxInPlaceGrowth (a row varying little around a large mean), or a norm near float32's
// range limits, packs B normalised as before. For cosine f = 1.
constexpr double kMaxInPlaceGrowth = 16.0;

bool fits_in_place(const RowStats& st, int64_t P) {
  if (!st.defined) return true;  // masked out of the scores: its values do not matter
  if (!split_normalisable(st.inv_norm)) return false;
  const double m = st.mean * st.inv_norm;  // f^2 = ||v||^2 / ||v - μ||^2 = 1 + P m^2
  return static_cast<double>(P) * m * m <= kMaxInPlaceGrowth * kMaxInPlaceGrowth - 1.0;
}

// ---------------------------------------------------------------------------------------
// Channels-last sides: statistics and packing by columns
// ---------------------------------------------------------------------------------------
// A float32 side whose channels are adjacent in memory is never transposed: its statistics are
// summed position by position, vectorised across channels, and it is packed normalised as
// columns (dst[p * ld + k], one copy of a position's channels each), which BLAS multiplies as
// fast as rows. Positions are read in memory order, a block of positions (kPositionBlockBytes)
// whole (every channel) before the next, so that the read streams through memory; within a
// block, the sums of kChannelBlock channels stay in vector registers. (Sweeping all positions
// for 16 channels at a time reads one cache line per position: measured about 1.4x slower from
// memory.) Against rows gathered through 8 x 8 transpositions, measured on AVX2: as fast for
// long rows (64 x 56 x 56), 2-4x faster to pack for short ones (7 x 7 to 28 x 28 maps), where
// the per-row work dominated.
constexpr int64_t kChannelBlock = 16;
constexpr int64_t kPositionBlockBytes = 16 * 1024;

// Float64 shifted sums of channels [0, kChannelBlock) at `base` over the positions at offsets
// [p0, p1), added to sum and sum_sq; the same channels `ahead` positions further on (before
// `end`) are prefetched: the sweep reads one cache line per position, a stride the hardware
// prefetchers follow poorly (measured 1.3x slower from memory without).
template <int kBytes>
__attribute__((always_inline)) inline void accumulate_channels(const float* base,
                                                               const int64_t* offsets,
                                                               int64_t p0, int64_t p1,
                                                               int64_t ahead, int64_t end,
                                                               const double* shift,
                                                               double* sum, double* sum_sq) {
  using dv = typename Widening<kBytes>::doubles;
  using fv = typename Widening<kBytes>::floats;
  constexpr int kWidth = kBytes / 8, kVectors = kChannelBlock / kWidth;
  dv c[kVectors], s[kVectors], q[kVectors];
  for (int v = 0; v < kVectors; ++v) {
    c[v] = load_vector<dv>(shift + v * kWidth);
    s[v] = load_vector<dv>(sum + v * kWidth);
    q[v] = load_vector<dv>(sum_sq + v * kWidth);
  }
  for (int64_t p = p0; p < p1; ++p) {
    const float* x = base + offsets[p];
    if (p + ahead < end) __builtin_prefetch(base + offsets[p + ahead]);
    for (int v = 0; v < kVectors; ++v) {
      const dv d = Widening<kBytes>::widen(load_vector<fv>(x + v * kWidth)) - c[v];
      s[v] += d;
      q[v] += d * d;
    }
  }
  for (int v = 0; v < kVectors; ++v) {
    store_vector(sum + v * kWidth, s[v]);
    store_vector(sum_sq + v * kWidth, q[v]);
  }
}

EQUIFAST_PER_ISA(void, accumulate_channel_block, accumulate_channels,
                 (const float* base, const int64_t* offsets, int64_t p0, int64_t p1,
                  int64_t ahead, int64_t end, const double* shift, double* sum,
                  double* sum_sq),
                 (base, offsets, p0, p1, ahead, end, shift, sum, sum_sq))

// The same for `rows` < kChannelBlock channels.
template <int>
__attribute__((always_inline)) inline void accumulate_columns_body(
    const float* base, const int64_t* offsets, int64_t p0, int64_t p1, int64_t rows,
    const double* shift, double* sum, double* sum_sq) {
  for (int64_t p = p0; p < p1; ++p) {
    const float* x = base + offsets[p];
#pragma omp simd
    for (int64_t r = 0; r < rows; ++r) {
      const double d = static_cast<double>(x[r]) - shift[r];
      sum[r] += d;
      sum_sq[r] += d * d;
    }
  }
}
EQUIFAST_PER_ISA(void, accumulate_columns, accumulate_columns_body,
                 (const float* base, const int64_t* offsets, int64_t p0, int64_t p1, int64_t rows,
                  const double* shift, double* sum, double* sum_sq),
                 (base, offsets, p0, p1, rows, shift, sum, sum_sq))

// Per-channel scratch of the column statistics (rows up to K), kept per thread.
struct ColumnScratch {
  std::vector<double> shift, sum, sum_sq;
  std::vector<float> hi, lo, inv;
  void resize(int64_t rows) {
    for (auto* v : {&shift, &sum, &sum_sq}) v->resize(rows);
    for (auto* v : {&hi, &lo, &inv}) v->resize(rows);
  }
};

ColumnScratch& column_scratch() {
  static thread_local ColumnScratch scratch;
  return scratch;
}

// Statistics of channels [0, rows) at `base` (channel r of position p at base[offsets[p] + r])
// over the P compared positions (memory_offsets: their offsets in memory order), shifted by
// their values at the first of them (see LaneSums).
// Calls finish(r, stats) for each channel.
template <typename Finish>
void column_stats(const float* base, const int64_t* memory_offsets, int64_t P, int64_t rows,
                  bool centered, double eps, Finish&& finish) {
  ColumnScratch& c = column_scratch();
  c.resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    c.shift[r] = centered ? static_cast<double>(base[memory_offsets[0] + r]) : 0.0;
    c.sum[r] = c.sum_sq[r] = 0.0;
  }
  const int64_t block = std::clamp<int64_t>(kPositionBlockBytes / (4 * rows), 8, 256);
  for (int64_t p0 = 0; p0 < P; p0 += block) {
    const int64_t p1 = std::min(P, p0 + block);
    int64_t r0 = 0;
    for (; r0 + kChannelBlock <= rows; r0 += kChannelBlock)
      accumulate_channel_block(base + r0, memory_offsets, p0, p1, block, P,
                               c.shift.data() + r0, c.sum.data() + r0, c.sum_sq.data() + r0);
    if (r0 < rows)
      accumulate_columns(base + r0, memory_offsets, p0, p1, rows - r0,
                         c.shift.data() + r0, c.sum.data() + r0, c.sum_sq.data() + r0);
  }
  for (int64_t r = 0; r < rows; ++r)
    finish(r, stats_from_sums(c.sum[r], c.sum_sq[r], c.shift[r], P, centered, eps));
}

// dst[p * ld + r] = (x - mean_r) / norm_r for channels [0, rows), positions in memory order,
// through the float32 form of scores.h (mean split as hi + lo, inv = 1 / norm).
template <int>
__attribute__((always_inline)) inline void normalise_columns_body(
    const float* base, const int64_t* memory_offsets, const int64_t* order, int64_t P, int64_t rows,
    const float* hi, const float* lo, const float* inv, float* dst, int64_t ld) {
  for (int64_t i = 0; i < P; ++i) {
    const float* x = base + memory_offsets[i];
    float* out = dst + order[i] * ld;
#pragma omp simd
    for (int64_t r = 0; r < rows; ++r)
      out[r] = normalise_value_split(x[r], SplitMean{hi[r], lo[r]}, inv[r]);
  }
}
EQUIFAST_PER_ISA(void, normalise_columns, normalise_columns_body,
                 (const float* base, const int64_t* memory_offsets, const int64_t* order,
                  int64_t P, int64_t rows, const float* hi, const float* lo, const float* inv,
                  float* dst, int64_t ld),
                 (base, memory_offsets, order, P, rows, hi, lo, inv, dst, ld))

// Pack and normalise channels [k0, k0 + rows) of image n of a float32 channels-last side into
// columns dst[p * ld + r], and defined[rows]. Two reads of the image's channels: the sums, then
// the normalisation. Undefined channels pack as zeros (inv = 0; a non-finite input gives NaN,
// which stays in its own column of the similarity tile, masked out). Channels out of
// `split_normalisable`'s range are normalised in float64, as by normalise_into.
void pack_columns(const Side<float>& side, int64_t n, int64_t k0, int64_t rows, int64_t P,
                  int64_t ld, bool centered, double eps, float* dst, uint8_t* defined) {
  const float* base = side.data + n * side.stride_n + k0;
  ColumnScratch& c = column_scratch();
  std::vector<std::pair<int64_t, RowStats>> tiny;
  column_stats(base, side.memory_offsets.data(), P, rows, centered, eps,
               [&](int64_t r, const RowStats& st) {
                 defined[r] = st.defined;
                 const bool single = st.defined && split_normalisable(st.inv_norm);
                 const SplitMean m = split_mean(single ? st.mean : 0.0);
                 c.hi[r] = m.hi;
                 c.lo[r] = m.lo;
                 c.inv[r] = single ? static_cast<float>(st.inv_norm) : 0.f;
                 if (st.defined && !single) tiny.emplace_back(r, st);
               });
  normalise_columns(base, side.memory_offsets.data(), side.order.data(), P, rows, c.hi.data(),
                    c.lo.data(), c.inv.data(), dst, ld);
  for (const auto& [r, st] : tiny)
    for (int64_t p = 0; p < P; ++p)
      dst[p * ld + r] = normalise_value(base[side.offsets[p] + r], st.mean, st.inv_norm);
}

// Statistics of rows [0, rows) of B read in place at `x` (element (k, p) at x[k * stride_k +
// offsets[p]], offsets p * step apart) into def[rows] and scale[rows] (1 / ||v - μ||, 0 when
// undefined). Returns whether every row fits in place.
bool in_place_rows(const Side<float>& side, const float* x, int64_t rows, int64_t P,
                   bool centered, double eps, uint8_t* def, float* scale) {
  bool fit = true;
  auto finish = [&](int64_t r, const RowStats& st) {
    def[r] = st.defined;
    scale[r] = st.defined ? static_cast<float>(st.inv_norm) : 0.f;
    fit = fit && fits_in_place(st, P);
  };
  if (side.columns) {
    column_stats(x, side.memory_offsets.data(), P, rows, centered, eps, finish);
    return fit;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * side.stride_k + side.offsets[0];
    const double shift = centered ? static_cast<double>(row[0]) : 0.0;
    LaneSums acc;
    accumulate(row, P, shift, acc);
    finish(r, stats_from_sums(acc, shift, P, centered, eps));
  }
  return fit;
}

// Pack and normalise rows [k0, k0 + rows) of image n into dst [rows, P] (leading dimension
// ld) and defined[rows].
// Row by row, the input is read once (by the fused copy and sums, or by the gather) and the
// rest works on the row while it is in L1 (P floats: 12 KiB for a 56 x 56 map).
template <typename scalar_t>
void pack_rows(const Side<scalar_t>& side, int64_t n, int64_t k0, int64_t rows, int64_t P,
               int64_t ld, bool centered, double eps, float* dst, uint8_t* defined) {
  const scalar_t* base = side.data + n * side.stride_n + k0 * side.stride_k;
  if (side.k_fastest) {
    // 16 rows at a time, normalised while they are in L2
    for (int64_t r0 = 0; r0 < rows; r0 += kChannelBlock) {
      const int64_t nr = std::min(kChannelBlock, rows - r0);
      gather_rows_channels_last(base + r0 * side.stride_k, side.stride_k, side.offsets, P, nr,
                                dst + r0 * ld, ld);
      for (int64_t r = r0; r < r0 + nr; ++r)
        defined[r] = normalise_gathered_row(dst + r * ld, P, centered, eps);
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* src = base + r * side.stride_k;
    float* out = dst + r * ld;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (side.long_runs) {
        defined[r] = normalise_runs(src, side.runs, P, centered, eps, out);
        continue;
      }
    }
    gather_row(src, side.offsets, P, side.runs, side.use_runs, out);
    defined[r] = normalise_gathered_row(out, P, centered, eps);
  }
}

// Pack a side's channels [k0, k0 + rows) of image n: as columns (dst[p * ld + r]) for a
// channels-last float32 side, as rows (dst[r * ld + p]) otherwise.
template <typename scalar_t>
void pack(const Side<scalar_t>& side, int64_t n, int64_t k0, int64_t rows, int64_t P,
          int64_t ld, bool centered, double eps, float* dst, uint8_t* defined) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (side.columns) return pack_columns(side, n, k0, rows, P, ld, centered, eps, dst, defined);
  }
  pack_rows(side, n, k0, rows, P, ld, centered, eps, dst, defined);
}

// dst[p * ldd + r] = src[r * lds + p] (rows of B into B^T), 8 x 8 at a time in registers.
template <int>
__attribute__((always_inline)) inline void transpose_rows_body(
    const float* src, int64_t lds, int64_t rows, int64_t P, float* dst, int64_t ldd) {
  const float* at[8];
  int64_t r0 = 0;
  for (; r0 + 8 <= rows; r0 += 8) {
    int64_t p = 0;
    for (; p + 8 <= P; p += 8) {
      for (int i = 0; i < 8; ++i) at[i] = src + (r0 + i) * lds + p;
      transpose_8x8(at, dst + p * ldd + r0, ldd);
    }
    for (; p < P; ++p)
      for (int64_t r = r0; r < r0 + 8; ++r) dst[p * ldd + r] = src[r * lds + p];
  }
  for (int64_t p = 0; r0 < rows && p < P; ++p)
    for (int64_t r = r0; r < rows; ++r) dst[p * ldd + r] = src[r * lds + p];
}
EQUIFAST_PER_ISA(void, transpose_rows, transpose_rows_body,
                 (const float* src, int64_t lds, int64_t rows, int64_t P, float* dst, int64_t ldd),
                 (src, lds, rows, P, dst, ldd))

// ---------------------------------------------------------------------------------------
// Similarity tile and its epilogue
// ---------------------------------------------------------------------------------------

// An operand as the GEMM reads it: element (k, p) at data[k * stride_k + p * stride_p]. Packed
// rows [K, P] are normalised (scale == nullptr), as are packed columns [P, K] (stride_k 1); B
// read in place is not, and `scale` [K] holds its columns' 1 / ||v - μ|| (see in_place_rows).
struct BView {
  const float* data;
  int64_t stride_k, stride_p;
  const float* scale;
};

// S [rows, K] = A [rows, P] @ B^T, single-threaded (we are inside parallel_for); S has leading
// dimension ld_s. BLAS takes each operand's layout (rows or columns) as a flag.
void similarity_tile(const BView& a, const BView& b, int64_t rows, int64_t K, int64_t P,
                     float* s, int64_t ld_s) {
  auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor ta =
      at::from_blob(const_cast<float*>(a.data), {rows, P}, {a.stride_k, a.stride_p}, opts);
  at::Tensor ts = at::from_blob(s, {rows, K}, {ld_s, 1}, opts);
  at::Tensor tb =
      at::from_blob(const_cast<float*>(b.data), {K, P}, {b.stride_k, b.stride_p}, opts);
  at::mm_out(ts, ta, tb.t());
}

// The factor of each column of an image's similarity tiles: 1 / ||v - μ|| for B read in place
// (its columns normalised in the epilogue), 1 for packed B, 0 for an undefined column (masked
// out of the scores).
void column_factors(const uint8_t* def_b, const float* scale, int64_t K, float* factor) {
  for (int64_t c = 0; c < K; ++c) factor[c] = def_b[c] ? (scale ? scale[c] : 1.f) : 0.f;
}

// A tile entry with its column factor applied: -inf for masked columns (whatever the entry, NaN
// from a non-finite input included). The product is formed unconditionally, so that gcc turns
// the choice into a vector blend.
__attribute__((always_inline)) inline float scaled_entry(float s, float factor) {
  const float scaled = s * factor;
  return factor > 0.f ? scaled : -std::numeric_limits<float>::infinity();
}

// Row max of the scaled entries of s[0, K) and the first index holding it (ties: smallest
// index), in two vectorised passes over the row (in L1): the max, with four accumulators (one
// would wait on the max latency), then the first vector holding it. A row with every column
// masked gives index -1.
template <int>
__attribute__((always_inline)) inline void row_argmax_body(
    const float* s, const float* factor, int64_t K, float* best, int64_t* index) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const f8 negative_inf = f8{} + kNegInf;
  auto scaled = [&](int64_t j) {
    const f8 f = load_vector<f8>(factor + j);
    const f8 x = load_vector<f8>(s + j) * f;
    return f > 0.f ? x : negative_inf;
  };
  f8 lanes[4] = {negative_inf, negative_inf, negative_inf, negative_inf};
  int64_t j = 0;
  for (; j + 32 <= K; j += 32) {
    for (int v = 0; v < 4; ++v) {
      const f8 x = scaled(j + 8 * v);
      lanes[v] = x > lanes[v] ? x : lanes[v];
    }
  }
  for (; j + 8 <= K; j += 8) {
    const f8 x = scaled(j);
    lanes[0] = x > lanes[0] ? x : lanes[0];
  }
  float m = kNegInf;
  for (int v = 0; v < 4; ++v)
    for (int l = 0; l < 8; ++l) m = lanes[v][l] > m ? lanes[v][l] : m;
  for (; j < K; ++j) m = std::max(m, scaled_entry(s[j], factor[j]));
  *best = m;
  *index = -1;
  if (m == kNegInf) return;
  j = 0;
  for (; j + 32 <= K; j += 32) {  // lanes of all ones where equal, one test per 32 entries
    const auto hit =
        (scaled(j) == m) | (scaled(j + 8) == m) | (scaled(j + 16) == m) | (scaled(j + 24) == m);
    int64_t words[4];
    std::memcpy(words, &hit, sizeof(words));
    if ((words[0] | words[1] | words[2] | words[3]) != 0) break;
  }
  while (scaled_entry(s[j], factor[j]) != m) ++j;  // m is in the row: stops at its first place
  *index = j;
}
EQUIFAST_PER_ISA(void, row_argmax, row_argmax_body,
                 (const float* s, const float* factor, int64_t K, float* best, int64_t* index),
                 (s, factor, K, best, index))

// Row k's scores: of a defined row, the channel score from its diagonal entry and column
// factor, the layer score from its largest entry `best` and the first column holding it
// (`index`, -1 where no column is defined); an undefined row is NaN throughout.
inline void write_row_scores(int64_t k, bool defined, float diagonal, float diagonal_factor,
                             float best, int64_t index, float* channel, float* layer,
                             int64_t* layer_index) {
  if (!defined) {
    channel[k] = layer[k] = nan_value();
    layer_index[k] = -1;
    return;
  }
  channel[k] = diagonal_factor > 0.f ? score(diagonal * diagonal_factor) : nan_value();
  layer[k] = index < 0 ? nan_value() : score(best);
  layer_index[k] = index < 0 ? -1 : index;
}

// Epilogue of one tile: rows [k0, k0 + rows) of image n, with the image's column factors.
void tile_epilogue(const float* s, int64_t ld_s, int64_t rows, int64_t K, int64_t k0,
                   const uint8_t* def_a, const float* factor, float* channel, float* layer,
                   int64_t* layer_index) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t k = k0 + r;
    float best = 0.f;
    int64_t index = -1;
    const float* row = s + r * ld_s;
    if (def_a[r]) row_argmax(row, factor, K, &best, &index);
    write_row_scores(k, def_a[r], def_a[r] ? row[k] : 0.f, factor[k], best, index, channel,
                     layer, layer_index);
  }
}

// ---------------------------------------------------------------------------------------
// Streamed images: channels-last sides read once, statistics taken while packing, our GEMM
// ---------------------------------------------------------------------------------------
// For channels-last features with few channels (64 channels of a 56 x 56 map), normalising
// before a BLAS call reads each side twice from memory (an image's side does not stay in L2
// between its sums and its normalisation) and BLAS then packs the normalised copy again. A
// streamed image instead walks the compared positions in chunks of kc: each chunk of both
// sides is gathered through the index map (read once from memory), shifted near its
// per-channel mean and packed into the panels of a register-blocked GEMM that accumulates the
// image's whole similarity matrix C [K, K] (in L1/L2). The shift keeps C's float32 sums as
// accurate as sums of normalised values: the shifted values u' = u - c_t are of the size of
// u - μ. The exact centred products follow from the chunks' statistics (n_t values, shift
// c_t, Σu', Σu'^2, summed in float64), whatever the shifts:
//   Σ_p (u - μ)(v - ν) = C + Σ_t [α_t Σv'_t + β_t Σu'_t + n_t α_t β_t],  α_t = c_t - μ,
// β_t = d_t - ν: a GEMM of 2T more positions. The first chunk's shift is its mean,
// c_0 = u_0 + Σ(u - u_0) / n_0 (u_0 its first value: exactly u_0 for a constant channel,
// which so stays exactly undefined); a later chunk's is the previous chunk's mean, which spares
// a pass over the chunk (read once from memory), unless it lies further from the chunk's own
// mean than the chunk's spread (then the chunk is packed again around its own mean; see
// pack_chunk). Measured: 0.90-0.93x the time of a mean pass per chunk at 64 @ 56 x 56.
// The products are float32: an image with a channel out of their range (see
// streamed_channel_stats) is computed again by the normalised path.
// Measured on AVX2 (N = 64, 2 threads): 1.1-1.6x faster than the normalised path for
// channels-last K <= 128; slower for NCHW sides (their 8 x 8 transpositions into panels cost
// more than BLAS's packing) and for K = 256, which keep the normalised path. Like the other
// loops, the GEMM and the packing are compiled per instruction set (EQUIFAST_PER_ISA); the
// baseline (SSE) build passes the same tests but was not timed.
// On AVX-512, float32 maps of at most 62 positions (7 x 7 and smaller) at any K, and of up to
// 1022 at K > 128, are streamed whole whatever the layout (NCHW channels gathered while
// packed): one chunk, and the row maxima taken from the GEMM's registers (see streamed_whole).
constexpr int64_t kMaxStreamedChannels = 128;
constexpr int64_t kStreamedPanelFloats = 16 * 1024;  // a chunk's panels: 64 KiB a side

// Vectors of kBytes: of floats, and of int32 lanes as wide (the columns of micro_tile_max's
// maxima).
template <typename T, int kBytes>
struct LaneVector {
  typedef T type __attribute__((vector_size(kBytes)));
};
template <int kBytes>
struct FloatVector : LaneVector<float, kBytes> {};
template <int kBytes>
struct IntVector : LaneVector<int32_t, kBytes> {};

// Channels are padded to whole panels of the widest vector (16 floats), whatever the CPU.
constexpr int64_t kStreamedChannelAlign = 16;

// The register blocking per instruction set: panels of kWidth channels (one vector);
// micro-tiles of kRows rows of A by kVectors vectors of B (12 accumulators of 16 AVX2 or SSE
// registers, 16 of 32 AVX-512 ones).
template <int kBytes>
struct Blocking {
  static constexpr int kWidth = kBytes / 4;
  static constexpr int kRows = kBytes == 64 ? 8 : 4;
  static constexpr int kVectors = kBytes == 64 ? 2 : 3;
};

// c[r * ldc + v * W + l] += Σ_{p < n} a[p * W + r] b[v * b_block + p * W + l] for r < MR,
// v < NV, l < W: A broadcast from its panel, B loaded from NV panels, C in registers.
template <int kBytes, int MR, int NV>
__attribute__((always_inline)) inline void micro_tile(const float* a, const float* b,
                                                      int64_t b_block, int64_t n, float* c,
                                                      int64_t ldc) {
  using fv = typename FloatVector<kBytes>::type;
  constexpr int W = kBytes / 4;
  fv acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = fv{};
  for (int64_t p = 0; p < n; ++p) {
    fv bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = load_vector<fv>(b + v * b_block + p * W);
    for (int r = 0; r < MR; ++r) {
      const fv av = a[p * W + r] - fv{};  // a broadcast (x - 0 is x)
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) {
      float* to = c + r * ldc + v * W;
      store_vector(to, load_vector<fv>(to) + acc[r][v]);
    }
}

// Positions summed in registers before their sum is added to C. A float32 sum loses up to half
// an ulp of its running value per term; on a sparse map (a ReLU's zeros: after a few large
// products, many small ones of one sign) the losses do not cancel, so a sum over a whole chunk
// (256 positions at K = 64, 1024 at K <= 16) put the scores 2.4e-5 from the reference. Blocks
// of 64 positions, with the chunk statistics summed by blocks too (kStatBlock), keep them
// within 4e-6, for a few per cent more time in the GEMM (C is loaded and stored once per block
// instead of once per chunk).
constexpr int64_t kSubBlock = 64;

// C [KP, KP] += A B^T over n positions of panels [KP / W][kc][W].
template <int kBytes>
__attribute__((always_inline)) inline void multiply_chunk(const float* a_panels,
                                                          const float* b_panels, int64_t KP,
                                                          int64_t kc, int64_t n, float* c) {
  using B = Blocking<kBytes>;
  constexpr int W = B::kWidth;
  const int64_t blocks = KP / W, block = kc * W;
  for (int64_t jb = 0; jb < blocks; jb += B::kVectors) {
    const float* b = b_panels + jb * block;
    const int64_t nv = std::min<int64_t>(B::kVectors, blocks - jb);
    for (int64_t i = 0; i < KP; i += B::kRows) {
      const float* a = a_panels + (i / W) * block + i % W;
      float* ci = c + i * KP + jb * W;
      for (int64_t p0 = 0; p0 < n; p0 += kSubBlock) {
        const int64_t m = std::min<int64_t>(kSubBlock, n - p0);
        const float *ap = a + p0 * W, *bp = b + p0 * W;
        if (nv == B::kVectors)
          micro_tile<kBytes, B::kRows, B::kVectors>(ap, bp, block, m, ci, KP);
        else if (nv == 2)
          micro_tile<kBytes, B::kRows, 2>(ap, bp, block, m, ci, KP);
        else
          micro_tile<kBytes, B::kRows, 1>(ap, bp, block, m, ci, KP);
      }
    }
  }
}

// Lanes of a row's running maxima in whole images, whatever the vector width.
constexpr int64_t kRowLanes = 16;

// Whole images (see streamed_whole): the register tile of rows [i, i + MR) by columns
// [j0, j0 + NV W) over n positions (summed by blocks of kSubBlock) goes straight into the rows'
// running maxima instead of C: per row, lane l keeps the largest scaled entry of the columns it
// has seen (j = l mod W) and the first column holding it (`best`, `where`: [KP][kRowLanes],
// lanes past W unused); a masked column (factor 0) is -inf and never taken. The diagonal
// entries (the channel score) are kept raw.
template <int kBytes, int MR, int NV>
__attribute__((always_inline)) inline void micro_tile_max(const float* a, const float* b,
                                                          int64_t b_block, int64_t n,
                                                          const float* factor, int64_t i,
                                                          int64_t j0, float* best,
                                                          int32_t* where, float* diag) {
  using fv = typename FloatVector<kBytes>::type;
  using iv = typename IntVector<kBytes>::type;
  constexpr int W = kBytes / 4;
  fv acc[MR][NV];
  // positions [p0, p1) summed into acc, from zero
  auto block = [&](int64_t p0, int64_t p1) __attribute__((always_inline)) {
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = fv{};
    for (int64_t p = p0; p < p1; ++p) {
      fv bv[NV];
      for (int v = 0; v < NV; ++v) bv[v] = load_vector<fv>(b + v * b_block + p * W);
      for (int r = 0; r < MR; ++r) {
        const fv av = a[p * W + r] - fv{};  // a broadcast (x - 0 is x)
        for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
      }
    }
  };
  block(0, std::min(n, kSubBlock));
  if (n > kSubBlock) {  // blocks of kSubBlock positions summed apart, then added (see kSubBlock)
    alignas(64) float kept[MR][NV][W];
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) store_vector(kept[r][v], acc[r][v]);
    for (int64_t p0 = kSubBlock; p0 < n; p0 += kSubBlock) {
      block(p0, std::min(n, p0 + kSubBlock));
      for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v)
          store_vector(kept[r][v], load_vector<fv>(kept[r][v]) + acc[r][v]);
    }
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = load_vector<fv>(kept[r][v]);
  }
  if (i < j0 + NV * W && j0 < i + MR) {  // the tile holds diagonal entries
    for (int r = 0; r < MR; ++r) {
      const int64_t d = i + r - j0;
      if (d >= 0 && d < NV * W) diag[i + r] = acc[r][d / W][d % W];
    }
  }
  const fv negative_inf = fv{} - std::numeric_limits<float>::infinity();
  iv lane{};
  for (int l = 0; l < W; ++l) lane[l] = l;
  fv f[NV];
  iv column[NV];
  for (int v = 0; v < NV; ++v) {
    f[v] = load_vector<fv>(factor + j0 + v * W);
    column[v] = lane + static_cast<int32_t>(j0 + v * W);
  }
  for (int r = 0; r < MR; ++r) {
    fv m = load_vector<fv>(best + (i + r) * kRowLanes);
    iv at = load_vector<iv>(where + (i + r) * kRowLanes);
    for (int v = 0; v < NV; ++v) {
      const fv x = f[v] > 0.f ? acc[r][v] * f[v] : negative_inf;
      const auto larger = x > m;  // strictly: an earlier column keeps a tie
      m = larger ? x : m;
      at = larger ? column[v] : at;
    }
    store_vector(best + (i + r) * kRowLanes, m);
    store_vector(where + (i + r) * kRowLanes, at);
  }
}

// The maxima of rows [i0, i1) (multiples of 16) of A B^T (panels [KP / W][kc][W], n <=
// kc positions) with column factors factor[KP] (0 past K), into their rows of best /
// where [KP][kRowLanes] and diag [KP] (see micro_tile_max). A row's maximum is the same
// whichever rows are computed with it.
template <int kBytes>
__attribute__((always_inline)) inline void multiply_max_impl(const float* a_panels,
                                                             const float* b_panels, int64_t KP,
                                                             int64_t kc, int64_t n,
                                                             const float* factor, int64_t i0,
                                                             int64_t i1, float* best,
                                                             int32_t* where, float* diag) {
  using B = Blocking<kBytes>;
  constexpr int W = B::kWidth;
  const int64_t blocks = KP / W, block = kc * W;
  std::fill(best + i0 * kRowLanes, best + i1 * kRowLanes, -std::numeric_limits<float>::infinity());
  std::fill(where + i0 * kRowLanes, where + i1 * kRowLanes, -1);
  for (int64_t jb = 0; jb < blocks; jb += B::kVectors) {
    const float* b = b_panels + jb * block;
    const int64_t nv = std::min<int64_t>(B::kVectors, blocks - jb);
    for (int64_t i = i0; i < i1; i += B::kRows) {
      const float* a = a_panels + (i / W) * block + i % W;
      if (nv == B::kVectors)
        micro_tile_max<kBytes, B::kRows, B::kVectors>(a, b, block, n, factor, i, jb * W, best,
                                                      where, diag);
      else if (nv == 2)
        micro_tile_max<kBytes, B::kRows, 2>(a, b, block, n, factor, i, jb * W, best, where, diag);
      else
        micro_tile_max<kBytes, B::kRows, 1>(a, b, block, n, factor, i, jb * W, best, where, diag);
    }
  }
}

// The chunk statistics are float32 sums over blocks of kStatBlock positions, added up in
// float64, for the same reason as kSubBlock (the GEMM's blocks alone left 9e-6).
constexpr int64_t kStatBlock = 32;

// A float64 sum of float vectors of kBytes (two registers of doubles).
template <int kBytes>
struct WideSum {
  using fv = typename FloatVector<kBytes>::type;
  using dv = typename Widening<kBytes>::doubles;
  using hv = typename Widening<kBytes>::floats;
  static constexpr int H = kBytes / 8;  // doubles in dv, floats in hv: half of fv
  dv lo{}, hi{};
  __attribute__((always_inline)) inline void add(fv x) {
    hv a, b;
    for (int l = 0; l < H; ++l) {
      a[l] = x[l];
      b[l] = x[H + l];
    }
    lo += Widening<kBytes>::widen(a);
    hi += Widening<kBytes>::widen(b);
  }
  __attribute__((always_inline)) inline fv get() const {
    fv r;
    for (int l = 0; l < H; ++l) {
      r[l] = static_cast<float>(lo[l]);
      r[H + l] = static_cast<float>(hi[l]);
    }
    return r;
  }
};

// The statistics of one chunk of a side, per channel: shift c_t, Σu', Σu'^2 (float32 values of
// the float64 sums above).
struct ChunkStats {
  float *shift, *sum, *sum_sq;
};

// Pack chunk positions [0, n) of a channels-last side (channel k of position p at
// image[offsets[p] + k]) into panels [KP / W][kc][W], a panel of W channels at a time, reading
// a position's W channels as one vector: their centred values and sums. The shift of the first
// chunk is its mean (a pass of its own). A later chunk (`prev`: the previous chunk's
// statistics and count) is shifted by the previous chunk's mean, so that it is read once from
// memory; when that shift is further from the chunk's own mean than the chunk's spread
// (a^2 > Σu'^2 / n - a^2, a = Σu' / n, in any channel of the panel), the panel is packed again
// around its own mean, from L1/L2, so that the products stay as accurate as centred ones. A
// constant channel keeps a shift equal to its value (its first chunk's mean is its first value
// plus zero), so it stays exactly constant.
template <int kBytes>
__attribute__((always_inline)) inline void pack_chunk(const float* image,
                                                      const int64_t* offsets, int64_t n,
                                                      int64_t K, int64_t KP, int64_t kc,
                                                      bool centered, float* panels,
                                                      ChunkStats st, const ChunkStats* prev,
                                                      float prev_count, int64_t stride_k = 1) {
  using fv = typename FloatVector<kBytes>::type;
  constexpr int W = kBytes / 4;
  const fv count = fv{} + static_cast<float>(n);
  for (int64_t k = 0; k < KP; k += W) {
    float* dst = panels + (k / W) * kc * W;
    const float* x = image + k * stride_k;
    const int64_t nk = std::clamp<int64_t>(K - k, 0, W);
    // A position's channels [k, k + W) as a vector; past K (the last, partial panel, or the
    // padding) zeros, which pack as zeros with zero statistics. Channels stride_k apart (NCHW,
    // whole images only) are gathered.
    auto load = [&](int64_t p) __attribute__((always_inline)) {
      if (nk == W && stride_k == 1) return load_vector<fv>(x + offsets[p]);
      fv v{};
      for (int64_t l = 0; l < nk; ++l) v[l] = x[offsets[p] + l * stride_k];
      return v;
    };
    // two accumulators per sum: one would wait on the add latency at every position
    auto mean_pass = [&]() __attribute__((always_inline)) {
      const fv x0 = load(0);
      fv d0{}, d1{};
      int64_t p = 0;
      for (; p + 2 <= n; p += 2) {
        d0 += load(p) - x0;
        d1 += load(p + 1) - x0;
      }
      if (p < n) d0 += load(p) - x0;
      return x0 + (d0 + d1) / count;
    };
    fv sum{}, sum_sq{};
    auto pack_pass = [&](fv c) __attribute__((always_inline)) {
      WideSum<kBytes> s, q;
      for (int64_t b0 = 0; b0 < n; b0 += kStatBlock) {
        const int64_t b1 = std::min(n, b0 + kStatBlock);
        fv s0{}, s1{}, q0{}, q1{};
        int64_t p = b0;
        for (; p + 2 <= b1; p += 2) {
          const fv t0 = load(p) - c;
          const fv t1 = load(p + 1) - c;
          store_vector(dst + p * W, t0);
          store_vector(dst + (p + 1) * W, t1);
          s0 += t0;
          s1 += t1;
          q0 += t0 * t0;
          q1 += t1 * t1;
        }
        if (p < b1) {
          const fv t0 = load(p) - c;
          store_vector(dst + p * W, t0);
          s0 += t0;
          q0 += t0 * t0;
        }
        s.add(s0 + s1);
        q.add(q0 + q1);
      }
      sum = s.get();
      sum_sq = q.get();
    };
    fv c{};
    if (centered && prev != nullptr) {
      c = load_vector<fv>(prev->shift + k) + load_vector<fv>(prev->sum + k) / prev_count;
      pack_pass(c);
      const fv a = sum / count;
      const auto far = a * a > sum_sq / count - a * a;
      bool again = false;
      for (int l = 0; l < W; ++l) again |= far[l] != 0;
      if (again) pack_pass(c = c + a);
    } else {
      if (centered) c = mean_pass();
      pack_pass(c);
    }
    store_vector(st.shift + k, c);
    store_vector(st.sum + k, sum);
    store_vector(st.sum_sq + k, sum_sq);
  }
}

// Per-thread storage of a streamed image.
struct StreamedBuffers {
  AlignedFloats a_panels, b_panels, c;
  AlignedFloats best, diag;  // whole images: the rows' lane maxima [KP][16], the diagonal [KP]
  std::vector<int32_t> where;
  std::vector<float> stats;  // [2 sides][shift, Σu', Σu'^2][T][KP]
  std::vector<float> inv_a, inv_b, factor;
  std::vector<uint8_t> def_a, def_b;
};

// Float64 statistics of channel k of a side from its chunks (counts n_t: kc, the last P -
// (T - 1) kc), and its entries of the correction panel at panel[t * W] (t < 2T): α_t = c_t - μ,
// then B's Σv'_t (side_b) or A's Σu'_t + n_t α_t. Returns false when the channel does not fit
// the float32 products (squares that underflow, finish_float32_row_stats in scores.h).
bool streamed_channel_stats(const float* stats, int64_t T, int64_t KP, int64_t k, int64_t P,
                            int64_t kc, bool centered, double eps, bool side_b, float* panel,
                            int64_t W, RowStats* out) {
  const float *shift = stats + k, *sum = stats + T * KP + k, *sum_sq = stats + 2 * T * KP + k;
  auto count = [&](int64_t t) { return static_cast<double>(std::min(kc, P - t * kc)); };
  double total = 0.0;
  for (int64_t t = 0; t < T; ++t) total += count(t) * shift[t * KP] + sum[t * KP];
  const double mean = centered ? total / static_cast<double>(P) : 0.0;
  double ss_centred = 0.0, ss_raw = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    const double c = shift[t * KP], s = sum[t * KP], q = sum_sq[t * KP], a = c - mean;
    if (q == 0.0 && s != 0.0) return false;  // squares that underflowed
    ss_centred += q + a * (2.0 * s + count(t) * a);
    ss_raw += q + c * (2.0 * s + count(t) * c);
    panel[t * W] = static_cast<float>(a);
    panel[(T + t) * W] = static_cast<float>(side_b ? s : s + count(t) * a);
  }
  return finish_float32_row_stats(mean, ss_centred, ss_raw, eps, out);
}

// The float32 part of a streamed image (a, b: the image's data; offsets [P] per side):
// C [KP, KP] = Σ_t A'_t B'_t^T plus the correction, one more GEMM of 2T positions: A's
// [α_t, Σu'_t + n_t α_t] against B's [Σv'_t, β_t] (every term is at most ||u - μ|| ||v - ν||,
// so float32 keeps it accurate). Each channel's definition and 1 / norm go to def_* and
// inv_*. Returns false when a channel does not fit the float32 products.
template <int kBytes>
__attribute__((always_inline)) inline bool stream_image_impl(
    const float* a, const int64_t* a_offsets, const float* b, const int64_t* b_offsets,
    int64_t K, int64_t KP, int64_t P, int64_t kc, bool centered, double eps,
    StreamedBuffers& buf) {
  constexpr int W = kBytes / 4;
  const int64_t T = (P + kc - 1) / kc;
  float* c = buf.c.data();
  std::memset(c, 0, KP * KP * sizeof(float));
  float* pa = buf.a_panels.data();
  float* pb = buf.b_panels.data();
  auto stats = [&](int side, int64_t chunk) {  // chunk -1: unused (t = 0)
    float* base = buf.stats.data() + side * 3 * T * KP + std::max<int64_t>(chunk, 0) * KP;
    return ChunkStats{base, base + T * KP, base + 2 * T * KP};
  };
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = std::min(kc, P - t * kc);
    const ChunkStats prev_a = stats(0, t - 1), prev_b = stats(1, t - 1);
    const float prev_count = static_cast<float>(kc);  // chunks before the last are whole
    pack_chunk<kBytes>(a, a_offsets + t * kc, n, K, KP, kc, centered, pa, stats(0, t),
                       t > 0 ? &prev_a : nullptr, prev_count);
    pack_chunk<kBytes>(b, b_offsets + t * kc, n, K, KP, kc, centered, pb, stats(1, t),
                       t > 0 ? &prev_b : nullptr, prev_count);
    multiply_chunk<kBytes>(pa, pb, KP, kc, n, c);
  }
  // the statistics, and the correction panels [KP / W][2T][W]
  const float* stats_a = buf.stats.data();
  const float* stats_b = stats_a + 3 * T * KP;
  std::memset(pa, 0, KP * 2 * T * sizeof(float));
  std::memset(pb, 0, KP * 2 * T * sizeof(float));
  for (int64_t k = 0; k < K; ++k) {
    const int64_t at = (k / W) * 2 * T * W + k % W;
    RowStats sa, sb;
    if (!streamed_channel_stats(stats_a, T, KP, k, P, kc, centered, eps, false, pa + at, W,
                                &sa) ||
        !streamed_channel_stats(stats_b, T, KP, k, P, kc, centered, eps, true, pb + at, W, &sb))
      return false;
    buf.def_a[k] = sa.defined;
    buf.def_b[k] = sb.defined;
    buf.inv_a[k] = static_cast<float>(sa.inv_norm);
    buf.inv_b[k] = static_cast<float>(sb.inv_norm);
  }
  if (centered) {
    // B's panel holds [β_t, Σv'_t]: swapped into [Σv'_t, β_t] to face A's [α_t, Σu'_t + n_t α_t]
    for (int64_t k = 0; k < K; ++k) {
      float* col = pb + (k / W) * 2 * T * W + k % W;
      for (int64_t t = 0; t < T; ++t) std::swap(col[t * W], col[(T + t) * W]);
    }
    multiply_chunk<kBytes>(pa, pb, KP, 2 * T, 2 * T, c);
  }
  return true;
}

EQUIFAST_PER_ISA(bool, stream_image, stream_image_impl,
                 (const float* a, const int64_t* a_offsets, const float* b,
                  const int64_t* b_offsets, int64_t K, int64_t KP, int64_t P, int64_t kc,
                  bool centered, double eps, StreamedBuffers& buf),
                 (a, a_offsets, b, b_offsets, K, KP, P, kc, centered, eps, buf))

// A whole streamed image (see streamed_whole), before its GEMM: both sides packed as one
// chunk, the correction's two positions written after the P positions of the same panels,
// and A's rows (all P + 2 positions) multiplied by their 1 / norm; then multiply_max gives
// the row maxima straight from the GEMM's registers (no C, no second pass over it), and
// finish_whole_image the scores. Sets def_a [K] and the column factors
// factor [KP] (0 for undefined and padding columns). Returns false as stream_image does.
template <int kBytes>
__attribute__((always_inline)) inline bool prepare_whole_image_impl(
    const float* a, const int64_t* a_offsets, int64_t a_stride_k, const float* b,
    const int64_t* b_offsets, int64_t b_stride_k, int64_t K, int64_t KP, int64_t P, int64_t kc,
    bool centered, double eps, StreamedBuffers& buf) {
  constexpr int W = kBytes / 4;
  float* pa = buf.a_panels.data();
  float* pb = buf.b_panels.data();
  float* stats_a = buf.stats.data();
  float* stats_b = stats_a + 3 * KP;
  pack_chunk<kBytes>(a, a_offsets, P, K, KP, kc, centered, pa,
                     ChunkStats{stats_a, stats_a + KP, stats_a + 2 * KP}, nullptr, 0.f,
                     a_stride_k);
  pack_chunk<kBytes>(b, b_offsets, P, K, KP, kc, centered, pb,
                     ChunkStats{stats_b, stats_b + KP, stats_b + 2 * KP}, nullptr, 0.f,
                     b_stride_k);
  float* factor = buf.factor.data();
  for (int64_t k = 0; k < K; ++k) {
    const int64_t at = (k / W) * kc * W + P * W + k % W;  // position P of k's panel
    RowStats sa, sb;
    if (!streamed_channel_stats(stats_a, 1, KP, k, P, kc, centered, eps, false, pa + at, W,
                                &sa) ||
        !streamed_channel_stats(stats_b, 1, KP, k, P, kc, centered, eps, true, pb + at, W, &sb))
      return false;
    buf.def_a[k] = sa.defined;
    factor[k] = sb.defined ? static_cast<float>(sb.inv_norm) : 0.f;
    if (centered) std::swap(pb[at], pb[at + W]);  // [Σv', β] to face A's [α, Σu' + n α]
    const float inv = static_cast<float>(sa.inv_norm);
    float* row = pa + (k / W) * kc * W + k % W;
    for (int64_t p = 0; p < P + 2; ++p) row[p * W] *= inv;
  }
  std::fill(factor + K, factor + KP, 0.f);
  return true;
}
EQUIFAST_PER_ISA(bool, prepare_whole_image, prepare_whole_image_impl,
                 (const float* a, const int64_t* a_offsets, int64_t a_stride_k, const float* b,
                  const int64_t* b_offsets, int64_t b_stride_k, int64_t K, int64_t KP,
                  int64_t P, int64_t kc, bool centered, double eps, StreamedBuffers& buf),
                 (a, a_offsets, a_stride_k, b, b_offsets, b_stride_k, K, KP, P, kc, centered,
                  eps, buf))
EQUIFAST_PER_ISA(void, multiply_max, multiply_max_impl,
                 (const float* a_panels, const float* b_panels, int64_t KP, int64_t kc,
                  int64_t n, const float* factor, int64_t i0, int64_t i1, float* best,
                  int32_t* where, float* diag),
                 (a_panels, b_panels, KP, kc, n, factor, i0, i1, best, where, diag))

// The scores [K] of a whole image from its rows' lane maxima (best / where [KP][kRowLanes]):
// per row the largest entry and, of equal ones, the first column (as row_argmax).
void finish_whole_image(int64_t K, const float* best, const int32_t* where, const float* diag,
                        const uint8_t* def_a, const float* factor, float* channel, float* layer,
                        int64_t* layer_index) {
  for (int64_t k = 0; k < K; ++k) {
    float m = -std::numeric_limits<float>::infinity();
    int32_t index = -1;
    const float* x = best + k * kRowLanes;
    const int32_t* j = where + k * kRowLanes;
    for (int64_t l = 0; l < kRowLanes; ++l) {
      if (j[l] >= 0 && (x[l] > m || (x[l] == m && j[l] < index))) {
        m = x[l];
        index = j[l];
      }
    }
    write_row_scores(k, def_a[k], diag[k], factor[k], m, index, channel, layer, layer_index);
  }
}

// Whether a float32 image of K channels and P positions is streamed whole (prepare_whole_image):
// one chunk of P positions and the correction's two, whatever the layout, for maps of at most
// kSubBlock positions with those two (7 x 7 and smaller) at any K, and for K > 128 up to
// kMaxWholePositions. Small maps: the GEMM of so few positions is short next to writing C and
// reading it again for the arg-max. K > 128: our AVX-512 GEMM with the row maxima in its
// registers against the normalised path and BLAS. Measured on AVX-512 (AMD EPYC, N = 64,
// 2 threads), time against before: 2048 @ 7x7 0.45x channels-last, 0.36x NCHW; 512 @ 14x14
// 0.55x and 0.66x; 1024 @ 14x14 0.48x and 0.51x; 256 @ 28x28 0.66x and 0.82x; 512 @ 28x28
// 0.36x and 0.65x. K <= 128 with more positions keeps the chunked streamed path (channels-last;
// about as fast whole) or the normalised one (NCHW). AVX-512 only: the AVX2 build of the same
// loops (EQUIFAST_CPU_ISA=x86-64-v3 on that machine) was up to 1.7x slower than the normalised
// path at 256 @ 28x28 and 1.3x at 2048 @ 7x7, so AVX2 and older CPUs keep the paths they had.
constexpr int64_t kMaxWholePositions = 1024;
bool streamed_whole(int64_t K, int64_t P) {
  return g_isa.load(std::memory_order_relaxed) == Isa::kV4 &&
         (P + 2 <= kSubBlock || (K > kMaxStreamedChannels && P + 2 <= kMaxWholePositions));
}

// Rows of a whole image per task when few images share the threads.
constexpr int64_t kWholeRows = 64;


// ---------------------------------------------------------------------------------------
// Scheduling
// ---------------------------------------------------------------------------------------

struct Buffers {
  AlignedFloats b, a, s;  // b: packed B (see Problem::pack_b); a: A tile; s: similarity tile
  AlignedFloats block;    // 16 packed rows of B on their way to B^T
  AlignedFloats scale_b;  // 1 / ||v - μ|| of B's rows when B is read in place
  std::vector<uint8_t> def_b, def_a;
  std::vector<float> factor_b;  // column factors (see column_factors)
  StreamedBuffers streamed;
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
  // Leading dimensions: packed rows (P padded), similarity rows and packed B columns (K
  // padded), packed A columns (Kt padded).
  int64_t LD, LD_S, LD_AC;
  // Packed B as B^T [P, K], so that the GEMM is MKL's fastest (row-major "NN") case. Measured
  // on AVX-512 (2 threads, N = 64): 10-25% faster for K >= P (512 x 14x14, 2048 x 7x7), where
  // the rows are short and the transposition cheap next to the GEMM; 5-10% slower for long
  // rows (64 x 56x56, 256 x 28x28), which keep B as rows.
  bool transposed_b;
  bool centered;
  double eps;
  float *channel, *layer;
  int64_t* layer_index;
  // Streamed images (see "Streamed images"): whether, whether whole (streamed_whole),
  // positions per chunk, and channels padded to whole panels.
  bool streamed = false, whole = false;
  int64_t kc = 0, KP = 0;

  void prepare_streamed(bool whole_images) {
    streamed = true;
    whole = whole_images;
    KP = (K + kStreamedChannelAlign - 1) / kStreamedChannelAlign * kStreamedChannelAlign;
    kc = whole ? (P + 2 + 7) / 8 * 8
               : std::clamp<int64_t>(kStreamedPanelFloats / KP / 8 * 8, 32, 512);
  }

  // Image n prepared to be streamed whole (see prepare_whole_image) in buffers' panels.
  bool prepare_whole(int64_t n, StreamedBuffers& buf) const {
    buf.a_panels.resize(KP * kc);
    buf.b_panels.resize(KP * kc);
    buf.stats.resize(6 * KP);
    buf.factor.resize(KP);
    buf.diag.resize(KP);
    buf.def_a.resize(K);
    if constexpr (std::is_same_v<scalar_t, float>) {
      return prepare_whole_image(A.data + n * A.stride_n, A.offsets, A.stride_k,
                                 B.data + n * B.stride_n, B.offsets, B.stride_k, K, KP, P, kc,
                                 centered, eps, buf);
    }
    return false;
  }
  int64_t whole_positions() const { return centered ? P + 2 : P; }

  // Image n streamed; false (nothing written) when a channel does not fit the float32 products.
  bool stream(int64_t n, Buffers& buffers) const {
    StreamedBuffers& buf = buffers.streamed;
    if (whole) {  // its own buffers: no K x K C
      if (!prepare_whole(n, buf)) return false;
      buf.best.resize(KP * kRowLanes);
      buf.where.resize(KP * kRowLanes);
      multiply_max(buf.a_panels.data(), buf.b_panels.data(), KP, kc, whole_positions(),
                   buf.factor.data(), 0, KP, buf.best.data(), buf.where.data(), buf.diag.data());
      finish_whole_image(K, buf.best.data(), buf.where.data(), buf.diag.data(),
                         buf.def_a.data(), buf.factor.data(), channel + n * K, layer + n * K,
                         layer_index + n * K);
      return true;
    }
    const int64_t T = (P + kc - 1) / kc, positions = std::max(kc, 2 * T);
    buf.a_panels.resize(KP * positions);
    buf.b_panels.resize(KP * positions);
    buf.c.resize(KP * KP);
    buf.stats.resize(6 * T * KP);
    for (auto* v : {&buf.inv_a, &buf.inv_b, &buf.factor}) v->resize(K);
    for (auto* v : {&buf.def_a, &buf.def_b}) v->resize(K);
    if constexpr (!std::is_same_v<scalar_t, float>) {
      return false;  // streamed images are float32 (see prepare_streamed's caller)
    } else if (!stream_image(A.data + n * A.stride_n, A.offsets, B.data + n * B.stride_n,
                             B.offsets, K, KP, P, kc, centered, eps, buf)) {
      return false;
    }
    float* c = buf.c.data();
    for (int64_t i = 0; i < K; ++i) {
      float* row = c + i * KP;
      const float inv = buf.inv_a[i];
      for (int64_t j = 0; j < K; ++j) row[j] *= inv;
    }
    column_factors(buf.def_b.data(), buf.inv_b.data(), K, buf.factor.data());
    tile_epilogue(c, KP, K, K, 0, buf.def_a.data(), buf.factor.data(), channel + n * K,
                  layer + n * K, layer_index + n * K);
    return true;
  }

  // Floats of one image's packed B, and packing its rows [k0, k0 + rows): as rows [K, LD], or
  // as columns [P, LD_S]: directly for a channels-last side, else transposed, 16 rows at a
  // time through a block in L1/L2.
  bool b_columns() const { return transposed_b || B.columns; }
  int64_t b_floats() const { return b_columns() ? P * LD_S : K * LD; }
  void pack_b(int64_t n, int64_t k0, int64_t rows, float* b, uint8_t* def_b) const {
    if (B.columns) {
      pack(B, n, k0, rows, P, LD_S, centered, eps, b + k0, def_b + k0);
      return;
    }
    if (!transposed_b) {
      pack_rows(B, n, k0, rows, P, LD, centered, eps, b + k0 * LD, def_b + k0);
      return;
    }
    AlignedFloats& block = thread_buffers().block;
    block.resize(16 * LD);
    for (int64_t r0 = k0; r0 < k0 + rows; r0 += 16) {
      const int64_t nr = std::min<int64_t>(16, k0 + rows - r0);
      pack_rows(B, n, r0, nr, P, LD, centered, eps, block.data(), def_b + r0);
      transpose_rows(block.data(), LD, nr, P, b + r0, LD_S);
    }
  }
  BView packed_view(const float* b) const {
    return b_columns() ? BView{b, 1, LD_S, nullptr} : BView{b, LD, 1, nullptr};
  }

  // The A tile: rows [Kt, LD], or columns [P, LD_AC] for a channels-last side.
  BView a_view(const float* a) const {
    return A.columns ? BView{a, 1, LD_AC, nullptr} : BView{a, LD, 1, nullptr};
  }
  void pack_a(int64_t n, int64_t k0, int64_t rows, Buffers& buf) const {
    buf.a.resize(A.columns ? P * LD_AC : Kt * LD);
    buf.def_a.resize(Kt);
    pack(A, n, k0, rows, P, A.columns ? LD_AC : LD, centered, eps, buf.a.data(),
         buf.def_a.data());
  }

  // B read in place (see in_place_rows): the statistics of image n's rows [k0, k0 + rows), and
  // whether they fit; then the view of the image.
  bool b_in_place_rows(int64_t n, int64_t k0, int64_t rows, uint8_t* def_b,
                       float* scale) const {
    if constexpr (std::is_same_v<scalar_t, float>) {
      return in_place_rows(B, B.data + n * B.stride_n + k0 * B.stride_k, rows, P, centered,
                           eps, def_b + k0, scale + k0);
    }
    return false;
  }
  BView in_place_view(int64_t n, const float* scale) const {
    if constexpr (std::is_same_v<scalar_t, float>)
      return BView{B.data + n * B.stride_n + B.offsets[0], B.stride_k, B.step, scale};
    TORCH_INTERNAL_ASSERT(false, "B is read in place in float32 only");
    return BView{nullptr, 0, 0, nullptr};
  }

  // One row tile of image n against its prepared B (bv, column factors [K]).
  void tile(int64_t n, int64_t t, const BView& bv, const float* factor, Buffers& buf) const {
    const int64_t k0 = t * Kt, rows = std::min(Kt, K - k0);
    buf.s.resize(Kt * LD_S);
    pack_a(n, k0, rows, buf);
    similarity_tile(a_view(buf.a.data()), bv, rows, K, P, buf.s.data(), LD_S);
    tile_epilogue(buf.s.data(), LD_S, rows, K, k0, buf.def_a.data(), factor, channel + n * K,
                  layer + n * K, layer_index + n * K);
  }

  // One image. B read in place needs its statistics only in the epilogue, so they are taken
  // after the first tile's GEMM, which has just brought B into cache: a read from L2 rather
  // than from memory. If B does not fit in place after all (rare), it is packed and the first
  // tile's GEMM repeated.
  void image(int64_t n, Buffers& buf) const {
    if (streamed && stream(n, buf)) return;
    normalised_image(n, buf);
  }

  // One image by the normalised path (buffers: see use_buffers).
  void normalised_image(int64_t n, Buffers& buf) const {
    uint8_t* def_b = buf.def_b.data();
    float* scale = buf.scale_b.data();
    BView bv;
    bool b_stats_pending = B.in_place;
    if (B.in_place) {
      bv = in_place_view(n, scale);
    } else {
      pack_b(n, 0, K, buf.b.data(), def_b);
      bv = packed_view(buf.b.data());
      column_factors(def_b, bv.scale, K, buf.factor_b.data());
    }
    const int64_t tiles = (K + Kt - 1) / Kt;
    buf.s.resize(Kt * LD_S);
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t k0 = t * Kt, rows = std::min(Kt, K - k0);
      pack_a(n, k0, rows, buf);
      const BView av = a_view(buf.a.data());
      similarity_tile(av, bv, rows, K, P, buf.s.data(), LD_S);
      if (b_stats_pending) {
        b_stats_pending = false;
        if (!b_in_place_rows(n, 0, K, def_b, scale)) {
          pack_b(n, 0, K, buf.b.data(), def_b);
          bv = packed_view(buf.b.data());
          similarity_tile(av, bv, rows, K, P, buf.s.data(), LD_S);
        }
        column_factors(def_b, bv.scale, K, buf.factor_b.data());
      }
      tile_epilogue(buf.s.data(), LD_S, rows, K, k0, buf.def_a.data(), buf.factor_b.data(),
                    channel + n * K, layer + n * K, layer_index + n * K);
    }
  }

  // A thread's buffers, sized for the normalised path of this problem's images.
  Buffers& use_buffers() const {
    Buffers& buf = thread_buffers();
    buf.b.resize(b_floats());  // untouched (no page faults) while B is read in place
    buf.scale_b.resize(K);
    buf.def_b.resize(K);
    buf.factor_b.resize(K);
    return buf;
  }

  // Many images: a thread takes whole images.
  void run_per_image() const {
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      Buffers& buf = use_buffers();
      for (int64_t n = begin; n < end; ++n) image(n, buf);
    });
  }

  // Few images streamed whole: an image at a time, its rows split among the threads
  // (kWholeRows a task): the same scores as one thread gives. An image that does not fit the
  // float32 products takes image()'s path.
  void run_whole_shared() const {
    const int64_t tasks = (KP + kWholeRows - 1) / kWholeRows;
    AlignedFloats best;
    best.resize(KP * kRowLanes);
    std::vector<int32_t> where(KP * kRowLanes);
    for (int64_t n = 0; n < N; ++n) {
      StreamedBuffers& sb = thread_buffers().streamed;
      if (!prepare_whole(n, sb)) {
        normalised_image(n, use_buffers());
        continue;
      }
      at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
        multiply_max(sb.a_panels.data(), sb.b_panels.data(), KP, kc, whole_positions(),
                     sb.factor.data(), begin * kWholeRows, std::min(KP, end * kWholeRows),
                     best.data(), where.data(), sb.diag.data());
      });
      finish_whole_image(K, best.data(), where.data(), sb.diag.data(), sb.def_a.data(),
                         sb.factor.data(), channel + n * K, layer + n * K, layer_index + n * K);
    }
  }

  // Few images, many channels: B prepared for a chunk of images (in parallel, 16 rows a task),
  // then (image, tile) tasks.
  void run_shared_b() const {
    const int64_t per_image = B.in_place ? K : b_floats();
    const int64_t chunk = std::max<int64_t>(1, std::min(N, kPackedBudgetFloats / per_image));
    const int64_t tiles = (K + Kt - 1) / Kt;
    AlignedFloats b, scale;
    b.resize(B.in_place ? 0 : chunk * b_floats());
    scale.resize(chunk * K);
    std::vector<uint8_t> def_b(chunk * K);
    std::vector<uint8_t> fits;
    std::vector<BView> views(chunk);
    std::vector<float> factors(chunk * K);
    constexpr int64_t kPackRows = 16;
    const int64_t blocks_per_image = (K + kPackRows - 1) / kPackRows;
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      const int64_t nc = std::min(chunk, N - n0);
      fits.assign(nc * blocks_per_image, 0);
      // Pack (or, for B read in place, take the statistics of) blocks of 16 rows of B.
      auto prepare = [&](bool pack) {
        at::parallel_for(0, nc * blocks_per_image, 1, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const int64_t n = i / blocks_per_image, k0 = (i % blocks_per_image) * kPackRows;
            const int64_t rows = std::min(kPackRows, K - k0);
            if (!pack)
              fits[i] = b_in_place_rows(n0 + n, k0, rows, def_b.data() + n * K,
                                        scale.data() + n * K);
            else if (views[n].data == nullptr)
              pack_b(n0 + n, k0, rows, b.data() + n * b_floats(), def_b.data() + n * K);
          }
        });
      };
      std::fill(views.begin(), views.end(), BView{nullptr, 0, 0, nullptr});
      if (B.in_place) {
        prepare(false);
        for (int64_t n = 0; n < nc; ++n) {
          const uint8_t* f = fits.data() + n * blocks_per_image;
          if (std::all_of(f, f + blocks_per_image, [](uint8_t x) { return x != 0; }))
            views[n] = in_place_view(n0 + n, scale.data() + n * K);
        }
        if (std::any_of(views.begin(), views.begin() + nc,
                        [](const BView& v) { return v.data == nullptr; }))
          b.resize(chunk * b_floats());  // rare: some image packs its B after all
      }
      prepare(true);
      for (int64_t n = 0; n < nc; ++n) {
        if (views[n].data == nullptr) views[n] = packed_view(b.data() + n * b_floats());
        column_factors(def_b.data() + n * K, views[n].scale, K, factors.data() + n * K);
      }
      at::parallel_for(0, nc * tiles, 1, [&](int64_t begin, int64_t end) {
        Buffers& buf = thread_buffers();
        for (int64_t i = begin; i < end; ++i) {
          const int64_t n = i / tiles, t = i % tiles;
          tile(n0 + n, t, views[n], factors.data() + n * K, buf);
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


template <typename scalar_t>
Side<scalar_t> make_side(const at::Tensor& f, const at::Tensor& offsets) {
  const int64_t P = offsets.size(0);
  Side<scalar_t> side;
  side.data = f.const_data_ptr<scalar_t>();
  side.stride_n = f.stride(0);
  side.stride_k = f.stride(1);
  side.offsets = offsets.const_data_ptr<int64_t>();
  side.k_fastest = channels_fastest(f);
  // In the order of their memory offsets: the read then streams through memory, as the
  // hardware prefetchers expect (a translated map read in map order starts mid-channel and
  // jumps back once per map row: measured 1.3-2x slower to copy than in memory order).
  side.runs = contiguous_runs(side.offsets, P);
  std::sort(side.runs.begin(), side.runs.end(),
            [](const Run& a, const Run& b) { return a.offset < b.offset; });
  side.use_runs = static_cast<int64_t>(side.runs.size()) * 8 <= P;
  side.long_runs = static_cast<int64_t>(side.runs.size()) * kLongRun <= P;
  side.columns = std::is_same_v<scalar_t, float> && side.k_fastest && side.stride_k == 1;
  if (side.columns) {
    side.order.resize(P);
    std::iota(side.order.begin(), side.order.end(), int64_t{0});
    std::stable_sort(side.order.begin(), side.order.end(), [&](int64_t a, int64_t b) {
      return side.offsets[a] < side.offsets[b];
    });
    side.memory_offsets.resize(P);
    for (int64_t i = 0; i < P; ++i) side.memory_offsets[i] = side.offsets[side.order[i]];
  }
  side.step = P > 1 ? side.offsets[1] - side.offsets[0] : 1;
  bool strided = side.step > 0;
  for (int64_t p = 1; strided && p < P; ++p)
    strided = side.offsets[p] == side.offsets[0] + p * side.step;
  // in_place_rows sums rows (step 1) or columns
  side.in_place = std::is_same_v<scalar_t, float> && strided && (side.step == 1 || side.columns);
  return side;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> equivariance_scores_cpu(
    const at::Tensor& fx, const at::Tensor& ftx, const at::Tensor& a_index,
    const at::Tensor& b_index, bool centered, double eps, bool /*tensor_cores*/,
    bool /*check_indices*/) {
  // The CPU always multiplies in float32 (`tensor_cores` is a CUDA choice), and always checks
  // the indices' bounds: here that costs no host sync, and a bad map would read out of bounds.
  check_inputs(fx, ftx, a_index, b_index, eps, /*check_indices=*/true);
  TORCH_INTERNAL_ASSERT(fx.device().is_cpu());
  select_cpu_isa();
  const int64_t N = fx.size(0), K = fx.size(1), W = fx.size(3), P = a_index.size(0);
  at::Tensor channel, layer, layer_index;
  std::tie(channel, layer, layer_index) = empty_scores(fx);
  if (N == 0 || K == 0) return {channel, layer, layer_index};

  at::Tensor off_a = position_offsets(a_index, W, fx.stride(2), fx.stride(3));
  at::Tensor off_b = position_offsets(b_index, W, ftx.stride(2), ftx.stride(3));

  EQUIFAST_DISPATCH_INPUT_TYPES(
      fx.scalar_type(), "equivariance_scores_cpu", [&] {
        Problem<scalar_t> pb;
        pb.A = make_side<scalar_t>(fx, off_a);
        pb.B = make_side<scalar_t>(ftx, off_b);
        pb.N = N;
        pb.K = K;
        pb.P = P;
        pb.Kt = row_tile(K, P);
        pb.LD = padded(P);
        pb.LD_S = padded(K);
        pb.LD_AC = padded(pb.Kt);
        pb.transposed_b = K >= P;
        // B in place is read as rows ("NT" GEMM) or, channels-last, as B^T ("NN"); for K >= P
        // the packed, transposed B is faster than reading NCHW rows in place.
        pb.B.in_place = pb.B.in_place && (!pb.transposed_b || pb.B.columns);
        pb.centered = centered;
        pb.eps = eps;
        pb.channel = channel.data_ptr<float>();
        pb.layer = layer.data_ptr<float>();
        pb.layer_index = layer_index.data_ptr<int64_t>();
        // Streamed whatever N (a thread an image, or for few images whole ones a thread a
        // block of rows), so that an image's scores do not depend on the batch it came in
        // (sharded sweeps merge exactly).
        const bool whole = std::is_same_v<scalar_t, float> && streamed_whole(K, P);
        if (whole || (pb.A.columns && pb.B.columns && K <= kMaxStreamedChannels))
          pb.prepare_streamed(whole);
        if (pb.whole && N < 2 * at::get_num_threads())
          pb.run_whole_shared();
        else if (pb.streamed || N >= 2 * at::get_num_threads())
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
