// flashmoe: FP8 E4M3 quantization rules (host side; the GPU kernels apply the same rules).
//
// E4M3 (OCP "e4m3fn"): 1 sign, 4 exponent (bias 7), 3 mantissa bits; largest finite 448,
// smallest subnormal 2^-9; no infinities. Rounding is to nearest, ties to even; values beyond
// 448 saturate to +-448 (the scales below never produce them).
//
// Scaled quantization of a group g of values v: scale = amax(|v|) / 448 (scale = 1 when the
// group is all zeros), q = e4m3(v / scale), dequantized value = q * scale.
//   weights, "channel":  one group per (expert, output channel), over the input dimension.
//   weights, "block128": one group per (expert, 128x128 block of [in, out]).
//   activations, "token": one group per token row (over H, or over I for the down projection).
#pragma once

#include <cstdint>

namespace flashmoe {

/// Largest finite E4M3 value.
inline constexpr float kE4M3Max = 448.0f;

/// Rounds x to the nearest E4M3 value (ties to even, saturating at +-448); NaN stays NaN.
double round_to_e4m3(double x);

/// Rounds x to the nearest bfloat16 value (ties to even).
double round_to_bf16(double x);

/// Rounds x to the nearest IEEE half value (ties to even, overflow to inf).
double round_to_fp16(double x);

/// Fake-quantizes `n` values spaced `stride` apart as one group, in place:
/// v <- e4m3(v / scale) * scale with scale = amax / 448. Returns the scale.
double fake_quantize_e4m3_group(double* values, int64_t n, int64_t stride);

}  // namespace flashmoe
