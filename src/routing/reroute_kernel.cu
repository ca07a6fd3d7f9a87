// flashmoe: overflow = reroute (routing.h step 6): the rounds (reroute_block.cuh) in one block.
#include "fused/cuda_check.h"
#include "routing/reroute_block.cuh"
#include "routing/routing_kernels.h"

namespace flashmoe::routing {
namespace {

constexpr int kThreads = 512;  // 1024 caps sm_80 at 32 registers and spills

__global__ void __launch_bounds__(kThreads)
    moe_reroute_kernel(RoutingParams const rp, RoutingBuffers const rb) {
  __shared__ typename cub::BlockScan<int, kThreads>::TempStorage tmp;
  reroute_rounds<kThreads>(rp, rb, tmp);
}

}  // namespace

Status launch_reroute(RoutingParams const& rp, RoutingBuffers const& rb, cudaStream_t stream) {
  moe_reroute_kernel<<<1, kThreads, 0, stream>>>(rp, rb);
  FLASHMOE_LAUNCH_CHECK("moe_reroute_kernel");
  return Status::Ok();
}

}  // namespace flashmoe::routing
