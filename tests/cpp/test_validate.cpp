// validate_problem() and expert_capacity(): every error status, with the argument named.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "flashmoe/options.h"

namespace flashmoe {
namespace {

double const kInf = std::numeric_limits<double>::infinity();
double const kNaN = std::numeric_limits<double>::quiet_NaN();

MoeProblem valid_linear() {
  MoeProblem p;
  p.num_tokens = 4;
  p.hidden = 8;
  p.num_experts = 16;
  p.num_local_experts = 16;
  p.out_dim = 6;
  p.routing.top_k = 2;
  return p;
}

MoeProblem valid_ffn() {
  MoeProblem p = valid_linear();
  p.kind = ExpertKind::kGatedFFN;
  p.out_dim = 0;
  p.inter_dim = 5;
  return p;
}

// Applies `mutate` to a valid problem and expects `code` with every piece of `needles` in the
// message.
void expect_error(std::function<void(MoeProblem&)> const& mutate, StatusCode code,
                  std::initializer_list<char const*> needles, MoeProblem base = valid_linear()) {
  mutate(base);
  Status const s = validate_problem(base);
  EXPECT_EQ(s.code(), code) << s.message();
  for (char const* n : needles) {
    EXPECT_NE(s.message().find(n), std::string::npos) << "'" << n << "' not in: " << s.message();
  }
}

TEST(Validate, ValidProblemsPass) {
  EXPECT_TRUE(validate_problem(valid_linear()).ok());
  EXPECT_TRUE(validate_problem(valid_ffn()).ok());
  MoeProblem p = valid_linear();
  p.num_tokens = 0;  // zero tokens is valid
  EXPECT_TRUE(validate_problem(p).ok());
  p = valid_linear();
  p.routing.top_k = 16;
  p.routing.scoring = Scoring::kSigmoid;
  p.routing.temperature = 0.25;
  p.routing.n_group = 4;
  p.routing.topk_group = 4;
  p.routing.capacity_factor = 1.0;
  p.routing.overflow = Overflow::kReroute;
  p.routing.routed_scaling_factor = -2.5;  // only finiteness is required
  p.has_correction_bias = true;
  p.token_dtype = DType::kBFloat16;
  p.weight_dtype = DType::kFloat16;
  p.score_dtype = DType::kFloat64;
  p.precision = Precision::kFP8;
  p.layout = WeightLayout::kOutIn;
  EXPECT_TRUE(validate_problem(p).ok()) << validate_problem(p).message();
  p = valid_linear();
  p.has_expert_map = true;
  p.num_local_experts = 3;  // a subset of the 16 global experts
  EXPECT_TRUE(validate_problem(p).ok());
  p = valid_linear();
  p.prerouted = true;
  p.score_dtype = DType::kInt32;  // no routing_weights: its type is not looked at
  p.routing.capacity_factor = 1.5;
  EXPECT_TRUE(validate_problem(p).ok());
}

TEST(Validate, TopKMessageIsExact) {
  MoeProblem p = valid_linear();
  p.routing.top_k = 17;
  Status const s = validate_problem(p);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "top_k must be in 1..16 (the number of experts), got 17");
  p.routing.top_k = 0;
  EXPECT_EQ(validate_problem(p).message(), "top_k must be in 1..16 (the number of experts), got 0");
}

TEST(Validate, Shapes) {
  auto const kI = StatusCode::kInvalidArgument;
  expect_error([](MoeProblem& p) { p.num_tokens = -1; }, kI, {"tokens", "got -1"});
  expect_error([](MoeProblem& p) { p.hidden = 0; }, kI, {"tokens", "hidden", "got 0"});
  expect_error([](MoeProblem& p) { p.num_experts = 0; }, kI, {"routing_weights", "got 0"});
  expect_error(
      [](MoeProblem& p) {
        p.num_experts = 0;
        p.prerouted = true;
      },
      kI, {"expert_weights", "got 0"});
  expect_error(
      [](MoeProblem& p) {
        p.num_local_experts = 0;
        p.has_expert_map = true;
      },
      kI, {"expert_weights", "got 0"});
  expect_error([](MoeProblem& p) { p.num_local_experts = 15; }, kI,
               {"expert_weights", "15", "routing_weights", "16", "expert_map"});
  expect_error([](MoeProblem& p) { p.out_dim = 0; }, kI, {"expert_weights", "got 0"});
  expect_error([](MoeProblem& p) { p.inter_dim = -3; }, kI, {"expert_weights", "got -3"},
               valid_ffn());
}

TEST(Validate, RoutingOptions) {
  auto const kI = StatusCode::kInvalidArgument;
  expect_error([](MoeProblem& p) { p.routing.top_k = -1; }, kI, {"top_k", "got -1"});
  expect_error([](MoeProblem& p) { p.routing.temperature = 0.0; }, kI, {"temperature", "got 0"});
  expect_error([](MoeProblem& p) { p.routing.temperature = -1.0; }, kI, {"temperature"});
  expect_error([](MoeProblem& p) { p.routing.temperature = kInf; }, kI, {"temperature", "inf"});
  expect_error([](MoeProblem& p) { p.routing.temperature = kNaN; }, kI, {"temperature", "nan"});
  expect_error(
      [](MoeProblem& p) {
        p.routing.scoring = Scoring::kNone;
        p.routing.temperature = 2.0;
      },
      kI, {"temperature", "none", "got 2"});
  expect_error([](MoeProblem& p) { p.routing.n_group = -2; }, kI, {"n_group", "got -2"});
  expect_error([](MoeProblem& p) { p.routing.topk_group = 2; }, kI, {"topk_group", "got 2"});
  expect_error(
      [](MoeProblem& p) {
        p.routing.n_group = 5;
        p.routing.topk_group = 1;
      },
      kI, {"n_group", "16", "got 5"});
  expect_error([](MoeProblem& p) { p.routing.n_group = 4; }, kI, {"topk_group", "1..4", "got 0"});
  expect_error(
      [](MoeProblem& p) {
        p.routing.n_group = 4;
        p.routing.topk_group = 5;
      },
      kI, {"topk_group", "got 5"});
  expect_error(
      [](MoeProblem& p) {
        p.routing.n_group = 8;  // groups of 2 experts
        p.routing.topk_group = 2;
        p.routing.top_k = 5;  // more than the 4 eligible experts
      },
      kI, {"top_k", "2 * 2 = 4", "got 5"});
  expect_error([](MoeProblem& p) { p.routing.routed_scaling_factor = kInf; }, kI,
               {"routed_scaling_factor"});
  expect_error([](MoeProblem& p) { p.routing.routed_scaling_factor = kNaN; }, kI,
               {"routed_scaling_factor"});
  expect_error([](MoeProblem& p) { p.routing.capacity_factor = 0.5; }, kI,
               {"capacity_factor", "got 0.5"});
  expect_error([](MoeProblem& p) { p.routing.capacity_factor = -1.0; }, kI, {"capacity_factor"});
  expect_error([](MoeProblem& p) { p.routing.capacity_factor = kInf; }, kI, {"capacity_factor"});
  expect_error([](MoeProblem& p) { p.routing.capacity_factor = kNaN; }, kI, {"capacity_factor"});
  expect_error(
      [](MoeProblem& p) {
        p.prerouted = true;
        p.routing.capacity_factor = 1.25;
        p.routing.overflow = Overflow::kReroute;
      },
      kI, {"overflow", "reroute", "topk_ids"});
}

TEST(Validate, EnumsOutOfRange) {
  auto const kI = StatusCode::kInvalidArgument;
  expect_error([](MoeProblem& p) { p.routing.scoring = static_cast<Scoring>(3); }, kI,
               {"scoring", "3"});
  expect_error([](MoeProblem& p) { p.routing.overflow = static_cast<Overflow>(-1); }, kI,
               {"overflow"});
  expect_error([](MoeProblem& p) { p.activation = static_cast<Activation>(2); }, kI,
               {"activation"});
  expect_error([](MoeProblem& p) { p.layout = static_cast<WeightLayout>(2); }, kI, {"layout"});
  expect_error([](MoeProblem& p) { p.precision = static_cast<Precision>(9); }, kI,
               {"precision", "9"});
  expect_error([](MoeProblem& p) { p.kind = static_cast<ExpertKind>(5); }, kI, {"expert_weights"});
}

TEST(Validate, DTypes) {
  auto const kT = StatusCode::kUnsupportedType;
  expect_error([](MoeProblem& p) { p.token_dtype = DType::kInt32; }, kT, {"tokens", "int32"});
  expect_error([](MoeProblem& p) { p.token_dtype = DType::kFloat8E4M3; }, kT,
               {"tokens", "float8_e4m3fn"});
  expect_error([](MoeProblem& p) { p.weight_dtype = DType::kInt64; }, kT,
               {"expert_weights", "int64"});
  expect_error([](MoeProblem& p) { p.score_dtype = DType::kInt32; }, kT,
               {"routing_weights", "int32"});
  expect_error([](MoeProblem& p) { p.token_dtype = static_cast<DType>(42); }, kT, {"tokens"});
}

TEST(Capacity, FormulaAndEvaluationOrder) {
  MoeProblem p = valid_linear();
  p.routing.capacity_factor = 1.25;
  p.num_tokens = 3;
  p.routing.top_k = 2;
  p.num_experts = 4;
  EXPECT_EQ(expert_capacity(p), 2);  // ceil(1.25 * 6 / 4) = ceil(1.875)
  p.routing.capacity_factor = 1.0;
  p.num_tokens = 8;
  EXPECT_EQ(expert_capacity(p), 4);  // exact: no rounding up
  // c * (T*k) first, then / E, in double: 1.1 * 50 = 55.000000000000007, / 5 =
  // 11.000000000000002 -> 12 (the real-number value would give 11).
  p.routing.capacity_factor = 1.1;
  p.num_tokens = 25;
  p.routing.top_k = 2;
  p.num_experts = 5;
  EXPECT_EQ(expert_capacity(p), 12);
  // ... and 1.3 * 70 / 13 = 7.0 exactly in that order (1.3 * (70 / 13) gives 7.000000000000001).
  p.routing.capacity_factor = 1.3;
  p.num_tokens = 35;
  p.num_experts = 13;
  EXPECT_EQ(expert_capacity(p), 7);
  p.num_tokens = 0;
  EXPECT_EQ(expert_capacity(p), 0);
  // Dropless: every assignment fits.
  p.routing.capacity_factor = 0.0;
  p.num_tokens = 10;
  EXPECT_EQ(expert_capacity(p), 20);
}

}  // namespace
}  // namespace flashmoe
