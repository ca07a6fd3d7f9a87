// flashmoe: capacity (routing.h step 6): after the sorts, position i of the list holds the
// assignment of rank i - start[e] at its expert e (priority descending, then token, then slot);
// ranks >= cap are over capacity: dropped, or pending for the reroute rounds.
#include <algorithm>

#include "fused/cuda_check.h"
#include "routing/routing_kernels.h"

namespace flashmoe::routing {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    moe_capacity_mark_kernel(RoutingParams const rp, RoutingBuffers const rb) {
  int64_t const n = static_cast<int64_t>(rp.num_tokens) * rp.top_k;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    uint32_t const e = rb.expert_keys_sorted[i];
    if (e >= static_cast<uint32_t>(rp.num_experts)) continue;  // no expert
    if (i - rb.expert_starts[e] < rp.capacity) continue;        // kept
    int32_t const a = rb.perm_expert[i];
    rb.final_ids[a] = -1;
    if (rp.reroute) rb.pending[a] = 1;
  }
}

}  // namespace

Status launch_capacity_mark(RoutingParams const& rp, RoutingBuffers const& rb,
                            cudaStream_t stream) {
  int64_t const n = static_cast<int64_t>(rp.num_tokens) * rp.top_k;
  unsigned const blocks = static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
  moe_capacity_mark_kernel<<<blocks, kThreads, 0, stream>>>(rp, rb);
  FLASHMOE_LAUNCH_CHECK("moe_capacity_mark_kernel");
  return Status::Ok();
}

}  // namespace flashmoe::routing
