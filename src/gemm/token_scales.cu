// flashmoe: the per-row amax pre-pass of FP8 activations (see token_scales.h). One warp per row;
// 16-byte loads when the rows allow them.
#include "gemm/token_scales.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "flashmoe/quantization.h"
#include "fused/cuda_check.h"
#include "gemm/token_quantize.cuh"

namespace flashmoe::gemm {
namespace {

constexpr int kWarpsPerBlock = 8;

/// Whether rows of T at x (row_stride apart, `cols` values each) allow 16-byte loads.
template <typename T>
bool rows_allow_vec16(void const* x, int64_t row_stride, int64_t cols) {
  return reinterpret_cast<std::uintptr_t>(x) % 16 == 0 &&
         (row_stride * static_cast<int64_t>(sizeof(T))) % 16 == 0 &&
         (cols * static_cast<int64_t>(sizeof(T))) % 16 == 0;
}

/// Scales only (launch_token_scales_fp8): the first pass of quantize_row_warp, one warp per row.
template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    token_scales_fp8_kernel(T const* __restrict__ x, int64_t rows, int64_t cols,
                            int64_t row_stride, int32_t const* __restrict__ rows_device,
                            bool vec16, float* __restrict__ scales) {
  int64_t const row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  int64_t limit = rows;
  if (rows_device != nullptr) limit = min(limit, static_cast<int64_t>(*rows_device));
  if (row >= limit) return;
  (void)row_inv_scale_warp<T>(x + row * row_stride, cols, vec16, threadIdx.x % 32, scales + row);
}

template <typename T>
Status launch_typed(void const* x, int64_t rows, int64_t cols, int64_t row_stride,
                    int32_t const* rows_device, float* scales, cudaStream_t stream) {
  bool const vec16 = rows_allow_vec16<T>(x, row_stride, cols);
  int64_t const blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  token_scales_fp8_kernel<T><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(
      static_cast<T const*>(x), rows, cols, row_stride, rows_device, vec16, scales);
  FLASHMOE_LAUNCH_CHECK("token_scales_fp8_kernel");
  return Status::Ok();
}

/// Scales and quantized rows (token_scales.h, launch_token_quantize_fp8): one warp per row
/// (quantize_row_warp, token_quantize.cuh).
template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    token_quantize_fp8_kernel(T const* __restrict__ x, int64_t rows, int64_t cols,
                              int64_t row_stride, int32_t const* __restrict__ rows_device,
                              bool vec16, float* __restrict__ scales, uint8_t* __restrict__ q,
                              int64_t q_stride) {
  int64_t const row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  int64_t limit = rows;
  if (rows_device != nullptr) limit = min(limit, static_cast<int64_t>(*rows_device));
  if (row >= limit) return;
  quantize_row_warp<T>(x + row * row_stride, cols, vec16, threadIdx.x % 32, scales + row,
                       q + row * q_stride);
}

template <typename T>
Status launch_quantize_typed(void const* x, int64_t rows, int64_t cols, int64_t row_stride,
                             int32_t const* rows_device, float* scales, void* q, int64_t q_stride,
                             cudaStream_t stream) {
  bool const vec16 = rows_allow_vec16<T>(x, row_stride, cols);
  int64_t const blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  token_quantize_fp8_kernel<T><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(
      static_cast<T const*>(x), rows, cols, row_stride, rows_device, vec16, scales,
      static_cast<uint8_t*>(q), q_stride);
  FLASHMOE_LAUNCH_CHECK("token_quantize_fp8_kernel");
  return Status::Ok();
}

}  // namespace

Status launch_token_quantize_fp8(void const* x, DType dtype, int64_t rows, int64_t cols,
                                 int64_t row_stride, int32_t const* rows_device, float* scales,
                                 void* x_fp8, int64_t fp8_row_stride, cudaStream_t stream) {
  if (rows < 0 || cols <= 0 || row_stride < cols) {
    return Status::Invalid("token quantize: need rows >= 0, cols > 0 and row_stride >= cols");
  }
  if (cols % 16 != 0 || fp8_row_stride < cols || fp8_row_stride % 16 != 0 ||
      reinterpret_cast<std::uintptr_t>(x_fp8) % 16 != 0) {
    return Status::Unsupported("token quantize: needs cols % 16 == 0 (got " +
                               std::to_string(cols) + "), fp8_row_stride % 16 == 0 and >= cols, "
                               "and a 16-byte aligned x_fp8 (the GEMM copies 16-byte chunks)");
  }
  if (rows == 0) return Status::Ok();
  if (x == nullptr || scales == nullptr || x_fp8 == nullptr) {
    return Status::Invalid("token quantize: x, scales and x_fp8 must be non-null");
  }
  if ((rows + kWarpsPerBlock - 1) / kWarpsPerBlock > INT32_MAX) {
    return Status::Unsupported("token quantize: too many rows");
  }
  switch (dtype) {
    case DType::kBFloat16:
      return launch_quantize_typed<__nv_bfloat16>(x, rows, cols, row_stride, rows_device, scales,
                                                  x_fp8, fp8_row_stride, stream);
    case DType::kFloat16:
      return launch_quantize_typed<__half>(x, rows, cols, row_stride, rows_device, scales, x_fp8,
                                           fp8_row_stride, stream);
    case DType::kFloat32:
      return launch_quantize_typed<float>(x, rows, cols, row_stride, rows_device, scales, x_fp8,
                                          fp8_row_stride, stream);
    default:
      return Status::BadType(std::string("token quantize: x must be bfloat16, float16 or float32, "
                                         "got ") + dtype_name(dtype));
  }
}

Status launch_token_scales_fp8(void const* x, DType dtype, int64_t rows, int64_t cols,
                               int64_t row_stride, int32_t const* rows_device, float* scales,
                               cudaStream_t stream) {
  if (rows < 0 || cols <= 0 || row_stride < cols) {
    return Status::Invalid("token scales: need rows >= 0, cols > 0 and row_stride >= cols");
  }
  if (rows == 0) return Status::Ok();
  if (x == nullptr || scales == nullptr) {
    return Status::Invalid("token scales: x and scales must be non-null");
  }
  if ((rows + kWarpsPerBlock - 1) / kWarpsPerBlock > INT32_MAX) {
    return Status::Unsupported("token scales: too many rows");
  }
  switch (dtype) {
    case DType::kBFloat16:
      return launch_typed<__nv_bfloat16>(x, rows, cols, row_stride, rows_device, scales, stream);
    case DType::kFloat16:
      return launch_typed<__half>(x, rows, cols, row_stride, rows_device, scales, stream);
    case DType::kFloat32:
      return launch_typed<float>(x, rows, cols, row_stride, rows_device, scales, stream);
    default:
      return Status::BadType(std::string("token scales: x must be bfloat16, float16 or float32, "
                                         "got ") + dtype_name(dtype));
  }
}

namespace {

/// One warp per token (quantize_row_warp_to_rows, token_quantize.cuh).
template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    token_quantize_fp8_to_rows_kernel(T const* __restrict__ x, int64_t tokens, int64_t cols,
                                      int64_t row_stride, bool vec16,
                                      int32_t const* __restrict__ slot_row, int k,
                                      float* __restrict__ scales, uint8_t* __restrict__ dense) {
  int64_t const t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (t >= tokens) return;
  quantize_row_warp_to_rows<T>(x + t * row_stride, cols, vec16, threadIdx.x % 32, scales + t,
                               dense, slot_row + t * k, k);
}

template <typename T>
Status launch_to_rows_typed(void const* x, int64_t tokens, int64_t cols, int64_t row_stride,
                            int32_t const* slot_row, int k, float* scales, void* dense,
                            cudaStream_t stream) {
  bool const vec16 = rows_allow_vec16<T>(x, row_stride, cols);
  int64_t const blocks = (tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  token_quantize_fp8_to_rows_kernel<T>
      <<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(
          static_cast<T const*>(x), tokens, cols, row_stride, vec16, slot_row, k, scales,
          static_cast<uint8_t*>(dense));
  FLASHMOE_LAUNCH_CHECK("token_quantize_fp8_to_rows_kernel");
  return Status::Ok();
}

}  // namespace

Status launch_token_quantize_fp8_to_rows(void const* x, DType dtype, int64_t tokens, int64_t cols,
                                         int64_t row_stride, int32_t const* slot_row, int k,
                                         float* scales, void* dense, cudaStream_t stream) {
  if (tokens < 0 || cols <= 0 || row_stride < cols || k <= 0) {
    return Status::Invalid("token quantize to rows: need tokens >= 0, cols > 0, row_stride >= "
                           "cols and k > 0");
  }
  if (cols % 16 != 0 || reinterpret_cast<std::uintptr_t>(dense) % 16 != 0) {
    return Status::Unsupported("token quantize to rows: needs cols % 16 == 0 (got " +
                               std::to_string(cols) + ") and a 16-byte aligned dense buffer");
  }
  if (tokens == 0) return Status::Ok();
  if (x == nullptr || slot_row == nullptr || scales == nullptr || dense == nullptr) {
    return Status::Invalid("token quantize to rows: x, slot_row, scales and dense must be "
                           "non-null");
  }
  if ((tokens + kWarpsPerBlock - 1) / kWarpsPerBlock > INT32_MAX) {
    return Status::Unsupported("token quantize to rows: too many tokens");
  }
  switch (dtype) {
    case DType::kBFloat16:
      return launch_to_rows_typed<__nv_bfloat16>(x, tokens, cols, row_stride, slot_row, k, scales,
                                                 dense, stream);
    case DType::kFloat16:
      return launch_to_rows_typed<__half>(x, tokens, cols, row_stride, slot_row, k, scales, dense,
                                          stream);
    default:
      return Status::BadType(std::string("token quantize to rows: x must be bfloat16 or float16, "
                                         "got ") + dtype_name(dtype));
  }
}

namespace {

__global__ void __launch_bounds__(256) gather_rows_fp8_kernel(
    uint4 const* src, int64_t src_stride16, int32_t const* index, int32_t const* rows_device,
    int64_t max_rows, int64_t cols16, uint4* dst, int64_t dst_stride16) {
  int64_t const rows =
      rows_device != nullptr ? min(max_rows, static_cast<int64_t>(*rows_device)) : max_rows;
  for (int64_t d = blockIdx.x; d < rows; d += gridDim.x) {
    int64_t const s = index[d];
    for (int64_t c = threadIdx.x; c < cols16; c += blockDim.x) {
      dst[d * dst_stride16 + c] = src[s * src_stride16 + c];
    }
  }
}

}  // namespace

Status launch_gather_rows_fp8(void const* src, int64_t src_stride, int32_t const* index,
                              int32_t const* rows_device, int64_t max_rows, int64_t cols,
                              void* dst, int64_t dst_stride, cudaStream_t stream) {
  if (cols % 16 != 0 || src_stride % 16 != 0 || dst_stride % 16 != 0 ||
      reinterpret_cast<std::uintptr_t>(src) % 16 != 0 ||
      reinterpret_cast<std::uintptr_t>(dst) % 16 != 0) {
    return Status::Unsupported("gather_rows_fp8: rows, strides and pointers must be 16-byte "
                               "aligned, cols % 16 == 0; got cols = " + std::to_string(cols));
  }
  if (max_rows <= 0) return Status::Ok();
  // Enough blocks to keep the copy bandwidth-bound; each walks rows with a grid stride.
  int const blocks = static_cast<int>(std::min<int64_t>(max_rows, 16 * 132));
  gather_rows_fp8_kernel<<<blocks, 256, 0, stream>>>(
      static_cast<uint4 const*>(src), src_stride / 16, index, rows_device, max_rows, cols / 16,
      static_cast<uint4*>(dst), dst_stride / 16);
  FLASHMOE_LAUNCH_CHECK("gather_rows_fp8_kernel");
  return Status::Ok();
}

}  // namespace flashmoe::gemm
