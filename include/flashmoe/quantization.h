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
//
// The GPU side (declared at the end): prepare_experts_fp8() turns raw expert weights into the
// prepared FP8 layout that the Hopper FP8 forward reads (MoeProblem::weights_prepared; the layout
// is spelled out at MoeArgs in flashmoe/options.h). It runs once per set of weights, not per call.
// prepare_quantized_experts_fp8() packs weights that are already E4M3 (a checkpoint with its own
// scales) into the same layout without re-quantizing them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "flashmoe/options.h"
#include "flashmoe/types.h"

typedef struct CUstream_st* cudaStream_t;

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

// ------------------------------------------------------------------ prepared FP8 expert weights
//
// `which` selects the matrix: 1 = w1 (linear W, or the FFN's W_gate_up), 2 = w2 (the FFN's
// W_down; linear experts have none). `problem` describes the experts (kind, hidden, out_dim or
// inter_dim, num_local_experts); the sizes do not depend on the raw dtype or layout.

/// Shapes of one prepared matrix (see MoeArgs in flashmoe/options.h for what the rows hold).
struct PreparedLayout {
  int64_t experts = 0;         // E_local
  int64_t rows = 0;            // Np: prepared rows per expert (gate/up: 128 * ceil(I / 64))
  int64_t cols = 0;            // K: inputs per channel (K contiguous)
  int64_t channels = 0;        // N_raw: output channels of the raw matrix (gate/up: 2I)
  bool gate_up = false;        // rows interleaved in 64 gate + 64 up chunks
  int scale_rank = 0;          // 2 (kChannel) or 3 (kBlock128)
  int64_t scale_shape[3] = {0, 0, 0};  // kChannel: {E_local, N_raw, -}; kBlock128:
                                       // {E_local, ceil(N_raw / 128), ceil(K / 128)}
  std::size_t weight_bytes = 0;  // experts * rows * cols (one byte per E4M3 value)
  std::size_t scale_bytes = 0;   // 4 * product of scale_shape[0 .. scale_rank)
};

/// Fills `layout` for matrix `which` of `problem` with scales `scale` (kChannel or kBlock128).
/// kInvalidArgument for which not in {1, 2} (2 only for gated FFN), non-positive dims, or
/// scale == kNone.
Status prepared_layout(MoeProblem const& problem, int which, WeightScale scale,
                       PreparedLayout* layout);

/// Bytes of the prepared E4M3 matrix `which` (0 when prepared_layout() fails).
std::size_t prepared_weight_bytes(MoeProblem const& problem, int which);

/// Bytes of the float32 scales of matrix `which` with `scale` (0 when prepared_layout() fails).
std::size_t prepared_scale_bytes(MoeProblem const& problem, int which, WeightScale scale);

/// Quantizes raw expert weights into the prepared FP8 layout, on the GPU, on `stream`.
///
/// `problem` describes the RAW weights: kind, hidden, out_dim / inter_dim, num_local_experts,
/// weight_dtype (bfloat16, float16 or float32) and layout (kInOut / kOutIn); weights_prepared
/// must be false; routing fields are not looked at. w1_raw (and w2_raw for gated FFN) are
/// device arrays as MoeArgs::w1 / w2 describe them. Outputs (device memory the caller owns,
/// sized with prepared_weight_bytes / prepared_scale_bytes): w1_fp8 (16-byte aligned) and
/// w1_scale; for gated FFN also w2_fp8 and w2_scale (ignored, may be null, for linear experts).
/// Every output byte is written (padding rows as zeros).
///
/// Rules (those at the top of this header, in float32 as the GPU computes them): per group,
/// s = amax(|w|) / 448 (1 for an all-zero group), q = e4m3(w / s), round to nearest even,
/// saturating. Groups: kChannel = (expert, output channel) over the input dimension -- the
/// grouping of reference_fused_moe's precision kFP8 --; kBlock128 = (expert, 128 x 128 block).
///
/// Requirements (kNotSupported otherwise): H % 16 == 0; gated FFN: I % 16 == 0 (the down
/// projection's K), and with kBlock128 I % 64 == 0. Enqueues two kernels per matrix; never
/// allocates, never synchronizes (graph-capturable). To run the result, set on the problem
/// weights_prepared = true, weight_dtype = kFloat8E4M3, weight_scale = scale, precision = kFP8,
/// and pass w1_fp8 / w2_fp8 as MoeArgs::w1 / w2 and the scales as MoeArgs::w1_scale / w2_scale.
Status prepare_experts_fp8(MoeProblem const& problem, void const* w1_raw, void const* w2_raw,
                           WeightScale scale, void* w1_fp8, float* w1_scale, void* w2_fp8,
                           float* w2_scale, cudaStream_t stream);

/// Packs already-quantized expert weights -- E4M3 bytes with their float32 scales, as FP8
/// checkpoints ship them (DeepSeek-V3's 128 x 128 block scales, or one scale per channel) --
/// into the prepared layout, on the GPU, on `stream`. Nothing is re-quantized: the bytes move
/// into the prepared rows as they are (gate/up interleave, zero padding rows, the transpose of
/// kInOut) and the scales are copied, so the result dequantizes to exactly the checkpoint's
/// values (q * s; DeepSeek-V3 names s `weight_scale_inv`). NaN codes stay NaN.
///
/// `problem` as for prepare_experts_fp8, with weight_dtype = kFloat8E4M3 (OCP e4m3fn). w1_q /
/// w2_q: the E4M3 arrays laid out as raw weights (MoeArgs::w1 / w2; gated FFN: gate channels
/// 0..I-1, then up I..2I-1). w1_q_scale / w2_q_scale (device, w2 for gated FFN only): their
/// scales in the prepared scale layout, i.e. raw channel order and channel-major whatever the
/// weights' layout: kChannel [E_local, N_raw]; kBlock128 [E_local, ceil(N_raw / 128),
/// ceil(K / 128)] -- for a gate/up pair stored apart with I % 128 == 0, the gate blocks then the
/// up blocks. Outputs, requirements and the run settings as for prepare_experts_fp8; enqueues a
/// scale copy and one kernel per matrix, never allocates, never synchronizes.
Status prepare_quantized_experts_fp8(MoeProblem const& problem, void const* w1_q,
                                     float const* w1_q_scale, void const* w2_q,
                                     float const* w2_q_scale, WeightScale scale, void* w1_fp8,
                                     float* w1_scale, void* w2_fp8, float* w2_scale,
                                     cudaStream_t stream);

}  // namespace flashmoe
