// flashmoe: instantiations of the sm_80 grouped GEMM with E4M3 weights (W8A16) for fp16
// activations, both tiles (one file per dtype, so they compile in parallel). See
// sm80_grouped_gemm.cuh (kW8) and grouped_gemm_args.h (w_scales).
#include "gemm/sm80_grouped_gemm.cuh"
#include "gemm/sm80_grouped_gemm_instances.h"

namespace flashmoe::gemm {

Status launch_sm80_grouped_gemm_w8_fp16(GroupedGemmArgs const& args, GemmTile tile, bool gate_up,
                                       cudaStream_t stream) {
  if (tile == GemmTile::kM16N128) {
    return gate_up ? run_sm80_grouped_gemm<__half, Sm80TileM16N128, true, true, true>(args, stream)
                   : run_sm80_grouped_gemm<__half, Sm80TileM16N128, true, false, true>(args, stream);
  }
  return gate_up ? run_sm80_grouped_gemm<__half, Sm80TileM128N128W8, true, true, true>(args, stream)
                 : run_sm80_grouped_gemm<__half, Sm80TileM128N128W8, true, false, true>(args, stream);
}

}  // namespace flashmoe::gemm
