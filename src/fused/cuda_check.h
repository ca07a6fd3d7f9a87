// flashmoe (internal): CUDA error checks that turn a failed runtime call into a Status naming the
// call, the file and the line. Host code only; every launch is followed by FLASHMOE_LAUNCH_CHECK.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "flashmoe/types.h"

namespace flashmoe::detail {

inline Status cuda_status(cudaError_t err, char const* what, char const* file, int line) {
  return Status(StatusCode::kCudaError, std::string(file) + ":" + std::to_string(line) + ": " +
                                            what + " failed: " + cudaGetErrorName(err) + " (" +
                                            cudaGetErrorString(err) + ")");
}

}  // namespace flashmoe::detail

/// Returns a kCudaError Status from the enclosing function when `expr` is not cudaSuccess.
#define FLASHMOE_CUDA_CHECK(expr)                                                        \
  do {                                                                                   \
    cudaError_t const _fm_err = (expr);                                                  \
    if (_fm_err != cudaSuccess) {                                                        \
      return ::flashmoe::detail::cuda_status(_fm_err, #expr, __FILE__, __LINE__);        \
    }                                                                                    \
  } while (0)

/// Checks the launch that precedes it (configuration errors surface here, without a sync).
#define FLASHMOE_LAUNCH_CHECK(kernel_name)                                               \
  do {                                                                                   \
    cudaError_t const _fm_err = cudaGetLastError();                                     \
    if (_fm_err != cudaSuccess) {                                                        \
      return ::flashmoe::detail::cuda_status(_fm_err, "launch of " kernel_name, __FILE__, \
                                             __LINE__);                                  \
    }                                                                                    \
  } while (0)
