// flashmoe (internal): the combine of one token as device code, shared by the combine kernel and
// the fused kernel: out[t] = sum over the token's k slots, in slot order, of weight * y[row of
// the slot] (slots not computed here -- dropped, pre-routed -1, non-local -- are skipped; a token
// with none gets zeros). fp32 accumulation, one owner per output element and a fixed order:
// bitwise identical run to run, no atomics.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "fused/combine.h"

namespace flashmoe::fused {

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

/// Token t's output row by `nthreads` threads (tid 0..nthreads-1), 8 columns per step. Up to
/// kCombineUnroll slots, the token's rows and weights are read once and each step issues all its
/// row loads before the first add (the loads' latency overlaps: the fused kernel combines with 8
/// warps per SM, not a full grid); the adds stay in slot order, so the bits do not change.
/// kSteps: steps (8-column chunks, nthreads apart) whose loads a thread issues together -- the
/// fused kernels' combine after the GEMM runs 2: one token at a time per 128 threads was a chain
/// of dependent L2 round trips (round 195: 382 us at prefill for 1.2 GB, ~3 TB/s).
/// [c0, c1): the 8-column chunks to combine (c1 < 0: to the row's end) -- the fused FP8 kernel's
/// solo mode combines one GEMM n tile's columns at a time (FusedDeps::item_stored). The y rows
/// are read through L2 (ld.global.cg): other SMs wrote them during the same launch.
inline constexpr int kCombineUnroll = 8;
template <class Element, int kSteps = 1>
__device__ __forceinline__ void combine_token(CombineParams const& p, int64_t t, int tid,
                                              int nthreads, int64_t c0 = 0, int64_t c1 = -1) {
  int const k = p.top_k;
  int64_t const chunks = c1 < 0 || c1 > p.cols / 8 ? p.cols / 8 : c1;
  Element const* const y = static_cast<Element const*>(p.y);
  Element* const out = static_cast<Element*>(p.out);
  if (k <= kCombineUnroll) {
    int32_t rows[kCombineUnroll];
    float w[kCombineUnroll];
#pragma unroll
    for (int j = 0; j < kCombineUnroll; ++j) {
      rows[j] = j < k ? p.slot_row[t * k + j] : -1;
      w[j] = j < k ? p.weights[t * k + j] : 0.0f;
    }
    for (int64_t c = c0 + tid; c < chunks; c += static_cast<int64_t>(nthreads) * kSteps) {
      uint4 v[kSteps][kCombineUnroll];
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        int64_t const cs = c + static_cast<int64_t>(s) * nthreads;
#pragma unroll
        for (int j = 0; j < kCombineUnroll; ++j) {
          if (rows[j] >= 0 && cs < chunks) {
            v[s][j] = __ldcg(reinterpret_cast<uint4 const*>(
                y + static_cast<int64_t>(rows[j]) * p.cols + cs * 8));
          }
        }
      }
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        int64_t const cs = c + static_cast<int64_t>(s) * nthreads;
        if (cs >= chunks) break;
        float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int j = 0; j < kCombineUnroll; ++j) {
          if (rows[j] >= 0) accumulate8(y, v[s][j], w[j], acc);
        }
        *reinterpret_cast<uint4*>(out + t * p.cols + cs * 8) = pack8(out, acc);
      }
    }
    return;
  }
  for (int64_t c = c0 + tid; c < chunks; c += nthreads) {
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int j = 0; j < k; ++j) {
      int32_t const row = p.slot_row[t * k + j];
      if (row < 0) continue;
      uint4 const v =
          __ldcg(reinterpret_cast<uint4 const*>(y + static_cast<int64_t>(row) * p.cols + c * 8));
      accumulate8(y, v, p.weights[t * k + j], acc);
    }
    *reinterpret_cast<uint4*>(out + t * p.cols + c * 8) = pack8(out, acc);
  }
}

}  // namespace flashmoe::fused
