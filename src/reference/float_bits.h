// flashmoe (internal): exact host conversions between float64 and the narrow float formats.
//
// Header-only so the CPU reference, the quantization helpers and the Python binding share one
// implementation without CUDA headers. Every rounding here is to nearest, ties to even, taken
// directly from the float64 value (never through float32, which would round twice).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "flashmoe/types.h"

namespace flashmoe {
namespace detail {

/// Rounds x to a binary format with `mantissa_bits` explicit mantissa bits and smallest normal
/// exponent `min_exp` (subnormals below it keep the quantum 2^(min_exp - mantissa_bits)).
/// The exponent range is not bounded above here: callers apply overflow or saturation.
/// NaN, infinities and zeros are returned unchanged.
inline double round_to_format(double x, int mantissa_bits, int min_exp) {
  if (!std::isfinite(x) || x == 0.0) return x;
  double const a = std::fabs(x);
  int exp2 = 0;
  std::frexp(a, &exp2);  // a = m * 2^exp2 with m in [0.5, 1): the unbiased exponent is exp2 - 1
  int e = exp2 - 1;
  if (e < min_exp) e = min_exp;
  // Scaling by a power of two is exact, so nearbyint (ties to even in the default rounding
  // mode) sees the exact multiple of the format's quantum.
  double const r = std::ldexp(std::nearbyint(std::ldexp(a, mantissa_bits - e)), e - mantissa_bits);
  return std::copysign(r, x);
}

inline constexpr double kFp16Max = 65504.0;
inline constexpr double kBf16Max = 3.3895313892515355e38;  // (2 - 2^-7) * 2^127

/// Nearest IEEE half value; beyond the largest finite value after rounding -> +-inf.
inline double round_double_to_fp16(double x) {
  double const r = round_to_format(x, 10, -14);
  if (std::isfinite(r) && std::fabs(r) > kFp16Max) {
    return std::copysign(std::numeric_limits<double>::infinity(), x);
  }
  return r;
}

/// Nearest bfloat16 value; beyond the largest finite value after rounding -> +-inf.
inline double round_double_to_bf16(double x) {
  double const r = round_to_format(x, 7, -126);
  if (std::isfinite(r) && std::fabs(r) > kBf16Max) {
    return std::copysign(std::numeric_limits<double>::infinity(), x);
  }
  return r;
}

inline double fp16_bits_to_double(uint16_t h) {
  bool const neg = (h & 0x8000u) != 0;
  int const exp = (h >> 10) & 0x1f;
  int const man = h & 0x3ff;
  double v;
  if (exp == 0x1f) {
    v = man == 0 ? std::numeric_limits<double>::infinity()
                 : std::numeric_limits<double>::quiet_NaN();
  } else if (exp == 0) {
    v = std::ldexp(static_cast<double>(man), -24);  // subnormal: man * 2^-24
  } else {
    v = std::ldexp(static_cast<double>(man | 0x400), exp - 25);  // 1.man * 2^(exp-15)
  }
  return neg ? -v : v;
}

inline double bf16_bits_to_double(uint16_t b) {
  uint32_t const u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return static_cast<double>(f);
}

inline uint16_t double_to_fp16_bits(double x) {
  uint16_t const sign = std::signbit(x) ? 0x8000u : 0u;
  if (std::isnan(x)) return static_cast<uint16_t>(sign | 0x7e00u);
  double const r = std::fabs(round_double_to_fp16(x));
  if (std::isinf(r)) return static_cast<uint16_t>(sign | 0x7c00u);
  if (r == 0.0) return sign;
  int exp2 = 0;
  std::frexp(r, &exp2);
  int const e = exp2 - 1;
  if (e < -14) {  // subnormal: an exact multiple of 2^-24 below 2^-14
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::ldexp(r, 24)));
  }
  uint16_t const man = static_cast<uint16_t>(std::ldexp(r, 10 - e) - 1024.0);
  return static_cast<uint16_t>(sign | ((e + 15) << 10) | man);
}

inline uint16_t double_to_bf16_bits(double x) {
  if (std::isnan(x)) return std::signbit(x) ? 0xffc0u : 0x7fc0u;
  // The rounded value is exactly representable in float32, so this cast is exact.
  float const f = static_cast<float>(round_double_to_bf16(x));
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return static_cast<uint16_t>(u >> 16);
}

/// Element i of a dense array of a float dtype, as double. Non-float dtypes read as NaN.
inline double load_as_double(void const* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat32: return static_cast<double>(static_cast<float const*>(data)[i]);
    case DType::kFloat64: return static_cast<double const*>(data)[i];
    case DType::kFloat16: return fp16_bits_to_double(static_cast<uint16_t const*>(data)[i]);
    case DType::kBFloat16: return bf16_bits_to_double(static_cast<uint16_t const*>(data)[i]);
    default: return std::numeric_limits<double>::quiet_NaN();
  }
}

/// Stores v into element i of a dense array of a float dtype, rounding once to nearest-even.
inline void store_from_double(void* data, DType dtype, int64_t i, double v) {
  switch (dtype) {
    case DType::kFloat32: static_cast<float*>(data)[i] = static_cast<float>(v); break;
    case DType::kFloat64: static_cast<double*>(data)[i] = v; break;
    case DType::kFloat16: static_cast<uint16_t*>(data)[i] = double_to_fp16_bits(v); break;
    case DType::kBFloat16: static_cast<uint16_t*>(data)[i] = double_to_bf16_bits(v); break;
    default: break;
  }
}

}  // namespace detail
}  // namespace flashmoe
