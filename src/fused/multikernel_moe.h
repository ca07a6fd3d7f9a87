// flashmoe (internal): the multi-kernel forward (KernelPath::kMultiKernelSm80):
//   routing kernels -> sm_80 gathered grouped GEMM(s) -> combine, all on one stream.
#pragma once

#include <cuda_runtime_api.h>

#include "flashmoe/options.h"
#include "flashmoe/types.h"
#include "fused/moe_config.h"
#include "fused/moe_workspace.h"

namespace flashmoe::fused {

/// Enqueues the forward. The problem is validated and supported (fused_moe_can_implement),
/// T > 0, and `ws` was carved for (problem, config) from the caller's workspace.
Status run_multikernel_moe(MoeProblem const& problem, MoeArgs const& args,
                           MoeConfig const& config, MoeWorkspace const& ws, cudaStream_t stream);

}  // namespace flashmoe::fused
