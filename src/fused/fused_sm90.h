// flashmoe (internal): the single-launch bf16/fp16 forward on Hopper (KernelPath::kFusedSm90) --
// routing, the sm_90a expert GEMM(s) and the combine in one persistent kernel (fused_sm90.cu).
//
// What it runs (one_kernel_unsupported_reason() says why not, and kMultiKernelSm90 runs instead,
// reported as such): bf16/fp16 tokens and weights in either layout, linear and gated-FFN experts,
// at most 256 experts in the routing space and 256 local experts, every routing option.
// FLASHMOE_FUSED=0 turns it off (one_kernel_preferred). The output is bit for bit the
// multi-kernel sm_90a path's: the same routing code, the same GEMM body (sm90_gemm_body), the
// same combine.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "flashmoe/options.h"
#include "flashmoe/types.h"
#include "fused/moe_config.h"
#include "fused/moe_workspace.h"

namespace flashmoe::fused {

/// Enqueues the workspace's counter reset (one memset) and the fused kernel on `stream`.
/// `config` is choose_moe_config(problem, true)'s; `ws` carved with it.
Status run_fused_sm90(MoeProblem const& problem, MoeArgs const& args, MoeConfig const& config,
                      MoeWorkspace const& ws, cudaStream_t stream);

}  // namespace flashmoe::fused
