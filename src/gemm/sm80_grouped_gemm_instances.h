// flashmoe (internal): the compiled variants of the sm_80 grouped GEMM, one function per
// dtype x tile (each switches over layout x epilogue). Defined in sm80_grouped_gemm_<dt>_<tile>.cu.
#pragma once

#include "gemm/grouped_gemm_args.h"

namespace flashmoe::gemm {

Status launch_sm80_grouped_gemm_bf16_m16(GroupedGemmArgs const& args, WeightLayout layout,
                                         bool gate_up, cudaStream_t stream);
Status launch_sm80_grouped_gemm_bf16_m128(GroupedGemmArgs const& args, WeightLayout layout,
                                          bool gate_up, cudaStream_t stream);
Status launch_sm80_grouped_gemm_fp16_m16(GroupedGemmArgs const& args, WeightLayout layout,
                                         bool gate_up, cudaStream_t stream);
Status launch_sm80_grouped_gemm_fp16_m128(GroupedGemmArgs const& args, WeightLayout layout,
                                          bool gate_up, cudaStream_t stream);
// W8A16 (E4M3 weights, prepared layout), sm80_grouped_gemm_w8_<dt>.cu.
Status launch_sm80_grouped_gemm_w8_bf16(GroupedGemmArgs const& args, GemmTile tile, bool gate_up,
                                        cudaStream_t stream);
Status launch_sm80_grouped_gemm_w8_fp16(GroupedGemmArgs const& args, GemmTile tile, bool gate_up,
                                        cudaStream_t stream);

}  // namespace flashmoe::gemm
