// flashmoe: raw expert weights -> the prepared FP8 layout of quantize_weights_fp8.h.
//
// Two kernels on the caller's stream:
//   1. amax: the scales (channel: one thread or one warp per channel, reading along the
//      contiguous dimension of the raw layout; block128: one CTA per 128 x 128 block). For an
//      already-quantized E4M3 source (a checkpoint) a copy of its scales instead.
//   2. quantize: one CTA per (expert, 128 prepared rows, 128 inputs): reads the raw values along
//      their contiguous dimension, quantizes them with their group's scale into a shared tile
//      (the transpose of kInOut happens there), and writes the prepared rows with 4-byte stores
//      along K. Padding rows (gate-up, I % 64 != 0) are written as zeros. An E4M3 source's
//      bytes are moved as they are (same rows, same transpose), so the packed weights
//      dequantize to exactly the checkpoint's values.
#include "gemm/quantize_weights_fp8.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "flashmoe/quantization.h"
#include "fused/cuda_check.h"

namespace flashmoe::gemm {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 128;

template <typename T>
__device__ __forceinline__ float load_float(T const* p) {
  return static_cast<float>(*p);
}
template <>
__device__ __forceinline__ float load_float<__nv_bfloat16>(__nv_bfloat16 const* p) {
  return __bfloat162float(*p);
}
template <>
__device__ __forceinline__ float load_float<__half>(__half const* p) {
  return __half2float(*p);
}

__device__ __forceinline__ float scale_of(float amax) {
  return amax > 0.0f ? __fdiv_rn(amax, kE4M3Max) : 1.0f;
}

/// Raw element (e, k, ch) of an [E, K, N] (in_out) or [E, N, K] (out_in) tensor.
template <typename T>
__device__ __forceinline__ float raw_at(T const* w, bool out_in, int64_t e, int64_t k, int64_t ch,
                                        int64_t K, int64_t N) {
  int64_t const idx = out_in ? (e * N + ch) * K + k : (e * K + k) * N + ch;
  return load_float(w + idx);
}

/// Channel scales, kInOut: thread per channel, consecutive threads read consecutive channels.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fp8_channel_amax_in_out_kernel(T const* __restrict__ w, int64_t K, int64_t N,
                                   float* __restrict__ scales) {
  int64_t const e = blockIdx.y;
  int64_t const ch = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (ch >= N) return;
  float m = 0.0f;
  for (int64_t k = 0; k < K; ++k) m = fmaxf(m, fabsf(raw_at(w, false, e, k, ch, K, N)));
  scales[e * N + ch] = scale_of(m);
}

/// Channel scales, kOutIn: warp per channel, lanes read along K.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fp8_channel_amax_out_in_kernel(T const* __restrict__ w, int64_t K, int64_t N,
                                   float* __restrict__ scales) {
  int64_t const e = blockIdx.y;
  int64_t const ch = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  int const lane = threadIdx.x % 32;
  if (ch >= N) return;
  float m = 0.0f;
  for (int64_t k = lane; k < K; k += 32) m = fmaxf(m, fabsf(raw_at(w, true, e, k, ch, K, N)));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (lane == 0) scales[e * N + ch] = scale_of(m);
}

/// Block scales: one CTA per (kb, nb, e) block of 128 channels x 128 inputs.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fp8_block_amax_kernel(T const* __restrict__ w, bool out_in, int64_t K, int64_t N,
                          float* __restrict__ scales) {
  __shared__ float warp_max[kThreads / 32];
  int64_t const kb = blockIdx.x;
  int64_t const nb = blockIdx.y;
  int64_t const e = blockIdx.z;
  float m = 0.0f;
  for (int idx = threadIdx.x; idx < kTile * kTile; idx += kThreads) {
    // The fast-moving index follows the contiguous dimension of the raw layout.
    int const fast = idx % kTile;
    int const slow = idx / kTile;
    int64_t const k = kb * kTile + (out_in ? fast : slow);
    int64_t const ch = nb * kTile + (out_in ? slow : fast);
    if (k < K && ch < N) m = fmaxf(m, fabsf(raw_at(w, out_in, e, k, ch, K, N)));
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int i = 1; i < kThreads / 32; ++i) m = fmaxf(m, warp_max[i]);
    int64_t const num_kb = (K + kTile - 1) / kTile;
    int64_t const num_nb = (N + kTile - 1) / kTile;
    scales[(e * num_nb + nb) * num_kb + kb] = scale_of(m);
  }
}

/// The prepared bytes of (kb, 128-row block pb, e). T = uint8_t: E4M3 source bytes, moved as they
/// are (no scale is read).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    fp8_quantize_kernel(T const* __restrict__ w, bool out_in, bool gate_up, bool block_scales,
                        int64_t K, int64_t N, int64_t Np, float const* __restrict__ scales,
                        uint8_t* __restrict__ out) {
  constexpr int kPitch = kTile + 4;  // bytes per shared row (keeps rows 4-byte aligned)
  __shared__ __align__(16) uint8_t tile[kTile * kPitch];
  __shared__ float row_scale[kTile];
  __shared__ int64_t row_channel[kTile];
  int64_t const kb = blockIdx.x;
  int64_t const p0 = static_cast<int64_t>(blockIdx.y) * kTile;
  int64_t const e = blockIdx.z;
  int64_t const num_kb = (K + kTile - 1) / kTile;
  int64_t const num_nb = (N + kTile - 1) / kTile;

  if (threadIdx.x < kTile) {
    int64_t const p = p0 + threadIdx.x;
    int64_t const ch = p < Np ? fp8_prepared_row_channel(p, N, gate_up) : -1;
    float s = 1.0f;
    if (!std::is_same_v<T, uint8_t> && ch >= 0) {
      s = block_scales ? scales[(e * num_nb + ch / kTile) * num_kb + kb] : scales[e * N + ch];
    }
    row_channel[threadIdx.x] = ch;
    row_scale[threadIdx.x] = s;
  }
  __syncthreads();

  for (int idx = threadIdx.x; idx < kTile * kTile; idx += kThreads) {
    int const fast = idx % kTile;
    int const slow = idx / kTile;
    int const r = out_in ? slow : fast;   // prepared row within the tile
    int const kk = out_in ? fast : slow;  // input within the K block
    int64_t const k = kb * kTile + kk;
    int64_t const ch = row_channel[r];
    uint8_t q = 0;
    if (ch >= 0 && k < K) {
      if constexpr (std::is_same_v<T, uint8_t>) {
        q = w[out_in ? (e * N + ch) * K + k : (e * K + k) * N + ch];
      } else {
        float const v = raw_at(w, out_in, e, k, ch, K, N);
        q = __nv_cvt_float_to_fp8(__fdiv_rn(v, row_scale[r]), __NV_SATFINITE, __NV_E4M3);
      }
    }
    tile[r * kPitch + kk] = q;
  }
  __syncthreads();

  for (int idx = threadIdx.x; idx < kTile * (kTile / 4); idx += kThreads) {
    int const r = idx / (kTile / 4);
    int const word = idx % (kTile / 4);
    int64_t const p = p0 + r;
    int64_t const k = kb * kTile + 4 * word;
    if (p < Np && k < K) {  // K % 16 == 0: a 4-byte word is all in or all out
      *reinterpret_cast<uint32_t*>(out + (e * Np + p) * K + k) =
          *reinterpret_cast<uint32_t const*>(tile + r * kPitch + 4 * word);
    }
  }
}

template <typename T>
Status launch_typed(QuantizeWeightsFp8Params const& p, cudaStream_t stream) {
  T const* const w = static_cast<T const*>(p.w);
  bool const out_in = p.layout == WeightLayout::kOutIn;
  bool const block = p.scale_kind == Fp8ScaleKind::kBlock128;
  int64_t const K = p.k;
  int64_t const N = p.n_raw;
  int64_t const Np = fp8_prepared_rows(N, p.gate_up);
  unsigned const E = static_cast<unsigned>(p.num_experts);
  unsigned const num_kb = static_cast<unsigned>((K + kTile - 1) / kTile);
  unsigned const num_nb = static_cast<unsigned>((N + kTile - 1) / kTile);

  if constexpr (std::is_same_v<T, uint8_t>) {
    std::size_t const bytes = sizeof(float) * static_cast<std::size_t>(p.num_experts) *
                              static_cast<std::size_t>(fp8_scales_per_expert(N, K, p.scale_kind));
    FLASHMOE_CUDA_CHECK(cudaMemcpyAsync(p.scales, p.source_scales, bytes,
                                        cudaMemcpyDeviceToDevice, stream));
  } else if (block) {
    fp8_block_amax_kernel<T><<<dim3(num_kb, num_nb, E), kThreads, 0, stream>>>(w, out_in, K, N,
                                                                               p.scales);
    FLASHMOE_LAUNCH_CHECK("fp8_block_amax_kernel");
  } else if (out_in) {
    unsigned const blocks = static_cast<unsigned>((N + kThreads / 32 - 1) / (kThreads / 32));
    fp8_channel_amax_out_in_kernel<T><<<dim3(blocks, E), kThreads, 0, stream>>>(w, K, N, p.scales);
    FLASHMOE_LAUNCH_CHECK("fp8_channel_amax_out_in_kernel");
  } else {
    unsigned const blocks = static_cast<unsigned>((N + kThreads - 1) / kThreads);
    fp8_channel_amax_in_out_kernel<T><<<dim3(blocks, E), kThreads, 0, stream>>>(w, K, N, p.scales);
    FLASHMOE_LAUNCH_CHECK("fp8_channel_amax_in_out_kernel");
  }
  unsigned const num_pb = static_cast<unsigned>((Np + kTile - 1) / kTile);
  fp8_quantize_kernel<T><<<dim3(num_kb, num_pb, E), kThreads, 0, stream>>>(
      w, out_in, p.gate_up, block, K, N, Np, p.scales, static_cast<uint8_t*>(p.w_fp8));
  FLASHMOE_LAUNCH_CHECK("fp8_quantize_kernel");
  return Status::Ok();
}

}  // namespace

Status check_quantize_weights_fp8(QuantizeWeightsFp8Params const& p) {
  if (p.w_dtype != DType::kBFloat16 && p.w_dtype != DType::kFloat16 &&
      p.w_dtype != DType::kFloat32 && p.w_dtype != DType::kFloat8E4M3) {
    return Status::BadType(std::string("quantize fp8: weights must be bfloat16, float16, "
                                       "float32 or (already quantized) float8_e4m3fn, got ") +
                           dtype_name(p.w_dtype));
  }
  if ((p.w_dtype == DType::kFloat8E4M3) != (p.source_scales != nullptr)) {
    return Status::Invalid("quantize fp8: source_scales must be given exactly when the weights "
                           "are already quantized (float8_e4m3fn)");
  }
  if (p.num_experts <= 0 || p.k <= 0 || p.n_raw <= 0) {
    return Status::Invalid("quantize fp8: num_experts, k and n_raw must be positive");
  }
  if (p.k % 16 != 0) {
    return Status::Unsupported("quantize fp8: K must be a multiple of 16 (TMA row pitch), got " +
                               std::to_string(p.k));
  }
  if (p.gate_up && (p.n_raw % 2 != 0 || (p.n_raw / 2) % 8 != 0)) {
    return Status::Unsupported("quantize fp8: gate-up weights need n_raw = 2I with I % 8 == 0, "
                               "got n_raw = " + std::to_string(p.n_raw));
  }
  if (p.gate_up && p.scale_kind == Fp8ScaleKind::kBlock128 &&
      (p.n_raw / 2) % kFp8GateUpHalf != 0) {
    return Status::Unsupported("quantize fp8: gate-up weights with 128x128 block scales need "
                               "I % 64 == 0, got I = " + std::to_string(p.n_raw / 2));
  }
  if (p.num_experts > 65535 || (p.n_raw + 127) / 128 > 65535 ||
      fp8_prepared_rows(p.n_raw, p.gate_up) / 128 + 1 > 65535) {
    return Status::Unsupported("quantize fp8: too many experts or channels for one launch");
  }
  if (p.w == nullptr || p.w_fp8 == nullptr || p.scales == nullptr) {
    return Status::Invalid("quantize fp8: w, w_fp8 and scales must be non-null");
  }
  if (reinterpret_cast<std::uintptr_t>(p.w_fp8) % 16 != 0) {
    return Status::Unsupported("quantize fp8: w_fp8 must be 16-byte aligned");
  }
  return Status::Ok();
}

Status launch_quantize_weights_fp8(QuantizeWeightsFp8Params const& p, cudaStream_t stream) {
  FLASHMOE_RETURN_IF_ERROR(check_quantize_weights_fp8(p));
  switch (p.w_dtype) {
    case DType::kBFloat16:
      return launch_typed<__nv_bfloat16>(p, stream);
    case DType::kFloat16:
      return launch_typed<__half>(p, stream);
    case DType::kFloat8E4M3:
      return launch_typed<uint8_t>(p, stream);
    default:
      return launch_typed<float>(p, stream);
  }
}

}  // namespace flashmoe::gemm
