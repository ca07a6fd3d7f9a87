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

Status launch_sm80_grouped_gemm_w8(GroupedGemmArgs const& args, DType dtype, GemmTile tile,
                                   bool gate_up, cudaStream_t stream) {
  if (args.w_scales == nullptr) {
    return Status::Invalid("sm80 w8a16 gemm: the E4M3 weights' scales (w_scales) are null");
  }
  if (args.k % 16 != 0) {
    return Status::Unsupported("sm80 w8a16 gemm: K must be a multiple of 16 (16-byte E4M3 rows)");
  }
  switch (dtype) {
    case DType::kBFloat16:
      return launch_sm80_grouped_gemm_w8_bf16(args, tile, gate_up, stream);
    case DType::kFloat16:
      return launch_sm80_grouped_gemm_w8_fp16(args, tile, gate_up, stream);
    default:
      return Status::Unsupported(std::string("the sm_80 W8A16 GEMM takes bfloat16 or float16 "
                                             "activations, got ") + dtype_name(dtype));
  }
}

}  // namespace flashmoe::gemm
