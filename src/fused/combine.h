// flashmoe (internal): the combine stage (combine_kernel.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "flashmoe/types.h"

namespace flashmoe::fused {

/// out[t, :] = sum_j weights[t*k+j] * y[slot_row[t*k+j], :] over j with slot_row >= 0.
struct CombineParams {
  void const* y = nullptr;            // [rows, cols] expert outputs, one row per assignment
  int32_t const* slot_row = nullptr;  // [T * k] row of each slot in y, -1 = not computed
  float const* weights = nullptr;     // [T * k] combine weights
  void* out = nullptr;                // [T, cols]
  int64_t num_tokens = 0;
  int32_t top_k = 0;
  int64_t cols = 0;                   // a multiple of 8 (16-byte vectors)
};

/// Enqueues the combine (bf16 or fp16 y/out).
Status launch_combine(CombineParams const& p, DType dtype, cudaStream_t stream);

}  // namespace flashmoe::fused
