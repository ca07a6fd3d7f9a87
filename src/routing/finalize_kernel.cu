// flashmoe: the end of the routing, per assignment: the user's optional outputs (topk_ids,
// topk_weights, the dropped/rerouted counts) and the dispatch key -- the local expert that
// computes the assignment (expert_map applied), or E_local when none does (dropped, pre-routed
// -1, or an expert that is not local).
#include <cub/block/block_reduce.cuh>

#include <algorithm>

#include "fused/cuda_check.h"
#include "routing/routing_kernels.h"

namespace flashmoe::routing {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    moe_finalize_kernel(RoutingParams const rp, RoutingBuffers const rb, RoutingOutputs const out) {
  using Reduce = cub::BlockReduce<int, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  int64_t const n = static_cast<int64_t>(rp.num_tokens) * rp.top_k;
  int dropped = 0;
  int rerouted = 0;
  for (int64_t a = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; a < n;
       a += static_cast<int64_t>(gridDim.x) * kThreads) {
    int32_t const e = rb.final_ids[a];
    int32_t const o = rb.orig_ids[a];
    if (out.topk_ids != nullptr) out.topk_ids[a] = e;
    if (out.topk_weights != nullptr) out.topk_weights[a] = e >= 0 ? rb.weights[a] : 0.0f;
    dropped += (o >= 0 && e < 0) ? 1 : 0;
    rerouted += (e >= 0 && e != o) ? 1 : 0;
    int32_t local = e;
    if (e >= 0 && rp.expert_map != nullptr) local = rp.expert_map[e];
    bool const computed = local >= 0 && local < rp.num_local_experts;
    rb.local_keys[a] = computed ? static_cast<uint32_t>(local)
                                : static_cast<uint32_t>(rp.num_local_experts);
    rb.iota[a] = static_cast<int32_t>(a);
  }
  if (out.drop_reroute_counts != nullptr) {
    // Integer sums: the totals do not depend on the order the blocks add them.
    int const block_dropped = Reduce(tmp).Sum(dropped);
    __syncthreads();
    int const block_rerouted = Reduce(tmp).Sum(rerouted);
    if (threadIdx.x == 0) {
      auto* counts = reinterpret_cast<unsigned long long*>(out.drop_reroute_counts);
      if (block_dropped != 0) atomicAdd(&counts[0], static_cast<unsigned long long>(block_dropped));
      if (block_rerouted != 0) atomicAdd(&counts[1], static_cast<unsigned long long>(block_rerouted));
    }
  }
}

}  // namespace

Status launch_finalize(RoutingParams const& rp, RoutingBuffers const& rb,
                       RoutingOutputs const& out, cudaStream_t stream) {
  int64_t const n = static_cast<int64_t>(rp.num_tokens) * rp.top_k;
  unsigned const blocks = static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
  moe_finalize_kernel<<<blocks, kThreads, 0, stream>>>(rp, rb, out);
  FLASHMOE_LAUNCH_CHECK("moe_finalize_kernel");
  return Status::Ok();
}

}  // namespace flashmoe::routing
