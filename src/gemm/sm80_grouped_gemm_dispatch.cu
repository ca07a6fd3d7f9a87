// flashmoe: the dispatch switch of the sm_80 grouped GEMM (dtype x tile -> compiled variant).
#include "gemm/grouped_gemm_args.h"
#include "gemm/sm80_grouped_gemm_instances.h"

namespace flashmoe::gemm {

Status launch_sm80_grouped_gemm(GroupedGemmArgs const& args, DType dtype, GemmTile tile,
                                WeightLayout layout, bool gate_up, cudaStream_t stream) {
  bool const small = tile == GemmTile::kM16N128;
  switch (dtype) {
    case DType::kBFloat16:
      return small ? launch_sm80_grouped_gemm_bf16_m16(args, layout, gate_up, stream)
                   : launch_sm80_grouped_gemm_bf16_m128(args, layout, gate_up, stream);
    case DType::kFloat16:
      return small ? launch_sm80_grouped_gemm_fp16_m16(args, layout, gate_up, stream)
                   : launch_sm80_grouped_gemm_fp16_m128(args, layout, gate_up, stream);
    default:
      return Status::Unsupported(std::string("the sm_80 grouped GEMM takes bfloat16 or float16, got ") +
                                 dtype_name(dtype));
  }
}

}  // namespace flashmoe::gemm
