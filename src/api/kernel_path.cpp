#include "flashmoe/fused_moe.h"

namespace flashmoe {

char const* kernel_path_name(KernelPath path) {
  switch (path) {
    case KernelPath::kNone: return "none";
    case KernelPath::kMultiKernelSm80: return "multikernel-sm80";
    case KernelPath::kMultiKernelSm90Fp8: return "multikernel-sm90-fp8";
    case KernelPath::kMultiKernelSm90: return "multikernel-sm90";
    case KernelPath::kMultiKernelSm80W8A16: return "multikernel-sm80-w8a16";
    case KernelPath::kFusedSm90Fp8: return "fused-sm90-fp8";
    case KernelPath::kFusedSm90: return "fused-sm90";
  }
  return "unknown";
}

}  // namespace flashmoe
