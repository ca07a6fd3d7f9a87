// The CPU reference (flashmoe/reference.h): hand-computed cases, an independent naive
// implementation on random data, layouts, expert_map, precision modes and output rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "flashmoe/quantization.h"
#include "flashmoe/reference.h"
#include "reference/float_bits.h"

namespace flashmoe {
namespace {

double const kNaN = std::numeric_limits<double>::quiet_NaN();

MoeProblem linear_problem(int64_t T, int64_t H, int64_t D, int64_t E, int k) {
  MoeProblem p;
  p.num_tokens = T;
  p.hidden = H;
  p.num_experts = E;
  p.num_local_experts = E;
  p.out_dim = D;
  p.routing.top_k = k;
  return p;
}

MoeProblem ffn_problem(int64_t T, int64_t H, int64_t I, int64_t E, int k, Activation act) {
  MoeProblem p = linear_problem(T, H, 0, E, k);
  p.kind = ExpertKind::kGatedFFN;
  p.inter_dim = I;
  p.activation = act;
  return p;
}

// Deterministic values in [lo, hi).
std::vector<double> random_values(size_t n, uint32_t seed, double lo = -1.0, double hi = 1.0) {
  std::vector<double> v(n);
  uint64_t s = seed * 2654435761u + 1;
  for (double& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = lo + (hi - lo) * static_cast<double>(s >> 11) / 9007199254740992.0;
  }
  return v;
}

std::vector<float> to_float(std::vector<double> const& v) { return {v.begin(), v.end()}; }

// [E, in, out] -> [E, out, in].
template <typename V>
V transpose_experts(V const& w, int64_t E, int64_t in, int64_t out) {
  V t(w.size());
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t i = 0; i < in; ++i) {
      for (int64_t o = 0; o < out; ++o) t[(e * out + o) * in + i] = w[(e * in + i) * out + o];
    }
  }
  return t;
}

double silu(double g) { return g / (1.0 + std::exp(-g)); }
double gelu(double g) { return 0.5 * g * (1.0 + std::erf(g * M_SQRT1_2)); }

// An independent naive forward from a routing result: weights in [E_local, in, out] float64,
// written slot by slot straight from the formula of reference.h.
std::vector<double> naive_forward(MoeProblem const& p, RoutingResult const& r,
                                  std::vector<double> const& x, std::vector<double> const& w1,
                                  std::vector<double> const& w2,
                                  std::vector<int32_t> const& expert_map = {},
                                  bool quantize_intermediate = false) {
  int64_t const T = p.num_tokens, H = p.hidden, D = p.output_dim(), I = p.inter_dim;
  int const k = p.routing.top_k;
  std::vector<double> out(T * D, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < k; ++j) {
      int32_t e = r.topk_ids[t * k + j];
      if (e < 0) continue;
      if (!expert_map.empty()) e = expert_map[e];
      if (e < 0) continue;
      double const wt = r.topk_weights[t * k + j];
      if (p.kind == ExpertKind::kLinear) {
        for (int64_t d = 0; d < D; ++d) {
          double y = 0.0;
          for (int64_t h = 0; h < H; ++h) y += x[t * H + h] * w1[(e * H + h) * D + d];
          out[t * D + d] += wt * y;
        }
        continue;
      }
      std::vector<double> a(I);
      for (int64_t i = 0; i < I; ++i) {
        double g = 0.0, u = 0.0;
        for (int64_t h = 0; h < H; ++h) {
          g += x[t * H + h] * w1[(e * H + h) * 2 * I + i];
          u += x[t * H + h] * w1[(e * H + h) * 2 * I + I + i];
        }
        a[i] = (p.activation == Activation::kSilu ? silu(g) : gelu(g)) * u;
      }
      if (quantize_intermediate) {
        for (double& v : a) v = round_to_bf16(v);  // FP8 paths keep h as bf16 rows first
        double amax = 0.0;
        for (double v : a) amax = std::max(amax, std::fabs(v));
        double const scale = amax > 0 ? amax / 448.0 : 1.0;
        for (double& v : a) v = round_to_e4m3(v / scale) * scale;
      }
      for (int64_t h = 0; h < H; ++h) {
        double y = 0.0;
        for (int64_t i = 0; i < I; ++i) y += a[i] * w2[(e * I + i) * H + h];
        out[t * D + h] += wt * y;
      }
    }
  }
  return out;
}

double rel_err(std::vector<double> const& got, std::vector<double> const& want) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

// Runs the reference with float64 tokens and weights (exact inputs) and softmax routing logits.
struct F64Run {
  MoeProblem problem;
  std::vector<double> x, w1, w2, logits, out;
  RoutingResult routing;

  Status run() {
    problem.token_dtype = problem.weight_dtype = problem.score_dtype = DType::kFloat64;
    out.assign(problem.num_tokens * problem.output_dim(), kNaN);
    MoeArgs args;
    args.tokens = x.data();
    args.w1 = w1.data();
    args.w2 = w2.empty() ? nullptr : w2.data();
    args.routing_weights = logits.data();
    args.out = out.data();
    Status const s = reference_fused_moe(problem, args);
    if (s.ok()) {
      EXPECT_TRUE(route_tokens_reference(problem, args, &routing).ok());
    }
    return s;
  }
};

F64Run random_run(MoeProblem const& p, uint32_t seed) {
  F64Run r;
  r.problem = p;
  int64_t const T = p.num_tokens, H = p.hidden, E = p.num_local_experts;
  r.x = random_values(T * H, seed);
  r.logits = random_values(T * p.num_experts, seed + 1, -3.0, 3.0);
  if (p.kind == ExpertKind::kLinear) {
    r.w1 = random_values(E * H * p.out_dim, seed + 2, -0.5, 0.5);
  } else {
    r.w1 = random_values(E * H * 2 * p.inter_dim, seed + 2, -0.5, 0.5);
    r.w2 = random_values(E * p.inter_dim * H, seed + 3, -0.5, 0.5);
  }
  return r;
}

TEST(Reference, HandComputedLinear) {
  // T = 2, H = 2, D = 2, E = 3, k = 2, scoring "none", no renormalization.
  //   x0 = [1, 2], x1 = [3, -1];  W0 = I, W1 = [[2, 1], [0, 1]], W2 = [[0, 1], [1, 0]] ([H, D]).
  //   t0 scores {.5, .25, .125} -> experts 0 (.5), 1 (.25);
  //   t1 scores {.125, .25, .625} -> experts 2 (.625), 1 (.25).
  //   out0 = .5 * x0 @ W0 + .25 * x0 @ W1 = .5 * [1, 2] + .25 * [2, 3] = [1, 1.75]
  //   out1 = .625 * x1 @ W2 + .25 * x1 @ W1 = .625 * [-1, 3] + .25 * [6, 2] = [.875, 2.375]
  MoeProblem p = linear_problem(2, 2, 2, 3, 2);
  p.routing.scoring = Scoring::kNone;
  p.routing.renormalize = false;
  std::vector<float> x = {1, 2, 3, -1};
  std::vector<float> w = {1, 0, 0, 1, 2, 1, 0, 1, 0, 1, 1, 0};
  std::vector<float> s = {0.5f, 0.25f, 0.125f, 0.125f, 0.25f, 0.625f};
  std::vector<float> out(4, -7.0f);
  std::vector<int32_t> ids(4, 99), load(3, 99);
  std::vector<float> weights(4, -1.0f);
  int64_t counts[2] = {-1, -1};
  MoeArgs a;
  a.tokens = x.data();
  a.w1 = w.data();
  a.routing_weights = s.data();
  a.out = out.data();
  a.topk_ids_out = ids.data();
  a.topk_weights_out = weights.data();
  a.expert_load = load.data();
  a.drop_reroute_counts = counts;
  Status const st = reference_fused_moe(p, a);
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(out, (std::vector<float>{1.0f, 1.75f, 0.875f, 2.375f}));
  EXPECT_EQ(ids, (std::vector<int32_t>{0, 1, 2, 1}));
  EXPECT_EQ(weights, (std::vector<float>{0.5f, 0.25f, 0.625f, 0.25f}));
  EXPECT_EQ(load, (std::vector<int32_t>{1, 2, 1}));
  EXPECT_EQ(counts[0], 0);
  EXPECT_EQ(counts[1], 0);

  // kOutIn stores each W transposed; the result is the same.
  p.layout = WeightLayout::kOutIn;
  std::vector<float> wt = transpose_experts(w, 3, 2, 2);
  a.w1 = wt.data();
  std::fill(out.begin(), out.end(), -7.0f);
  ASSERT_TRUE(reference_fused_moe(p, a).ok());
  EXPECT_EQ(out, (std::vector<float>{1.0f, 1.75f, 0.875f, 2.375f}));
}

TEST(Reference, HandComputedGatedFFN) {
  // T = 1, H = 2, I = 2, E = 1, k = 1 (weight 1). x = [1, 2].
  //   W_gate_up [H, 2I] = [[1, 0, 1, 1], [0, -1, 1, 0]]: gate columns g = x @ [[1, 0], [0, -1]]
  //   = [1, -2], up columns u = x @ [[1, 1], [1, 0]] = [3, 1].
  //   silu: a = [silu(1) * 3, silu(-2) * 1] = [2.193175735890015, -0.2384058440442351]
  //   W_down [I, H] = [[1, 0], [1, 1]]: y = [a0 + a1, a1] = [1.9547698918457797, -0.23840...]
  //   gelu: a = [gelu(1) * 3, gelu(-2)] = [2.524034238205629, -0.04550026389635842],
  //   y = [2.4785339743092702, -0.04550026389635842].
  std::vector<double> x = {1, 2};
  std::vector<double> w1 = {1, 0, 1, 1, 0, -1, 1, 0};
  std::vector<double> w2 = {1, 0, 1, 1};
  std::vector<double> logits = {0.0};
  struct Want {
    Activation act;
    double y0, y1;
  } const cases[] = {{Activation::kSilu, 1.9547698918457797, -0.2384058440442351},
                     {Activation::kGelu, 2.4785339743092702, -0.04550026389635842}};
  for (Want const& c : cases) {
    MoeProblem p = ffn_problem(1, 2, 2, 1, 1, c.act);
    p.token_dtype = p.weight_dtype = p.score_dtype = DType::kFloat64;
    std::vector<double> out(2, kNaN);
    MoeArgs a;
    a.tokens = x.data();
    a.w1 = w1.data();
    a.w2 = w2.data();
    a.routing_weights = logits.data();
    a.out = out.data();
    ASSERT_TRUE(reference_fused_moe(p, a).ok());
    EXPECT_NEAR(out[0], c.y0, 1e-15);
    EXPECT_NEAR(out[1], c.y1, 1e-15);
    // kOutIn: W_gate_up as [2I, H] (gate rows first), W_down as [H, I].
    p.layout = WeightLayout::kOutIn;
    std::vector<double> w1t = transpose_experts(w1, 1, 2, 4), w2t = transpose_experts(w2, 1, 2, 2);
    a.w1 = w1t.data();
    a.w2 = w2t.data();
    std::vector<double> out_t(2, kNaN);
    a.out = out_t.data();
    ASSERT_TRUE(reference_fused_moe(p, a).ok());
    EXPECT_EQ(out_t, out);
  }
}

TEST(Reference, RandomLinearMatchesNaive) {
  F64Run r = random_run(linear_problem(32, 64, 48, 12, 3), 7);
  ASSERT_TRUE(r.run().ok());
  std::vector<double> const want = naive_forward(r.problem, r.routing, r.x, r.w1, r.w2);
  EXPECT_LT(rel_err(r.out, want), 1e-14);
}

TEST(Reference, RandomFFNMatchesNaive) {
  for (Activation act : {Activation::kSilu, Activation::kGelu}) {
    MoeProblem p = ffn_problem(64, 256, 128, 8, 2, act);
    p.routing.scoring = Scoring::kSigmoid;
    F64Run r = random_run(p, 11);
    ASSERT_TRUE(r.run().ok());
    std::vector<double> const want = naive_forward(r.problem, r.routing, r.x, r.w1, r.w2);
    EXPECT_LT(rel_err(r.out, want), 1e-14);
  }
}

TEST(Reference, LayoutsAgreeBitwise) {
  // float32 tokens and weights, float32 output: kOutIn with transposed weights gives the same
  // bits as kInOut, for linear and gated-FFN experts.
  int64_t const T = 9, H = 7, D = 5, I = 3, E = 4;
  std::vector<float> x = to_float(random_values(T * H, 1));
  std::vector<float> s = to_float(random_values(T * E, 2, -2, 2));
  for (ExpertKind kind : {ExpertKind::kLinear, ExpertKind::kGatedFFN}) {
    MoeProblem p = kind == ExpertKind::kLinear ? linear_problem(T, H, D, E, 2)
                                               : ffn_problem(T, H, I, E, 2, Activation::kSilu);
    int64_t const n1 = kind == ExpertKind::kLinear ? D : 2 * I;
    std::vector<float> w1 = to_float(random_values(E * H * n1, 3));
    std::vector<float> w2 = to_float(random_values(E * I * H, 4));
    std::vector<float> w1t = transpose_experts(w1, E, H, n1), w2t = transpose_experts(w2, E, I, H);
    std::vector<float> out_a(T * p.output_dim(), -1.0f), out_b(T * p.output_dim(), -2.0f);
    MoeArgs a;
    a.tokens = x.data();
    a.routing_weights = s.data();
    a.w1 = w1.data();
    a.w2 = w2.data();
    a.out = out_a.data();
    ASSERT_TRUE(reference_fused_moe(p, a).ok());
    p.layout = WeightLayout::kOutIn;
    a.w1 = w1t.data();
    a.w2 = w2t.data();
    a.out = out_b.data();
    ASSERT_TRUE(reference_fused_moe(p, a).ok());
    EXPECT_EQ(out_a, out_b);
    // Passing the untransposed weights as kOutIn is a different function.
    a.w1 = w1.data();
    a.w2 = w2.data();
    ASSERT_TRUE(reference_fused_moe(p, a).ok());
    EXPECT_NE(out_a, out_b);
  }
}

TEST(Reference, ExpertMapComputesOnlyLocalExperts) {
  // E = 4 global experts; this rank holds experts 1 and 3 (map {-1, 0, -1, 1}). The output must
  // equal a full run whose non-local experts have zero weights, and stats stay global.
  int64_t const T = 10, H = 6, D = 4, E = 4;
  std::vector<double> x = random_values(T * H, 21);
  std::vector<double> s = random_values(T * E, 22, -2, 2);
  std::vector<double> w_full = random_values(E * H * D, 23);
  for (int64_t e : {0, 2}) {
    for (int64_t i = 0; i < H * D; ++i) w_full[e * H * D + i] = 0.0;
  }
  std::vector<double> w_local(w_full.begin() + 1 * H * D, w_full.begin() + 2 * H * D);
  w_local.insert(w_local.end(), w_full.begin() + 3 * H * D, w_full.end());
  std::vector<int32_t> map = {-1, 0, -1, 1};

  MoeProblem p = linear_problem(T, H, D, E, 2);
  p.token_dtype = p.weight_dtype = p.score_dtype = DType::kFloat64;
  std::vector<double> out_full(T * D, kNaN), out_map(T * D, kNaN);
  std::vector<int32_t> load_full(E), load_map(E);
  MoeArgs a;
  a.tokens = x.data();
  a.routing_weights = s.data();
  a.w1 = w_full.data();
  a.out = out_full.data();
  a.expert_load = load_full.data();
  ASSERT_TRUE(reference_fused_moe(p, a).ok());

  p.has_expert_map = true;
  p.num_local_experts = 2;
  a.w1 = w_local.data();
  a.expert_map = map.data();
  a.out = out_map.data();
  a.expert_load = load_map.data();
  ASSERT_TRUE(reference_fused_moe(p, a).ok());
  EXPECT_EQ(out_map, out_full);
  EXPECT_EQ(load_map, load_full);
  EXPECT_GT(load_map[0] + load_map[2], 0);  // non-local experts were chosen, and skipped
  bool nonzero = false;
  for (double v : out_map) nonzero |= v != 0.0;
  EXPECT_TRUE(nonzero);

  // A map that leaves nothing local gives zero rows.
  std::vector<int32_t> none = {-1, -1, -1, -1};
  a.expert_map = none.data();
  ASSERT_TRUE(reference_fused_moe(p, a).ok());
  for (double v : out_map) EXPECT_EQ(v, 0.0);
}

TEST(Reference, PrecisionBF16RoundsTokensAndWeights) {
  MoeProblem p = ffn_problem(16, 24, 20, 6, 2, Activation::kSilu);
  F64Run exact = random_run(p, 31);
  ASSERT_TRUE(exact.run().ok());
  F64Run bf16 = exact;
  bf16.problem.precision = Precision::kBF16;
  ASSERT_TRUE(bf16.run().ok());
  // The same computation on inputs rounded to bf16 by hand (the intermediate is not rounded).
  auto round_all = [](std::vector<double> v) {
    for (double& e : v) e = round_to_bf16(e);
    return v;
  };
  std::vector<double> const want =
      naive_forward(p, exact.routing, round_all(exact.x), round_all(exact.w1), round_all(exact.w2));
  EXPECT_LT(rel_err(bf16.out, want), 1e-14);
  double const vs_exact = rel_err(bf16.out, exact.out);
  EXPECT_GT(vs_exact, 1e-5);  // it did round
  EXPECT_LT(vs_exact, 1e-2);
}

// Fake-quantizes [E, in, out] weights per (expert, output channel) over `in`, as the test's own
// statement of the grouping.
std::vector<double> fp8_weights(std::vector<double> w, int64_t E, int64_t in, int64_t out) {
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t o = 0; o < out; ++o) {
      double amax = 0.0;
      for (int64_t i = 0; i < in; ++i) amax = std::max(amax, std::fabs(w[(e * in + i) * out + o]));
      double const scale = amax / 448.0;
      for (int64_t i = 0; i < in; ++i) {
        double& v = w[(e * in + i) * out + o];
        v = round_to_e4m3(v / scale) * scale;
      }
    }
  }
  return w;
}

std::vector<double> fp8_rows(std::vector<double> x, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    double amax = 0.0;
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(x[r * cols + c]));
    for (int64_t c = 0; c < cols; ++c) {
      x[r * cols + c] = round_to_e4m3(x[r * cols + c] / (amax / 448.0)) * (amax / 448.0);
    }
  }
  return x;
}

TEST(Reference, PrecisionFP8Linear) {
  MoeProblem p = linear_problem(20, 40, 24, 5, 2);
  F64Run exact = random_run(p, 41);
  ASSERT_TRUE(exact.run().ok());
  F64Run fp8 = exact;
  fp8.problem.precision = Precision::kFP8;
  ASSERT_TRUE(fp8.run().ok());
  std::vector<double> const want = naive_forward(p, exact.routing, fp8_rows(exact.x, 20, 40),
                                                 fp8_weights(exact.w1, 5, 40, 24), exact.w2);
  EXPECT_LT(rel_err(fp8.out, want), 1e-14);
  double const vs_exact = rel_err(fp8.out, exact.out);
  EXPECT_GT(vs_exact, 1e-3);
  EXPECT_LT(vs_exact, 5e-2);
  // Grouping per input channel instead would be a different function.
  std::vector<double> const wrong = naive_forward(
      p, exact.routing, fp8_rows(exact.x, 20, 40),
      transpose_experts(fp8_weights(transpose_experts(exact.w1, 5, 40, 24), 5, 24, 40), 5, 24, 40),
      exact.w2);
  EXPECT_GT(rel_err(fp8.out, wrong), 1e-6);
}

TEST(Reference, PrecisionFP8GatedFFNQuantizesTheIntermediate) {
  int64_t const T = 12, H = 32, I = 24, E = 4;
  for (WeightLayout layout : {WeightLayout::kInOut, WeightLayout::kOutIn}) {
    MoeProblem p = ffn_problem(T, H, I, E, 2, Activation::kGelu);
    F64Run exact = random_run(p, 51);
    ASSERT_TRUE(exact.run().ok());
    F64Run fp8 = exact;
    fp8.problem.precision = Precision::kFP8;
    fp8.problem.layout = layout;
    if (layout == WeightLayout::kOutIn) {
      fp8.w1 = transpose_experts(exact.w1, E, H, 2 * I);
      fp8.w2 = transpose_experts(exact.w2, E, I, H);
    }
    ASSERT_TRUE(fp8.run().ok());
    std::vector<double> const xq = fp8_rows(exact.x, T, H);
    std::vector<double> const w1q = fp8_weights(exact.w1, E, H, 2 * I);
    std::vector<double> const w2q = fp8_weights(exact.w2, E, I, H);
    std::vector<double> const want =
        naive_forward(p, exact.routing, xq, w1q, w2q, {}, /*quantize_intermediate=*/true);
    EXPECT_LT(rel_err(fp8.out, want), 1e-14);
    // Without the intermediate quantization the result differs.
    std::vector<double> const no_mid = naive_forward(p, exact.routing, xq, w1q, w2q);
    EXPECT_GT(rel_err(fp8.out, no_mid), 1e-6);
    // Four E4M3 roundings in a row (x, W_gate_up, the intermediate, W_down) on uniform data:
    // about 5% from the exact result, so this bound is only a sanity check of the format.
    EXPECT_LT(rel_err(fp8.out, exact.out), 1e-1);
  }
}

TEST(Reference, OutputRoundedOnceToTokenType) {
  // Half-precision tokens: the output equals the float64 computation on the same (exactly
  // representable) values, rounded once to the tokens' type.
  int64_t const T = 11, H = 16, D = 12, E = 5;
  MoeProblem base = linear_problem(T, H, D, E, 2);
  std::vector<double> xd = random_values(T * H, 61);
  std::vector<float> w = to_float(random_values(E * H * D, 62));
  std::vector<float> s = to_float(random_values(T * E, 63, -2, 2));
  for (DType dt : {DType::kFloat16, DType::kBFloat16, DType::kFloat32}) {
    std::vector<uint16_t> x16(T * H);
    std::vector<float> x32(T * H);
    std::vector<double> x64(T * H);
    for (int64_t i = 0; i < T * H; ++i) {
      if (dt == DType::kFloat16) x16[i] = detail::double_to_fp16_bits(xd[i]);
      if (dt == DType::kBFloat16) x16[i] = detail::double_to_bf16_bits(xd[i]);
      if (dt == DType::kFloat32) x32[i] = static_cast<float>(xd[i]);
      x64[i] = dt == DType::kFloat32 ? x32[i] : detail::load_as_double(x16.data(), dt, i);
    }
    MoeProblem p = base;
    p.token_dtype = DType::kFloat64;
    std::vector<double> out64(T * D);
    MoeArgs a;
    a.tokens = x64.data();
    a.w1 = w.data();
    a.routing_weights = s.data();
    a.out = out64.data();
    ASSERT_TRUE(reference_fused_moe(p, a).ok());
    p.token_dtype = dt;
    std::vector<uint16_t> out16(T * D, 0xffff);
    std::vector<float> out32(T * D, kNaN);
    a.tokens = dt == DType::kFloat32 ? static_cast<void const*>(x32.data()) : x16.data();
    a.out = dt == DType::kFloat32 ? static_cast<void*>(out32.data()) : out16.data();
    ASSERT_TRUE(reference_fused_moe(p, a).ok());
    for (int64_t i = 0; i < T * D; ++i) {
      if (dt == DType::kFloat32) {
        EXPECT_EQ(out32[i], static_cast<float>(out64[i])) << i;
      } else if (dt == DType::kFloat16) {
        EXPECT_EQ(out16[i], detail::double_to_fp16_bits(out64[i])) << i;
      } else {
        EXPECT_EQ(out16[i], detail::double_to_bf16_bits(out64[i])) << i;
      }
    }
  }
}

TEST(Reference, CapacityAndRerouteReachTheOutput) {
  // T = 3, E = 3, k = 1, cap 1, all tokens prefer expert 0 (the reroute case of the routing
  // tests): with drop, tokens 0 and 1 get zero rows; with reroute they are computed by experts 1
  // and 2 with their original weights.
  MoeProblem p = linear_problem(3, 1, 1, 3, 1);
  p.routing.scoring = Scoring::kNone;
  p.routing.renormalize = false;
  p.routing.capacity_factor = 1.0;
  std::vector<float> s = {0.5f, 0.3f, 0.2f, 0.6f, 0.1f, 0.3f, 0.7f, 0.2f, 0.1f};
  std::vector<float> x = {1, 1, 1};
  std::vector<float> w = {1, 10, 100};  // expert e multiplies by 10^e
  std::vector<float> out(3, kNaN);
  int64_t counts[2];
  std::vector<float> weights(3);
  MoeArgs a;
  a.tokens = x.data();
  a.w1 = w.data();
  a.routing_weights = s.data();
  a.out = out.data();
  a.drop_reroute_counts = counts;
  a.topk_weights_out = weights.data();
  ASSERT_TRUE(reference_fused_moe(p, a).ok());
  EXPECT_EQ(out, (std::vector<float>{0.0f, 0.0f, 0.7f}));
  EXPECT_EQ(counts[0], 2);
  EXPECT_EQ(counts[1], 0);
  EXPECT_EQ(weights, (std::vector<float>{0.0f, 0.0f, 0.7f}));
  p.routing.overflow = Overflow::kReroute;
  ASSERT_TRUE(reference_fused_moe(p, a).ok());
  // 0.6f * 100 in float64, rounded once: not 60.0f.
  EXPECT_EQ(out, (std::vector<float>{5.0f, static_cast<float>(0.6f * 100.0), 0.7f}));
  EXPECT_EQ(counts[0], 0);
  EXPECT_EQ(counts[1], 2);
  EXPECT_EQ(weights, (std::vector<float>{0.5f, 0.6f, 0.7f}));
}

TEST(Reference, PreRoutedWithEmptySlots) {
  // Token 1 has no expert at all: its row is zeros.
  MoeProblem p = linear_problem(2, 2, 2, 3, 2);
  p.prerouted = true;
  std::vector<float> x = {1, 2, 3, 4};
  std::vector<float> w = {1, 0, 0, 1, 2, 0, 0, 2, 3, 0, 0, 3};  // expert e scales by e + 1
  std::vector<int32_t> ids = {2, 0, -1, -1};
  std::vector<float> tw = {0.5f, 0.25f, 9.0f, 9.0f};
  std::vector<float> out(4, kNaN);
  MoeArgs a;
  a.tokens = x.data();
  a.w1 = w.data();
  a.topk_ids_in = ids.data();
  a.topk_weights_in = tw.data();
  a.out = out.data();
  ASSERT_TRUE(reference_fused_moe(p, a).ok());
  // out0 = .5 * 3 * [1, 2] + .25 * [1, 2] = [1.75, 3.5]
  EXPECT_EQ(out, (std::vector<float>{1.75f, 3.5f, 0.0f, 0.0f}));
}

TEST(Reference, ZeroTokens) {
  MoeProblem p = linear_problem(0, 4, 3, 5, 2);
  std::vector<int32_t> load(5, 7);
  int64_t counts[2] = {9, 9};
  MoeArgs a;  // no arrays are read or written for T = 0
  a.expert_load = load.data();
  a.drop_reroute_counts = counts;
  ASSERT_TRUE(reference_fused_moe(p, a).ok());
  EXPECT_EQ(load, (std::vector<int32_t>{0, 0, 0, 0, 0}));
  EXPECT_EQ(counts[0], 0);
  EXPECT_EQ(counts[1], 0);
}

TEST(ReferenceErrors, ExpertMapOutOfRange) {
  MoeProblem p = linear_problem(2, 2, 2, 3, 1);
  p.has_expert_map = true;
  p.num_local_experts = 2;
  std::vector<float> x(4, 1.0f), w(8, 1.0f), s(6, 0.0f), out(4);
  MoeArgs a;
  a.tokens = x.data();
  a.w1 = w.data();
  a.routing_weights = s.data();
  a.out = out.data();
  for (std::vector<int32_t> map :
       {std::vector<int32_t>{0, 2, -1}, std::vector<int32_t>{0, -2, 1}}) {
    a.expert_map = map.data();
    Status const st = reference_fused_moe(p, a);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("expert_map"), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("at expert 1"), std::string::npos) << st.message();
  }
  std::vector<int32_t> ok_map = {1, -1, 1};  // two global experts may share a local one
  a.expert_map = ok_map.data();
  EXPECT_TRUE(reference_fused_moe(p, a).ok());
  a.expert_map = nullptr;
  EXPECT_EQ(reference_fused_moe(p, a).code(), StatusCode::kInvalidArgument);
}

TEST(ReferenceErrors, MissingArraysAndPropagatedErrors) {
  MoeProblem p = ffn_problem(2, 2, 2, 3, 1, Activation::kSilu);
  std::vector<float> x(4, 1.0f), w1(24, 1.0f), w2(12, 1.0f), s(6, 0.0f), out(4);
  MoeArgs good;
  good.tokens = x.data();
  good.w1 = w1.data();
  good.w2 = w2.data();
  good.routing_weights = s.data();
  good.out = out.data();
  ASSERT_TRUE(reference_fused_moe(p, good).ok());
  struct Case {
    void (*mutate)(MoeArgs&);
    char const* name;
  } const cases[] = {{[](MoeArgs& a) { a.tokens = nullptr; }, "tokens"},
                     {[](MoeArgs& a) { a.w1 = nullptr; }, "expert_weights"},
                     {[](MoeArgs& a) { a.w2 = nullptr; }, "expert_weights"},
                     {[](MoeArgs& a) { a.out = nullptr; }, "out"},
                     {[](MoeArgs& a) { a.routing_weights = nullptr; }, "routing_weights"}};
  for (Case const& c : cases) {
    MoeArgs a = good;
    c.mutate(a);
    Status const st = reference_fused_moe(p, a);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(st.message().find(c.name), std::string::npos) << st.message();
  }
  // Data and problem errors come through unchanged.
  s[3] = std::numeric_limits<float>::quiet_NaN();
  Status st = reference_fused_moe(p, good);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("routing_weights"), std::string::npos) << st.message();
  s[3] = 0.0f;
  p.token_dtype = DType::kInt32;
  EXPECT_EQ(reference_fused_moe(p, good).code(), StatusCode::kUnsupportedType);
}

}  // namespace
}  // namespace flashmoe
