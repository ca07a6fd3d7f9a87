// flashmoe (internal): the single-launch FP8 forward on Hopper (KernelPath::kFusedSm90Fp8) --
// routing, activation quantization, the expert GEMM and the combine in one persistent kernel
// (fused_sm90_fp8.cu says how).
//
// What it runs (one_kernel_unsupported_reason() says why not, and the multi-kernel FP8 path runs
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
#include "fused/fused_limits.h"
#include "fused/moe_config.h"
#include "fused/moe_workspace.h"

namespace flashmoe::fused {


/// Enqueues the workspace's counter reset (one memset) and the fused kernel on `stream`.
/// `config` is choose_fp8_config's; `ws` carved with it.
Status run_fused_fp8(MoeProblem const& problem, MoeArgs const& args, MoeConfig const& config,
                     MoeWorkspace const& ws, cudaStream_t stream);

}  // namespace flashmoe::fused
