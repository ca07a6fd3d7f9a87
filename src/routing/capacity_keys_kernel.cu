// flashmoe: capacity (routing.h step 6), between the two stable radix sorts: the expert key of
// each assignment in priority order, so the second sort (by expert) yields every expert's
// assignments ordered by priority descending, then token, then slot.
#include <algorithm>

#include "fused/cuda_check.h"
#include "routing/routing_kernels.h"

namespace flashmoe::routing {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    moe_capacity_keys_kernel(RoutingParams const rp, RoutingBuffers const rb) {
  int64_t const n = static_cast<int64_t>(rp.num_tokens) * rp.top_k;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    int32_t const e = rb.orig_ids[rb.perm_prio[i]];
    rb.expert_keys[i] = e >= 0 ? static_cast<uint32_t>(e) : static_cast<uint32_t>(rp.num_experts);
  }
}

}  // namespace

Status launch_capacity_expert_keys(RoutingParams const& rp, RoutingBuffers const& rb,
                                   cudaStream_t stream) {
  int64_t const n = static_cast<int64_t>(rp.num_tokens) * rp.top_k;
  unsigned const blocks = static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
  moe_capacity_keys_kernel<<<blocks, kThreads, 0, stream>>>(rp, rb);
  FLASHMOE_LAUNCH_CHECK("moe_capacity_keys_kernel");
  return Status::Ok();
}

}  // namespace flashmoe::routing
