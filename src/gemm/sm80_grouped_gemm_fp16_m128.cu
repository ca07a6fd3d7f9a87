// flashmoe: instantiations of the sm_80 grouped GEMM for fp16 with the Sm80TileM128N128 tile (one file per
// dtype x tile, so the variants compile in parallel). See sm80_grouped_gemm.cuh.
#include "gemm/sm80_grouped_gemm.cuh"
#include "gemm/sm80_grouped_gemm_instances.h"

namespace flashmoe::gemm {

Status launch_sm80_grouped_gemm_fp16_m128(GroupedGemmArgs const& args, WeightLayout layout,
                                         bool gate_up, cudaStream_t stream) {
  bool const out_in = layout == WeightLayout::kOutIn;
  if (out_in) {
    return gate_up ? run_sm80_grouped_gemm<__half, Sm80TileM128N128, true, true>(args, stream)
                   : run_sm80_grouped_gemm<__half, Sm80TileM128N128, true, false>(args, stream);
  }
  return gate_up ? run_sm80_grouped_gemm<__half, Sm80TileM128N128, false, true>(args, stream)
                 : run_sm80_grouped_gemm<__half, Sm80TileM128N128, false, false>(args, stream);
}

}  // namespace flashmoe::gemm
