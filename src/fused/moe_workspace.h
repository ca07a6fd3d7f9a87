// flashmoe (internal): the device workspace of one multi-kernel run -- one struct whose slices
// the host sizes and carves, each 256-byte aligned (CUB's convention), from the caller's buffer.
//
//   routing      ids, weights, sort keys and permutations, counts, the tile list (O(T*k + E))
//   cub scratch  the largest of the routing's CUB device sorts / histograms / scans
//   hidden       [T*k, I] act(x Wg) * (x Wu) rows of gated-FFN experts, in the tokens' dtype
//   expert_out   [T*k, N] one output row per computed assignment, in the tokens' dtype
// expert_out is in the tokens' dtype (bf16/fp16), not fp32: at the seed shape it is the
// largest buffer (T*k*D = 134M elements), and 16-bit rows halve its write + read traffic
// (~0.09 ms of the ~2.9 ms floor) for one extra rounding (2^-9 relative for bf16) that the
// combine's fp32 sum then averages; the 1e-2 accuracy budget is far away. Rows are dense (one
// per computed assignment, ordered by local expert), not padded to the M tile, so the
// workspace does not grow with E * (BM - 1) padding rows.
//
// The FP8 path (precision kFP8 with prepared weights, multikernel_fp8.h) uses the same slices
// (its `hidden` rows are always bfloat16: the down projection's A operand) plus
//   token_scales   [T]          per-token amax / 448 of the tokens (the GEMM's gather divides)
//   hidden_scales  [T*k]        per-row amax / 448 of the FFN's hidden rows
//   token_fp8      [T, H]       E4M3 tokens (MoeConfig::fp8_prequant; carved either way, so
//   hidden_fp8     [T*k, I]     E4M3 hidden rows    the size does not depend on the choice)
//   token_fp8_dense [T*k, H]    the routed E4M3 token rows in dense order (shapes with
//                               MoeConfig::fp8_dense_rows > 0; T*k*H bytes, 512 MB at prefill)
// and every path carves
//   fused_counts   [E, kFusedMaxCtas]  the fused kernels' per-CTA expert counts (FP8, and
//                                      bf16/fp16 with the sm_90a GEMM)
//   fused_tile_done [tile slots]       the fused gated-FFN kernels' per-m-slot counts of
//                                      finished gate/up items (FFN only; zeroed in-kernel)
//   sync region     the FIRST 256 bytes of every workspace, whatever the problem (kSyncRegionInts
//                   int32): the two sm_90a GEMMs' work queues (FP8 or bf16/fp16), the fused
//                   kernels' grid barrier and solo-dispatch flag, the FP8 split-K counts
//                   [split slots x N tiles] and, at its top, the FP8 one-kernel forward's
//                   solo-mode combine counts [N tiles of its last GEMM]. Zeroed before a run
//                   (zero_gemm_queues), unless the caller promises MoeArgs::workspace_zeroed:
//                   every run leaves this region as
//                   it found it (the queues, barrier arrivals, flag and counts back at zero; the
//                   barrier's generation word is relative), and the region does not move with
//                   the problem, so a workspace zeroed once and used only by runs stays ready.
//   split_partial  [split slots x N tiles x k_splits x 128 x 256] fp32 (FP8 split-K only)
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "flashmoe/options.h"
#include "flashmoe/types.h"
#include "fused/moe_config.h"
#include "routing/routing_params.h"

namespace flashmoe::fused {

/// int32 per sm_90a GEMM work queue (kSm90Fp8SchedulerBytes == kSm90GemmSchedulerBytes).
inline constexpr int kGemmSchedulerInts = 2;
/// int32 of the fused kernels' grid barrier (arrivals, generation) and their solo-dispatch flag,
/// after the two queues.
inline constexpr int kFusedSyncInts = 3;
/// int32 of the sync region at the start of every workspace (256 bytes).
inline constexpr int kSyncRegionInts = 64;
/// FP8 split-K counts the sync region holds after the queues and the fused kernels' words (split-K
/// runs at most kSplitTargetCtas / 4 items; carve_moe_workspace checks).
inline constexpr int kSyncSplitMaxInts = kSyncRegionInts - 2 * kGemmSchedulerInts - kFusedSyncInts;

struct MoeWorkspace {
  routing::RoutingBuffers routing;
  void* hidden = nullptr;
  void* expert_out = nullptr;
  // FP8 path only (null otherwise).
  float* token_scales = nullptr;
  float* hidden_scales = nullptr;
  void* token_fp8 = nullptr;
  void* hidden_fp8 = nullptr;
  void* token_fp8_dense = nullptr;    // [fp8_dense_rows, H] (MoeConfig::fp8_dense_rows > 0)
  int32_t* fused_counts = nullptr;    // [E, kFusedMaxCtas] the fused kernels' per-CTA counts
  uint64_t* fused_timeline = nullptr;  // [kFusedMaxCtas, kFusedTimelineSlots] (profiling)
  int32_t* fused_tile_done = nullptr;  // gated FFN: [num_tile_slots]
  int32_t* gemm_scheduler = nullptr;  // the sync region: two queues of kGemmSchedulerInts int32, ..
  // FP8 split-K of the first GEMM (MoeConfig::fp8_k_splits > 1, else null): the per-item range
  // counts (in the sync region, after the fused kernels' words) and the fp32 partials.
  int32_t* split_count = nullptr;
  float* split_partial = nullptr;
  std::size_t bytes = 0;  // total bytes the carve needs (including alignment of the base)
};

/// Zeroes the sync region (the GEMMs' work queues, the fused kernels' barrier and flag, the
/// split-K counts) on `stream`: a fresh (or poisoned) workspace holds garbage there. Every run
/// leaves the region clean, but only MoeArgs::workspace_zeroed lets a run rely on a previous one.
/// kInternal if `ws` was carved without it.
Status zero_gemm_queues(MoeWorkspace const& ws, cudaStream_t stream);

/// Carves the workspace of `problem` with `config` from `base` (nullptr: sizes only, every
/// pointer null). ws->bytes is the size to allocate. Fails only if CUB cannot size its scratch
/// (no usable device).
Status carve_moe_workspace(MoeProblem const& problem, MoeConfig const& config, void* base,
                           MoeWorkspace* ws);

}  // namespace flashmoe::fused
