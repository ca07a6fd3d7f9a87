// The CPU reference of the fused MoE op (flashmoe/reference.h): float64 everywhere, one rounding
// at the output. Experts are processed one at a time so that only one expert's weights are ever
// held in float64, which keeps real model shapes usable on the host.
#include "flashmoe/reference.h"

#include <cmath>
#include <string>
#include <vector>

#include "flashmoe/quantization.h"
#include "reference/float_bits.h"
#include "common/str_cat.h"

namespace flashmoe {
namespace {

using detail::cat;

// One computed slot: token t contributes weight * y_e(x_t) to its output row.
struct Slot {
  int64_t t;
  double weight;
};

// Matrix `expert` of a [E_local, in, out] (kInOut) or [E_local, out, in] (kOutIn) array, as
// float64 in [in, out] order, with the precision mode's rounding of weights applied.
std::vector<double> load_weight(void const* data, DType dtype, WeightLayout layout,
                                Precision precision, int64_t expert, int64_t in, int64_t out) {
  std::vector<double> w(static_cast<size_t>(in * out));
  int64_t const base = expert * in * out;
  for (int64_t i = 0; i < in; ++i) {
    for (int64_t o = 0; o < out; ++o) {
      int64_t const src = layout == WeightLayout::kInOut ? i * out + o : o * in + i;
      w[i * out + o] = detail::load_as_double(data, dtype, base + src);
    }
  }
  if (precision == Precision::kBF16) {
    for (double& v : w) v = round_to_bf16(v);
  } else if (precision == Precision::kFP8) {
    // One group per output channel, over the input dimension (a column of [in, out]).
    for (int64_t o = 0; o < out; ++o) fake_quantize_e4m3_group(&w[o], in, out);
  }
  return w;
}

// y[0:out] = x[0:in] @ w, w in [in, out] order.
void matvec(double const* x, std::vector<double> const& w, int64_t in, int64_t out, double* y) {
  for (int64_t o = 0; o < out; ++o) y[o] = 0.0;
  for (int64_t i = 0; i < in; ++i) {
    double const xi = x[i];
    double const* row = &w[i * out];
    for (int64_t o = 0; o < out; ++o) y[o] += xi * row[o];
  }
}

double activate(Activation act, double g) {
  if (act == Activation::kSilu) return g / (1.0 + std::exp(-g));
  return g * 0.5 * (1.0 + std::erf(g / std::sqrt(2.0)));
}

}  // namespace

Status reference_fused_moe(MoeProblem const& problem, MoeArgs const& args) {
  FLASHMOE_RETURN_IF_ERROR(validate_problem(problem));
  if (problem.weights_prepared) {
    return Status::Unsupported(
        "prepared (E4M3) expert weights run on the GPU only; the CPU reference takes raw "
        "weights with precision=\"fp8\"");
  }
  int64_t const T = problem.num_tokens;
  int64_t const H = problem.hidden;
  int64_t const E = problem.num_experts;
  int64_t const local_experts = problem.num_local_experts;
  int64_t const D = problem.output_dim();
  int64_t const I = problem.inter_dim;
  bool const ffn = problem.kind == ExpertKind::kGatedFFN;
  int const k = problem.routing.top_k;

  if (T > 0) {
    if (args.tokens == nullptr) return Status::Invalid("tokens must not be null");
    if (args.w1 == nullptr) return Status::Invalid("expert_weights must not be null");
    if (ffn && args.w2 == nullptr) {
      return Status::Invalid("expert_weights of gated-FFN experts need w_down (w2), got null");
    }
    if (args.out == nullptr) return Status::Invalid("out must not be null");
  }
  if (problem.has_expert_map) {
    if (args.expert_map == nullptr) return Status::Invalid("expert_map is marked present but null");
    for (int64_t e = 0; e < E; ++e) {
      int32_t const m = args.expert_map[e];
      if (m < -1 || m >= local_experts) {
        return Status::Invalid(cat("expert_map values must be in -1..", local_experts - 1,
                                   " (-1 = not local), got ", m, " at expert ", e));
      }
    }
  }

  RoutingResult routing;
  FLASHMOE_RETURN_IF_ERROR(route_tokens_reference(problem, args, &routing));

  if (args.topk_ids_out != nullptr) {
    for (int64_t i = 0; i < T * k; ++i) args.topk_ids_out[i] = routing.topk_ids[i];
  }
  if (args.topk_weights_out != nullptr) {
    for (int64_t i = 0; i < T * k; ++i) {
      args.topk_weights_out[i] = static_cast<float>(routing.topk_weights[i]);
    }
  }
  if (args.expert_load != nullptr) {
    for (int64_t e = 0; e < E; ++e) args.expert_load[e] = routing.expert_load[e];
  }
  if (args.drop_reroute_counts != nullptr) {
    args.drop_reroute_counts[0] = routing.dropped;
    args.drop_reroute_counts[1] = routing.rerouted;
  }
  if (T == 0) return Status::Ok();

  // Tokens in float64, with the precision mode's rounding.
  std::vector<double> x(static_cast<size_t>(T * H));
  for (int64_t i = 0; i < T * H; ++i) {
    x[i] = detail::load_as_double(args.tokens, problem.token_dtype, i);
  }
  if (problem.precision == Precision::kBF16) {
    for (double& v : x) v = round_to_bf16(v);
  } else if (problem.precision == Precision::kFP8) {
    for (int64_t t = 0; t < T; ++t) fake_quantize_e4m3_group(&x[t * H], H, 1);
  }

  // The computed slots of each local expert (non-local and dropped slots contribute nothing).
  std::vector<std::vector<Slot>> slots(static_cast<size_t>(local_experts));
  for (int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < k; ++j) {
      int32_t const e = routing.topk_ids[t * k + j];
      if (e < 0) continue;
      int32_t const local = problem.has_expert_map ? args.expert_map[e] : e;
      if (local < 0) continue;
      slots[local].push_back({t, routing.topk_weights[t * k + j]});
    }
  }

  std::vector<double> acc(static_cast<size_t>(T * D), 0.0);  // a token with no slot stays zero
  std::vector<double> y(static_cast<size_t>(D));
  for (int64_t le = 0; le < local_experts; ++le) {
    if (slots[le].empty()) continue;
    if (!ffn) {
      std::vector<double> const w =
          load_weight(args.w1, problem.weight_dtype, problem.layout, problem.precision, le, H, D);
      for (Slot const& s : slots[le]) {
        matvec(&x[s.t * H], w, H, D, y.data());
        for (int64_t o = 0; o < D; ++o) acc[s.t * D + o] += s.weight * y[o];
      }
      continue;
    }
    std::vector<double> const w_gate_up =
        load_weight(args.w1, problem.weight_dtype, problem.layout, problem.precision, le, H, 2 * I);
    std::vector<double> const w_down =
        load_weight(args.w2, problem.weight_dtype, problem.layout, problem.precision, le, I, H);
    std::vector<double> gu(static_cast<size_t>(2 * I));
    std::vector<double> h(static_cast<size_t>(I));
    for (Slot const& s : slots[le]) {
      matvec(&x[s.t * H], w_gate_up, H, 2 * I, gu.data());
      for (int64_t i = 0; i < I; ++i) h[i] = activate(problem.activation, gu[i]) * gu[I + i];
      if (problem.precision == Precision::kFP8) {
        // FP8 paths store the intermediate as bf16 rows before quantizing them (the GEMM's A
        // operand is bf16), so the same-quantization reference rounds it to bf16 first too.
        for (int64_t i = 0; i < I; ++i) h[i] = round_to_bf16(h[i]);
        fake_quantize_e4m3_group(h.data(), I, 1);
      }
      matvec(h.data(), w_down, I, H, y.data());
      for (int64_t o = 0; o < D; ++o) acc[s.t * D + o] += s.weight * y[o];
    }
  }

  // One rounding, to the tokens' type.
  for (int64_t i = 0; i < T * D; ++i) {
    detail::store_from_double(args.out, problem.token_dtype, i, acc[i]);
  }
  return Status::Ok();
}

}  // namespace flashmoe
