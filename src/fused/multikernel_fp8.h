// flashmoe (internal): the FP8 forward on Hopper (KernelPath::kMultiKernelSm90Fp8):
//
//   routing kernels (64-row M tiles)  ->  per-token amax pre-pass (token_scales.h)
//   linear:    sm_90a FP8 GEMM  y[row] = x[token(row)] @ W8[e]                (expert_out rows)
//   gated FFN: sm_90a FP8 GEMM  h[row] = act(x Wg8) * (x Wu8)   (bf16 hidden rows)
//              -> amax pre-pass over the hidden rows (row count read on the device)
//              -> sm_90a FP8 GEMM  y[row] = h[row] @ Wd8                       (expert_out rows)
//   -> combine (the sm_80 path's deterministic combine kernel, expert_out in the tokens' dtype)
//
// All on the caller's stream, no host synchronisation, no allocation: graph-capturable. The
// GEMMs' work-queue counters live in the workspace and are zeroed by a cudaMemsetAsync at the
// start of every run (the workspace may be fresh or poisoned).
//
// Weights are prepared once by prepare_experts_fp8() (flashmoe/quantization.h); their layout is
// documented at MoeArgs (flashmoe/options.h) and in gemm/quantize_weights_fp8.h.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "flashmoe/options.h"
#include "flashmoe/types.h"
#include "fused/moe_config.h"
#include "fused/combine.h"
#include "fused/moe_workspace.h"
#include "gemm/sm90_fp8_grouped_gemm.h"

namespace flashmoe::fused {

/// True when `problem` takes the FP8 path (precision kFP8; with raw weights it is refused by
/// check_fp8_problem, never silently run in another precision).
inline bool is_fp8_problem(MoeProblem const& problem) {
  return problem.precision == Precision::kFP8;
}

/// What the FP8 path needs of a validated kFP8 problem, without touching a device
/// (kNotSupported naming the reason): prepared weights, bf16/fp16 tokens, H % 16 == 0, D % 8 == 0
/// (linear), I % 16 == 0 (gated FFN), I % 64 == 0 (gated FFN with block128 scales).
Status check_fp8_problem(MoeProblem const& problem);

/// Whether device `device` of compute capability major.minor runs the FP8 path (9.0 only: the
/// kernel is sm_90a code). kNotSupported naming the device's capability otherwise.
Status check_fp8_device(int device, int major, int minor);

/// The current device's peak HBM bandwidth in GB/s (2 x memory clock x bus width), read once
/// per device; 0 when it cannot be read (no device: host-only runs).
double current_device_hbm_gbps();

/// Whether gated-FFN experts take the dense A rows by default on a card of `hbm_gbps` peak HBM
/// bandwidth (MoeConfig::fp8_a_dense; FLASHMOE_FP8_A_DENSE=0/1 overrides): where the bandwidth
/// leaves the dsv3 forward less bound by HBM, the rows' boxes save more than their copy costs.
bool fp8_ffn_dense_by_default(double hbm_gbps);

/// The FP8 path's configuration: 64-row M tiles (the sm_90a kernel's one tile), the worst-case
/// tile-slot count of the routing's tile list. Separate from choose_moe_config (the sm_80 chooser).
MoeConfig choose_fp8_config(MoeProblem const& problem);

/// One line describing the FP8 run, for FLASHMOE_PRINT_CONFIG=1, naming the path that runs it
/// (multikernel-sm90-fp8 or fused-sm90-fp8: the same GEMM configuration).
std::string describe_fp8_config(MoeProblem const& problem, MoeConfig const& config,
                                KernelPath path);

/// The first GEMM of the FP8 forward (on the tokens: gathered rows, with prequant the E4M3 rows
/// of ws.token_fp8): weights, scales, the first work queue, the configured variant, and the
/// output -- linear experts: ws.expert_out in the tokens' dtype (plain epilogue); gated FFN: the
/// bf16 rows h = act(g) * u in ws.hidden (gate/up epilogue).
gemm::Sm90Fp8GemmParams token_gemm_params(MoeProblem const& problem, MoeArgs const& args,
                                          MoeConfig const& config, MoeWorkspace const& ws,
                                          bool prequant);

/// The gated FFN's down projection: the dense rows of h (E4M3 rows of ws.hidden_fp8 with
/// prequant, else ws.hidden) times W2, into ws.expert_out, on the second work queue.
gemm::Sm90Fp8GemmParams down_gemm_params(MoeProblem const& problem, MoeArgs const& args,
                                         MoeConfig const& config, MoeWorkspace const& ws,
                                         bool prequant);

/// Enqueues the forward. The problem passed fused_moe_can_implement (KernelPath
/// kMultiKernelSm90Fp8), T > 0, the args were checked, and `ws` was carved for
/// (problem, choose_fp8_config(problem)) from the caller's workspace.
Status run_multikernel_fp8(MoeProblem const& problem, MoeArgs const& args,
                           MoeConfig const& config, MoeWorkspace const& ws, cudaStream_t stream);

}  // namespace flashmoe::fused
