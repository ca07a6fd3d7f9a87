// flashmoe: the tile chooser of the multi-kernel path.
#include "fused/moe_config.h"

#include <algorithm>

#include "common/env_flag.h"
#include "common/str_cat.h"
#include "fused/fused_limits.h"

namespace flashmoe::fused {

std::string one_kernel_unsupported_reason(MoeProblem const& p) {
  if (p.num_experts > kFusedMaxExperts || p.num_local_experts > kFusedMaxExperts) {
    return detail::cat("more than ", kFusedMaxExperts, " experts");
  }
  return "";
}

bool one_kernel_preferred() {
  return !detail::env_is("FLASHMOE_FUSED", "0");
}

MoeConfig choose_moe_config(MoeProblem const& problem, bool sm90) {
  MoeConfig c;
  int64_t const T = problem.num_tokens;
  int64_t const k = problem.routing.top_k;
  int64_t const E = std::max<int64_t>(problem.num_experts, 1);
  c.num_assignments = T * k;
  if (sm90) {
    // One tile for every T: a 128-row work item (two m64 halves) times 256 weight columns. At
    // decode the padding rows cost tensor-core time only, which a weight-bandwidth-bound GEMM has
    // to spare; at ~64 rows per expert (seed, dsv3) one item covers a typical expert, so its
    // weights stream from HBM once.
    c.sm90 = true;
    c.bm = gemm::kSm90GemmBlockM;
    c.bn = gemm::kSm90GemmBlockN;
    c.reason = "sm_90a wgmma GEMM: 128-row items (one per typical expert; decode pads)";
    c.num_tile_slots = tile_slot_bound(problem, c.num_assignments, c.bm);
    return c;
  }
  // Expected rows per expert: every expert (local or not) draws T*k/E assignments on average.
  double const rows_per_expert = static_cast<double>(T * k) / static_cast<double>(E);
  if (rows_per_expert <= 16.0) {
    // Decode-like: an expert holds a handful of tokens. A 128-row tile would be >= 7/8
    // padding (zero-filled loads, idle warps); 16 rows keeps the CTA small (72 KB, 3 per SM)
    // so enough CTAs stream weights at once. Each expert's weights are still read once per
    // 16 rows, and with <= 16 rows that is once.
    c.tile = gemm::GemmTile::kM16N128;
    c.reason = "<= 16 rows per expert on average: 16-row tiles (decode)";
  } else {
    // Above that, one 128-row tile covers a typical expert (the seed shape has ~64 rows per
    // expert: with 64-row tiles about half the experts would spill into a second tile whose
    // weights are read again). Warps whose 32 rows are padding skip their MMAs. Large T
    // (prefill) also wants the big tile: it is the one with the most reuse per weight byte.
    c.tile = gemm::GemmTile::kM128N128;
    c.reason = "> 16 rows per expert on average: 128-row tiles (one tile per typical expert)";
  }
  c.bm = gemm::gemm_tile_bm(c.tile);
  c.bn = gemm::gemm_tile_bn(c.tile);
  c.num_tile_slots = tile_slot_bound(problem, c.num_assignments, c.bm);
  return c;
}

int64_t tile_slot_bound(MoeProblem const& problem, int64_t num_assignments, int32_t bm) {
  int64_t const nonempty = std::min<int64_t>(problem.num_local_experts, num_assignments);
  return (num_assignments + nonempty * (bm - 1)) / bm;
}

std::string describe_problem(MoeProblem const& problem) {
  bool const linear = problem.kind == ExpertKind::kLinear;
  return detail::cat("flashmoe config: T=", problem.num_tokens, " E=", problem.num_experts,
                     " E_local=", problem.num_local_experts, " k=", problem.routing.top_k,
                     " H=", problem.hidden, linear ? " D=" : " I=",
                     linear ? problem.out_dim : problem.inter_dim);
}

std::string describe_moe_config(MoeProblem const& problem, MoeConfig const& config,
                                KernelPath path) {
  return detail::cat(describe_problem(problem),
                     " -> path=",
                     kernel_path_name(path),
                     " tile=",
                     config.bm,
                     "x",
                     config.bn,
                     "x64",
                     " tile_slots=",
                     config.num_tile_slots,
                     " (",
                     config.reason,
                     ")");
}

}  // namespace flashmoe::fused
