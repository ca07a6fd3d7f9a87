// flashmoe (internal): the multi-kernel bf16/fp16 forward (KernelPath::kMultiKernelSm80 and
// kMultiKernelSm90): routing kernels -> gathered grouped GEMM(s) -> combine, all on one stream.
// The GEMMs are the sm_80 mma.sync kernel or, with config.sm90, the sm_90a wgmma one.
#pragma once

#include <cuda_runtime_api.h>

#include "flashmoe/options.h"
#include "flashmoe/types.h"
#include "fused/combine.h"
#include "fused/moe_config.h"
#include "fused/moe_workspace.h"
#include "gemm/grouped_gemm_args.h"
#include "routing/routing_params.h"

namespace flashmoe::fused {

/// The routing kernels' parameters for (problem, args), with the GEMM tile of `config`
/// (shared by the sm_80 and the sm_90 FP8 forwards).
routing::RoutingParams make_routing_params(MoeProblem const& problem, MoeArgs const& args,
                                           MoeConfig const& config);

/// Enqueues the routing kernels of the multi-kernel forwards (bf16/fp16 and FP8): ids, weights,
/// the dense rows and the tile list into ws.routing, the caller's optional routing outputs (args)
/// written as well.
Status enqueue_forward_routing(MoeProblem const& problem, MoeArgs const& args,
                               MoeConfig const& config, MoeWorkspace const& ws,
                               cudaStream_t stream);

/// The first grouped GEMM of the 16-bit forwards (also W8A16): gathered token rows times W1 into
/// ws.expert_out (linear) or, gate-up, into ws.hidden (gated FFN).
gemm::GroupedGemmArgs first_gemm_args(MoeProblem const& problem, MoeArgs const& args,
                                       MoeConfig const& config, MoeWorkspace const& ws);

/// The gated FFN's down projection: the dense rows of ws.hidden times W2 into ws.expert_out.
gemm::GroupedGemmArgs down_gemm_args(MoeProblem const& problem, MoeArgs const& args,
                                      MoeConfig const& config, MoeWorkspace const& ws);

/// The combine of ws.expert_out into args.out over the routing's slot rows and weights (every
/// forward's last step).
CombineParams combine_params(MoeProblem const& problem, MoeArgs const& args,
                             MoeWorkspace const& ws);

/// Enqueues the forward. The problem is validated and supported (fused_moe_can_implement),
/// T > 0, and `ws` was carved for (problem, config) from the caller's workspace.
Status run_multikernel_moe(MoeProblem const& problem, MoeArgs const& args,
                           MoeConfig const& config, MoeWorkspace const& ws, cudaStream_t stream);

}  // namespace flashmoe::fused
