// flashmoe (internal): the per-row amax pre-pass of FP8 activations.
//
//   scales[r] = amax_c |x[r, c]| / 448   (float32 division; 1 when the row is all zero)
//
// for r < rows (or < min(rows, *rows_device) when rows_device is given: the device-side count of
// valid rows, e.g. the dense assignment count, so rows the previous kernel did not write are not
// read). The sm_90a FP8 GEMM then quantizes x[r, c] to e4m3(x[r, c] / scales[r]) inside its
// gather, so no quantized copy of the activations exists in device memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "flashmoe/types.h"

namespace flashmoe::gemm {

/// x: [rows, cols] (row_stride elements apart), bf16 / fp16 / fp32. scales: [rows] float32.
/// Enqueues one kernel on `stream`; never allocates, never synchronizes.
Status launch_token_scales_fp8(void const* x, DType dtype, int64_t rows, int64_t cols,
                               int64_t row_stride, int32_t const* rows_device, float* scales,
                               cudaStream_t stream);

/// The scales above plus the quantized rows, in one pass (one warp per row, the row read twice,
/// the second time from L1/L2):
///
///   x_fp8[r, c] = e4m3(x[r, c] * (1 / scales[r]))     c < cols, r < the row limit above
///
/// with the reciprocal in float32 (IEEE division), the product in float32 and cvt.rn.satfinite --
/// bit for bit the bytes the sm_90a GEMM's own gather produces, so that a GEMM given these rows
/// (Sm90Fp8GemmParams::a_fp8) writes the same output as one that quantizes `x` itself, while it
/// gathers half the bytes and does no conversion. x_fp8: [rows, cols] E4M3, fp8_row_stride bytes
/// apart. Needs cols % 16 == 0, fp8_row_stride % 16 == 0, fp8_row_stride >= cols, x_fp8 % 16 == 0
/// (the GEMM copies 16-byte chunks); bf16 / fp16 / fp32 x.
Status launch_token_quantize_fp8(void const* x, DType dtype, int64_t rows, int64_t cols,
                                 int64_t row_stride, int32_t const* rows_device, float* scales,
                                 void* x_fp8, int64_t fp8_row_stride, cudaStream_t stream);

/// launch_token_quantize_fp8's scales and E4M3 bytes for 16-bit tokens, each token's row written
/// straight to its slots' dense rows (MoeConfig::fp8_a_dense, the multi-kernel path; the one
/// kernel's dispatch does the same with the same device function):
///
///   scales[t] as above;  dense[slot_row[t*k + j], c] = e4m3(x[t, c] * (1 / scales[t]))
///
/// for t < tokens, j < k with slot_row >= 0, c < cols. One pass over x instead of a quantized
/// copy of every token then a gather of the routed rows. dense: rows of `cols` bytes; needs cols
/// % 16 == 0 and a 16-byte aligned dense; bf16 / fp16 x (float32 tokens take the two passes).
Status launch_token_quantize_fp8_to_rows(void const* x, DType dtype, int64_t tokens, int64_t cols,
                                         int64_t row_stride, int32_t const* slot_row, int k,
                                         float* scales, void* dense, cudaStream_t stream);

/// The routed E4M3 rows in dense order (MoeConfig::fp8_a_dense, the multi-kernel path):
///
///   dst[d, c] = src[index[d], c]      c < cols, d < min(max_rows, *rows_device)
///
/// (rows_device: the device-side dense count; null: max_rows). Rows of `cols` bytes, cols % 16
/// == 0, 16-byte aligned rows and strides (bytes). One block per row at a time, 16-byte copies.
Status launch_gather_rows_fp8(void const* src, int64_t src_stride, int32_t const* index,
                              int32_t const* rows_device, int64_t max_rows, int64_t cols,
                              void* dst, int64_t dst_stride, cudaStream_t stream);

}  // namespace flashmoe::gemm
