#include "flashmoe/quantization.h"

#include <cmath>

#include "reference/float_bits.h"

namespace flashmoe {

double round_to_e4m3(double x) {
  if (std::isnan(x)) return x;
  // E4M3FN has no infinities: anything beyond 448 (infinity included) saturates.
  if (std::isinf(x)) return std::copysign(static_cast<double>(kE4M3Max), x);
  double const r = detail::round_to_format(x, 3, -6);  // normals from 2^-6, quantum 2^-9 below
  if (std::fabs(r) > kE4M3Max) return std::copysign(static_cast<double>(kE4M3Max), x);
  return r;
}

double round_to_bf16(double x) { return detail::round_double_to_bf16(x); }

double round_to_fp16(double x) { return detail::round_double_to_fp16(x); }

double fake_quantize_e4m3_group(double* values, int64_t n, int64_t stride) {
  double amax = 0.0;
  for (int64_t i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(values[i * stride]));
  // An all-zero group keeps scale 1 so that dequantization stays 0 * 1 = 0 (no 0/0).
  double const scale = amax > 0.0 ? amax / static_cast<double>(kE4M3Max) : 1.0;
  for (int64_t i = 0; i < n; ++i) {
    double& v = values[i * stride];
    v = round_to_e4m3(v / scale) * scale;
  }
  return scale;
}

}  // namespace flashmoe
