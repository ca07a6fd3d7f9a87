// flashmoe (internal): the per-row E4M3 quantization of activations as device code, shared by
// the token pre-pass kernels (token_scales.cu) and the fused kernel:
//
//   scale = amax_c |x[c]| / 448 (float32 division; 1 for an all-zero row)
//   q[c]  = e4m3(x[c] * (1 / scale))   (float32 product, cvt.rn.satfinite)
//
// bit for bit what the sm_90a FP8 GEMM's own gather computes.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "flashmoe/quantization.h"

namespace flashmoe::gemm {

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}

/// amax of 16 bytes of T.
template <typename T>
__device__ __forceinline__ float amax16(uint4 const& v) {
  T vals[16 / sizeof(T)];
  memcpy(vals, &v, 16);
  float m = 0.0f;
#pragma unroll
  for (int i = 0; i < 16 / static_cast<int>(sizeof(T)); ++i) m = fmaxf(m, fabsf(to_float(vals[i])));
  return m;
}

/// One value times `inv` as an e4m3 byte (the GEMM's rule: float product, cvt.rn.satfinite).
__device__ __forceinline__ uint8_t e4m3_byte(float x, float inv) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x * inv, __NV_SATFINITE, __NV_E4M3));
}

/// kPer (= 16 / sizeof(T)) values of 16 bytes times `inv`, as kPer e4m3 bytes (the GEMM's rule:
/// float product, cvt.rn.satfinite of pairs).
template <typename T>
__device__ __forceinline__ void quantize16(uint4 const& v, float inv, uint8_t* out) {
  constexpr int kPer = 16 / sizeof(T);
  T vals[kPer];
  memcpy(vals, &v, 16);
  uint16_t pairs[kPer / 2];
#pragma unroll
  for (int i = 0; i < kPer / 2; ++i) {
    float2 f = make_float2(to_float(vals[2 * i]), to_float(vals[2 * i + 1]));
    f.x *= inv;
    f.y *= inv;
    pairs[i] = __nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3);
  }
  if constexpr (kPer == 8) {
    uint2 w;
    w.x = static_cast<uint32_t>(pairs[0]) | (static_cast<uint32_t>(pairs[1]) << 16);
    w.y = static_cast<uint32_t>(pairs[2]) | (static_cast<uint32_t>(pairs[3]) << 16);
    *reinterpret_cast<uint2*>(out) = w;
  } else {
    *reinterpret_cast<uint32_t*>(out) =
        static_cast<uint32_t>(pairs[0]) | (static_cast<uint32_t>(pairs[1]) << 16);
  }
}

/// 16 bytes of a row; kL2: through L2 only (ld.global.cg), else the non-coherent path.
template <typename T, bool kL2>
__device__ __forceinline__ uint4 row_load16(T const* p) {
  uint4 const* q = reinterpret_cast<uint4 const*>(p);
  if constexpr (kL2) {
    return __ldcg(q);
  } else {
    return __ldg(q);
  }
}

/// The two passes over a row shared by kThreads threads (thread i; whole warps): the max |x| of
/// this thread's 16-byte vectors (or values, without vec16), and the conversion of the same ones.
/// kUnroll: loads in flight per thread.
template <typename T, int kThreads, bool kL2, int kUnroll>
__device__ __forceinline__ float row_amax_part(T const* __restrict__ xr, int64_t cols, bool vec16,
                                               int i) {
  constexpr int kPer = 16 / sizeof(T);
  float m = 0.0f;
  if (vec16) {
    // Unrolled so that several 16-byte loads are in flight: at decode one row is the whole
    // pre-pass, and its loads' latency is the cost.
#pragma unroll kUnroll
    for (int64_t c = static_cast<int64_t>(i) * kPer; c < cols; c += kThreads * kPer) {
      m = fmaxf(m, amax16<T>(row_load16<T, kL2>(xr + c)));
    }
  } else {
    for (int64_t c = i; c < cols; c += kThreads) m = fmaxf(m, fabsf(to_float(xr[c])));
  }
  return m;
}
template <typename T, int kThreads, bool kL2, int kUnroll>
__device__ __forceinline__ void quantize_row_part(T const* __restrict__ xr, int64_t cols,
                                                  bool vec16, int i, float inv,
                                                  uint8_t* __restrict__ qr) {
  constexpr int kPer = 16 / sizeof(T);
  if (vec16) {
#pragma unroll kUnroll
    for (int64_t c = static_cast<int64_t>(i) * kPer; c < cols; c += kThreads * kPer) {
      quantize16<T>(row_load16<T, kL2>(xr + c), inv, qr + c);
    }
  } else {
    for (int64_t c = i; c < cols; c += kThreads) {
      qr[c] = e4m3_byte(to_float(xr[c]), inv);
    }
  }
}

/// The max of m over the 32 lanes of a warp.
__device__ __forceinline__ float warp_max(float m) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  return m;
}

/// A row's E4M3 scale from its amax (1 for an all-zero row).
__device__ __forceinline__ float e4m3_row_scale(float amax) {
  return amax > 0.0f ? __fdiv_rn(amax, kE4M3Max) : 1.0f;
}

/// One warp (lane 0..31): the E4M3 scale of one row of `cols` values (written to *scale by lane
/// 0) and its inverse, returned to every lane -- the first pass of quantize_row_warp and
/// quantize_row_warp_to_rows, and all of the scales-only pre-pass (token_scales.cu). vec16, kL2,
/// kUnroll: as there.
template <typename T, bool kL2 = false, int kUnroll = 8>
__device__ __forceinline__ float row_inv_scale_warp(T const* __restrict__ xr, int64_t cols,
                                                    bool vec16, int lane, float* scale) {
  float const m = warp_max(row_amax_part<T, 32, kL2, kUnroll>(xr, cols, vec16, lane));
  float const s = e4m3_row_scale(m);
  if (lane == 0) *scale = s;
  return 1.0f / s;  // IEEE division, as the GEMM's gather
}

/// One warp (lane 0..31) quantizes one row of `cols` values: *scale and q[0, cols). vec16: x and
/// q allow 16-byte loads (x % 16 == 0, cols * sizeof(T) % 16 == 0). The row is read twice, the
/// second time from L1/L2. kL2: the 16-byte loads go through L2 only (ld.global.cg), for rows
/// that other SMs wrote during the same launch (the fused kernel's hidden rows, always vec16);
/// the default non-coherent loads suit inputs. kUnroll: 16-byte loads in flight per lane.
template <typename T, bool kL2 = false, int kUnroll = 8>
__device__ __forceinline__ void quantize_row_warp(T const* __restrict__ xr, int64_t cols,
                                                  bool vec16, int lane, float* scale,
                                                  uint8_t* __restrict__ qr) {
  float const inv = row_inv_scale_warp<T, kL2, kUnroll>(xr, cols, vec16, lane, scale);
  quantize_row_part<T, 32, kL2, kUnroll>(xr, cols, vec16, lane, inv, qr);
}

/// quantize_row_warp with kWarpsN warps on one row (thread i of kWarpsN * 32, sync(): a barrier
/// of exactly those threads, warp_amax: kWarpsN floats of shared memory): the same two passes,
/// each vector loaded by one thread per pass, the warps' maxima meeting in shared memory. A max
/// is the same whatever the order, so the scale and the bytes are quantize_row_warp's. For a row
/// whose load latency is on the critical path (the fused kernel's one token: perf-log v0.50).
template <typename T, int kWarpsN, class Sync>
__device__ __forceinline__ void quantize_row_warps(T const* __restrict__ xr, int64_t cols,
                                                   bool vec16, int i, float* warp_amax,
                                                   Sync const& sync, float* scale,
                                                   uint8_t* __restrict__ qr) {
  constexpr int kThreadsN = kWarpsN * 32;
  float m = warp_max(row_amax_part<T, kThreadsN, false, 4>(xr, cols, vec16, i));
  if (i % 32 == 0) warp_amax[i / 32] = m;
  sync();
#pragma unroll
  for (int w = 0; w < kWarpsN; ++w) m = fmaxf(m, warp_amax[w]);
  float const s = e4m3_row_scale(m);
  if (i == 0) *scale = s;
  quantize_row_part<T, kThreadsN, false, 4>(xr, cols, vec16, i, 1.0f / s, qr);
}

/// quantize_row_warp's rule for 16-bit rows, the E4M3 row written to n dense rows instead of one:
/// to dst + rows[j] * cols for each j < n with rows[j] >= 0 (the fused FP8 kernel's dispatch and
/// the multi-kernel path's launch_token_quantize_fp8_to_rows, which put a token's row at each of
/// its slots' dense rows for the GEMM's TMA boxes: one pass over the 16-bit row instead of an E4M3
/// row written and then copied k times). rows: read by every lane.
template <typename T>
__device__ __forceinline__ void quantize_row_warp_to_rows(T const* __restrict__ xr, int64_t cols,
                                                          bool vec16, int lane, float* scale,
                                                          uint8_t* __restrict__ dst,
                                                          int32_t const* rows, int n) {
  static_assert(sizeof(T) == 2, "16-bit rows: 16 bytes in, 8 bytes out");
  constexpr int kPer = 8;
  constexpr int kRows = 8;  // dense rows per pass over the row
  float const inv = row_inv_scale_warp<T>(xr, cols, vec16, lane, scale);
  for (int jb = 0; jb < n; jb += kRows) {
    int64_t off[kRows];  // byte offset of each dense row, -1: none
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      int32_t const r = jb + j < n ? rows[jb + j] : -1;
      off[j] = r >= 0 ? static_cast<int64_t>(r) * cols : -1;
    }
    if (vec16) {
#pragma unroll 4
      for (int64_t c = static_cast<int64_t>(lane) * kPer; c < cols; c += 32 * kPer) {
        alignas(8) uint8_t q[kPer];
        quantize16<T>(__ldg(reinterpret_cast<uint4 const*>(xr + c)), inv, q);
        uint2 const bits = *reinterpret_cast<uint2 const*>(q);
#pragma unroll
        for (int j = 0; j < kRows; ++j) {
          if (off[j] >= 0) *reinterpret_cast<uint2*>(dst + off[j] + c) = bits;
        }
      }
    } else {
      for (int64_t c = lane; c < cols; c += 32) {
        uint8_t const q = e4m3_byte(to_float(xr[c]), inv);
#pragma unroll
        for (int j = 0; j < kRows; ++j) {
          if (off[j] >= 0) dst[off[j] + c] = q;
        }
      }
    }
  }
}

}  // namespace flashmoe::gemm
