// The routing rules of flashmoe/routing.h on small crafted cases whose answers are worked out by
// hand in the comments.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "flashmoe/routing.h"
#include "reference/float_bits.h"

namespace flashmoe {
namespace {

using Ids = std::vector<int32_t>;
using Loads = std::vector<int32_t>;

// A routing-only problem over float32 scores (and optional bias / pre-routed input).
struct Case {
  MoeProblem problem;
  std::vector<float> scores;  // [T, E]
  std::vector<float> bias;    // [E] or empty
  Ids ids_in;                 // [T, k] when pre-routed
  std::vector<float> weights_in;

  Case(int64_t T, int64_t E, int k, Scoring scoring, bool renormalize) {
    problem.num_tokens = T;
    problem.hidden = 1;
    problem.num_experts = E;
    problem.num_local_experts = E;
    problem.out_dim = 1;
    problem.routing.top_k = k;
    problem.routing.scoring = scoring;
    problem.routing.renormalize = renormalize;
  }

  Status run(RoutingResult* r) {
    MoeArgs args;
    problem.has_correction_bias = !bias.empty();
    args.routing_weights = scores.empty() ? nullptr : scores.data();
    args.correction_bias = bias.empty() ? nullptr : bias.data();
    args.topk_ids_in = ids_in.empty() ? nullptr : ids_in.data();
    args.topk_weights_in = weights_in.empty() ? nullptr : weights_in.data();
    return route_tokens_reference(problem, args, r);
  }

  RoutingResult route() {
    RoutingResult r;
    Status const s = run(&r);
    EXPECT_TRUE(s.ok()) << s.message();
    return r;
  }

  void capacity(double c, Overflow overflow) {
    problem.routing.capacity_factor = c;
    problem.routing.overflow = overflow;
  }
};

double f(float x) { return static_cast<double>(x); }

void expect_weights(RoutingResult const& r, std::vector<double> const& want, double tol = 1e-15) {
  ASSERT_EQ(r.topk_weights.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(r.topk_weights[i], want[i], tol) << "slot " << i;
  }
}

// The softmax sum is pairwise (routing.h step 1), not sequential: with one term 1 and three tiny
// ones, the sequential sum drops each tiny term (1 + t rounds to 1), the pairwise one keeps two
// of them (1 + t) + (t + t) = 1 + 2t, one ulp above 1. The weight is 1 / that sum, bit for bit.
TEST(Routing, SoftmaxSumIsPairwise) {
  Case c(1, 4, 1, Scoring::kSoftmax, /*renormalize=*/false);
  c.scores = {0.0f, -36.5f, -36.5f, -36.5f};
  double const t = std::exp(static_cast<double>(-36.5f) - 0.0);
  double const pairwise = (1.0 + t) + (t + t);
  double const sequential = ((1.0 + t) + t) + t;
  ASSERT_NE(pairwise, sequential) << "the case must tell the two orders apart";
  RoutingResult const r = c.route();
  ASSERT_EQ(r.topk_ids, (Ids{0}));
  ASSERT_EQ(r.topk_weights.size(), 1u);
  EXPECT_EQ(r.topk_weights[0], 1.0 / pairwise);
  EXPECT_NE(r.topk_weights[0], 1.0 / sequential);
}

TEST(Routing, SoftmaxTopK) {
  // logits {1, 3, 2, 0}: top-2 = experts 1 (3) and 2 (2).
  Case c(1, 4, 2, Scoring::kSoftmax, /*renormalize=*/false);
  c.scores = {1, 3, 2, 0};
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{1, 2}));
  double const z = std::exp(-2.0) + std::exp(0.0) + std::exp(-1.0) + std::exp(-3.0);
  expect_weights(r, {1.0 / z, std::exp(-1.0) / z});
  EXPECT_EQ(r.expert_load, (Loads{0, 1, 1, 0}));
  // Renormalized: e^3 / (e^3 + e^2) = 1 / (1 + e^-1) = 0.7310585786300049.
  c.problem.routing.renormalize = true;
  r = c.route();
  expect_weights(r, {0.7310585786300049, 1 - 0.7310585786300049});
}

TEST(Routing, Temperature) {
  // logits / 2 = {0.5, 1.5, 1, 0}; renormalized top-2 = 1 / (1 + e^-0.5) = 0.6224593312018546.
  Case c(1, 4, 2, Scoring::kSoftmax, true);
  c.scores = {1, 3, 2, 0};
  c.problem.routing.temperature = 2.0;
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{1, 2}));
  expect_weights(r, {0.6224593312018546, 1 - 0.6224593312018546});
  // A low temperature sharpens: logits / 0.5 -> 1 / (1 + e^-2) = 0.8807970779778823.
  c.problem.routing.temperature = 0.5;
  r = c.route();
  expect_weights(r, {0.8807970779778823, 1 - 0.8807970779778823});
}

TEST(Routing, Sigmoid) {
  // sigmoid({0, 2, -1}) = {0.5, 0.8807970779778823, 0.2689...}: top-2 = experts 1, 0.
  Case c(1, 3, 2, Scoring::kSigmoid, false);
  c.scores = {0, 2, -1};
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{1, 0}));
  expect_weights(r, {0.8807970779778823, 0.5});
  c.problem.routing.renormalize = true;
  r = c.route();
  expect_weights(r, {0.8807970779778823 / 1.3807970779778823, 0.5 / 1.3807970779778823});
  // With temperature 2: sigmoid(1) = 0.7310585786300049.
  c.problem.routing.renormalize = false;
  c.problem.routing.temperature = 2.0;
  r = c.route();
  expect_weights(r, {0.7310585786300049, 0.5});
}

TEST(Routing, NoneScoringAndScalingFactor) {
  Case c(1, 3, 2, Scoring::kNone, false);
  c.scores = {0.125f, 0.5f, 0.25f};
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{1, 2}));
  expect_weights(r, {0.5, 0.25}, 0.0);
  c.problem.routing.routed_scaling_factor = 2.5;
  r = c.route();
  expect_weights(r, {1.25, 0.625}, 0.0);
  // Renormalize first, then scale: {2/3, 1/3} * 2.5.
  c.problem.routing.renormalize = true;
  r = c.route();
  expect_weights(r, {2.5 * 2 / 3, 2.5 / 3});
}

TEST(Routing, RenormalizeSkippedWhenSumIsNotPositive) {
  // Scoring "none" takes the inputs as they are; a zero sum leaves the weights unscaled.
  Case c(1, 3, 2, Scoring::kNone, true);
  c.scores = {0.0f, -1.0f, 0.0f};
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{0, 2}));
  expect_weights(r, {0.0, 0.0}, 0.0);
  c.scores = {-0.5f, -1.0f, -0.25f};  // sum -0.75 <= 0: kept as given
  r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{2, 0}));
  expect_weights(r, {-0.25, -0.5}, 0.0);
}

TEST(Routing, TiesGoToTheLowerExpertIndex) {
  Case c(2, 4, 3, Scoring::kNone, false);
  c.scores = {0.25f, 0.5f, 0.25f, 0.5f,   // token 0: 1 and 3 tie, then 0 and 2 tie
              0.1f,  0.1f, 0.1f,  0.1f};  // token 1: all equal
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{1, 3, 0, 0, 1, 2}));
  // Softmax of equal logits: all 1/4; renormalized over k = 3 -> 1/3 each.
  Case s(1, 4, 3, Scoring::kSoftmax, true);
  s.scores = {2, 2, 2, 2};
  r = s.route();
  EXPECT_EQ(r.topk_ids, (Ids{0, 1, 2}));
  expect_weights(r, {1.0 / 3, 1.0 / 3, 1.0 / 3});
}

// Groups of 2: g0 {0.50, 0.01}, g1 {0.40, 0.39}, g2 {0.45, 0.00}, g3 {0.10, 0.10}.
std::vector<float> const kGroupScores = {0.50f, 0.01f, 0.40f, 0.39f, 0.45f, 0.00f, 0.10f, 0.10f};

TEST(Routing, GroupedTopKWithoutBias) {
  // Group score = the group's max: g0 0.50 > g2 0.45 > g1 0.40 > g3. topk_group = 1 keeps g0, so
  // the top-2 is {0, 1} where the ungrouped top-2 would be {0, 4}.
  Case c(1, 8, 2, Scoring::kNone, false);
  c.scores = kGroupScores;
  c.problem.routing.n_group = 4;
  c.problem.routing.topk_group = 1;
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{0, 1}));
  expect_weights(r, {f(0.50f), f(0.01f)}, 0.0);
  // topk_group = 2 keeps g0 and g2: {0, 4}; k = 3 then adds 1 (0.01) over 5 (0.00).
  c.problem.routing.topk_group = 2;
  c.problem.routing.top_k = 3;
  r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{0, 4, 1}));
  // Without groups the third would be expert 2 (0.40).
  c.problem.routing.n_group = 0;
  c.problem.routing.topk_group = 0;
  r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{0, 4, 2}));
}

TEST(Routing, GroupedTopKWithBiasUsesTopTwoSum) {
  // With correction_bias (all zero here) a group scores the sum of its two largest q:
  // g0 0.51, g1 0.79, g2 0.45, g3 0.20 -> topk_group = 1 keeps g1: {2, 3}.
  Case c(1, 8, 2, Scoring::kNone, false);
  c.scores = kGroupScores;
  c.bias.assign(8, 0.0f);
  c.problem.routing.n_group = 4;
  c.problem.routing.topk_group = 1;
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{2, 3}));
  expect_weights(r, {f(0.40f), f(0.39f)}, 0.0);
}

TEST(Routing, GroupsOfOneExpertUseTheirSingleScore) {
  // n_group = E: each group is one expert; with bias its score is that expert's q.
  Case c(1, 4, 2, Scoring::kNone, false);
  c.scores = {0.1f, 0.4f, 0.3f, 0.2f};
  c.bias = {0.0f, 0.0f, 0.0f, 0.25f};  // q = {0.1, 0.4, 0.3, 0.45}
  c.problem.routing.n_group = 4;
  c.problem.routing.topk_group = 2;
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{3, 1}));
  expect_weights(r, {f(0.2f), f(0.4f)}, 0.0);
}

TEST(Routing, BiasSteersSelectionNotWeights) {
  // p = {0.5, 0.4, 0.3, 0.2}; bias on expert 2 gives q = {0.5, 0.4, 0.55, 0.2}: selection
  // {2, 0} in q order, but the weights are p = {0.3, 0.5}.
  Case c(1, 4, 2, Scoring::kNone, false);
  c.scores = {0.5f, 0.4f, 0.3f, 0.2f};
  c.bias = {0.0f, 0.0f, 0.25f, 0.0f};
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{2, 0}));
  expect_weights(r, {f(0.3f), 0.5}, 0.0);
  c.problem.routing.renormalize = true;
  r = c.route();
  expect_weights(r, {f(0.3f) / (f(0.3f) + 0.5), 0.5 / (f(0.3f) + 0.5)});
  // Without the bias: {0, 1}.
  c.bias.clear();
  r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{0, 1}));
}

TEST(Routing, DeepSeekStyleSigmoidGroupsBiasScale) {
  // E = 8, 4 groups of 2, topk_group 2, k = 3, sigmoid, bias, scale 2.5, renormalize.
  // logits chosen so sigmoid is easy to reason about: sigmoid(0) = 0.5, larger logits higher.
  // p = sigmoid({2, -2, 1, 1, 0, 3, -1, -3}); bias {0, 0, 0, 0, 0, -0.5, 0.6, 0}
  // q: e0 .881, e1 .119, e2 .731, e3 .731, e4 .5, e5 .953-.5 = .453, e6 .269+.6 = .869, e7 .047
  // group top-2 sums: g0 1.000, g1 1.462, g2 0.953, g3 0.916 -> keep g1, g0.
  // top-3 of {e0 .881, e1 .119, e2 .731, e3 .731}: e0, e2, e3 (tie -> lower index first).
  Case c(1, 8, 3, Scoring::kSigmoid, true);
  c.scores = {2, -2, 1, 1, 0, 3, -1, -3};
  c.bias = {0, 0, 0, 0, 0, -0.5f, 0.6f, 0};
  c.problem.routing.n_group = 4;
  c.problem.routing.topk_group = 2;
  c.problem.routing.routed_scaling_factor = 2.5;
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{0, 2, 3}));
  double const s2 = 0.8807970779778823, s1 = 0.7310585786300049;
  double const sum = s2 + s1 + s1;
  expect_weights(r, {2.5 * s2 / sum, 2.5 * s1 / sum, 2.5 * s1 / sum}, 1e-14);
}

TEST(Routing, ScoreDtypes) {
  // The same logits as float64, float16 and bfloat16 give the same routing.
  Case c(1, 4, 2, Scoring::kSoftmax, true);
  c.scores = {1, 3, 2, 0};
  RoutingResult const want = c.route();
  std::vector<double> f64 = {1, 3, 2, 0};
  std::vector<uint16_t> f16, b16;
  for (double v : f64) {
    f16.push_back(detail::double_to_fp16_bits(v));
    b16.push_back(detail::double_to_bf16_bits(v));
  }
  std::pair<DType, void const*> const inputs[] = {
      {DType::kFloat64, f64.data()}, {DType::kFloat16, f16.data()}, {DType::kBFloat16, b16.data()}};
  for (auto const& [dtype, data] : inputs) {
    MoeProblem p = c.problem;
    p.score_dtype = dtype;
    MoeArgs args;
    args.routing_weights = data;
    RoutingResult r;
    ASSERT_TRUE(route_tokens_reference(p, args, &r).ok());
    EXPECT_EQ(r.topk_ids, want.topk_ids);
    EXPECT_EQ(r.topk_weights, want.topk_weights);
  }
}

TEST(Routing, PreRouted) {
  // Ids and weights used as given: no renormalization, no routed_scaling_factor; -1 = no expert.
  Case c(2, 3, 2, Scoring::kSoftmax, true);
  c.problem.prerouted = true;
  c.problem.routing.routed_scaling_factor = 2.0;
  c.ids_in = {2, -1, 0, 1};
  c.weights_in = {0.7f, 0.3f, 0.4f, 0.9f};
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{2, -1, 0, 1}));
  expect_weights(r, {f(0.7f), 0.0, f(0.4f), f(0.9f)}, 0.0);
  EXPECT_EQ(r.expert_load, (Loads{1, 1, 1}));
  EXPECT_EQ(r.dropped, 0);
  EXPECT_EQ(r.rerouted, 0);
}

TEST(Routing, PreRoutedCapacityUsesGivenWeightsAsPriority) {
  // 4 tokens, E = 2, k = 1, c = 1: cap = ceil(4 / 2) = 2. Expert 0 is asked by tokens 0, 1, 2
  // with weights 0.2, 0.9, 0.5: keeps 1 and 2. Expert 1 (token 3) keeps it.
  Case c(4, 2, 1, Scoring::kSoftmax, true);
  c.problem.prerouted = true;
  c.ids_in = {0, 0, 0, 1};
  c.weights_in = {0.2f, 0.9f, 0.5f, 0.1f};
  c.capacity(1.0, Overflow::kDrop);
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{-1, 0, 0, 1}));
  expect_weights(r, {0.0, f(0.9f), f(0.5f), f(0.1f)}, 0.0);
  EXPECT_EQ(r.expert_load, (Loads{2, 1}));
  EXPECT_EQ(r.dropped, 1);
  EXPECT_EQ(r.rerouted, 0);
}

TEST(Capacity, DropKeepsBestTiesToLowerToken) {
  // T = 4, E = 2, k = 1, c = 1: cap = 2. Every token picks expert 0 with p = 0.6, 0.9, 0.6, 0.5
  // (token 3's 0.5/0.5 tie goes to expert 0). Expert 0 keeps token 1 (0.9) and, of the tied
  // 0.6s, token 0. Tokens 2 and 3 are dropped; weights are not rescaled.
  Case c(4, 2, 1, Scoring::kNone, false);
  c.scores = {0.6f, 0.4f, 0.9f, 0.1f, 0.6f, 0.4f, 0.5f, 0.5f};
  c.capacity(1.0, Overflow::kDrop);
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{0, 0, -1, -1}));
  expect_weights(r, {f(0.6f), f(0.9f), 0.0, 0.0}, 0.0);
  EXPECT_EQ(r.expert_load, (Loads{2, 0}));
  EXPECT_EQ(r.dropped, 2);
  EXPECT_EQ(r.rerouted, 0);
  // A larger factor keeps everything: cap = ceil(2 * 4 / 2) = 4.
  c.problem.routing.capacity_factor = 2.0;
  r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{0, 0, 0, 0}));
  EXPECT_EQ(r.dropped, 0);
}

TEST(Capacity, PriorityIsTheScoreNotTheCombineWeight) {
  // T = 2, E = 4, k = 2, renormalized, c = 1: cap = ceil(4 / 4) = 1.
  //   t0 p {.3 .1 .05 .05} -> {0, 1}, weights {.75, .25};
  //   t1 p {.4 0 .4 0}     -> {0, 2}, weights {.5, .5}.
  // At expert 0 the combine weights would favour t0 (.75 > .5) but the priority is p: t1 (.4)
  // beats t0 (.3). t0's slot 0 is dropped and its slot 1 keeps .25 (no rescaling).
  Case c(2, 4, 2, Scoring::kNone, true);
  c.scores = {0.3f, 0.1f, 0.05f, 0.05f, 0.4f, 0.0f, 0.4f, 0.0f};
  c.capacity(1.0, Overflow::kDrop);
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{-1, 1, 0, 2}));
  expect_weights(r, {0.0, f(0.1f) / (f(0.3f) + f(0.1f)), 0.5, 0.5});
  EXPECT_EQ(r.expert_load, (Loads{1, 1, 1, 0}));
  EXPECT_EQ(r.dropped, 1);
}

TEST(Reroute, MovesToNextBestWithItsWeight) {
  // T = 3, E = 3, k = 1, c = 1: cap = 1. All pick expert 0; it keeps token 2 (0.7).
  // Round 1: token 0 -> expert 1 (its next best, 0.3), token 1 -> expert 2 (0.3). Both accepted
  // and carry their original weights 0.5 and 0.6 (renormalize off), not the new experts' scores.
  Case c(3, 3, 1, Scoring::kNone, false);
  c.scores = {0.5f, 0.3f, 0.2f, 0.6f, 0.1f, 0.3f, 0.7f, 0.2f, 0.1f};
  c.capacity(1.0, Overflow::kReroute);
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{1, 2, 0}));
  expect_weights(r, {f(0.5f), f(0.6f), f(0.7f)}, 0.0);
  EXPECT_EQ(r.expert_load, (Loads{1, 1, 1}));
  EXPECT_EQ(r.dropped, 0);
  EXPECT_EQ(r.rerouted, 2);
  // The same case with drop loses both.
  c.problem.routing.overflow = Overflow::kDrop;
  r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{-1, -1, 0}));
  EXPECT_EQ(r.dropped, 2);
}

TEST(Reroute, TwoRoundsRankedByScoreAtTheNewExpert) {
  // cap = 1; expert 0 keeps token 2 (0.7 > 0.65 > 0.6). Round 1: tokens 0 and 1 both propose to
  // expert 1; it ranks them by p[t][1]: token 1 (0.38) beats token 0 (0.34), although token 0 had
  // the higher priority at expert 0. Round 2: token 0 -> expert 2.
  Case c(3, 3, 1, Scoring::kNone, false);
  c.scores = {0.65f, 0.34f, 0.01f, 0.6f, 0.38f, 0.02f, 0.7f, 0.2f, 0.1f};
  c.capacity(1.0, Overflow::kReroute);
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{2, 1, 0}));
  expect_weights(r, {f(0.65f), f(0.6f), f(0.7f)}, 0.0);
  EXPECT_EQ(r.expert_load, (Loads{1, 1, 1}));
  EXPECT_EQ(r.rerouted, 2);
  EXPECT_EQ(r.dropped, 0);
  // Equal scores at the new expert: the lower token index wins round 1.
  c.scores = {0.65f, 0.3f, 0.05f, 0.6f, 0.3f, 0.1f, 0.7f, 0.2f, 0.1f};
  r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{1, 2, 0}));
}

TEST(Reroute, TwoPendingSlotsOfOneTokenInOneRound) {
  // T = 3, E = 6, k = 2, c = 1: cap = ceil(6 / 6) = 1.
  //   t0 p {.40 .30 .10 .10 .05 .05} -> {0, 1}, kept at both.
  //   t1 p {.30 .25 .20 .15 .05 .05} -> {0, 1}, loses both (0.30 < 0.40, 0.25 < 0.30).
  //   t2 p {.35 .06 .05 .12 .30 .11} -> {0, 4}, loses expert 0, keeps 4.
  // Round 1 (full: 0, 1, 4): t1 slot 0 -> 2; t1 slot 1 skips 2 (its earlier slot proposes there)
  // -> 3; t2 slot 0 -> 3 (its order after 0, 4 is 3, 5, 1, 2). Expert 3 ranks p[.][3]: t1 .15
  // beats t2 .12. Round 2: t2 slot 0 -> 5 (0, 1, 2, 3, 4 full).
  // (Were slot 1 allowed to propose to 2 as well, t1 would end on {2, 5} and t2 on {3, 4}.)
  Case c(3, 6, 2, Scoring::kNone, false);
  c.scores = {0.40f, 0.30f, 0.10f, 0.10f, 0.05f, 0.05f,  //
              0.30f, 0.25f, 0.20f, 0.15f, 0.05f, 0.05f,  //
              0.35f, 0.06f, 0.05f, 0.12f, 0.30f, 0.11f};
  c.capacity(1.0, Overflow::kReroute);
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{0, 1, 2, 3, 5, 4}));
  expect_weights(r, {f(0.40f), f(0.30f), f(0.30f), f(0.25f), f(0.35f), f(0.30f)}, 0.0);
  EXPECT_EQ(r.expert_load, (Loads{1, 1, 1, 1, 1, 1}));
  EXPECT_EQ(r.rerouted, 3);
  EXPECT_EQ(r.dropped, 0);
}

TEST(Reroute, DroppedWhenEveryCandidateIsFull) {
  // T = 3, E = 3, k = 2, c = 1: cap = 2.
  //   t0 p {.5 .4 .1} -> {0, 1};  t1 p {.45 .35 .2} -> {0, 1};  t2 p {.3 .1 .6} -> {2, 0}.
  // Expert 0 keeps t0, t1 (0.5, 0.45 > 0.3): t2 slot 1 is pending. Its only expert outside
  // {2, 0} is 1, full (t0, t1): dropped.
  Case c(3, 3, 2, Scoring::kNone, false);
  c.scores = {0.5f, 0.4f, 0.1f, 0.45f, 0.35f, 0.2f, 0.3f, 0.1f, 0.6f};
  c.capacity(1.0, Overflow::kReroute);
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{0, 1, 0, 1, 2, -1}));
  expect_weights(r, {f(0.5f), f(0.4f), f(0.45f), f(0.35f), f(0.6f), 0.0}, 0.0);
  EXPECT_EQ(r.expert_load, (Loads{2, 2, 1}));
  EXPECT_EQ(r.dropped, 1);
  EXPECT_EQ(r.rerouted, 0);
}

TEST(Reroute, DroppedWhenTheOnlyRoomIsClaimedByItsOwnEarlierSlot) {
  // T = 3, E = 3, k = 2, cap = 2. t0 {.5 .4 .1}, t1 {.45 .35 .2}, t2 {.3 .25 .2}: all pick
  // {0, 1}; t2 loses both. Round 1: t2 slot 0 -> 2; slot 1 has only expert 2 left, claimed by
  // slot 0 this round: dropped. Expert 2 accepts slot 0.
  Case c(3, 3, 2, Scoring::kNone, false);
  c.scores = {0.5f, 0.4f, 0.1f, 0.45f, 0.35f, 0.2f, 0.3f, 0.25f, 0.2f};
  c.capacity(1.0, Overflow::kReroute);
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{0, 1, 0, 1, 2, -1}));
  expect_weights(r, {f(0.5f), f(0.4f), f(0.45f), f(0.35f), f(0.3f), 0.0}, 0.0);
  EXPECT_EQ(r.expert_load, (Loads{2, 2, 1}));
  EXPECT_EQ(r.dropped, 1);
  EXPECT_EQ(r.rerouted, 1);
}

TEST(Reroute, IgnoresGroupRestrictionAndUsesBiasedOrder) {
  // E = 4 in 2 groups ({0, 1}, {2, 3}), topk_group = 1, k = 1, c = 1: cap = ceil(2 / 4) = 1.
  // Bias +0.2 on expert 2. t0 p {.5 .2 .2 .1} -> q {.5 .2 .4 .1}; t1 p {.45 .25 .2 .05} ->
  // q {.45 .25 .4 .05}. Group scores (top-two sums) favour group 0 for both: both pick expert 0,
  // which keeps t0 (.5 > .45). t1's preference by q is 0, 2, 1, 3: it moves to expert 2, in the
  // group step 3 excluded (and by p alone it would have gone to expert 1).
  Case c(2, 4, 1, Scoring::kNone, false);
  c.scores = {0.5f, 0.2f, 0.2f, 0.1f, 0.45f, 0.25f, 0.2f, 0.05f};
  c.bias = {0.0f, 0.0f, 0.2f, 0.0f};
  c.problem.routing.n_group = 2;
  c.problem.routing.topk_group = 1;
  c.capacity(1.0, Overflow::kReroute);
  RoutingResult r = c.route();
  EXPECT_EQ(r.topk_ids, (Ids{0, 2}));
  expect_weights(r, {0.5, f(0.45f)}, 0.0);
  EXPECT_EQ(r.rerouted, 1);
  EXPECT_EQ(r.expert_load, (Loads{1, 0, 1, 0}));
}

TEST(Reroute, StatsOnALargerRandomCase) {
  // Invariants that hold for any input: no expert over capacity; every assignment is either kept,
  // rerouted or dropped; a token never holds one expert twice; weights never change.
  int const T = 37, E = 12, k = 3;
  Case c(T, E, k, Scoring::kSoftmax, true);
  uint32_t state = 12345;
  for (int i = 0; i < T * E; ++i) {
    state = state * 1664525u + 1013904223u;
    c.scores.push_back(static_cast<float>((state >> 8) % 1000) / 250.0f -
                       (i % E < 3 ? -1.0f : 2.0f));  // experts 0..2 are popular
  }
  RoutingResult const dropless = c.route();
  c.capacity(1.0, Overflow::kReroute);
  RoutingResult const r = c.route();
  int64_t const cap = static_cast<int64_t>(std::ceil(1.0 * T * k / E));
  int64_t moved = 0, dropped = 0;
  std::vector<int32_t> load(E, 0);
  for (int t = 0; t < T; ++t) {
    for (int j = 0; j < k; ++j) {
      int32_t const e = r.topk_ids[t * k + j];
      if (e < 0) {
        ++dropped;
        EXPECT_EQ(r.topk_weights[t * k + j], 0.0);
        continue;
      }
      ++load[e];
      if (e != dropless.topk_ids[t * k + j]) ++moved;
      EXPECT_EQ(r.topk_weights[t * k + j], dropless.topk_weights[t * k + j]);
      for (int i = 0; i < j; ++i) EXPECT_NE(r.topk_ids[t * k + i], e);
    }
  }
  EXPECT_EQ(r.expert_load, load);
  for (int32_t l : load) EXPECT_LE(l, cap);
  EXPECT_EQ(r.rerouted, moved);
  EXPECT_EQ(r.dropped, dropped);
  EXPECT_GT(moved, 0);  // the case does overflow
}

TEST(RoutingErrors, NonFiniteScoresNamed) {
  Case c(2, 3, 1, Scoring::kSoftmax, true);
  c.scores = {0, 1, 2, 3, 4, std::numeric_limits<float>::quiet_NaN()};
  RoutingResult r;
  Status s = c.run(&r);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("routing_weights"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("non-finite"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("token 1, expert 2"), std::string::npos) << s.message();
  c.scores[1] = -std::numeric_limits<float>::infinity();
  s = c.run(&r);
  EXPECT_NE(s.message().find("token 0, expert 1"), std::string::npos) << s.message();
  // Scoring "none" checks too.
  c.problem.routing.scoring = Scoring::kNone;
  EXPECT_EQ(c.run(&r).code(), StatusCode::kInvalidArgument);
}

TEST(RoutingErrors, TemperatureOverflow) {
  Case c(1, 2, 1, Scoring::kSoftmax, true);
  c.scores = {3e38f, 0.0f};
  c.problem.routing.temperature = 1e-300;
  RoutingResult r;
  Status const s = c.run(&r);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("temperature"), std::string::npos) << s.message();
}

TEST(RoutingErrors, BadPreRoutedInput) {
  Case c(2, 3, 2, Scoring::kSoftmax, true);
  c.problem.prerouted = true;
  c.weights_in = {0.5f, 0.5f, 0.5f, 0.5f};
  RoutingResult r;
  c.ids_in = {0, 1, 2, 3};  // 3 is out of range
  Status s = c.run(&r);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("topk_ids"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("got 3"), std::string::npos) << s.message();
  c.ids_in = {0, -2, 2, 1};
  s = c.run(&r);
  EXPECT_NE(s.message().find("topk_ids"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("got -2"), std::string::npos) << s.message();
  c.ids_in = {0, 1, 2, 2};  // duplicate within token 1
  s = c.run(&r);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("twice"), std::string::npos) << s.message();
  c.ids_in = {-1, -1, 2, 1};  // repeated -1 is fine
  EXPECT_TRUE(c.run(&r).ok());
  c.weights_in[3] = std::numeric_limits<float>::infinity();
  s = c.run(&r);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("topk_weights"), std::string::npos) << s.message();
  c.ids_in.clear();  // missing array
  EXPECT_EQ(c.run(&r).code(), StatusCode::kInvalidArgument);
}

TEST(RoutingErrors, ProblemValidatedAndBiasChecked) {
  Case c(1, 3, 4, Scoring::kSoftmax, true);  // top_k 4 > 3 experts
  c.scores = {0, 1, 2};
  RoutingResult r;
  Status s = c.run(&r);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("top_k"), std::string::npos);
  c.problem.routing.top_k = 1;
  c.bias = {0.0f, std::numeric_limits<float>::quiet_NaN(), 0.0f};
  s = c.run(&r);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("correction_bias"), std::string::npos) << s.message();
}

TEST(Routing, ZeroTokens) {
  Case c(0, 5, 2, Scoring::kSoftmax, true);
  c.capacity(1.5, Overflow::kReroute);
  RoutingResult r = c.route();
  EXPECT_TRUE(r.topk_ids.empty());
  EXPECT_EQ(r.expert_load, (Loads{0, 0, 0, 0, 0}));
  EXPECT_EQ(r.dropped, 0);
}

TEST(Annealing, CosineSchedule) {
  EXPECT_DOUBLE_EQ(annealed_temperature(0, 100, 2.0, 0.5), 2.0);
  EXPECT_DOUBLE_EQ(annealed_temperature(50, 100, 2.0, 0.5), 1.25);
  EXPECT_DOUBLE_EQ(annealed_temperature(100, 100, 2.0, 0.5), 0.5);
  EXPECT_DOUBLE_EQ(annealed_temperature(250, 100, 2.0, 0.5), 0.5);
  // step 25: 0.5 + 1.5 * 0.5 * (1 + cos(pi/4)) = 0.5 + 0.75 * 1.7071067811865475.
  EXPECT_DOUBLE_EQ(annealed_temperature(25, 100, 2.0, 0.5), 0.5 + 0.75 * 1.7071067811865475);
  EXPECT_DOUBLE_EQ(annealed_temperature(7, 0, 2.0, 0.5), 0.5);
  EXPECT_DOUBLE_EQ(annealed_temperature(7, -3, 2.0, 0.5), 0.5);
  EXPECT_DOUBLE_EQ(annealed_temperature(-10, 100, 2.0, 0.5), 2.0);
}

}  // namespace
}  // namespace flashmoe
