// flashmoe: the host API of the fused MoE op on the GPU (flashmoe/fused_moe.h).
//
// can_implement -> workspace_size -> run, in the CUTLASS / cuBLASLt style. The only state kept
// between calls is a cache of device properties (compute capability), filled once per device.
#include "flashmoe/fused_moe.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <string>

#include "fused/cuda_check.h"
#include "fused/fused_sm90.h"
#include "fused/fused_sm90_fp8.h"
#include "fused/moe_config.h"
#include "fused/moe_workspace.h"
#include "fused/multikernel_fp8.h"
#include "fused/multikernel_moe.h"
#include "gemm/sm90_grouped_gemm.h"
#include "routing/routing_kernels.h"
#include "common/device_properties.h"
#include "common/env_flag.h"
#include "common/str_cat.h"

namespace flashmoe {
namespace {

using detail::cat;

// The current device and its properties (read once per device), as a Status.
Status current_device_info(int* device, DeviceProperties* info) {
  cudaError_t const err = current_device_properties(device, info);
  if (err == cudaErrorInvalidDevice && *device >= kMaxTrackedDevices) {
    return Status::Unsupported(cat("CUDA device ordinal ", *device, " is beyond the ",
                                   kMaxTrackedDevices, " devices this build tracks"));
  }
  FLASHMOE_CUDA_CHECK(err);
  return Status::Ok();
}

// What the bf16/fp16 path (sm_80 kernels) needs beyond validate_problem().
Status check_16bit_support(MoeProblem const& p) {
  if (p.token_dtype != DType::kBFloat16 && p.token_dtype != DType::kFloat16) {
    return Status::Unsupported(cat("the GPU path takes bfloat16 or float16 tokens, got ",
                                   dtype_name(p.token_dtype),
                                   " (float32/float64 run on the CPU reference)"));
  }
  if (p.weight_dtype != p.token_dtype) {
    return Status::Unsupported(cat("expert_weights must have the tokens' dtype (",
                                   dtype_name(p.token_dtype), ") on the GPU path, got ",
                                   dtype_name(p.weight_dtype)));
  }
  if (p.precision == Precision::kBF16 && p.token_dtype != DType::kBFloat16) {
    return Status::Unsupported(cat("precision=\"bf16\" on the GPU needs bfloat16 tokens, got ",
                                   dtype_name(p.token_dtype), "; use precision=\"auto\""));
  }
  // 16-byte cp.async rows: every row length must be a multiple of 8 elements.
  if (p.hidden % 8 != 0) {
    return Status::Unsupported(
        cat("the GPU path needs the hidden size H to be a multiple of 8, got ", p.hidden));
  }
  if (p.kind == ExpertKind::kLinear && p.out_dim % 8 != 0) {
    return Status::Unsupported(cat(
        "the GPU path needs the expert output dimension D to be a multiple of 8, got ", p.out_dim));
  }
  if (p.kind == ExpertKind::kGatedFFN && p.inter_dim % 8 != 0) {
    return Status::Unsupported(cat(
        "the GPU path needs the intermediate dimension I to be a multiple of 8, got ",
        p.inter_dim));
  }
  return Status::Ok();
}

// Everything the GPU paths need beyond validate_problem(), decided from the problem alone.
Status check_gpu_support(MoeProblem const& p) {
  if (fused::is_fp8_problem(p)) {
    FLASHMOE_RETURN_IF_ERROR(fused::check_fp8_problem(p));
  } else {
    FLASHMOE_RETURN_IF_ERROR(check_16bit_support(p));
  }
  if (!p.prerouted && routing::topk_items_per_thread(p.num_experts) == 0) {
    return Status::Unsupported(cat("the GPU routing takes at most ",
                                   routing::kMaxRoutingExperts,
                                   " experts (routing_weights columns), got ", p.num_experts));
  }
  int64_t const int_max = 2147483647;
  int64_t const cols = p.kind == ExpertKind::kLinear ? p.out_dim : 2 * p.inter_dim;
  if (p.num_tokens * p.routing.top_k > int_max || p.hidden > int_max || cols > int_max ||
      p.num_experts > int_max || p.num_local_experts > int_max) {
    return Status::Unsupported("the GPU path needs T * top_k, H, D (or 2 * I) and E below 2^31");
  }
  return Status::Ok();
}

Status check_pointer(void const* ptr, char const* name, bool aligned16) {
  if (ptr == nullptr) return Status::Invalid(cat(name, " must not be null"));
  if (aligned16 && reinterpret_cast<std::uintptr_t>(ptr) % 16 != 0) {
    return Status::Invalid(cat(name, " must be 16-byte aligned on the GPU path"));
  }
  return Status::Ok();
}

Status check_args(MoeProblem const& p, MoeArgs const& a) {
  FLASHMOE_RETURN_IF_ERROR(check_pointer(a.tokens, "tokens", true));
  FLASHMOE_RETURN_IF_ERROR(check_pointer(a.w1, "expert_weights", true));
  if (p.kind == ExpertKind::kGatedFFN) {
    FLASHMOE_RETURN_IF_ERROR(check_pointer(a.w2, "expert_weights (w_down)", true));
  }
  if (p.weights_prepared) {
    FLASHMOE_RETURN_IF_ERROR(check_pointer(a.w1_scale, "expert_weights scales (w1_scale)", false));
    if (p.kind == ExpertKind::kGatedFFN) {
      FLASHMOE_RETURN_IF_ERROR(
          check_pointer(a.w2_scale, "expert_weights scales of w_down (w2_scale)", false));
    }
  }
  FLASHMOE_RETURN_IF_ERROR(check_pointer(a.out, "out", true));
  if (p.prerouted) {
    FLASHMOE_RETURN_IF_ERROR(check_pointer(a.topk_ids_in, "topk_ids", false));
    FLASHMOE_RETURN_IF_ERROR(check_pointer(a.topk_weights_in, "topk_weights", false));
  } else {
    FLASHMOE_RETURN_IF_ERROR(check_pointer(a.routing_weights, "routing_weights", false));
  }
  if (p.has_correction_bias) {
    FLASHMOE_RETURN_IF_ERROR(check_pointer(a.correction_bias, "correction_bias", false));
  }
  if (p.has_expert_map) {
    FLASHMOE_RETURN_IF_ERROR(check_pointer(a.expert_map, "expert_map", false));
  }
  return Status::Ok();
}

// The kernel configuration of a supported problem on `path`: the FP8 path has its own (64-row
// tiles); the bf16/fp16 paths differ in the GEMM kernel family.
fused::MoeConfig choose_config(MoeProblem const& problem, KernelPath path) {
  if (path == KernelPath::kMultiKernelSm90Fp8 || path == KernelPath::kFusedSm90Fp8) {
    return fused::choose_fp8_config(problem);
  }
  return fused::choose_moe_config(
      problem, path == KernelPath::kMultiKernelSm90 || path == KernelPath::kFusedSm90);
}

// The paths a problem may take on some device (the workspace is sized for the largest).
std::array<KernelPath, 2> candidate_paths(MoeProblem const& problem) {
  if (fused::is_fp8_problem(problem)) {
    return {KernelPath::kMultiKernelSm90Fp8, KernelPath::kMultiKernelSm80W8A16};
  }
  return {KernelPath::kMultiKernelSm80, KernelPath::kMultiKernelSm90};
}

// FLASHMOE_GEMM=sm80: the sm_80 GEMMs even where the sm_90a ones could run.
bool sm80_gemm_forced() {
  return detail::env_is("FLASHMOE_GEMM", "sm80");
}

bool print_config_requested() {
  return detail::env_is("FLASHMOE_PRINT_CONFIG", "1");
}

}  // namespace

Status fused_moe_can_implement(MoeProblem const& problem, KernelPath* path) {
  if (path != nullptr) *path = KernelPath::kNone;
  FLASHMOE_RETURN_IF_ERROR(validate_problem(problem));
  FLASHMOE_RETURN_IF_ERROR(check_gpu_support(problem));
  int device = 0;
  DeviceProperties info;
  FLASHMOE_RETURN_IF_ERROR(current_device_info(&device, &info));
  // The sm_90a kernels run on 9.0 only, and FLASHMOE_GEMM=sm80 keeps them off there too.
  bool const sm90a = info.major == 9 && info.minor == 0 && !sm80_gemm_forced();
  if (fused::is_fp8_problem(problem)) {
    FLASHMOE_RETURN_IF_ERROR(fused::check_fp8_device(device, info.major, info.minor));
    if (path != nullptr) {
      *path = !sm90a ? KernelPath::kMultiKernelSm80W8A16
              : fused::one_kernel_unsupported_reason(problem).empty() &&
                      fused::one_kernel_preferred()
                  ? KernelPath::kFusedSm90Fp8
                  : KernelPath::kMultiKernelSm90Fp8;
    }
    return Status::Ok();
  }
  if (info.major < 8) {
    return Status::Unsupported(cat("the GPU path needs compute capability >= 8.0 (mma.sync "
                                   "bf16, cp.async); device ",
                                   device, " is ", info.major, ".", info.minor));
  }
  if (info.major > 9) {  // neither cubin (sm_80, sm_90a) loads there: say so before a launch fails
    return Status::Unsupported(cat("this build holds GPU code for compute capability 8.x and 9.0 "
                                   "(sm_80, sm_90a); device ",
                                   device, " is ", info.major, ".", info.minor));
  }
  bool const sm90 = sm90a && gemm::sm90_grouped_gemm_built();
  if (path != nullptr) {
    *path = !sm90 ? KernelPath::kMultiKernelSm80
            : fused::one_kernel_unsupported_reason(problem).empty() &&
                    fused::one_kernel_preferred()
                ? KernelPath::kFusedSm90
                : KernelPath::kMultiKernelSm90;
  }
  return Status::Ok();
}

std::size_t fused_moe_workspace_size(MoeProblem const& problem) {
  if (!validate_problem(problem).ok() || !check_gpu_support(problem).ok()) return 0;
  if (problem.num_tokens == 0) return 0;
  // Without asking the device: the larger of the bf16/fp16 paths' needs (their tile lists
  // differ), so one buffer serves whichever path runs.
  std::size_t bytes = 0;
  for (KernelPath path : candidate_paths(problem)) {
    fused::MoeWorkspace ws;
    if (!fused::carve_moe_workspace(problem, choose_config(problem, path), nullptr, &ws).ok()) {
      return 0;
    }
    bytes = std::max(bytes, ws.bytes);
  }
  return bytes;
}

Status fused_moe_run(MoeProblem const& problem, MoeArgs const& args, void* workspace,
                     std::size_t workspace_bytes, cudaStream_t stream, KernelPath* path) {
  KernelPath chosen = KernelPath::kNone;
  if (path != nullptr) *path = KernelPath::kNone;
  FLASHMOE_RETURN_IF_ERROR(fused_moe_can_implement(problem, &chosen));
  if (problem.num_tokens == 0) {
    if (path != nullptr) *path = chosen;
    return Status::Ok();  // nothing to compute, nothing written
  }
  FLASHMOE_RETURN_IF_ERROR(check_args(problem, args));

  fused::MoeConfig const config = choose_config(problem, chosen);
  fused::MoeWorkspace sizes;
  FLASHMOE_RETURN_IF_ERROR(fused::carve_moe_workspace(problem, config, nullptr, &sizes));
  if (workspace == nullptr || workspace_bytes < sizes.bytes) {
    return Status::Invalid(cat("workspace must hold at least ", sizes.bytes,
                               " bytes (fused_moe_workspace_size), got ",
                               workspace == nullptr ? 0 : workspace_bytes,
                               workspace == nullptr ? " (null)" : ""));
  }
  fused::MoeWorkspace ws;
  FLASHMOE_RETURN_IF_ERROR(fused::carve_moe_workspace(problem, config, workspace, &ws));
  bool const fused_fp8 = chosen == KernelPath::kFusedSm90Fp8;
  // (W8A16 runs the 16-bit forward.)
  bool const fp8 = chosen == KernelPath::kMultiKernelSm90Fp8 || fused_fp8;
  if (print_config_requested()) {
    std::string line = fp8 ? fused::describe_fp8_config(problem, config, chosen)
                           : fused::describe_moe_config(problem, config, chosen);
    if (fused_fp8 || chosen == KernelPath::kFusedSm90) {
      line += " [fused: one kernel]";
    } else if (chosen == KernelPath::kMultiKernelSm90Fp8 ||
               chosen == KernelPath::kMultiKernelSm90) {
      std::string const why = fused::one_kernel_unsupported_reason(problem);
      line += cat(" [not fused: ", why.empty() ? "FLASHMOE_FUSED=0" : why, "]");
    }
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  if (fused_fp8) {
    FLASHMOE_RETURN_IF_ERROR(fused::run_fused_fp8(problem, args, config, ws, stream));
  } else if (chosen == KernelPath::kFusedSm90) {
    FLASHMOE_RETURN_IF_ERROR(fused::run_fused_sm90(problem, args, config, ws, stream));
  } else if (fp8) {
    FLASHMOE_RETURN_IF_ERROR(fused::run_multikernel_fp8(problem, args, config, ws, stream));
  } else {
    FLASHMOE_RETURN_IF_ERROR(fused::run_multikernel_moe(problem, args, config, ws, stream));
  }
  if (path != nullptr) *path = chosen;
  return Status::Ok();
}

}  // namespace flashmoe
