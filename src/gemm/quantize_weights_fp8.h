// flashmoe (internal): FP8 E4M3 expert weights as the sm_90a grouped GEMM reads them, and the GPU
// kernel that produces them from raw bf16 / fp16 / fp32 weights (the rules of
// flashmoe/quantization.h) or packs already-quantized E4M3 weights (a checkpoint's bytes and
// scales) into the same layout.
//
// Prepared weights of E experts, each mapping K inputs to N_raw output channels:
//   bytes  [E, Np, K] E4M3 (OCP e4m3fn), K contiguous: row p holds the weights of one output
//          channel, so a 128-row x 128-byte box is one TMA load in the 128B-swizzled K-major
//          shared layout that wgmma reads.
//   plain (linear experts, the FFN down projection): Np = N_raw, row p = output channel p.
//   gate-up (the FFN's first GEMM; raw channels: gate 0..I-1, then up I..2I-1, N_raw = 2I):
//          Np = 128 * ceil(I / 64); rows come in chunks of 128, chunk j holding
//            rows 128j      .. 128j + 63   = gate channels 64j .. 64j + 63
//            rows 128j + 64 .. 128j + 127  = up   channels 64j .. 64j + 63   (raw I + 64j ..)
//          and zero rows where 64j + i >= I. One math warpgroup of the GEMM owns a 128-row chunk,
//          so each thread's accumulators hold a gate channel and its up channel: the epilogue
//          computes act(g) * u without leaving registers.
//   scales float32 in the raw (checkpoint) channel order, whatever the row order:
//          kChannel  [E, N_raw]                                   one per (expert, channel)
//          kBlock128 [E, ceil(N_raw / 128), ceil(K / 128)]        one per 128 x 128 block
//          (the DeepSeek-V3 checkpoint layout; gate-up with block scales needs I % 64 == 0 so
//          that each 64-channel half-chunk lies in one block).
// Quantization of a group g: s = amax(|w|) / 448 in float32 (1 for an all-zero group),
// q = e4m3(w / s) with the division in float32 (IEEE, correctly rounded), then round to nearest
// even with saturation (cvt.rn.satfinite). Dequantized weight = q * s.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "flashmoe/options.h"
#include "flashmoe/types.h"

namespace flashmoe::gemm {

enum class Fp8ScaleKind : int {
  kChannel = 0,   // one scale per (expert, output channel), over all K
  kBlock128 = 1,  // one scale per (expert, 128 channels x 128 inputs)
};

/// Gate (or up) channels per half of a 128-row prepared chunk.
inline constexpr int64_t kFp8GateUpHalf = 64;

/// Rows of one expert's prepared weight matrix (Np above).
inline constexpr int64_t fp8_prepared_rows(int64_t n_raw, bool gate_up) {
  return gate_up ? 2 * kFp8GateUpHalf * ((n_raw / 2 + kFp8GateUpHalf - 1) / kFp8GateUpHalf)
                 : n_raw;
}

/// The raw channel held by prepared row p, or -1 for a zero padding row.
inline constexpr int64_t fp8_prepared_row_channel(int64_t p, int64_t n_raw, bool gate_up) {
  if (!gate_up) return p < n_raw ? p : -1;
  int64_t const inter = n_raw / 2;
  int64_t const chunk = p / (2 * kFp8GateUpHalf);
  int64_t const in_chunk = p % (2 * kFp8GateUpHalf);
  int64_t const c = chunk * kFp8GateUpHalf + in_chunk % kFp8GateUpHalf;
  if (c >= inter) return -1;
  return in_chunk < kFp8GateUpHalf ? c : inter + c;
}

/// Number of float32 scales of one expert.
inline constexpr int64_t fp8_scales_per_expert(int64_t n_raw, int64_t k, Fp8ScaleKind kind) {
  return kind == Fp8ScaleKind::kChannel ? n_raw : ((n_raw + 127) / 128) * ((k + 127) / 128);
}

/// What launch_quantize_weights_fp8 reads and writes (device pointers).
struct QuantizeWeightsFp8Params {
  void const* w = nullptr;               // raw weights, w_dtype
  // bf16, fp16 or fp32: quantized here. kFloat8E4M3 (already-quantized bytes): packed -- the
  // bytes moved into the prepared rows as they are, the scales copied from source_scales.
  DType w_dtype = DType::kBFloat16;
  WeightLayout layout = WeightLayout::kInOut;  // kInOut: [E, K, N_raw]; kOutIn: [E, N_raw, K]
  int64_t num_experts = 0;
  int64_t k = 0;                         // inputs per channel (K % 16 == 0)
  int64_t n_raw = 0;                     // output channels (gate-up: 2I, I % 8 == 0)
  bool gate_up = false;                  // interleave gate and up rows (see above)
  Fp8ScaleKind scale_kind = Fp8ScaleKind::kChannel;
  void* w_fp8 = nullptr;                 // [E, Np, K] E4M3, every byte written
  float* scales = nullptr;               // fp8_scales_per_expert(...) * E floats
  // kFloat8E4M3 sources only: their scales, in the layout of `scales` (raw channel order)
  float const* source_scales = nullptr;
};

/// Checks shapes, types and the alignment of the pointers (no device access).
Status check_quantize_weights_fp8(QuantizeWeightsFp8Params const& params);

/// Enqueues the quantization on `stream` (two kernels: amax -> scales, then the bytes; for E4M3
/// sources a scale copy, then the bytes). Never allocates, never synchronizes.
Status launch_quantize_weights_fp8(QuantizeWeightsFp8Params const& params, cudaStream_t stream);

}  // namespace flashmoe::gemm
