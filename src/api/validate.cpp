// validate_problem(): every check that needs only the problem description, not the data.
// Messages name the argument as the Python API spells it and say what was expected and got.
#include <cmath>
#include <string>

#include "flashmoe/options.h"
#include "common/str_cat.h"

namespace flashmoe {
namespace {

using detail::cat;

Status check_float_dtype(DType t, char const* name) {
  if (is_float_dtype(t)) return Status::Ok();
  return Status::BadType(
      cat(name, " must be float32, float64, float16 or bfloat16, got ", dtype_name(t)));
}

// The argument the routing space (E) comes from, for messages.
char const* experts_source(MoeProblem const& p) {
  if (!p.prerouted) return "routing_weights";
  return p.has_expert_map ? "expert_map" : "expert_weights";
}

Status validate_enums(MoeProblem const& p) {
  RoutingOptions const& r = p.routing;
  int const scoring = static_cast<int>(r.scoring);
  if (scoring < 0 || scoring > 2) {
    return Status::Invalid(
        cat("scoring must be 'softmax', 'sigmoid' or 'none', got value ", scoring));
  }
  int const overflow = static_cast<int>(r.overflow);
  if (overflow < 0 || overflow > 1) {
    return Status::Invalid(cat("overflow must be 'drop' or 'reroute', got value ", overflow));
  }
  int const activation = static_cast<int>(p.activation);
  if (activation < 0 || activation > 1) {
    return Status::Invalid(cat("activation must be 'silu' or 'gelu', got value ", activation));
  }
  int const layout = static_cast<int>(p.layout);
  if (layout < 0 || layout > 1) {
    return Status::Invalid(cat("layout must be 'in_out' or 'out_in', got value ", layout));
  }
  int const precision = static_cast<int>(p.precision);
  if (precision < 0 || precision > 2) {
    return Status::Invalid(cat("precision must be 'auto', 'bf16' or 'fp8', got value ", precision));
  }
  int const weight_scale = static_cast<int>(p.weight_scale);
  if (weight_scale < 0 || weight_scale > 2) {
    return Status::Invalid(
        cat("weight_scale must be 'none', 'channel' or 'block128', got value ", weight_scale));
  }
  int const kind = static_cast<int>(p.kind);
  if (kind < 0 || kind > 1) {
    return Status::Invalid(
        cat("expert_weights must describe linear experts (one array) or "
            "gated-FFN experts (w_gate_up, w_down), got kind value ",
            kind));
  }
  return Status::Ok();
}

// The expert weights' type: raw float weights, or FP8 weights prepared by prepare_experts_fp8()
// (E4M3 in the prepared layout, with scales), which only precision='fp8' reads.
Status validate_weights(MoeProblem const& p) {
  if (!p.weights_prepared) {
    if (p.weight_dtype == DType::kFloat8E4M3) {
      return Status::BadType(
          "expert_weights of dtype float8_e4m3fn must be prepared FP8 weights: make them with "
          "prepare_experts(...) and run them with precision='fp8' (weights_prepared)");
    }
    FLASHMOE_RETURN_IF_ERROR(check_float_dtype(p.weight_dtype, "expert_weights"));
    if (p.weight_scale != WeightScale::kNone) {
      return Status::Invalid(
          "weight_scale applies to prepared FP8 weights only (weights_prepared); raw "
          "expert_weights take weight_scale='none'");
    }
    return Status::Ok();
  }
  if (p.precision != Precision::kFP8) {
    return Status::Invalid(cat("prepared FP8 expert_weights (weights_prepared) run with "
                               "precision='fp8' only, got precision value ",
                               static_cast<int>(p.precision)));
  }
  if (p.weight_dtype != DType::kFloat8E4M3) {
    return Status::BadType(cat("prepared FP8 expert_weights (weights_prepared) must have dtype "
                               "float8_e4m3fn, got ",
                               dtype_name(p.weight_dtype)));
  }
  if (p.weight_scale == WeightScale::kNone) {
    return Status::Invalid(
        "prepared FP8 expert_weights (weights_prepared) need weight_scale 'channel' or "
        "'block128' (the kind of scales prepare_experts made), got 'none'");
  }
  return Status::Ok();
}

Status validate_shapes(MoeProblem const& p) {
  if (p.num_tokens < 0) {
    return Status::Invalid(cat("tokens must have >= 0 rows, got ", p.num_tokens));
  }
  if (p.hidden <= 0) {
    return Status::Invalid(cat("tokens must have a hidden size > 0, got ", p.hidden));
  }
  if (p.num_experts <= 0) {
    return Status::Invalid(
        cat(experts_source(p), " must describe at least one expert, got ", p.num_experts));
  }
  if (p.num_local_experts <= 0) {
    return Status::Invalid(
        cat("expert_weights must hold at least one expert, got ", p.num_local_experts));
  }
  if (!p.has_expert_map && p.num_local_experts != p.num_experts) {
    return Status::Invalid(cat("expert_weights holds ", p.num_local_experts, " experts but ",
                               experts_source(p), " has ", p.num_experts,
                               "; they must match unless expert_map is given"));
  }
  if (p.kind == ExpertKind::kLinear && p.out_dim <= 0) {
    return Status::Invalid(
        cat("expert_weights must have an output dimension D > 0, got ", p.out_dim));
  }
  if (p.kind == ExpertKind::kGatedFFN && p.inter_dim <= 0) {
    return Status::Invalid(
        cat("expert_weights must have an intermediate dimension I > 0, got ", p.inter_dim));
  }
  return Status::Ok();
}

Status validate_routing(MoeProblem const& p) {
  RoutingOptions const& r = p.routing;
  int64_t const E = p.num_experts;
  if (r.top_k < 1 || r.top_k > E) {
    return Status::Invalid(
        cat("top_k must be in 1..", E, " (the number of experts), got ", r.top_k));
  }
  if (!(r.temperature > 0.0) || !std::isfinite(r.temperature)) {
    return Status::Invalid(cat("temperature must be finite and > 0, got ", r.temperature));
  }
  if (r.scoring == Scoring::kNone && r.temperature != 1.0) {
    return Status::Invalid(
        cat("temperature must be 1.0 when scoring is 'none' (the inputs are "
            "already probabilities), got ",
            r.temperature));
  }
  if (r.n_group < 0) return Status::Invalid(cat("n_group must be >= 0, got ", r.n_group));
  if (r.n_group == 0) {
    if (r.topk_group != 0) {
      return Status::Invalid(
          cat("topk_group must be 0 when n_group is 0 (grouped top-k off), got ", r.topk_group));
    }
  } else {
    if (E % r.n_group != 0) {
      return Status::Invalid(
          cat("n_group must divide the number of experts (", E, "), got ", r.n_group));
    }
    if (r.topk_group < 1 || r.topk_group > r.n_group) {
      return Status::Invalid(
          cat("topk_group must be in 1..", r.n_group, " (n_group), got ", r.topk_group));
    }
    int64_t const eligible = static_cast<int64_t>(r.topk_group) * (E / r.n_group);
    if (r.top_k > eligible) {
      return Status::Invalid(cat("top_k must be <= topk_group * experts per group = ", r.topk_group,
                                 " * ", E / r.n_group, " = ", eligible, ", got ", r.top_k));
    }
  }
  if (!std::isfinite(r.routed_scaling_factor)) {
    return Status::Invalid(
        cat("routed_scaling_factor must be finite, got ", r.routed_scaling_factor));
  }
  double const c = r.capacity_factor;
  if (!(c == 0.0 || (c >= 1.0 && std::isfinite(c)))) {
    return Status::Invalid(
        cat("capacity_factor must be None/0 (dropless) or a finite value >= 1, got ", c));
  }
  if (r.overflow == Overflow::kReroute && p.prerouted) {
    return Status::Invalid(
        "overflow='reroute' is not available with topk_ids (pre-routed input): the reroute "
        "order needs routing_weights; use overflow='drop'");
  }
  return Status::Ok();
}

}  // namespace

Status validate_problem(MoeProblem const& problem) {
  FLASHMOE_RETURN_IF_ERROR(validate_enums(problem));
  FLASHMOE_RETURN_IF_ERROR(check_float_dtype(problem.token_dtype, "tokens"));
  FLASHMOE_RETURN_IF_ERROR(validate_weights(problem));
  // Pre-routed input has no routing_weights array, so its type is not looked at.
  if (!problem.prerouted) {
    FLASHMOE_RETURN_IF_ERROR(check_float_dtype(problem.score_dtype, "routing_weights"));
  }
  FLASHMOE_RETURN_IF_ERROR(validate_shapes(problem));
  return validate_routing(problem);
}

int64_t expert_capacity(MoeProblem const& problem) {
  int64_t const assignments = problem.num_tokens * problem.routing.top_k;
  // Dropless: no expert can receive more than every assignment.
  if (!(problem.routing.capacity_factor > 0.0)) return assignments;
  double const cap = std::ceil(problem.routing.capacity_factor * static_cast<double>(assignments) /
                               static_cast<double>(problem.num_experts));
  return static_cast<int64_t>(cap);
}

}  // namespace flashmoe
