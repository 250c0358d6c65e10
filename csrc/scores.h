// Code shared by the CPU and CUDA kernels of `equifast::equivariance_scores`.
//
// Everything that decides a result lives here, once: how a flat position becomes a memory
// offset, the per-row statistics and the "undefined" rule (SPEC section 1, the same rule as
// `equifast.reference`), the normalisation of a value, the score (ReLU) and the tie rule
// of the arg-max. The functions are `__host__ __device__` so that the CPU tests exercise the
// very code the CUDA kernels run. The input checks (`check_inputs`) are host-only and are
// mirrored one for one by the fake in `equifast/ops.py`.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>

#if defined(__CUDACC__)
#define EQUIFAST_HD __host__ __device__ __forceinline__
#else
#define EQUIFAST_HD inline
#endif

// Dispatch over the input types check_inputs accepts (float32, float16, bfloat16) only.
#define EQUIFAST_DISPATCH_INPUT_TYPES(TYPE, NAME, ...)                                  \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)             \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)          \
                                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace equifast {

// ---------------------------------------------------------------------------------------
// Index maps
// ---------------------------------------------------------------------------------------

// Memory offset (in elements, relative to the start of a channel) of the flat position
// `index` = i * W + j of an [H, W] map whose last two strides are `stride_h`, `stride_w`.
EQUIFAST_HD int64_t position_offset(int64_t index, int64_t width, int64_t stride_h,
                                    int64_t stride_w) {
  const int64_t i = index / width;
  return i * stride_h + (index - i * width) * stride_w;
}

// ---------------------------------------------------------------------------------------
// Per-row statistics and the undefined rule
// ---------------------------------------------------------------------------------------

// Statistics of one row u (one channel of one image over the P compared positions),
// computed in float64 with two passes: `mean` (0 for cosine), then
//   ss_centred = sum (u - mean)^2   and   ss_raw = sum u^2.
struct RowStats {
  double mean;      // subtracted from every value (0 for cosine)
  double inv_norm;  // 1 / ||u - mean||, or 0 when the row is undefined
  bool defined;
};

// The rule of SPEC section 1 (and `reference._normalise`): a row is undefined iff
// ||u - mean|| <= eps * ||u||. For cosine both norms are the same, so the row is undefined
// iff it is all zero. Non-finite statistics (NaN input) also make the row undefined.
EQUIFAST_HD bool is_defined(double ss_centred, double ss_raw, double eps) {
  return sqrt(ss_centred) > eps * sqrt(ss_raw);  // false for NaN
}

EQUIFAST_HD RowStats finish_row_stats(double mean, double ss_centred, double ss_raw,
                                      double eps) {
  RowStats s;
  s.mean = mean;
  s.defined = is_defined(ss_centred, ss_raw, eps);
  s.inv_norm = s.defined ? 1.0 / sqrt(ss_centred) : 0.0;
  return s;
}

EQUIFAST_HD bool is_finite(double x) {
#if defined(__CUDA_ARCH__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

// The same statistics when they come from float32 sums of values scaled for float32 products
// (the CPU's streamed images, the CUDA single pass): `ss_centred` and `ss_raw` formed in float64
// from those sums. Returns false when float32 products cannot score the row as the float64
// rule would: a non-finite statistic (squares that overflowed, or NaN input), entries whose
// squares underflow (ss_raw in (0, 1e-20): such a row could look constant), or a defined norm
// outside [1e-15, 1e15]. The caller then scores the row by the normalised path.
EQUIFAST_HD bool finish_float32_row_stats(double mean, double ss_centred, double ss_raw, double eps,
                                          RowStats* out) {
  if (!is_finite(ss_raw) || !is_finite(ss_centred)) return false;
  if (ss_raw != 0.0 && ss_raw < 1e-20) return false;
  *out = finish_row_stats(mean, ss_centred > 0.0 ? ss_centred : 0.0, ss_raw, eps);
  return !out->defined || (out->inv_norm >= 1e-15 && out->inv_norm <= 1e15);
}

// The statistics' inputs from a row's sums shifted by c (c = 0 for cosine): s = Σ(u - c) and
// q = Σ(u - c)^2 over P values give the mean c + s / P, ss_centred = q - s^2 / P and
// ss_raw = Σu^2 = q + 2cs + Pc^2. With c one of the row's values (its first), a constant row
// has s = q = 0 exactly, and every term is at most about P Σu^2 (c^2 <= Σu^2), so rounding
// stays far below what the eps test can see.
struct ShiftedSums {
  double mean, ss_centred, ss_raw;
};

EQUIFAST_HD ShiftedSums shifted_sums(double c, double s, double q, int64_t P, bool centered) {
  if (!centered) return {0.0, q, q};
  const double n = static_cast<double>(P), m = s / n;
  const double ss_centred = q - s * m;
  return {c + m, ss_centred < 0.0 ? 0.0 : ss_centred, q + c * (2.0 * s + n * c)};  // NaN stays
}

// A row whose shifted sums s, q were taken in float32 (the CUDA single pass): its statistics, or
// false when float32 could not hold it (squares that underflowed to q = 0 with s != 0, or
// finish_float32_row_stats).
EQUIFAST_HD bool float32_shifted_row_stats(double c, double s, double q, int64_t P, bool centered,
                                           double eps, RowStats* out) {
  if (q == 0.0 && s != 0.0) return false;
  const ShiftedSums r = shifted_sums(c, s, q, P, centered);
  return finish_float32_row_stats(r.mean, r.ss_centred, r.ss_raw, eps, out);
}

// One normalised value (u - mean) / ||u - mean||, formed in float64, stored as float32.
// Undefined rows have inv_norm == 0, so they normalise to zeros (and are masked anyway).
EQUIFAST_HD float normalise_value(float x, double mean, double inv_norm) {
  return static_cast<float>((static_cast<double>(x) - mean) * inv_norm);
}

// The same value with float32 arithmetic only (the CPU kernel's vector loops): the float64
// mean is split as hi + lo (two floats, hi = float(mean)), and x - hi is exact whenever x is
// within a factor 2 of the mean (Sterbenz), which is where plain float32 centring would lose
// digits (rows that vary little around a large mean). The result is within about 2 float32
// ulps of `normalise_value` (0.5 ulp), far below the 1e-5 the scores are held to.
struct SplitMean {
  float hi, lo;
};

EQUIFAST_HD SplitMean split_mean(double mean) {
  SplitMean m;
  m.hi = static_cast<float>(mean);
  m.lo = static_cast<float>(mean - static_cast<double>(m.hi));
  return m;
}

EQUIFAST_HD float normalise_value_split(float x, SplitMean mean, float inv_norm) {
  return ((x - mean.hi) - mean.lo) * inv_norm;
}

// Whether `normalise_value_split` may normalise a defined row with this 1 / norm: 1 / norm must
// be a normal float, and so must every centred value x - mean, which is at most the norm in
// size (1 / norm > 1e30: entries near float32's underflow; 1 / norm < 1e-30: values near its
// top whose difference with the mean would overflow). Other rows take `normalise_value`.
EQUIFAST_HD bool split_normalisable(double inv_norm) {
  return inv_norm >= 1e-30 && inv_norm <= 1e30;
}

// ---------------------------------------------------------------------------------------
// Scores
// ---------------------------------------------------------------------------------------

EQUIFAST_HD float nan_value() {
#if defined(__CUDA_ARCH__)
  return __int_as_float(0x7fc00000);
#else
  return std::numeric_limits<float>::quiet_NaN();
#endif
}

// max(0, s), the thesis' ReLU. The similarity of unit vectors is at most 1, but a float32
// dot product may land a few ulps above it: the clamp keeps scores in [0, 1].
EQUIFAST_HD float score(float s) { return s > 1.f ? 1.f : (s > 0.f ? s : 0.f); }

// The arg-max tie rule: a candidate (value, index) beats the current best when its value is
// larger, or equal with a smaller index (so ties go to the smallest k'). An index of -1
// means "nothing yet".
EQUIFAST_HD bool better(float value, int64_t index, float best, int64_t best_index) {
  if (index < 0) return false;
  if (best_index < 0) return true;
  return value > best || (value == best && index < best_index);
}

// ---------------------------------------------------------------------------------------
// Input checks (host only). `equifast/ops.py` mirrors each check, in this order, with the
// same message, in the fake implementation; the value check on the indices (the last one)
// cannot be made on fake tensors and is the only one without a mirror.
// ---------------------------------------------------------------------------------------

inline std::string dtype_name(c10::ScalarType t) {
  switch (t) {
    case c10::kFloat: return "torch.float32";
    case c10::kHalf: return "torch.float16";
    case c10::kBFloat16: return "torch.bfloat16";
    case c10::kDouble: return "torch.float64";
    case c10::kLong: return "torch.int64";
    case c10::kInt: return "torch.int32";
    default: return std::string("torch.") + c10::toString(t);
  }
}

inline bool is_supported_float(c10::ScalarType t) {
  return t == c10::kFloat || t == c10::kHalf || t == c10::kBFloat16;
}

inline void check_inputs(const at::Tensor& fx, const at::Tensor& ftx, const at::Tensor& a_index,
                         const at::Tensor& b_index, double eps, bool check_indices) {
  TORCH_CHECK(fx.dim() == 4, "Expected `fx` to be 4-D [N, K, H, W], but got shape ",
              fx.sizes(),
              "; score vectors [N, K] with equifast.functional.equivariance_scores (as [N, K, 1, "
              "1] maps each channel would have one position, and no correlation).");
  TORCH_CHECK(fx.sizes() == ftx.sizes(),
              "Expected `fx` and `ftx` to have the same shape, but got ", fx.sizes(), " and ",
              ftx.sizes(), ".");
  TORCH_CHECK(is_supported_float(fx.scalar_type()),
              "Expected `fx` to be float32, float16 or bfloat16, but got ",
              dtype_name(fx.scalar_type()), ".");
  TORCH_CHECK(ftx.scalar_type() == fx.scalar_type(),
              "Expected `fx` and `ftx` to have the same dtype, but got ",
              dtype_name(fx.scalar_type()), " and ", dtype_name(ftx.scalar_type()), ".");
  TORCH_CHECK(a_index.dim() == 1 && b_index.dim() == 1,
              "Expected `a_index` and `b_index` to be 1-D [P], but got shapes ",
              a_index.sizes(), " and ", b_index.sizes(), ".");
  TORCH_CHECK(a_index.scalar_type() == c10::kLong && b_index.scalar_type() == c10::kLong,
              "Expected `a_index` and `b_index` to be torch.int64, but got ",
              dtype_name(a_index.scalar_type()), " and ", dtype_name(b_index.scalar_type()),
              "; build them with Transform.index_map.");
  TORCH_CHECK(a_index.size(0) == b_index.size(0),
              "Expected `a_index` and `b_index` to have the same length P, but got ",
              a_index.size(0), " and ", b_index.size(0), ".");
  TORCH_CHECK(a_index.size(0) > 0,
              "Expected at least one compared position (P >= 1), but got P = 0.");
  TORCH_CHECK(ftx.device() == fx.device() && a_index.device() == fx.device() &&
                  b_index.device() == fx.device(),
              "Expected all inputs on the same device, but got fx on ", fx.device(),
              ", ftx on ", ftx.device(), ", a_index on ", a_index.device(), " and b_index on ",
              b_index.device(), ".");
  TORCH_CHECK(std::isfinite(eps) && eps >= 0,
              "Expected `eps` to be a finite number >= 0, but got ", eps, ".");
  // Value check (data dependent: no fake mirror): the bounds of both maps in one transfer, the
  // call's only host sync on CUDA. Skipped on request (CUDA only) for maps checked when they
  // were built: equifast.functional passes the cached maps of Transform.index_map.
  if (!check_indices) return;
  const int64_t hw = fx.size(2) * fx.size(3);
  const auto ma = at::aminmax(a_index), mb = at::aminmax(b_index);
  const at::Tensor bounds =
      at::stack({std::get<0>(ma), std::get<1>(ma), std::get<0>(mb), std::get<1>(mb)}).cpu();
  const int64_t* bound = bounds.const_data_ptr<int64_t>();
  for (int side = 0; side < 2; ++side) {
    const int64_t lo = bound[2 * side], hi = bound[2 * side + 1];
    TORCH_CHECK(lo >= 0 && hi < hw, "Expected `", side == 0 ? "a_index" : "b_index",
                "` values to be flat positions in [0, H*W) = [0, ", hw,
                "), but got values in [", lo, ", ", hi,
                "]; build the indices with Transform.index_map(map_size, input_size).");
  }
}

// The operator's outputs for fx [N, K, H, W], on its device, for the kernels to fill: the
// channel and layer scores (float32) and the arg-max channel (int64), [N, K] each.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_scores(const at::Tensor& fx) {
  const auto fopts = fx.options().dtype(at::kFloat);
  return {at::empty({fx.size(0), fx.size(1)}, fopts), at::empty({fx.size(0), fx.size(1)}, fopts),
          at::empty({fx.size(0), fx.size(1)}, fx.options().dtype(at::kLong))};
}

// Channels adjacent in memory and closer than neighbouring positions (channels-last): both
// backends then gather across channels rather than along rows.
inline bool channels_fastest(const at::Tensor& f) {
  return f.size(1) > 1 && f.stride(1) == 1 && f.stride(2) != 1 && f.stride(3) != 1;
}

}  // namespace equifast
