// flashmoe: preparing FP8 expert weights on the GPU (flashmoe/quantization.h) -- sizes of the
// prepared layout and prepare_experts_fp8(), a thin host wrapper of the quantization kernel
// (gemm/quantize_weights_fp8.h), which defines the bytes.
#include <cstddef>
#include <cstdint>
#include <string>

#include "flashmoe/options.h"
#include "flashmoe/quantization.h"
#include "flashmoe/types.h"
#include "gemm/quantize_weights_fp8.h"
#include "common/str_cat.h"

namespace flashmoe {
namespace {

using detail::cat;

// K (inputs) and N_raw (output channels) of matrix `which`; gate_up for the FFN's w1.
Status matrix_dims(MoeProblem const& p, int which, int64_t* k, int64_t* n_raw, bool* gate_up) {
  if (p.num_local_experts <= 0 || p.hidden <= 0) {
    return Status::Invalid(cat("prepare_experts: expert_weights must hold at least one expert "
                               "and tokens a hidden size > 0, got E_local = ",
                               p.num_local_experts, ", H = ", p.hidden));
  }
  if (p.kind == ExpertKind::kLinear) {
    if (which != 1) {
      return Status::Invalid(cat("prepare_experts: linear experts have one weight matrix "
                                 "(which = 1), got which = ",
                                 which));
    }
    if (p.out_dim <= 0) {
      return Status::Invalid(
          cat("prepare_experts: expert_weights must have an output dimension D > 0, got ",
              p.out_dim));
    }
    *k = p.hidden;
    *n_raw = p.out_dim;
    *gate_up = false;
    return Status::Ok();
  }
  if (p.kind != ExpertKind::kGatedFFN) {
    return Status::Invalid(cat("prepare_experts: unknown expert kind value ",
                               static_cast<int>(p.kind)));
  }
  if (p.inter_dim <= 0) {
    return Status::Invalid(
        cat("prepare_experts: expert_weights must have an intermediate dimension I > 0, got ",
            p.inter_dim));
  }
  if (which == 1) {
    *k = p.hidden;
    *n_raw = 2 * p.inter_dim;
    *gate_up = true;
  } else if (which == 2) {
    *k = p.inter_dim;
    *n_raw = p.hidden;
    *gate_up = false;
  } else {
    return Status::Invalid(cat("prepare_experts: gated-FFN experts have matrices which = 1 "
                               "(w_gate_up) and 2 (w_down), got which = ",
                               which));
  }
  return Status::Ok();
}

Status check_pointer(void const* ptr, char const* name) {
  if (ptr == nullptr) return Status::Invalid(cat("prepare_experts: ", name, " must not be null"));
  return Status::Ok();
}

// Quantizes one matrix (or packs it, with its source scales, when it is already E4M3).
Status prepare_matrix(MoeProblem const& p, int which, void const* raw, float const* raw_scale,
                      WeightScale scale, void* w_fp8, float* w_scale, cudaStream_t stream) {
  PreparedLayout layout;
  FLASHMOE_RETURN_IF_ERROR(prepared_layout(p, which, scale, &layout));
  gemm::QuantizeWeightsFp8Params q;
  q.w = raw;
  q.w_dtype = p.weight_dtype;
  q.layout = p.layout;
  q.num_experts = layout.experts;
  q.k = layout.cols;
  q.n_raw = layout.channels;
  q.gate_up = layout.gate_up;
  q.scale_kind = scale == WeightScale::kBlock128 ? gemm::Fp8ScaleKind::kBlock128
                                                 : gemm::Fp8ScaleKind::kChannel;
  q.w_fp8 = w_fp8;
  q.scales = w_scale;
  q.source_scales = raw_scale;
  return gemm::launch_quantize_weights_fp8(q, stream);
}

}  // namespace

Status prepared_layout(MoeProblem const& problem, int which, WeightScale scale,
                       PreparedLayout* layout) {
  if (layout == nullptr) return Status::Invalid("prepare_experts: layout must not be null");
  *layout = PreparedLayout{};
  if (scale != WeightScale::kChannel && scale != WeightScale::kBlock128) {
    return Status::Invalid(cat("prepare_experts: weight_scale must be 'channel' or 'block128', "
                               "got value ",
                               static_cast<int>(scale)));
  }
  int64_t k = 0;
  int64_t n_raw = 0;
  bool gate_up = false;
  FLASHMOE_RETURN_IF_ERROR(matrix_dims(problem, which, &k, &n_raw, &gate_up));
  gemm::Fp8ScaleKind const kind = scale == WeightScale::kBlock128
                                      ? gemm::Fp8ScaleKind::kBlock128
                                      : gemm::Fp8ScaleKind::kChannel;
  PreparedLayout l;
  l.experts = problem.num_local_experts;
  l.rows = gemm::fp8_prepared_rows(n_raw, gate_up);
  l.cols = k;
  l.channels = n_raw;
  l.gate_up = gate_up;
  if (kind == gemm::Fp8ScaleKind::kChannel) {
    l.scale_rank = 2;
    l.scale_shape[0] = l.experts;
    l.scale_shape[1] = n_raw;
  } else {
    l.scale_rank = 3;
    l.scale_shape[0] = l.experts;
    l.scale_shape[1] = (n_raw + 127) / 128;
    l.scale_shape[2] = (k + 127) / 128;
  }
  l.weight_bytes = static_cast<std::size_t>(l.experts) * static_cast<std::size_t>(l.rows) *
                   static_cast<std::size_t>(l.cols);
  l.scale_bytes = sizeof(float) * static_cast<std::size_t>(l.experts) *
                  static_cast<std::size_t>(gemm::fp8_scales_per_expert(n_raw, k, kind));
  *layout = l;
  return Status::Ok();
}

std::size_t prepared_weight_bytes(MoeProblem const& problem, int which) {
  PreparedLayout l;
  // The bytes do not depend on the kind of scales.
  if (!prepared_layout(problem, which, WeightScale::kChannel, &l).ok()) return 0;
  return l.weight_bytes;
}

std::size_t prepared_scale_bytes(MoeProblem const& problem, int which, WeightScale scale) {
  PreparedLayout l;
  if (!prepared_layout(problem, which, scale, &l).ok()) return 0;
  return l.scale_bytes;
}

namespace {

// prepare_experts_fp8 (raw_scale null: quantize) and prepare_quantized_experts_fp8 (E4M3 weights
// with their scales: pack), which share every check but the weights' dtype.
Status prepare_or_pack(MoeProblem const& problem, void const* w1_raw, float const* w1_raw_scale,
                       void const* w2_raw, float const* w2_raw_scale, WeightScale scale,
                       void* w1_fp8, float* w1_scale, void* w2_fp8, float* w2_scale,
                       cudaStream_t stream) {
  MoeProblem const& p = problem;
  bool const packed = w1_raw_scale != nullptr;
  if (p.weights_prepared) {
    return Status::Invalid(
        "prepare_experts: the problem must describe the raw weights (weights_prepared = false)");
  }
  if (packed && p.weight_dtype != DType::kFloat8E4M3) {
    return Status::BadType(cat("prepare_experts: already-quantized expert_weights must be "
                               "float8_e4m3fn, got ",
                               dtype_name(p.weight_dtype)));
  }
  if (!packed && p.weight_dtype != DType::kBFloat16 && p.weight_dtype != DType::kFloat16 &&
      p.weight_dtype != DType::kFloat32) {
    return Status::BadType(cat("prepare_experts: expert_weights must be bfloat16, float16 or "
                               "float32, got ",
                               dtype_name(p.weight_dtype),
                               p.weight_dtype == DType::kFloat8E4M3
                                   ? " (already-quantized weights need their scales: "
                                     "prepare_quantized_experts_fp8)"
                                   : ""));
  }
  int const layout = static_cast<int>(p.layout);
  if (layout < 0 || layout > 1) {
    return Status::Invalid(cat("prepare_experts: layout must be 'in_out' or 'out_in', got value ",
                               layout));
  }
  bool const ffn = p.kind == ExpertKind::kGatedFFN;
  PreparedLayout l1;
  FLASHMOE_RETURN_IF_ERROR(prepared_layout(p, 1, scale, &l1));
  // The limits of the FP8 kernels, in the API's names (the quantizer would report them as K/N).
  if (p.hidden % 16 != 0) {
    return Status::Unsupported(cat("prepare_experts: FP8 weights need the hidden size H to be a "
                                   "multiple of 16, got ",
                                   p.hidden));
  }
  if (ffn) {
    if (p.inter_dim % 16 != 0) {
      return Status::Unsupported(cat("prepare_experts: FP8 gated-FFN weights need the "
                                     "intermediate dimension I to be a multiple of 16, got ",
                                     p.inter_dim));
    }
    if (scale == WeightScale::kBlock128 && p.inter_dim % gemm::kFp8GateUpHalf != 0) {
      return Status::Unsupported(cat("prepare_experts: block128 scales of gated-FFN weights "
                                     "need the intermediate dimension I to be a multiple of 64, "
                                     "got ",
                                     p.inter_dim));
    }
  }
  FLASHMOE_RETURN_IF_ERROR(check_pointer(w1_raw, ffn ? "w_gate_up" : "expert_weights"));
  if (packed && ffn) FLASHMOE_RETURN_IF_ERROR(check_pointer(w2_raw_scale, "w_down's scales"));
  FLASHMOE_RETURN_IF_ERROR(check_pointer(w1_fp8, "w1_fp8"));
  FLASHMOE_RETURN_IF_ERROR(check_pointer(w1_scale, "w1_scale"));
  if (ffn) {
    FLASHMOE_RETURN_IF_ERROR(check_pointer(w2_raw, "w_down"));
    FLASHMOE_RETURN_IF_ERROR(check_pointer(w2_fp8, "w2_fp8"));
    FLASHMOE_RETURN_IF_ERROR(check_pointer(w2_scale, "w2_scale"));
  }
  if (reinterpret_cast<std::uintptr_t>(w1_fp8) % 16 != 0 ||
      (ffn && reinterpret_cast<std::uintptr_t>(w2_fp8) % 16 != 0)) {
    return Status::Invalid("prepare_experts: w1_fp8 and w2_fp8 must be 16-byte aligned");
  }
  FLASHMOE_RETURN_IF_ERROR(
      prepare_matrix(p, 1, w1_raw, w1_raw_scale, scale, w1_fp8, w1_scale, stream));
  if (ffn) {
    FLASHMOE_RETURN_IF_ERROR(
        prepare_matrix(p, 2, w2_raw, packed ? w2_raw_scale : nullptr, scale, w2_fp8, w2_scale,
                       stream));
  }
  return Status::Ok();
}

}  // namespace

Status prepare_experts_fp8(MoeProblem const& problem, void const* w1_raw, void const* w2_raw,
                           WeightScale scale, void* w1_fp8, float* w1_scale, void* w2_fp8,
                           float* w2_scale, cudaStream_t stream) {
  return prepare_or_pack(problem, w1_raw, nullptr, w2_raw, nullptr, scale, w1_fp8, w1_scale,
                         w2_fp8, w2_scale, stream);
}

Status prepare_quantized_experts_fp8(MoeProblem const& problem, void const* w1_q,
                                     float const* w1_q_scale, void const* w2_q,
                                     float const* w2_q_scale, WeightScale scale, void* w1_fp8,
                                     float* w1_scale, void* w2_fp8, float* w2_scale,
                                     cudaStream_t stream) {
  if (w1_q_scale == nullptr) {
    return Status::Invalid(cat("prepare_quantized_experts_fp8: ",
                               problem.kind == ExpertKind::kGatedFFN ? "w_gate_up" : "expert_weights",
                               "'s scales must not be null"));
  }
  return prepare_or_pack(problem, w1_q, w1_q_scale, w2_q, w2_q_scale, scale, w1_fp8, w1_scale,
                         w2_fp8, w2_scale, stream);
}

}  // namespace flashmoe
