// flashmoe (internal): the sm_90a bf16/fp16 grouped expert GEMM (TMA + wgmma) -- host interface.
// Host-only header; the kernel is in sm90_grouped_gemm.cuh.
//
// It computes exactly the function of the sm_80 kernel (grouped_gemm_args.h: gathered A rows,
// B in either layout, plain or gate-up epilogue, C in the operands' dtype), with fp32
// accumulation over the whole K, from a tile list built with tile_m = kSm90GemmBlockM.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "flashmoe/options.h"
#include "flashmoe/types.h"
#include "gemm/grouped_gemm_args.h"

namespace flashmoe::gemm {

/// Rows of a work item: the routing's tile list must be built with this tile_m.
inline constexpr int kSm90GemmBlockM = 128;
/// Weight columns of a work item (two math warpgroups x 128; gate-up: 2 x (64 gate + 64 up)).
inline constexpr int kSm90GemmBlockN = 256;
/// Bytes of the work-queue slice a launch needs (zero before it; left zero after it).
inline constexpr std::size_t kSm90GemmSchedulerBytes = 2 * sizeof(int32_t);

/// The current device's SM count, or kNotSupported (naming `who`) unless it is compute
/// capability 9.0: the sm_90a kernels (wgmma, TMA) run there only. Shared by both launchers.
Status sm90_device_sms(char const* who, int* num_sms);

/// Whether this build holds sm_90a code for the kernel (false when CMAKE_CUDA_ARCHITECTURES lacks
/// 90a-real). Needs a CUDA device to ask; false without one.
bool sm90_grouped_gemm_built();

/// Checks shapes and alignments (no device access); kNotSupported names the limit.
Status check_sm90_grouped_gemm(GroupedGemmArgs const& args, DType dtype, WeightLayout layout);

/// Enqueues the GEMM on `stream`: one persistent kernel, one CTA per SM (max_ctas > 0: fewer,
/// for tests), work items taken from `scheduler` (kSm90GemmSchedulerBytes of device memory).
/// Needs a compute capability 9.0 device. Never allocates, never synchronizes.
Status launch_sm90_grouped_gemm(GroupedGemmArgs const& args, DType dtype, WeightLayout layout,
                                bool gate_up, int32_t* scheduler, cudaStream_t stream,
                                int max_ctas = 0);

}  // namespace flashmoe::gemm
