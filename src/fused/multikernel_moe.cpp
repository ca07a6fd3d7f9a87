// flashmoe: the multi-kernel forward (multikernel_moe.h).
#include "fused/multikernel_moe.h"

#include "flashmoe/fused_moe.h"
#include "fused/combine.h"
#include "gemm/grouped_gemm_args.h"
#include "gemm/quantize_weights_fp8.h"
#include "gemm/sm90_grouped_gemm.h"
#include "routing/routing_kernels.h"

namespace flashmoe::fused {

routing::RoutingParams make_routing_params(MoeProblem const& problem, MoeArgs const& args,
                                           MoeConfig const& config) {
  RoutingOptions const& r = problem.routing;
  bool const capacity = r.capacity_factor > 0.0;

  routing::RoutingParams rp;
  rp.num_tokens = static_cast<int32_t>(problem.num_tokens);
  rp.num_experts = static_cast<int32_t>(problem.num_experts);
  rp.num_local_experts = static_cast<int32_t>(problem.num_local_experts);
  rp.top_k = r.top_k;
  rp.scoring = static_cast<int32_t>(r.scoring);
  rp.score_dtype = static_cast<int32_t>(problem.score_dtype);
  rp.n_group = r.n_group;
  rp.topk_group = r.topk_group;
  rp.renormalize = r.renormalize;
  rp.has_bias = problem.has_correction_bias;
  rp.prerouted = problem.prerouted;
  rp.reroute = capacity && r.overflow == Overflow::kReroute;
  rp.temperature = r.temperature;
  rp.routed_scaling_factor = r.routed_scaling_factor;
  rp.capacity = capacity ? expert_capacity(problem) : 0;
  rp.tile_m = config.bm;
  rp.num_tile_slots = static_cast<int32_t>(config.num_tile_slots);
  rp.routing_weights = args.routing_weights;
  rp.correction_bias = problem.has_correction_bias ? args.correction_bias : nullptr;
  rp.topk_ids_in = args.topk_ids_in;
  rp.topk_weights_in = args.topk_weights_in;
  rp.expert_map = problem.has_expert_map ? args.expert_map : nullptr;
  return rp;
}

namespace {

// One grouped GEMM on the kernel family of `config` (queue: the sm_90a kernel's work queue).
Status launch_gemm(gemm::GroupedGemmArgs const& g, MoeProblem const& problem,
                   MoeConfig const& config, bool gate_up, int32_t* queue, cudaStream_t stream) {
  if (config.sm90) {
    return gemm::launch_sm90_grouped_gemm(g, problem.token_dtype, problem.layout, gate_up, queue,
                                          stream);
  }
  if (problem.weights_prepared) {  // W8A16: E4M3 weights dequantized inside the sm_80 GEMM
    return gemm::launch_sm80_grouped_gemm_w8(g, problem.token_dtype, config.tile, gate_up, stream);
  }
  return gemm::launch_sm80_grouped_gemm(g, problem.token_dtype, config.tile, problem.layout,
                                        gate_up, stream);
}

}  // namespace

Status enqueue_forward_routing(MoeProblem const& problem, MoeArgs const& args,
                               MoeConfig const& config, MoeWorkspace const& ws,
                               cudaStream_t stream) {
  routing::RoutingOutputs out;
  out.topk_ids = args.topk_ids_out;
  out.topk_weights = args.topk_weights_out;
  out.expert_load = args.expert_load;
  out.drop_reroute_counts = args.drop_reroute_counts;
  return routing::enqueue_routing(make_routing_params(problem, args, config), ws.routing, out,
                                  stream);
}

gemm::GroupedGemmArgs first_gemm_args(MoeProblem const& problem, MoeArgs const& args,
                                       MoeConfig const& config, MoeWorkspace const& ws) {
  gemm::GroupedGemmArgs g;
  g.tiles = ws.routing.tiles;
  g.num_tile_slots = static_cast<int32_t>(config.num_tile_slots);
  g.activation = problem.activation;
  g.num_experts = problem.num_local_experts;
  // W8A16 (KernelPath::kMultiKernelSm80W8A16): prepared E4M3 weights and their scales.
  bool const w8 = problem.weights_prepared;
  g.w_scales = w8 ? args.w1_scale : nullptr;
  g.w_scale_block = problem.weight_scale == WeightScale::kBlock128 ? 1 : 0;
  g.a = args.tokens;
  g.a_rows = ws.routing.row_token;
  g.b = args.w1;
  g.k = problem.hidden;
  if (problem.kind == ExpertKind::kLinear) {
    // y[row] = x[token(row)] @ W[expert(row)]
    g.c = ws.expert_out;
    g.n_out = problem.out_dim;
    g.b_cols = problem.out_dim;
  } else {
    // hidden[row] = act(x Wg) * (x Wu)
    g.c = ws.hidden;
    g.n_out = problem.inter_dim;
    g.b_cols = w8 ? gemm::fp8_prepared_rows(2 * problem.inter_dim, true) : 2 * problem.inter_dim;
  }
  return g;
}

gemm::GroupedGemmArgs down_gemm_args(MoeProblem const& problem, MoeArgs const& args,
                                      MoeConfig const& config, MoeWorkspace const& ws) {
  // y[row] = hidden[row] @ Wd[expert(row)]
  gemm::GroupedGemmArgs g = first_gemm_args(problem, args, config, ws);
  g.a = ws.hidden;
  g.a_rows = nullptr;  // row r of `hidden` is assignment row r: no gather
  g.b = args.w2;
  g.w_scales = problem.weights_prepared ? args.w2_scale : nullptr;
  g.c = ws.expert_out;
  g.k = problem.inter_dim;
  g.n_out = problem.hidden;
  g.b_cols = problem.hidden;
  return g;
}

Status run_multikernel_moe(MoeProblem const& problem, MoeArgs const& args,
                           MoeConfig const& config, MoeWorkspace const& ws,
                           cudaStream_t stream) {
  if (config.sm90) FLASHMOE_RETURN_IF_ERROR(zero_gemm_queues(ws, stream));
  FLASHMOE_RETURN_IF_ERROR(enqueue_forward_routing(problem, args, config, ws, stream));

  int32_t* const queue1 = ws.gemm_scheduler;
  int32_t* const queue2 = ws.gemm_scheduler != nullptr ? ws.gemm_scheduler + kGemmSchedulerInts
                                                       : nullptr;
  bool const ffn = problem.kind == ExpertKind::kGatedFFN;
  FLASHMOE_RETURN_IF_ERROR(launch_gemm(first_gemm_args(problem, args, config, ws), problem,
                                       config, /*gate_up=*/ffn, queue1, stream));
  if (ffn) {
    FLASHMOE_RETURN_IF_ERROR(launch_gemm(down_gemm_args(problem, args, config, ws), problem,
                                         config, /*gate_up=*/false, queue2, stream));
  }
  return launch_combine(combine_params(problem, args, ws), problem.token_dtype, stream);
}

CombineParams combine_params(MoeProblem const& problem, MoeArgs const& args,
                             MoeWorkspace const& ws) {
  CombineParams cp;
  cp.y = ws.expert_out;
  cp.slot_row = ws.routing.slot_row;
  cp.weights = ws.routing.weights;
  cp.out = args.out;
  cp.num_tokens = problem.num_tokens;
  cp.top_k = problem.routing.top_k;
  cp.cols = problem.output_dim();
  return cp;
}

}  // namespace flashmoe::fused
