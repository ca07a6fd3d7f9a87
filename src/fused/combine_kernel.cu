// flashmoe: the combine kernel, one block per token (the per-token work, combine_token, is in
// combine_device.cuh, shared with the fused kernel).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "fused/combine.h"
#include "fused/combine_device.cuh"
#include "fused/cuda_check.h"

namespace flashmoe::fused {
namespace {

constexpr int kThreads = 128;

template <class Element>
__global__ void __launch_bounds__(kThreads) moe_combine_kernel(CombineParams const p) {
  combine_token<Element>(p, blockIdx.x, static_cast<int>(threadIdx.x), kThreads);
}

}  // namespace

Status launch_combine(CombineParams const& p, DType dtype, cudaStream_t stream) {
  dim3 const grid(static_cast<unsigned>(p.num_tokens));
  if (dtype == DType::kBFloat16) {
    moe_combine_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(p);
  } else {
    moe_combine_kernel<__half><<<grid, kThreads, 0, stream>>>(p);
  }
  FLASHMOE_LAUNCH_CHECK("moe_combine_kernel");
  return Status::Ok();
}

}  // namespace flashmoe::fused
