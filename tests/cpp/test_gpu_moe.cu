// GPU tests of fused_moe_run (the multi-kernel sm_80 path) against the CPU reference.
//
// Fresh random inputs per test (std::mt19937, per-test seeds, never zeros), outputs and
// workspace poisoned before every run, relative Frobenius error < 1e-2 for bf16/fp16, the
// routing outputs (topk_ids, expert_load, dropped/rerouted counts) compared exactly, and a
// second run compared bitwise with the first. Tests named GpuSmall.* use small shapes, for
//   compute-sanitizer --tool memcheck flashmoe_tests --gtest_filter='GpuSmall.*'
// Without a CUDA device every test is skipped with a visible reason.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "gpu_test_util.h"

namespace flashmoe::gpu_test {
namespace {

double const kTolerance = 1e-2;

std::string describe(MoeProblem const& p) {
  std::ostringstream os;
  os << "T=" << p.num_tokens << " E=" << p.num_experts << " E_local=" << p.num_local_experts
     << " k=" << p.routing.top_k << " H=" << p.hidden
     << (p.kind == ExpertKind::kLinear ? " D=" : " I=")
     << (p.kind == ExpertKind::kLinear ? p.out_dim : p.inter_dim) << " "
     << dtype_name(p.token_dtype) << (p.layout == WeightLayout::kInOut ? " in_out" : " out_in")
     << (p.kind == ExpertKind::kGatedFFN
             ? (p.activation == Activation::kSilu ? " silu" : " gelu")
             : " linear")
     << " scoring=" << static_cast<int>(p.routing.scoring)
     << " n_group=" << p.routing.n_group << "/" << p.routing.topk_group
     << " cap=" << p.routing.capacity_factor
     << (p.routing.overflow == Overflow::kReroute ? " reroute" : " drop")
     << (p.prerouted ? " prerouted" : "") << (p.has_expert_map ? " expert_map" : "")
     << (p.has_correction_bias ? " bias" : "");
  return os.str();
}

// Index of the first difference, or -1.
template <typename T>
int64_t first_mismatch(std::vector<T> const& a, std::vector<T> const& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!(a[i] == b[i])) return static_cast<int64_t>(i);
  }
  return -1;
}

void expect_routing_equal(MoeProblem const& p, Result const& gpu, Result const& ref) {
  int const k = p.routing.top_k;
  int64_t const i = first_mismatch(gpu.topk_ids, ref.topk_ids);
  EXPECT_EQ(i, -1) << "topk_ids differ first at token " << i / k << " slot " << i % k
                   << ": gpu " << (i >= 0 ? gpu.topk_ids[i] : 0) << " reference "
                   << (i >= 0 ? ref.topk_ids[i] : 0);
  int64_t const l = first_mismatch(gpu.expert_load, ref.expert_load);
  EXPECT_EQ(l, -1) << "expert_load differs first at expert " << l;
  EXPECT_EQ(gpu.counts, ref.counts) << "dropped/rerouted: gpu " << gpu.counts[0] << "/"
                                    << gpu.counts[1] << " reference " << ref.counts[0] << "/"
                                    << ref.counts[1];
  int bad = 0;
  for (size_t j = 0; j < ref.topk_weights.size(); ++j) {
    double const r = ref.topk_weights[j];
    double const g = gpu.topk_weights[j];
    if (!(std::fabs(g - r) <= 1e-6 * std::max(1.0, std::fabs(r)))) {
      if (bad++ == 0) {
        ADD_FAILURE() << "topk_weights differ first at token " << j / k << " slot " << j % k
                      << ": gpu " << g << " reference " << r;
      }
    }
  }
}

// The whole protocol for one problem: reference, GPU run, errors, exact routing, bitwise rerun.
void check_problem(MoeProblem const& p, uint32_t seed, Logits logits = Logits::kNormal,
                   int hot = 0) {
  SCOPED_TRACE(describe(p));
  HostData const d = make_data(p, seed, logits, hot);
  Result const ref = run_reference(p, d);
  ASSERT_TRUE(ref.status.ok()) << ref.status.message();
  DeviceInputs in;
  in.load(p, d);
  Result const g1 = run_gpu(p, in);
  ASSERT_TRUE(g1.status.ok()) << g1.status.message();
  EXPECT_EQ(g1.path, expected_16bit_path(p));
  double const err = rel_frobenius(p.token_dtype, g1.out, ref.out);
  EXPECT_LT(err, kTolerance) << "relative Frobenius error of the output";
  expect_routing_equal(p, g1, ref);
  Result const g2 = run_gpu(p, in);
  ASSERT_TRUE(g2.status.ok()) << g2.status.message();
  EXPECT_EQ(first_mismatch(g2.out, g1.out), -1) << "second run is not bitwise identical";
  EXPECT_EQ(g2.topk_ids, g1.topk_ids);
  if (g1.path == KernelPath::kFusedSm90) {
    // deterministic = false: the last GEMM's epilogue adds each row into `out` with bf16/fp16
    // atomics (poisoned before the run: every row must be zeroed in the kernel).
    MoeProblem pn = p;
    pn.deterministic = false;
    Result const gn = run_gpu(pn, in);
    ASSERT_TRUE(gn.status.ok()) << gn.status.message();
    EXPECT_EQ(gn.path, KernelPath::kFusedSm90);
    EXPECT_LT(rel_frobenius(p.token_dtype, gn.out, ref.out), kTolerance)
        << "deterministic=false: relative Frobenius error of the output";
    EXPECT_LT(rel_frobenius(p.token_dtype, gn.out, g1.out), kAtomicCombineTol)
        << "deterministic=false vs the deterministic combine";
    EXPECT_EQ(gn.topk_ids, g1.topk_ids);
    EXPECT_EQ(gn.counts, g1.counts);
    // The one-kernel forward against the multi-kernel sm_90a path: the same routing code, GEMM
    // body and combine, so the same bits and the same routing outputs.
    setenv("FLASHMOE_FUSED", "0", 1);
    Result const g3 = run_gpu(p, in);
    unsetenv("FLASHMOE_FUSED");
    ASSERT_TRUE(g3.status.ok()) << g3.status.message();
    EXPECT_EQ(g3.path, KernelPath::kMultiKernelSm90);
    EXPECT_EQ(first_mismatch(g3.out, g1.out), -1)
        << "the multi-kernel sm_90a path gives other bits than the one-kernel forward";
    EXPECT_EQ(g3.topk_ids, g1.topk_ids);
    EXPECT_EQ(first_mismatch(g3.topk_weights, g1.topk_weights), -1);
    EXPECT_EQ(g3.expert_load, g1.expert_load);
    EXPECT_EQ(g3.counts, g1.counts);
  }
}

// ---------------------------------------------------------------------------------------------
// Small shapes (also the compute-sanitizer set).

TEST(GpuSmall, LinearSingleToken) {
  FLASHMOE_REQUIRE_GPU();
  check_problem(linear_problem(1, 8, 2, 64, 64), 101);
  check_problem(linear_problem(1, 8, 2, 64, 64, DType::kFloat16, WeightLayout::kOutIn), 102);
}

// Two and three tokens: the one-kernel forward's solo dispatch (CTA 0 routes and dispatches up
// to 2 tokens of up to 32 slots alone) at T = 2, the general dispatch at T = 3; linear and
// gated, pre-routed, with an expert map, at the solo slot limit (2 x 16); check_problem also runs
// the atomic combine (deterministic = false).
TEST(GpuSmall, TwoAndThreeTokens) {
  FLASHMOE_REQUIRE_GPU();
  check_problem(linear_problem(2, 16, 4, 64, 64), 111);
  check_problem(ffn_problem(3, 16, 4, 64, 32, Activation::kSilu), 112);
  MoeProblem r = linear_problem(3, 16, 4, 64, 64, DType::kFloat16, WeightLayout::kOutIn);
  r.prerouted = true;
  check_problem(r, 113);
  MoeProblem m = ffn_problem(2, 16, 8, 64, 32, Activation::kGelu);
  m.has_expert_map = true;
  m.num_local_experts = 6;
  check_problem(m, 114);
  check_problem(linear_problem(2, 16, 16, 64, 64), 115);
  check_problem(linear_problem(3, 16, 11, 64, 64), 116);
}

TEST(GpuSmall, LinearRaggedShapes) {
  FLASHMOE_REQUIRE_GPU();
  // T, H, D not multiples of any tile; E not a power of two; 16-row tiles (few rows/expert).
  check_problem(linear_problem(37, 12, 3, 200, 136), 111);
  check_problem(linear_problem(37, 12, 3, 200, 136, DType::kFloat16, WeightLayout::kOutIn), 112);
  check_problem(linear_problem(37, 12, 3, 200, 136, DType::kBFloat16, WeightLayout::kOutIn), 113);
  check_problem(linear_problem(37, 12, 3, 200, 136, DType::kFloat16, WeightLayout::kInOut), 114);
}

TEST(GpuSmall, LinearLargeTile) {
  FLASHMOE_REQUIRE_GPU();
  // ~23 and ~46 rows per expert: the 128-row tile, partial tiles and idle warps.
  check_problem(linear_problem(70, 6, 2, 136, 200), 121);
  check_problem(linear_problem(70, 6, 2, 136, 200, DType::kFloat16, WeightLayout::kOutIn), 122);
  check_problem(linear_problem(139, 6, 2, 72, 264, DType::kBFloat16, WeightLayout::kOutIn), 123);
}

TEST(GpuSmall, FfnSiluAndGelu) {
  FLASHMOE_REQUIRE_GPU();
  check_problem(ffn_problem(37, 12, 2, 136, 200, Activation::kSilu), 131);
  check_problem(
      ffn_problem(37, 12, 2, 136, 200, Activation::kGelu, DType::kFloat16, WeightLayout::kOutIn),
      132);
  check_problem(
      ffn_problem(37, 12, 2, 136, 200, Activation::kGelu, DType::kBFloat16, WeightLayout::kInOut),
      133);
  check_problem(
      ffn_problem(37, 12, 2, 136, 200, Activation::kSilu, DType::kFloat16, WeightLayout::kOutIn),
      134);
}

TEST(GpuSmall, FfnLargeTile) {
  FLASHMOE_REQUIRE_GPU();
  check_problem(ffn_problem(80, 4, 2, 136, 72, Activation::kSilu), 141);
  check_problem(
      ffn_problem(80, 4, 2, 136, 72, Activation::kGelu, DType::kFloat16, WeightLayout::kOutIn),
      142);
}

TEST(GpuSmall, SigmoidGroupedBiasScaling) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = linear_problem(29, 16, 4, 64, 72);
  p.routing.scoring = Scoring::kSigmoid;
  p.routing.n_group = 4;
  p.routing.topk_group = 2;
  p.has_correction_bias = true;
  p.routing.routed_scaling_factor = 2.5;
  check_problem(p, 151);
  p.routing.renormalize = false;
  check_problem(p, 152);
}

TEST(GpuSmall, GroupedSoftmaxWithoutBias) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = ffn_problem(31, 12, 2, 64, 40, Activation::kSilu);
  p.routing.n_group = 3;
  p.routing.topk_group = 1;
  check_problem(p, 161);
}

TEST(GpuSmall, TemperatureAndNoRenormalize) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = linear_problem(33, 10, 3, 64, 48);
  p.routing.temperature = 0.5;
  p.routing.renormalize = false;
  check_problem(p, 171);
  p.routing.temperature = 3.0;
  p.routing.renormalize = true;
  p.routing.scoring = Scoring::kSigmoid;
  check_problem(p, 172);
}

TEST(GpuSmall, ScoringNone) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = linear_problem(33, 10, 3, 64, 48);
  p.routing.scoring = Scoring::kNone;
  check_problem(p, 181, Logits::kProbabilities);
  p.has_correction_bias = true;
  check_problem(p, 182, Logits::kProbabilities);
}

TEST(GpuSmall, HalfPrecisionScoresWithTies) {
  FLASHMOE_REQUIRE_GPU();
  // Integer logits in [-2, 2]: many exact ties. Within a token (softmax: one shared sum) the
  // lower expert index wins; across tokens (capacity priorities) the lower token index wins.
  // Cross-token ties are exact only where p depends on the logit alone (sigmoid, none): a
  // softmax sum's last bit could differ between the host's and the GPU's exp.
  MoeProblem p = linear_problem(41, 12, 3, 64, 40);
  p.score_dtype = DType::kBFloat16;
  check_problem(p, 191, Logits::kCoarse);
  p.score_dtype = DType::kFloat16;
  p.routing.scoring = Scoring::kSigmoid;
  p.routing.capacity_factor = 1.0;
  check_problem(p, 192, Logits::kCoarse);
  p.routing.overflow = Overflow::kReroute;
  check_problem(p, 193, Logits::kCoarse);
  p.score_dtype = DType::kFloat32;
  p.routing.scoring = Scoring::kNone;
  p.routing.overflow = Overflow::kDrop;
  check_problem(p, 194, Logits::kCoarse);
}

TEST(GpuSmall, Prerouted) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = linear_problem(23, 10, 3, 64, 56);
  p.prerouted = true;
  check_problem(p, 201);
  MoeProblem f = ffn_problem(23, 10, 3, 64, 24, Activation::kGelu, DType::kFloat16,
                             WeightLayout::kOutIn);
  f.prerouted = true;
  check_problem(f, 202);
}

TEST(GpuSmall, ExpertMap) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = linear_problem(29, 16, 4, 64, 40);
  p.has_expert_map = true;
  p.num_local_experts = 6;
  check_problem(p, 211);
  MoeProblem f = ffn_problem(29, 16, 4, 64, 32, Activation::kSilu, DType::kBFloat16,
                             WeightLayout::kOutIn);
  f.has_expert_map = true;
  f.num_local_experts = 5;
  f.prerouted = true;
  check_problem(f, 212);
}

TEST(GpuSmall, CapacityDrop) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = linear_problem(40, 8, 2, 64, 48);
  p.routing.capacity_factor = 1.0;
  check_problem(p, 221, Logits::kSkewed);
  p.routing.capacity_factor = 1.25;
  p.routing.scoring = Scoring::kSigmoid;
  p.has_correction_bias = true;
  check_problem(p, 222, Logits::kSkewed);
}

TEST(GpuSmall, CapacityDropPrerouted) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = linear_problem(40, 6, 3, 64, 48);
  p.prerouted = true;
  p.routing.capacity_factor = 1.0;
  check_problem(p, 231);
}

TEST(GpuSmall, CapacityReroute) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = linear_problem(40, 8, 2, 64, 48);
  p.routing.capacity_factor = 1.0;
  p.routing.overflow = Overflow::kReroute;
  check_problem(p, 241, Logits::kSkewed);
  // Everyone wants the same expert: long chains of rounds.
  p.routing.top_k = 1;
  check_problem(p, 242, Logits::kOneExpert, 3);
  // The preference order uses q (bias included) over all experts, ignoring the groups.
  MoeProblem g = ffn_problem(45, 16, 4, 64, 24, Activation::kSilu);
  g.routing.scoring = Scoring::kSigmoid;
  g.has_correction_bias = true;
  g.routing.n_group = 4;
  g.routing.topk_group = 2;
  g.routing.capacity_factor = 1.0;
  g.routing.overflow = Overflow::kReroute;
  check_problem(g, 243, Logits::kSkewed);
}

TEST(GpuSmall, CapacityRerouteWithExpertMap) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = linear_problem(50, 12, 3, 64, 40);
  p.has_expert_map = true;
  p.num_local_experts = 5;
  p.routing.capacity_factor = 1.0;
  p.routing.overflow = Overflow::kReroute;
  check_problem(p, 251, Logits::kSkewed);
}

TEST(GpuSmall, OneExpertTakesEverything) {
  FLASHMOE_REQUIRE_GPU();
  check_problem(linear_problem(37, 12, 1, 64, 40), 261, Logits::kOneExpert, 5);
  // 37 rows at one expert and the second choice spread: 128-row tile path with k = 2.
  check_problem(ffn_problem(150, 12, 2, 64, 40, Activation::kSilu), 262, Logits::kOneExpert, 11);
}

TEST(GpuSmall, MostExpertsEmpty) {
  FLASHMOE_REQUIRE_GPU();
  check_problem(linear_problem(5, 60, 2, 64, 40), 271);
  check_problem(ffn_problem(3, 60, 4, 64, 24, Activation::kGelu, DType::kFloat16,
                            WeightLayout::kOutIn),
                272);
}

TEST(GpuSmall, ZeroTokensIsANoOp) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = linear_problem(0, 8, 2, 64, 64);
  KernelPath path = KernelPath::kNone;
  MoeArgs a;  // nothing is read or written
  Status const s = fused_moe_run(p, a, nullptr, 0, nullptr, &path);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(path, expected_16bit_path(p));
  EXPECT_EQ(fused_moe_workspace_size(p), 0u);
}

TEST(GpuSmall, NonFiniteScoresAreNeverChosen) {
  FLASHMOE_REQUIRE_GPU();
  // The reference rejects them; the GPU cannot report data errors without a sync, so it treats
  // them as -inf: never selected, and the output stays finite.
  MoeProblem p = linear_problem(9, 8, 2, 64, 40);
  HostData d = make_data(p, 281);
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    d.scores_f32[t * 8 + 1] = NAN;
    d.scores_f32[t * 8 + 6] = (t % 2) ? INFINITY : -INFINITY;
  }
  DeviceInputs in;
  in.load(p, d);
  Result const g = run_gpu(p, in);
  ASSERT_TRUE(g.status.ok()) << g.status.message();
  for (int32_t e : g.topk_ids) {
    EXPECT_TRUE(e >= 0 && e < 8 && e != 1 && e != 6) << "picked expert " << e;
  }
  for (uint16_t b : g.out) EXPECT_TRUE(std::isfinite(from_bits(p.token_dtype, b)));
}

TEST(GpuSmall, UnsupportedProblemsSayWhy) {
  FLASHMOE_REQUIRE_GPU();
  KernelPath path = KernelPath::kMultiKernelSm80;
  MoeProblem p = linear_problem(4, 8, 2, 64, 64);
  p.token_dtype = p.weight_dtype = DType::kFloat32;
  Status s = fused_moe_can_implement(p, &path);
  EXPECT_EQ(s.code(), StatusCode::kNotSupported);
  EXPECT_NE(s.message().find("float32"), std::string::npos) << s.message();
  EXPECT_EQ(path, KernelPath::kNone);

  p = linear_problem(4, 8, 2, 64, 64);
  p.precision = Precision::kFP8;
  s = fused_moe_can_implement(p, &path);
  EXPECT_EQ(s.code(), StatusCode::kNotSupported);
  EXPECT_NE(s.message().find("precision=\"fp8\""), std::string::npos) << s.message();

  p = linear_problem(4, 8, 2, 60, 64);  // H not a multiple of 8
  s = fused_moe_can_implement(p, &path);
  EXPECT_EQ(s.code(), StatusCode::kNotSupported);
  EXPECT_NE(s.message().find("multiple of 8"), std::string::npos) << s.message();

  p = ffn_problem(4, 8, 2, 64, 20, Activation::kSilu);  // I not a multiple of 8
  s = fused_moe_can_implement(p, &path);
  EXPECT_EQ(s.code(), StatusCode::kNotSupported) << s.message();

  p = linear_problem(4, 8, 2, 64, 64, DType::kFloat16);
  p.precision = Precision::kBF16;
  s = fused_moe_can_implement(p, &path);
  EXPECT_EQ(s.code(), StatusCode::kNotSupported) << s.message();

  p = linear_problem(4, 8, 2, 64, 64);
  p.weight_dtype = DType::kFloat16;
  s = fused_moe_can_implement(p, &path);
  EXPECT_EQ(s.code(), StatusCode::kNotSupported) << s.message();

  p = linear_problem(4, 8, 0, 64, 64);  // invalid: validate_problem's message comes through
  s = fused_moe_can_implement(p, &path);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.message();

  // A too-small workspace and a null input are argument errors, before anything is enqueued.
  p = linear_problem(4, 8, 2, 64, 64);
  HostData const d = make_data(p, 291);
  DeviceInputs in;
  in.load(p, d);
  DeviceBuffer out(4 * 64 * 2);
  MoeArgs a = in.args(p);
  a.out = out.get();
  std::size_t const need = fused_moe_workspace_size(p);
  ASSERT_GT(need, 0u);
  DeviceBuffer ws(need);
  s = fused_moe_run(p, a, ws.get(), need - 1, nullptr, &path);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("workspace"), std::string::npos) << s.message();
  a.tokens = nullptr;
  s = fused_moe_run(p, a, ws.get(), need, nullptr, &path);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tokens"), std::string::npos) << s.message();
}

TEST(GpuSmall, OptionalOutputsMayBeNull) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = ffn_problem(19, 8, 2, 64, 32, Activation::kSilu);
  p.routing.capacity_factor = 1.0;
  p.routing.overflow = Overflow::kReroute;
  HostData const d = make_data(p, 301, Logits::kSkewed);
  Result const ref = run_reference(p, d);
  ASSERT_TRUE(ref.status.ok()) << ref.status.message();
  DeviceInputs in;
  in.load(p, d);
  Result const g = run_gpu(p, in, /*optional_outputs=*/false);
  ASSERT_TRUE(g.status.ok()) << g.status.message();
  EXPECT_LT(rel_frobenius(p.token_dtype, g.out, ref.out), kTolerance);
}

TEST(GpuSmall, PrecisionBf16MatchesAuto) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = linear_problem(21, 8, 2, 64, 48);
  p.precision = Precision::kBF16;
  check_problem(p, 311);
}

// ---------------------------------------------------------------------------------------------
// Larger shapes.

TEST(GpuMoe, LinearManyExpertsRagged) {
  FLASHMOE_REQUIRE_GPU();
  check_problem(linear_problem(300, 60, 4, 256, 200), 401);
  check_problem(linear_problem(300, 60, 4, 256, 200, DType::kFloat16, WeightLayout::kOutIn), 402);
}

TEST(GpuMoe, FfnBothLayoutsLargeTile) {
  FLASHMOE_REQUIRE_GPU();
  check_problem(ffn_problem(300, 12, 4, 256, 136, Activation::kSilu), 411);
  check_problem(
      ffn_problem(300, 12, 4, 256, 136, Activation::kGelu, DType::kBFloat16, WeightLayout::kOutIn),
      412);
  check_problem(
      ffn_problem(300, 12, 4, 256, 136, Activation::kSilu, DType::kFloat16, WeightLayout::kOutIn),
      413);
}

TEST(GpuMoe, DeepSeekStyleRouting) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = ffn_problem(300, 64, 6, 256, 128, Activation::kSilu);
  p.routing.scoring = Scoring::kSigmoid;
  p.routing.n_group = 8;
  p.routing.topk_group = 4;
  p.has_correction_bias = true;
  p.routing.routed_scaling_factor = 2.5;
  check_problem(p, 421);
}

TEST(GpuMoe, ManyExperts) {
  FLASHMOE_REQUIRE_GPU();
  check_problem(linear_problem(200, 256, 8, 64, 64), 431);   // top-k kernel, 2 items/thread
  check_problem(linear_problem(50, 1000, 8, 64, 64), 432);   // 8 items/thread, E not 2^n
  MoeProblem p = linear_problem(64, 1000, 16, 64, 64);
  p.routing.capacity_factor = 2.0;
  p.routing.overflow = Overflow::kReroute;
  check_problem(p, 433, Logits::kSkewed);
}

TEST(GpuMoe, RerouteLarger) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = linear_problem(512, 32, 4, 64, 64);
  p.routing.capacity_factor = 1.1;
  p.routing.overflow = Overflow::kReroute;
  check_problem(p, 441, Logits::kSkewed);
  p.routing.overflow = Overflow::kDrop;
  check_problem(p, 442, Logits::kSkewed);
}

TEST(GpuMoe, BitwiseDeterministicThreeRuns) {
  FLASHMOE_REQUIRE_GPU();
  MoeProblem p = ffn_problem(300, 60, 4, 256, 136, Activation::kSilu);
  HostData const d = make_data(p, 451);
  DeviceInputs in;
  in.load(p, d);
  Result const first = run_gpu(p, in);
  ASSERT_TRUE(first.status.ok()) << first.status.message();
  for (int run = 1; run < 3; ++run) {
    Result const again = run_gpu(p, in);
    ASSERT_TRUE(again.status.ok()) << again.status.message();
    EXPECT_EQ(first_mismatch(again.out, first.out), -1) << "run " << run << " differs";
    EXPECT_EQ(again.topk_ids, first.topk_ids);
    EXPECT_EQ(again.topk_weights, first.topk_weights);
  }
}

// Seed-like proportions (K = 1024: 16 k-steps; ~64 rows per expert; several N tiles) checked on
// sampled rows against a float64 computation from the reference routing (the full CPU
// reference would take minutes at this size).
void check_sampled_rows(MoeProblem const& p, uint32_t seed) {
  SCOPED_TRACE(describe(p));
  HostData const d = make_data(p, seed);
  MoeArgs const ha = host_args(p, d);
  RoutingResult routing;
  ASSERT_TRUE(route_tokens_reference(p, ha, &routing).ok());
  DeviceInputs in;
  in.load(p, d);
  Result const g = run_gpu(p, in);
  ASSERT_TRUE(g.status.ok()) << g.status.message();
  EXPECT_EQ(first_mismatch(g.topk_ids, routing.topk_ids), -1);

  int64_t const H = p.hidden, N = p.output_dim(), I = p.inter_dim;
  bool const ffn = p.kind == ExpertKind::kGatedFFN;
  int const k = p.routing.top_k;
  auto w = [&](std::vector<uint16_t> const& m, int64_t e, int64_t in_dim, int64_t out_dim,
               int64_t i, int64_t o) {
    int64_t const idx = p.layout == WeightLayout::kInOut ? (e * in_dim + i) * out_dim + o
                                                         : (e * out_dim + o) * in_dim + i;
    return from_bits(p.weight_dtype, m[idx]);
  };
  double num = 0.0, den = 0.0;
  for (int64_t t = 0; t < p.num_tokens; t += 37) {
    std::vector<double> acc(N, 0.0);
    for (int j = 0; j < k; ++j) {
      int32_t const e = routing.topk_ids[t * k + j];
      if (e < 0) continue;
      double const wt = routing.topk_weights[t * k + j];
      std::vector<double> x(H);
      for (int64_t h = 0; h < H; ++h) x[h] = from_bits(p.token_dtype, d.tokens[t * H + h]);
      if (!ffn) {
        for (int64_t o = 0; o < N; ++o) {
          double s = 0.0;
          for (int64_t h = 0; h < H; ++h) s += x[h] * w(d.w1, e, H, N, h, o);
          acc[o] += wt * s;
        }
      } else {
        std::vector<double> hid(I);
        for (int64_t i = 0; i < I; ++i) {
          double gs = 0.0, us = 0.0;
          for (int64_t h = 0; h < H; ++h) {
            gs += x[h] * w(d.w1, e, H, 2 * I, h, i);
            us += x[h] * w(d.w1, e, H, 2 * I, h, I + i);
          }
          double const act = p.activation == Activation::kSilu
                                 ? gs / (1.0 + std::exp(-gs))
                                 : gs * 0.5 * (1.0 + std::erf(gs / std::sqrt(2.0)));
          hid[i] = act * us;
        }
        for (int64_t o = 0; o < N; ++o) {
          double s = 0.0;
          for (int64_t i = 0; i < I; ++i) s += hid[i] * w(d.w2, e, I, H, i, o);
          acc[o] += wt * s;
        }
      }
    }
    for (int64_t o = 0; o < N; ++o) {
      double const gv = from_bits(p.token_dtype, g.out[t * N + o]);
      ASSERT_TRUE(std::isfinite(gv)) << "token " << t << " column " << o;
      num += (gv - acc[o]) * (gv - acc[o]);
      den += acc[o] * acc[o];
    }
  }
  EXPECT_LT(std::sqrt(num / den), kTolerance);
}

TEST(GpuMoe, SeedProportionsSampledRows) {
  FLASHMOE_REQUIRE_GPU();
  check_sampled_rows(linear_problem(512, 64, 8, 1024, 1024), 461);
  check_sampled_rows(linear_problem(512, 64, 8, 1024, 1024, DType::kBFloat16,
                                    WeightLayout::kOutIn),
                     462);
  check_sampled_rows(ffn_problem(512, 64, 8, 1024, 512, Activation::kSilu), 463);
  // Decode: 4 tokens, 16-row tiles, every expert's weights streamed by few CTAs.
  check_sampled_rows(linear_problem(4, 64, 8, 1024, 1024), 464);
}

}  // namespace
}  // namespace flashmoe::gpu_test
