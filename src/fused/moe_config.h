// flashmoe (internal): the kernel configuration of a run, a pure function of the problem
// (printed to stderr by fused_moe_run when the environment has FLASHMOE_PRINT_CONFIG=1).
#pragma once

#include <cstdint>
#include <string>

#include "flashmoe/fused_moe.h"
#include "flashmoe/options.h"
#include "gemm/grouped_gemm_args.h"
#include "gemm/sm90_grouped_gemm.h"

namespace flashmoe::fused {

struct MoeConfig {
  bool sm90 = false;            // the sm_90a wgmma GEMM (KernelPath::kMultiKernelSm90, kFusedSm90)
  gemm::GemmTile tile = gemm::GemmTile::kM128N128;  // the sm_80 kernel's tile (sm90 false)
  // The FP8 GEMM's variant (choose_fp8_config; gemm::Sm90Fp8Variant as int, -1 = kAuto).
  int32_t fp8_variant = -1;
  // FP8: how the GEMMs' A rows become E4M3 (choose_fp8_config). false: inside the GEMM's gather
  // (the kernel reads bf16/fp16 rows and per-row scales); true: one pass quantizes the rows to
  // E4M3 first (the tokens' [T, H], the FFN's hidden rows) and the GEMM copies those bytes.
  bool fp8_prequant = false;
  // FP8, the first GEMM (on the tokens): K ranges per work item (split-K; 1 = none) and the tile
  // slots that its partial sums and counts cover (choose_fp8_config).
  int32_t fp8_k_splits = 1;
  int64_t fp8_split_tile_slots = 0;
  int64_t fp8_split_items = 0;  // fp8_split_tile_slots x N tiles: the split-K counts
  // FP8 gated FFN with a split first GEMM and I <= 256 (choose_fp8_config): in the one-kernel
  // forward the slot's last K range finishes the slot (h, its E4M3 rows, the release) in one
  // pass (gemm::Sm90Fp8KernelParams::split_by_slot, perf-log v0.56); FLASHMOE_FP8_SLOT_FINISH=0
  // (for comparisons) turns it off. The multi-kernel path does not read it.
  bool fp8_slot_finish = false;
  // FP8 gated FFN with one token (choose_fp8_config): in the one-kernel forward the down
  // projection and the combine run as a GEMV over column blocks after the gate/up GEMM
  // (solo_down_gemv, perf-log v0.58) instead of through the pipelined body;
  // FLASHMOE_FP8_DOWN_GEMV=0 (for comparisons) turns it off. The multi-kernel path does not
  // read it.
  bool fp8_down_gemv = false;
  // FP8: K blocks per fp32 promotion (gemm::Sm90Fp8GemmParams::promote_kb) of the first GEMM
  // and of the FFN's down projection (choose_fp8_config).
  int32_t fp8_promote_kb = 1;
  int32_t fp8_promote_kb_down = 1;
  // FP8 with >= 128 (linear) or >= 32 (gated FFN, on cards with the HBM bandwidth for it or with
  // FLASHMOE_FP8_A_DENSE=1) rows per expert on average (choose_fp8_config): the workspace's
  // token_fp8_dense holds fp8_dense_rows rows (0: not carved; for linear experts the shape alone
  // decides, for the gated FFN also the card and the environment), and with fp8_a_dense the
  // routed E4M3 rows go there in dense order (both paths quantize each 16-bit token row straight
  // into its slots' rows; float32 tokens are quantized, then copied) and the GEMM loads them by
  // TMA boxes (gemm::Sm90Fp8GemmParams::a_fp8_dense).
  int64_t fp8_dense_rows = 0;
  bool fp8_a_dense = false;
  int32_t bm = 0;               // rows of an M tile
  int32_t bn = 0;               // weight columns of an N tile
  int64_t num_assignments = 0;  // T * k
  int64_t num_tile_slots = 0;   // M-tile slots the GEMM grids cover (worst case over routings)
  char const* reason = "";
};

/// M-tile slots that cover any routing of `num_assignments` rows over the local experts with
/// `bm`-row tiles: sum over experts of ceil(rows_e / bm) <= (T*k + nonempty * (bm - 1)) / bm,
/// with at most min(E_local, T*k) nonempty experts.
int64_t tile_slot_bound(MoeProblem const& problem, int64_t num_assignments, int32_t bm);

/// "flashmoe config: T=.. E=.. E_local=.. k=.. H=.. D=|I=..": the problem part of a config line.
std::string describe_problem(MoeProblem const& problem);

/// Chooses the GEMM tile for `problem` on the sm_80 kernel (sm90 false) or the sm_90a one (see
/// the comments in moe_config.cpp for why).
MoeConfig choose_moe_config(MoeProblem const& problem, bool sm90);

/// Empty when a one-kernel forward (fused_sm90_fp8.h for FP8, fused_sm90.h for bf16/fp16) can
/// run a problem that its multi-kernel sm_90a path runs, else why not (at most kFusedMaxExperts
/// experts in the routing space and local).
std::string one_kernel_unsupported_reason(MoeProblem const& problem);

/// Whether a forward that a one-kernel path can run takes it: yes unless the environment has
/// FLASHMOE_FUSED=0 (the multi-kernel path then runs, for comparisons).
bool one_kernel_preferred();

/// One line describing the choice, for FLASHMOE_PRINT_CONFIG=1, naming the path that runs it
/// (the multi-kernel one or the one-kernel forward on the same GEMM).
std::string describe_moe_config(MoeProblem const& problem, MoeConfig const& config,
                                KernelPath path);

}  // namespace flashmoe::fused
