// flashmoe: per-token top-k routing on the GPU (routing.h steps 1-5), one 128-thread block per
// token; the per-token work is topk_token (topk_token.cuh), shared with the fused kernel.
#include "fused/cuda_check.h"
#include "routing/routing_kernels.h"
#include "routing/topk_token.cuh"

namespace flashmoe::routing {
namespace {

template <int kItems>
__global__ void __launch_bounds__(kTopkThreads)
    moe_topk_kernel(RoutingParams const rp, RoutingBuffers const rb) {
  __shared__ TopkSmem<kTopkThreads, kItems> sm;
  topk_token<kTopkThreads, kItems>(rp, rb, static_cast<int>(blockIdx.x), static_cast<int>(threadIdx.x), sm,
                     BlockSync{});
}

}  // namespace

int topk_items_per_thread(int64_t num_experts) {
  if (num_experts <= 128) return 1;
  if (num_experts <= 256) return 2;
  if (num_experts <= kMaxRoutingExperts) return 8;
  return 0;
}

Status launch_topk(RoutingParams const& rp, RoutingBuffers const& rb, cudaStream_t stream) {
  dim3 const grid(static_cast<unsigned>(rp.num_tokens));
  switch (topk_items_per_thread(rp.num_experts)) {
    case 1: moe_topk_kernel<1><<<grid, kTopkThreads, 0, stream>>>(rp, rb); break;
    case 2: moe_topk_kernel<2><<<grid, kTopkThreads, 0, stream>>>(rp, rb); break;
    case 8: moe_topk_kernel<8><<<grid, kTopkThreads, 0, stream>>>(rp, rb); break;
    default:
      return Status::Unsupported("the GPU routing takes at most " +
                                 std::to_string(kMaxRoutingExperts) + " experts");
  }
  FLASHMOE_LAUNCH_CHECK("moe_topk_kernel");
  return Status::Ok();
}

}  // namespace flashmoe::routing
