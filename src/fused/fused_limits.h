// flashmoe (internal): the limits and constants shared by the one-kernel forwards (the FP8 one,
// fused_sm90_fp8.h, and the bf16/fp16 one, fused_sm90.h) and by the workspace that serves them.
#pragma once

#include <cstdint>

namespace flashmoe::fused {

/// A fused kernel's grid is min(SMs, kFusedMaxCtas) persistent CTAs (one per SM); the
/// workspace holds a [kFusedMaxCtas, E] table of per-CTA expert counts.
inline constexpr int kFusedMaxCtas = 160;
/// deterministic = false (MoeProblem) takes the atomic combine up to this many tokens; above it
/// the deterministic combine runs regardless. bf16/fp16 forward: measured on an H200
/// (docs/perf-log.md v0.20, round 90) ~4-5% faster at T = 1, mixed at 128-512, slower at 2048.
inline constexpr int64_t kAtomicCombineMaxTokens = 256;
/// The same for the FP8 forward: none. Its atomic combine was 5-9% faster at T = 1 before the
/// plain epilogue's 8-byte stores (v0.23); since then the deterministic path is 2-3% faster at
/// T = 1 and 16 and at dsv3-tp8 (round 91), so deterministic = false runs it too.
inline constexpr int64_t kAtomicCombineMaxTokensFp8 = 0;
/// Experts (routing space and local) the fused kernels handle.
inline constexpr int kFusedMaxExperts = 256;

/// Phase timeline (FLASHMOE_FUSED_TIMELINE=1, for profiling): per CTA, %globaltimer nanoseconds
/// at: 0 start, 1 routing + quantization done, 2 after barrier 1, 3 dispatch done, 4 after
/// barrier 2 (GEMM starts; solo mode: 2 = 1, and 3 is CTA 0's dispatch done or another CTA's
/// wait start, 4 the flag seen), 5 the math warpgroups' last tile done, 6 after barrier 3, 7 combine
/// done, 8 thread 0's top-k work done, 9 thread 0's row quantization done; the FP8 forward's
/// GEMM body adds 10-15 for the CTA's last item (Sm90Fp8KernelParams::timeline: rows ready,
/// first and last weight TMA issued, first stage full, K loop done, epilogue done); 16-19 are
/// the steps of the top-k of the CTA's first token (routing::topk_stamp: scores and their max
/// loaded, softmax sum, selection scores ready, experts selected); 20-22 the CTA's *first* GEMM
/// item (rows ready, K loop done, its split-K count taken -- with the sum where it finishes the
/// item), 31 the CTA's first slot finisher started (finish_split_slot), 23 the first FFN slot
/// the CTA released (h rows quantized), 24 the count of first-GEMM
/// items the CTA ran (a count, not a time), 25 the last one's K loop done, 26 the CTA's first
/// token row quantized (phase 1), 27 solo_fast: CTA 0's warp 0 has written the GEMM's inputs
/// (before it waits for that row and releases the flag); the one-token down GEMV (solo_down_gemv)
/// stamps 5 at its start, 30 its weight copies issued (by warp 0's lanes), 28 its weights in
/// shared memory, 29 its last h row loaded (the latest of its warps), 6 row 0's h row and the
/// weights, 7 its output stored. Written to
/// MoeWorkspace::fused_timeline[cta * kFusedTimelineSlots + i].
inline constexpr int kFusedTimelineSlots = 32;
/// The first of the GEMM body's slots.
inline constexpr int kFusedTimelineGemmSlot = 10;
/// The first of the top-k's slots (routing::kTopkStamps of them).
inline constexpr int kFusedTimelineTopkSlot = 16;

}  // namespace flashmoe::fused
