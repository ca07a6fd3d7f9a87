// flashmoe (internal): the single-launch FP8 forward on Hopper (KernelPath::kFusedSm90Fp8) --
// routing, activation quantization, the expert GEMM and the combine in one persistent kernel
// (fused_sm90_fp8.cu says how).
//
// What it runs (fused_fp8_unsupported_reason() says why not, and the multi-kernel FP8 path runs
// instead, reported as such): prepared FP8 weights, linear and gated-FFN experts, at most 256
// experts in the routing space and 256 local experts; every routing option (scoring, bias,
// grouped top-k, pre-routed, expert_map, capacity with drop or reroute). FLASHMOE_FUSED=0 turns
// it off (one_kernel_preferred: the multi-kernel path then runs, for comparisons). The output is
// bit for bit the multi-kernel FP8 path's: the same routing arithmetic, the same dense row order
// (local expert, token, slot), the same GEMM body (m128 on E4M3 rows quantized by the same rule; the
// FFN's h rows quantized by the same code), the same combine order.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "flashmoe/options.h"
#include "flashmoe/types.h"
#include "fused/moe_config.h"
#include "fused/moe_workspace.h"

namespace flashmoe::fused {

/// The fused kernel's grid is min(SMs, kFusedMaxCtas) persistent CTAs (one per SM); the
/// workspace holds a [kFusedMaxCtas, E] table of per-CTA expert counts.
inline constexpr int kFusedMaxCtas = 160;
/// deterministic = false (MoeProblem) takes the atomic combine up to this many tokens; above it
/// the deterministic combine runs regardless. Measured on an H200 (docs/perf-log.md v0.20): FP8
/// one-kernel forward 5-9% faster at T = 1, 2-3% at T = 128 and 256, equal at 32, 64 and 512,
/// 4% slower at T = 2048 (seed: 32M bf16x2 atomics against the weight stream through L2).
inline constexpr int64_t kAtomicCombineMaxTokens = 256;
/// Experts (routing space and local) the fused kernel handles.
inline constexpr int kFusedMaxExperts = 256;

/// Empty when the fused kernel can run `problem` (an FP8 problem with prepared weights, checked
/// by check_fp8_problem), else why not.
std::string fused_fp8_unsupported_reason(MoeProblem const& problem);

/// Phase timeline (FLASHMOE_FUSED_TIMELINE=1, for profiling): per CTA, %globaltimer nanoseconds
/// at: 0 start, 1 routing + quantization done, 2 after barrier 1, 3 dispatch done, 4 after
/// barrier 2 (GEMM starts), 5 the math warpgroups' last tile done, 6 after barrier 3, 7 combine
/// done, 8 thread 0's top-k work done, 9 thread 0's row quantization done. Written to
/// MoeWorkspace::fused_timeline[cta * kFusedTimelineSlots + i].
inline constexpr int kFusedTimelineSlots = 10;

/// Enqueues the workspace's counter reset (one memset) and the fused kernel on `stream`.
/// `config` is choose_fp8_config's; `ws` carved with it.
Status run_fused_fp8(MoeProblem const& problem, MoeArgs const& args, MoeConfig const& config,
                     MoeWorkspace const& ws, cudaStream_t stream);

}  // namespace flashmoe::fused
