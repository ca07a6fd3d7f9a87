#include "flashmoe/fused_moe.h"

namespace flashmoe {

char const* kernel_path_name(KernelPath path) {
  switch (path) {
    case KernelPath::kNone: return "none";
    case KernelPath::kMultiKernelSm80: return "multikernel-sm80";
  }
  return "unknown";
}

}  // namespace flashmoe
