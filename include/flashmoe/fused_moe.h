// flashmoe: the fused MoE op on the GPU -- the host API.
//
// Contract (CUTLASS / cuBLASLt style):
//   1. fill a MoeProblem; validate_problem() and fused_moe_can_implement() say whether it runs;
//   2. fused_moe_workspace_size() gives the bytes of device workspace a run needs;
//   3. fused_moe_run() enqueues the forward on the caller's stream, with the caller's device
//      arrays and workspace. It never allocates and never synchronizes the host, so it can be
//      captured in a CUDA graph. It computes the same function as reference_fused_moe()
//      (flashmoe/reference.h) up to the rounding of the path that ran.
// precision kFP8 runs with weights prepared once by prepare_experts_fp8() (flashmoe/quantization.h;
// MoeProblem::weights_prepared): on a compute capability 9.0 device as W8A8 (E4M3 wgmma), on 8.x
// as W8A16 (the weights dequantized inside the sm_80 GEMM). Raw weights with kFP8 are refused
// (kNotSupported), never re-quantized per call.
#pragma once

#include <cstddef>

#include "flashmoe/options.h"
#include "flashmoe/types.h"

typedef struct CUstream_st* cudaStream_t;

namespace flashmoe {

/// Which implementation a run used (reported to the user; never a silent fallback).
enum class KernelPath : int {
  kNone = 0,
  kMultiKernelSm80 = 1,  // routing kernels + sm_80 mma.sync gathered GEMMs + combine kernel
  // precision kFP8 with prepared weights on a compute capability 9.0 device: routing kernels
  // (64-row tiles) + token amax pre-pass + sm_90a FP8 (wgmma) gathered GEMM(s) + combine kernel
  kMultiKernelSm90Fp8 = 2,
  // bf16/fp16 on a compute capability 9.0 device with this build's sm_90a code: routing kernels
  // (128-row tiles) + sm_90a TMA/wgmma gathered GEMM(s) + combine kernel. The environment
  // variable FLASHMOE_GEMM=sm80 selects kMultiKernelSm80 there instead (for comparisons).
  kMultiKernelSm90 = 3,
  // precision kFP8 with prepared weights on a compute capability 8.x device (or on 9.0 with
  // FLASHMOE_GEMM=sm80): routing kernels + sm_80 mma.sync GEMMs that dequantize the E4M3 weights
  // to the tokens' type inside the kernel (W8A16: activations stay bf16/fp16) + combine kernel.
  kMultiKernelSm80W8A16 = 4,
  // precision kFP8 with prepared weights, linear or gated-FFN experts, any routing option
  // (capacity included), E <= 256, on a compute capability 9.0 device: ONE persistent kernel
  // (routing, activation quantization, the sm_90a FP8 GEMM(s) and the combine; launched
  // cooperatively after one memset of its counters, or alone with MoeArgs::workspace_zeroed),
  // bit for bit the kMultiKernelSm90Fp8 output. FLASHMOE_FUSED=0 selects
  // kMultiKernelSm90Fp8 instead.
  kFusedSm90Fp8 = 5,
  // bf16/fp16, linear or gated-FFN experts, any routing option, E <= 256, on a compute
  // capability 9.0 device with this build's sm_90a code: ONE persistent kernel (routing, the
  // sm_90a wgmma GEMM(s) and the combine; launched cooperatively after one memset of its
  // counters, or alone with MoeArgs::workspace_zeroed), bit for bit the kMultiKernelSm90 output. FLASHMOE_FUSED=0 selects
  // kMultiKernelSm90 instead.
  kFusedSm90 = 6,
};

char const* kernel_path_name(KernelPath path);

/// Whether this build and the current device can run `problem`; names the reason if not.
Status fused_moe_can_implement(MoeProblem const& problem, KernelPath* path);

/// Bytes of device workspace fused_moe_run needs for `problem` (256-byte aligned slices).
std::size_t fused_moe_workspace_size(MoeProblem const& problem);

/// Enqueues the forward on `stream`. `args` holds device pointers; `workspace` at least
/// fused_moe_workspace_size(problem) bytes of device memory. Data-dependent errors (non-finite
/// scores) cannot be reported without a host sync: such scores are treated as -inf.
Status fused_moe_run(MoeProblem const& problem, MoeArgs const& args, void* workspace,
                     std::size_t workspace_bytes, cudaStream_t stream, KernelPath* path);

}  // namespace flashmoe
