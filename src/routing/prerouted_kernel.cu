// flashmoe: the pre-routed entry (routing.h step 5, second paragraph): slot j of token t has
// expert topk_ids_in[t][j] and weight topk_weights_in[t][j], used as given
// (prerouted_assignment, routing_device.cuh).
#include <algorithm>

#include "fused/cuda_check.h"
#include "routing/routing_device.cuh"
#include "routing/routing_kernels.h"

namespace flashmoe::routing {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    moe_prerouted_kernel(RoutingParams const rp, RoutingBuffers const rb) {
  int64_t const n = static_cast<int64_t>(rp.num_tokens) * rp.top_k;
  for (int64_t a = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; a < n;
       a += static_cast<int64_t>(gridDim.x) * kThreads) {
    prerouted_assignment(rp, rb, a);
  }
}

}  // namespace

Status launch_prerouted(RoutingParams const& rp, RoutingBuffers const& rb, cudaStream_t stream) {
  int64_t const n = static_cast<int64_t>(rp.num_tokens) * rp.top_k;
  unsigned const blocks = static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
  moe_prerouted_kernel<<<blocks, kThreads, 0, stream>>>(rp, rb);
  FLASHMOE_LAUNCH_CHECK("moe_prerouted_kernel");
  return Status::Ok();
}

}  // namespace flashmoe::routing
