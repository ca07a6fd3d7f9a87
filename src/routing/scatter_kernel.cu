// flashmoe: the stable scatter of the dispatch. assign_sorted is the list of all assignments
// sorted (stably) by local expert, so its first `total` entries are the computed ones, each
// expert's a contiguous block ordered by token then slot; dense row i gets token a / k, and each
// assignment learns its row (-1: not computed here) for the combine.
#include <algorithm>

#include "fused/cuda_check.h"
#include "routing/routing_kernels.h"

namespace flashmoe::routing {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    moe_scatter_kernel(RoutingParams const rp, RoutingBuffers const rb) {
  int64_t const n = static_cast<int64_t>(rp.num_tokens) * rp.top_k;
  int32_t const total = rb.local_offsets[rp.num_local_experts];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    int32_t const a = rb.assign_sorted[i];
    if (i < total) {
      rb.row_token[i] = a / rp.top_k;
      rb.slot_row[a] = static_cast<int32_t>(i);
    } else {
      rb.slot_row[a] = -1;
    }
  }
}

}  // namespace

Status launch_scatter(RoutingParams const& rp, RoutingBuffers const& rb, cudaStream_t stream) {
  int64_t const n = static_cast<int64_t>(rp.num_tokens) * rp.top_k;
  unsigned const blocks = static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
  moe_scatter_kernel<<<blocks, kThreads, 0, stream>>>(rp, rb);
  FLASHMOE_LAUNCH_CHECK("moe_scatter_kernel");
  return Status::Ok();
}

}  // namespace flashmoe::routing
