// flashmoe: the combine, out[t] = sum over the token's k slots, in slot order, of
// weight * y[row of the slot] (slots not computed here -- dropped, pre-routed -1, non-local --
// are skipped; a token with none gets zeros). One block per token, fp32 accumulation, one owner
// per output element and a fixed order: bitwise identical run to run, no atomics.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "fused/combine.h"
#include "fused/cuda_check.h"

namespace flashmoe::fused {
namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ void accumulate8(__nv_bfloat16 const*, uint4 const& v, float w,
                                            float (&acc)[8]) {
  __nv_bfloat162 const* h = reinterpret_cast<__nv_bfloat162 const*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 const f = __bfloat1622float2(h[i]);
    acc[2 * i] = fmaf(w, f.x, acc[2 * i]);
    acc[2 * i + 1] = fmaf(w, f.y, acc[2 * i + 1]);
  }
}
__device__ __forceinline__ void accumulate8(__half const*, uint4 const& v, float w,
                                            float (&acc)[8]) {
  __half2 const* h = reinterpret_cast<__half2 const*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 const f = __half22float2(h[i]);
    acc[2 * i] = fmaf(w, f.x, acc[2 * i]);
    acc[2 * i + 1] = fmaf(w, f.y, acc[2 * i + 1]);
  }
}
__device__ __forceinline__ uint4 pack8(__nv_bfloat16 const*, float const (&acc)[8]) {
  uint4 v;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(acc[2 * i], acc[2 * i + 1]);
  return v;
}
__device__ __forceinline__ uint4 pack8(__half const*, float const (&acc)[8]) {
  uint4 v;
  __half2* h = reinterpret_cast<__half2*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(acc[2 * i], acc[2 * i + 1]);
  return v;
}

template <class Element>
__global__ void __launch_bounds__(kThreads) moe_combine_kernel(CombineParams const p) {
  int64_t const t = blockIdx.x;
  int const k = p.top_k;
  int64_t const chunks = p.cols / 8;
  Element const* const y = static_cast<Element const*>(p.y);
  Element* const out = static_cast<Element*>(p.out);
  for (int64_t c = threadIdx.x; c < chunks; c += kThreads) {
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int j = 0; j < k; ++j) {
      int32_t const row = p.slot_row[t * k + j];
      if (row < 0) continue;
      uint4 const v = *reinterpret_cast<uint4 const*>(y + static_cast<int64_t>(row) * p.cols + c * 8);
      accumulate8(y, v, p.weights[t * k + j], acc);
    }
    *reinterpret_cast<uint4*>(out + t * p.cols + c * 8) = pack8(out, acc);
  }
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
