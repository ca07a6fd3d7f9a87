// flashmoe: the FP8 forward on Hopper (multikernel_fp8.h).
#include "fused/multikernel_fp8.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "fused/combine.h"
#include "gemm/grouped_gemm_args.h"
#include "gemm/quantize_weights_fp8.h"
#include "gemm/sm90_fp8_grouped_gemm.h"
#include "gemm/token_scales.h"
#include "routing/routing_kernels.h"
#include "common/device_properties.h"
#include "common/env_flag.h"
#include "common/str_cat.h"
#include "fused/multikernel_moe.h"

namespace flashmoe::fused {
namespace {

using detail::cat;

// The N of one CTA tile of the sm_90a kernel (two math warpgroups of 128 columns); recorded in
// MoeConfig::bn for reports only (the GEMM launcher owns its tiling).
constexpr int32_t kFp8BlockN = 256;

gemm::Fp8ScaleKind scale_kind(WeightScale s) {
  return s == WeightScale::kBlock128 ? gemm::Fp8ScaleKind::kBlock128
                                     : gemm::Fp8ScaleKind::kChannel;
}

char const* scale_name(WeightScale s) {
  switch (s) {
    case WeightScale::kChannel: return "channel";
    case WeightScale::kBlock128: return "block128";
    default: return "none";
  }
}

constexpr int kSplitTargetCtas = 132;
// Linear experts with at least this many rows per expert on average take the dense A rows
// (MoeConfig::fp8_a_dense). Measured (round 185, H200, one binary, both paths): prefill (512 rows
// per expert) -13% (one kernel) / -14..-17% (multi-kernel); seed (64) unchanged on both -- its
// GEMM gain is what the copy (T*k*H bytes written and read, 64 MB) costs -- so the seed keeps the
// gather and does not carry the slice; fewer rows per expert (decode) would not earn it back.
constexpr double kFp8DenseRowsPerExpert = 128.0;
// Gated-FFN experts from 32 rows per expert (dsv3: 64), both GEMMs, by default on cards whose
// peak HBM bandwidth is at least kFp8FfnDenseMinHbmGbps (fp8_ffn_dense_by_default). Measured on
// dsv3 with the dispatch writing the dense rows itself (v0.39; round 202, 100-rep runs, three
// alternations, one kernel / multi-kernel): an H200 (HBM 4.1 TB/s by this formula) -6.2% /
// -1.7%; an H100 80GB HBM3 (3.35 TB/s), whose HBM the dsv3 forward already keeps ~86% busy,
// +2.5% / +1.3% (the dense rows' T*k*H bytes cost more there than the gather saves).
constexpr double kFp8FfnDenseMinHbmGbps = 3800.0;
constexpr double kFp8DenseRowsPerExpertFfn = 32.0;

}  // namespace

double current_device_hbm_gbps() {
  int device = 0;
  DeviceProperties props;
  if (current_device_properties(&device, &props) != cudaSuccess) {
    (void)cudaGetLastError();  // no device (host-only runs): no dense-row default
    return 0.0;
  }
  return props.hbm_gbps;
}

bool fp8_ffn_dense_by_default(double hbm_gbps) { return hbm_gbps >= kFp8FfnDenseMinHbmGbps; }

namespace {

// FLASHMOE_FP8_ACT=gather|prepass overrides the heuristic's choice (for comparisons); any other
// value is ignored.
bool fp8_prequant_env_or(bool chosen) {
  char const* v = std::getenv("FLASHMOE_FP8_ACT");
  if (v == nullptr) return chosen;
  if (std::strcmp(v, "prepass") == 0) return true;
  if (std::strcmp(v, "gather") == 0) return false;
  return chosen;
}

}  // namespace

Status check_fp8_problem(MoeProblem const& p) {
  if (!p.weights_prepared) {
    return Status::Unsupported(
        "precision=\"fp8\" on the GPU needs weights prepared once with prepare_experts(...)"
        " (C++: prepare_experts_fp8() in flashmoe/quantization.h, then weights_prepared = true)");
  }
  if (p.token_dtype != DType::kBFloat16 && p.token_dtype != DType::kFloat16) {
    return Status::Unsupported(cat("precision=\"fp8\" on the GPU takes bfloat16 or float16 "
                                   "tokens, got ",
                                   dtype_name(p.token_dtype)));
  }
  // K of the first GEMM: 16-byte TMA rows of E4M3 weights.
  if (p.hidden % 16 != 0) {
    return Status::Unsupported(cat("precision=\"fp8\" on the GPU needs the hidden size H to be "
                                   "a multiple of 16, got ",
                                   p.hidden));
  }
  if (p.kind == ExpertKind::kLinear && p.out_dim % 8 != 0) {
    return Status::Unsupported(cat("precision=\"fp8\" on the GPU needs the expert output "
                                   "dimension D to be a multiple of 8, got ",
                                   p.out_dim));
  }
  if (p.kind == ExpertKind::kGatedFFN) {
    // I is the N of the gate/up GEMM and the K of the down projection.
    if (p.inter_dim % 16 != 0) {
      return Status::Unsupported(cat("precision=\"fp8\" on the GPU needs the intermediate "
                                     "dimension I to be a multiple of 16, got ",
                                     p.inter_dim));
    }
    if (p.weight_scale == WeightScale::kBlock128 && p.inter_dim % gemm::kFp8GateUpHalf != 0) {
      return Status::Unsupported(cat("precision=\"fp8\" with block128 weight scales needs the "
                                     "intermediate dimension I to be a multiple of 64 (each "
                                     "64-channel gate/up half-chunk in one 128x128 block), got ",
                                     p.inter_dim));
    }
  }
  return Status::Ok();
}

Status check_fp8_device(int device, int major, int minor) {
  if (major == 9 && minor == 0) return Status::Ok();  // W8A8 on sm_90a
  if (major == 8) return Status::Ok();                // W8A16 on the sm_80 GEMM
  if (major < 8) {
    return Status::Unsupported(cat(
        "precision=\"fp8\" on the GPU needs compute capability 8.x (W8A16: the sm_80 GEMM "
        "dequantizes the E4M3 weights) or 9.0 (E4M3 wgmma); device ",
        device, " has compute capability ", major, ".", minor));
  }
  return Status::Unsupported(cat("precision=\"fp8\" on the GPU runs on compute capability 8.x "
                                 "(W8A16) and 9.0 (sm_90a code, which runs on 9.0 only); device ",
                                 device, " has compute capability ", major, ".", minor));
}

MoeConfig choose_fp8_config(MoeProblem const& problem) {
  MoeConfig c;
  c.num_assignments = problem.num_tokens * problem.routing.top_k;
  c.bm = gemm::kSm90Fp8BlockM;
  c.bn = kFp8BlockN;
  c.num_tile_slots = tile_slot_bound(problem, c.num_assignments, c.bm);
  // The variant (sm90_fp8_grouped_gemm.h), measured on an H100 (round 18, docs/perf-log.md):
  // with a typical expert holding more than 16 rows, m128c (the math warpgroups quantize the
  // rows) streams weights 10-13% faster than m128 (seed, dsv3); at decode (a row or two per
  // expert: little to convert) its per-K-block barriers cost more than they save (decode-16
  // 0.611 vs 0.589 ms), so m128 stays. FLASHMOE_SM90_VARIANT overrides (run_multikernel_fp8).
  double const rows_per_expert = static_cast<double>(c.num_assignments) /
                                 static_cast<double>(std::max<int64_t>(problem.num_experts, 1));
  // Where the A rows become E4M3. Measured with the GEMM alone (H100, round 18, same run): the
  // kernel copying rows that a pass quantized beforehand beats quantizing inside the gather at
  // every shape -- seed 1.598 vs 1.766 ms (m128c), decode-16 0.560 vs 0.589 (m128), dsv3 gate/up
  // 2.694 vs 2.879, down 1.374 vs 1.448 -- because the in-kernel conversion sits on the math
  // warpgroups' per-K-block path (or the producer's), while the pass is one streaming read of
  // the rows (which the amax pre-pass reads anyway) plus a write of T*H bytes (0.2% of the
  // seed's weight bytes). So the pass is the default; FLASHMOE_FP8_ACT=gather runs the in-gather
  // quantization (m128c / m128 below): the same E4M3 rows, and the same bits where this
  // configuration neither splits K nor promotes every two K blocks (the gather does neither).
  // (For comparisons; the test check_fp8 holds it to that.)
  c.fp8_prequant = fp8_prequant_env_or(true);
  // Split-K of the first GEMM (on E4M3 rows only): at decode its items are (tiles <= T*k) x (N
  // tiles), e.g. dsv3-tp8 at T = 1: 8 tiles x 2 (2I = 512 columns) = 16 items of 56 K blocks,
  // each streamed by one SM while 116 idle -- cut into K ranges they fill the GPU. The CTA
  // count assumed is an H100's / H200's 132 SMs (the launch uses the device's; a mismatch only
  // moves the split off its best).
  if (c.fp8_prequant) {
    bool const gate_up = problem.kind == ExpertKind::kGatedFFN;
    int64_t const n_tiles =
        gemm::sm90_fp8_n_tiles(gate_up ? problem.inter_dim : problem.out_dim, gate_up);
    c.fp8_split_tile_slots = std::min(c.num_tile_slots, c.num_assignments);
    c.fp8_split_items = c.fp8_split_tile_slots * n_tiles;
    c.fp8_k_splits = gemm::sm90_fp8_k_splits(c.fp8_split_items, problem.hidden,
                                             kSplitTargetCtas);
    // FLASHMOE_FP8_SPLITK=n (for comparisons): n K ranges when every range stays non-empty and
    // the items fit the workspace's split counts (kSyncSplitMaxInts; decode-1's 128 items do
    // not); ignored otherwise, like the other overrides (FLASHMOE_PRINT_CONFIG shows the split).
    if (char const* v = std::getenv("FLASHMOE_FP8_SPLITK")) {
      int64_t const want = std::atoll(v);
      int64_t const kb = (problem.hidden + 127) / 128;
      bool const fits = want == 1 || c.fp8_split_items <= kSyncSplitMaxInts;
      if (want >= 1 && want <= 127 && (want - 1) * ((kb + want - 1) / want) < kb && fits) {
        c.fp8_k_splits = static_cast<int32_t>(want);
      }
    }
    // One h channel per math thread of the slot's finisher (256 threads, so I <= 256).
    c.fp8_slot_finish = gate_up && c.fp8_k_splits > 1 && problem.inter_dim <= 256 &&
                        !detail::env_is("FLASHMOE_FP8_SLOT_FINISH", "0");
    // One token's down projection as a GEMV (solo_down_gemv): a warp per expert row (top_k <= 8),
    // I / 64 = 1, 2, 4 or 8 K slices (a template parameter; the A fragments in registers),
    // 8-column blocks of H, 16-bit tokens, dropless (the one kernel's solo mode).
    int64_t const slices = problem.inter_dim / 64;
    c.fp8_down_gemv = gate_up && problem.num_tokens == 1 && problem.routing.top_k <= 8 &&
                      problem.inter_dim % 64 == 0 &&
                      (slices == 1 || slices == 2 || slices == 4 || slices == 8) &&
                      problem.hidden % 8 == 0 && problem.routing.capacity_factor <= 0.0 &&
                      problem.token_dtype != DType::kFloat32 &&
                      !detail::env_is("FLASHMOE_FP8_DOWN_GEMV", "0");
  }
  // Two K blocks per fp32 promotion in the 128-row items of the plain GEMMs (v0.34, rounds
  // 162-164): linear experts' GEMM, the FFN's down projection, with channel scales on E4M3 rows.
  // Halves the math warpgroups' promotions and wgmma waits; measured on an H200, prefill -3%,
  // seed -1..-3%, rel. error vs the host mirror at K = 4096 8.0e-4 -> 9.9e-4 (same-quantization
  // reference unchanged at 2.76e-3). Never the FFN's gate-up GEMM: its epilogue re-quantizes h,
  // where a larger accumulation error flips E4M3 roundings. The kernel takes the pairs from an
  // even ring position, so every item of every GEMM sharing the ring (the one-kernel FFN runs
  // both of its GEMMs on one) has an even K-block count. Both paths use the same setting (the
  // same bits). FLASHMOE_FP8_PROMOTE_KB=1 (for comparisons) turns it off.
  {
    int64_t const kb_h = (problem.hidden + 127) / 128;
    int64_t const per_h = (kb_h + c.fp8_k_splits - 1) / c.fp8_k_splits;
    bool const even_first = kb_h % 2 == 0 && (c.fp8_k_splits == 1 || per_h % 2 == 0);
    bool allowed = c.fp8_prequant && problem.weight_scale == WeightScale::kChannel && even_first;
    if (detail::env_is("FLASHMOE_FP8_PROMOTE_KB", "1")) allowed = false;
    if (allowed && problem.kind == ExpertKind::kLinear) c.fp8_promote_kb = 2;
    bool const even_down = ((problem.inter_dim + 127) / 128) % 2 == 0;
    if (allowed && problem.kind == ExpertKind::kGatedFFN && even_down) c.fp8_promote_kb_down = 2;
  }
  // Dense A rows (v0.38, rounds 175-184): the routed E4M3 token rows in dense order, so
  // that the GEMM loads each 64-row half of a stage by one TMA box instead of gathering it row by
  // row with cp.async (on the prefill GEMM the gather cost ~3x the weights' TMA per byte, round
  // 175). Linear experts: by default, and the workspace slice depends on the shape alone;
  // FLASHMOE_FP8_A_DENSE=0 (for comparisons) keeps the gather. Gated FFN: both GEMMs (h is in
  // dense order already; the one kernel writes it inside the launch, behind proxy fences), by
  // default on cards with the HBM bandwidth for it (fp8_ffn_dense_by_default), else with
  // FLASHMOE_FP8_A_DENSE=1; the choice also sizes the workspace's slice (the env must be set
  // before the workspace is sized, and the workspace serves the device it was sized on).
  bool const dense_off = detail::env_is("FLASHMOE_FP8_A_DENSE", "0");
  bool const dense_on = detail::env_is("FLASHMOE_FP8_A_DENSE", "1");
  bool const eligible =
      problem.kind == ExpertKind::kGatedFFN
          ? (dense_on || (!dense_off && fp8_ffn_dense_by_default(current_device_hbm_gbps()))) &&
                rows_per_expert >= kFp8DenseRowsPerExpertFfn
          : rows_per_expert >= kFp8DenseRowsPerExpert;
  if (eligible) {
    c.fp8_dense_rows = c.num_assignments;
    c.fp8_a_dense = c.fp8_prequant && !dense_off;
  }
  if (c.fp8_prequant) {
    c.fp8_variant = static_cast<int32_t>(gemm::Sm90Fp8Variant::kM128);
    c.reason = c.fp8_a_dense
                   ? "sm_90a FP8 grouped GEMM, variant m128 on E4M3 rows quantized by a pass "
                     "beforehand (per-row scales) into dense order (A by TMA boxes); the "
                     "routing cuts 64-row tiles"
                   : "sm_90a FP8 grouped GEMM, variant m128 on E4M3 rows quantized by a pass "
                     "beforehand (per-row scales); the routing cuts 64-row tiles";
  } else if (rows_per_expert > 16.0) {
    c.fp8_variant = static_cast<int32_t>(gemm::Sm90Fp8Variant::kM128Convert);
    c.reason = "sm_90a FP8 grouped GEMM, variant m128c (> 16 rows per expert: the math "
               "warpgroups quantize the token rows); the routing cuts 64-row tiles";
  } else {
    c.fp8_variant = static_cast<int32_t>(gemm::Sm90Fp8Variant::kM128);
    c.reason = "sm_90a FP8 grouped GEMM, variant m128 (<= 16 rows per expert: the producer "
               "quantizes the few rows); the routing cuts 64-row tiles";
  }
  return c;
}

std::string describe_fp8_config(MoeProblem const& problem, MoeConfig const& config,
                                KernelPath path) {
  return detail::cat(describe_problem(problem),
                     " -> path=",
                     kernel_path_name(path),
                     " m_tile=",
                     config.bm,
                     " variant=",
                     gemm::sm90_fp8_variant_name(gemm::sm90_fp8_env_variant_or(
                         static_cast<gemm::Sm90Fp8Variant>(config.fp8_variant))),
                     " weight_scale=",
                     scale_name(problem.weight_scale),
                     config.fp8_prequant ? " act=prepass" : " act=gather",
                     config.fp8_a_dense ? " a_rows=dense" : "",
                     " k_splits=",
                     config.fp8_k_splits,
                     config.fp8_slot_finish ? " slot_finish" : "",
                     config.fp8_down_gemv ? " down_gemv" : "",
                     " promote_kb=",
                     config.fp8_promote_kb,
                     "/",
                     config.fp8_promote_kb_down,
                     " tile_slots=",
                     config.num_tile_slots,
                     " (",
                     config.reason,
                     ")");
}

gemm::Sm90Fp8GemmParams token_gemm_params(MoeProblem const& problem, MoeArgs const& args,
                                          MoeConfig const& config, MoeWorkspace const& ws,
                                          bool prequant) {
  int64_t const H = problem.hidden;
  gemm::Sm90Fp8GemmParams g;
  g.a = args.tokens;
  g.a_dtype = problem.token_dtype;
  g.a_row_stride = H;
  g.a_rows = ws.routing.row_token;
  g.a_scales = ws.token_scales;
  g.a_fp8 = prequant ? ws.token_fp8 : nullptr;
  g.a_fp8_row_stride = prequant ? H : 0;
  g.tiles = ws.routing.tiles;
  g.num_tile_slots = static_cast<int32_t>(config.num_tile_slots);
  g.w_fp8 = args.w1;
  g.w_scales = args.w1_scale;
  g.scale_kind = scale_kind(problem.weight_scale);
  g.num_experts = problem.num_local_experts;
  g.k = H;
  g.scheduler = ws.gemm_scheduler;
  g.max_ctas = 0;
  g.variant = gemm::sm90_fp8_env_variant_or(static_cast<gemm::Sm90Fp8Variant>(config.fp8_variant));
  gemm::Sm90Fp8Variant const resolved = gemm::sm90_fp8_resolve_variant(g.variant);
  if (prequant && config.fp8_promote_kb == 2 && gemm::sm90_fp8_variant_pairs_kb(resolved)) {
    g.promote_kb = 2;  // (FLASHMOE_SM90_VARIANT may name a variant without it: then 1)
  }
  if (prequant && config.fp8_a_dense && ws.token_fp8_dense != nullptr &&
      resolved != gemm::Sm90Fp8Variant::kBase) {
    // The routed rows in dense order (run_multikernel_fp8 and the one kernel's dispatch quantize
    // each token row into them).
    g.a_fp8 = ws.token_fp8_dense;
    g.a_fp8_dense = true;
    g.a_fp8_dense_rows = config.fp8_dense_rows;
  }
  if (prequant && config.fp8_k_splits > 1 && resolved != gemm::Sm90Fp8Variant::kBase) {
    g.k_splits = config.fp8_k_splits;
    g.split_tile_slots = static_cast<int32_t>(config.fp8_split_tile_slots);
    g.split_partial = ws.split_partial;
    g.split_count = ws.split_count;
  }
  if (problem.kind == ExpertKind::kLinear) {
    // y[row] = x[token(row)] @ W8[expert(row)], in the tokens' dtype for the combine.
    g.n = problem.out_dim;
    g.epilogue = gemm::Fp8Epilogue::kPlain;
    g.out = ws.expert_out;
    g.out_dtype = problem.token_dtype;
    g.out_row_stride = problem.out_dim;
  } else {
    // h[row] = act(x Wg) * (x Wu), bf16 rows (the down projection's A operand; bf16 rather than
    // fp16 so that large activations cannot overflow).
    g.n = problem.inter_dim;
    g.epilogue = problem.activation == Activation::kSilu ? gemm::Fp8Epilogue::kGateUpSilu
                                                         : gemm::Fp8Epilogue::kGateUpGelu;
    g.out = ws.hidden;
    g.out_dtype = DType::kBFloat16;
    g.out_row_stride = problem.inter_dim;
  }
  return g;
}

gemm::Sm90Fp8GemmParams down_gemm_params(MoeProblem const& problem, MoeArgs const& args,
                                         MoeConfig const& config, MoeWorkspace const& ws,
                                         bool prequant) {
  int64_t const I = problem.inter_dim;
  int64_t const H = problem.hidden;
  gemm::Sm90Fp8GemmParams g = token_gemm_params(problem, args, config, ws, prequant);
  // y[row] = h[row] @ Wd8[expert(row)]: row r of h is dense row r (no gather).
  g.a = ws.hidden;
  g.a_dtype = DType::kBFloat16;
  g.a_row_stride = I;
  g.a_rows = nullptr;
  g.a_scales = ws.hidden_scales;
  g.a_fp8 = prequant ? ws.hidden_fp8 : nullptr;
  g.a_fp8_row_stride = prequant ? I : 0;
  gemm::Sm90Fp8Variant const resolved = gemm::sm90_fp8_resolve_variant(g.variant);
  // h rows are in dense order already: the boxes read them where the configuration takes them
  g.a_fp8_dense = prequant && config.fp8_a_dense && resolved != gemm::Sm90Fp8Variant::kBase;
  g.a_fp8_dense_rows = g.a_fp8_dense ? config.num_assignments : 0;
  g.w_fp8 = args.w2;
  g.w_scales = args.w2_scale;
  g.k = I;
  g.n = H;
  g.epilogue = gemm::Fp8Epilogue::kPlain;
  g.out = ws.expert_out;
  g.out_dtype = problem.token_dtype;
  g.out_row_stride = H;
  // Its own queue (the first one is reset by its GEMM, but the two need not share).
  g.scheduler = ws.gemm_scheduler + kGemmSchedulerInts;
  g.k_splits = 1;  // K = I: never split (the first GEMM's choice is for K = H)
  g.split_tile_slots = 0;
  g.split_partial = nullptr;
  g.split_count = nullptr;
  bool const pairs = gemm::sm90_fp8_variant_pairs_kb(resolved);
  g.promote_kb = prequant && config.fp8_promote_kb_down == 2 && pairs ? 2 : 1;
  return g;
}

Status run_multikernel_fp8(MoeProblem const& problem, MoeArgs const& args,
                           MoeConfig const& config, MoeWorkspace const& ws,
                           cudaStream_t stream) {
  if (ws.token_scales == nullptr || ws.token_fp8 == nullptr ||
      (problem.kind == ExpertKind::kGatedFFN &&
       (ws.hidden == nullptr || ws.hidden_scales == nullptr || ws.hidden_fp8 == nullptr))) {
    return Status(StatusCode::kInternal, "fp8 forward: workspace carved without the FP8 slices");
  }
  int64_t const T = problem.num_tokens;
  int64_t const H = problem.hidden;
  int64_t const EL = problem.num_local_experts;
  int64_t const rows = config.num_assignments;  // host bound of the dense assignment rows

  FLASHMOE_RETURN_IF_ERROR(zero_gemm_queues(ws, stream));

  // config.bm is kSm90Fp8BlockM: the FP8 GEMM traps on a tile of more rows.
  FLASHMOE_RETURN_IF_ERROR(enqueue_forward_routing(problem, args, config, ws, stream));
  routing::RoutingBuffers const& rb = ws.routing;

  // Per-token scales of every token (the gather reads those of the routed ones); with
  // fp8_prequant also the E4M3 tokens, in the same pass -- for the dense A rows, 16-bit tokens
  // go straight to their slots' dense rows (one pass over the tokens, as the one kernel's
  // dispatch does with the same device function: the same bytes on both paths).
  bool const prequant = config.fp8_prequant;
  gemm::Sm90Fp8GemmParams const g = token_gemm_params(problem, args, config, ws, prequant);
  bool const tokens_16bit =
      problem.token_dtype == DType::kBFloat16 || problem.token_dtype == DType::kFloat16;
  if (g.a_fp8_dense && tokens_16bit) {
    FLASHMOE_RETURN_IF_ERROR(gemm::launch_token_quantize_fp8_to_rows(
        args.tokens, problem.token_dtype, T, H, H, rb.slot_row, problem.routing.top_k,
        ws.token_scales, ws.token_fp8_dense, stream));
  } else if (prequant) {
    FLASHMOE_RETURN_IF_ERROR(gemm::launch_token_quantize_fp8(args.tokens, problem.token_dtype, T,
                                                             H, H, nullptr, ws.token_scales,
                                                             ws.token_fp8, H, stream));
    if (g.a_fp8_dense) {  // the routed rows in dense order: the dense count is read on the device
      FLASHMOE_RETURN_IF_ERROR(gemm::launch_gather_rows_fp8(
          ws.token_fp8, H, rb.row_token, rb.local_offsets + EL, rows, H, ws.token_fp8_dense, H,
          stream));
    }
  } else {
    FLASHMOE_RETURN_IF_ERROR(gemm::launch_token_scales_fp8(args.tokens, problem.token_dtype, T,
                                                           H, H, nullptr, ws.token_scales,
                                                           stream));
  }
  FLASHMOE_RETURN_IF_ERROR(gemm::launch_sm90_fp8_grouped_gemm(g, stream));
  if (problem.kind == ExpertKind::kGatedFFN) {
    int64_t const I = problem.inter_dim;
    // Per-row scales of h: only the rows the GEMM wrote (the dense count, local_offsets[E_local],
    // is read on the device; the rest of the slice is never read).
    int32_t const* const dense_rows = rb.local_offsets + EL;
    if (prequant) {
      FLASHMOE_RETURN_IF_ERROR(gemm::launch_token_quantize_fp8(ws.hidden, DType::kBFloat16, rows,
                                                               I, I, dense_rows, ws.hidden_scales,
                                                               ws.hidden_fp8, I, stream));
    } else {
      FLASHMOE_RETURN_IF_ERROR(gemm::launch_token_scales_fp8(
          ws.hidden, DType::kBFloat16, rows, I, I, dense_rows, ws.hidden_scales, stream));
    }
    FLASHMOE_RETURN_IF_ERROR(gemm::launch_sm90_fp8_grouped_gemm(
        down_gemm_params(problem, args, config, ws, prequant), stream));
  }

  return launch_combine(combine_params(problem, args, ws), problem.token_dtype, stream);
}

}  // namespace flashmoe::fused
