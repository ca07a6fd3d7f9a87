// The sm_90a bf16/fp16 grouped GEMM (src/gemm/sm90_grouped_gemm.h) on its own, against a float64
// host GEMM of the same operands: awkward K / N (not multiples of the 64-wide boxes), gate-up
// with both activations, both weight layouts, both dtypes, experts with 0 / 1 / 64 / 65 / 128 /
// 129 / 300 rows, a few persistent CTAs (so each walks many work items). Skipped without a
// compute capability 9.0 device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gemm/grouped_gemm_args.h"
#include "gemm/sm90_grouped_gemm.h"
#include "gpu_test_util.h"

namespace flashmoe::gpu_test {
namespace {

bool has_sm90() {
  if (!has_cuda_device()) return false;
  int device = 0, major = 0, minor = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  return major == 9 && minor == 0;
}

#define REQUIRE_SM90()                                                        \
  do {                                                                        \
    if (!has_sm90()) GTEST_SKIP() << "no compute capability 9.0 device";      \
  } while (0)

struct GemmCase {
  DType dtype;
  WeightLayout layout;
  bool gate_up;
  Activation act;
  int64_t k;
  int64_t n;  // n_out
  std::vector<int> rows_per_expert;
  int max_ctas;
};

std::string describe(GemmCase const& c) {
  return std::string(dtype_name(c.dtype)) + (c.layout == WeightLayout::kInOut ? " in_out" : " out_in") +
         (c.gate_up ? (c.act == Activation::kSilu ? " gate-up silu" : " gate-up gelu") : " plain") +
         " K=" + std::to_string(c.k) + " N=" + std::to_string(c.n) +
         " ctas=" + std::to_string(c.max_ctas);
}

void run_case(GemmCase const& c, uint32_t seed) {
  SCOPED_TRACE(describe(c));
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  int64_t const E = static_cast<int64_t>(c.rows_per_expert.size());
  int64_t const T = 97;  // source rows the gather draws from
  int64_t const K = c.k;
  int64_t const b_cols = c.gate_up ? 2 * c.n : c.n;

  // Dense rows (expert-ordered), their source rows, and the 128-row tile list.
  std::vector<int32_t> a_rows;
  std::vector<gemm::TileInfo> tiles;
  std::vector<int32_t> row_expert;
  for (int64_t e = 0; e < E; ++e) {
    int const r = c.rows_per_expert[e];
    int32_t const row0 = static_cast<int32_t>(a_rows.size());
    for (int i = 0; i < r; ++i) {
      a_rows.push_back(static_cast<int32_t>(rng() % T));
      row_expert.push_back(static_cast<int32_t>(e));
    }
    for (int t0 = 0; t0 < r; t0 += gemm::kSm90GemmBlockM) {
      tiles.push_back({static_cast<int32_t>(e), row0 + t0,
                       std::min(gemm::kSm90GemmBlockM, r - t0), 0});
    }
  }
  int64_t const R = static_cast<int64_t>(a_rows.size());
  int32_t const slots = static_cast<int32_t>(tiles.size()) + 3;  // spare slots end the list
  while (static_cast<int32_t>(tiles.size()) < slots) tiles.push_back({-1, 0, 0, 0});

  std::vector<uint16_t> a(T * K), b(E * K * b_cols);
  for (auto& v : a) v = to_bits(c.dtype, normal(rng));
  for (auto& v : b) v = to_bits(c.dtype, normal(rng) / std::sqrt(static_cast<double>(K)));

  // float64 reference of epilogue(A[src(r)] @ B[e]), rounded to the dtype.
  auto w = [&](int64_t e, int64_t kk, int64_t col) {
    int64_t const i = c.layout == WeightLayout::kInOut ? (e * K + kk) * b_cols + col
                                                      : (e * b_cols + col) * K + kk;
    return from_bits(c.dtype, b[i]);
  };
  std::vector<uint16_t> ref(R * c.n);
  for (int64_t r = 0; r < R; ++r) {
    int64_t const e = row_expert[r];
    for (int64_t n = 0; n < c.n; ++n) {
      double g = 0.0, u = 0.0;
      for (int64_t kk = 0; kk < K; ++kk) {
        double const x = from_bits(c.dtype, a[a_rows[r] * K + kk]);
        g += x * w(e, kk, n);
        if (c.gate_up) u += x * w(e, kk, c.n + n);
      }
      double v = g;
      if (c.gate_up) {
        double const act = c.act == Activation::kSilu ? g / (1.0 + std::exp(-g))
                                                      : 0.5 * g * (1.0 + std::erf(g / std::sqrt(2.0)));
        v = act * u;
      }
      ref[r * c.n + n] = to_bits(c.dtype, v);
    }
  }

  DeviceBuffer da, db, drows, dtiles, dc, dq(gemm::kSm90GemmSchedulerBytes);
  upload(&da, a);
  upload(&db, b);
  upload(&drows, a_rows);
  upload(&dtiles, tiles);
  dc.resize(std::max<std::size_t>(R * c.n * 2, 16));
  FLASHMOE_ASSERT_CUDA(cudaMemset(dq.get(), 0, dq.bytes()));

  gemm::GroupedGemmArgs g;
  g.a = da.get();
  g.a_rows = drows.get<int32_t>();
  g.b = db.get();
  g.c = dc.get();
  g.tiles = dtiles.get<gemm::TileInfo>();
  g.num_tile_slots = slots;
  g.k = K;
  g.n_out = c.n;
  g.b_cols = b_cols;
  g.num_experts = E;
  g.activation = c.act;

  std::vector<uint16_t> first;
  for (int launch = 0; launch < 2; ++launch) {  // the second reuses the queue the first left zero
    FLASHMOE_ASSERT_CUDA(cudaMemset(dc.get(), 0xFF, dc.bytes()));  // NaN poison
    Status const s = gemm::launch_sm90_grouped_gemm(g, c.dtype, c.layout, c.gate_up,
                                                    dq.get<int32_t>(), nullptr, c.max_ctas);
    ASSERT_TRUE(s.ok()) << s.message();
    FLASHMOE_ASSERT_CUDA(cudaDeviceSynchronize());
    std::vector<uint16_t> const out = download<uint16_t>(dc, R * c.n);
    if (launch == 0) {
      EXPECT_LT(rel_frobenius(c.dtype, out, ref), 1e-2) << "relative Frobenius error";
      first = out;
    } else {
      EXPECT_EQ(out, first) << "a second launch on the same queue is not bitwise identical";
    }
  }
  std::vector<int32_t> const q = download<int32_t>(dq, 2);
  EXPECT_EQ(q[0], 0) << "the work queue was not left zero";
  EXPECT_EQ(q[1], 0);
}

TEST(GpuSm90Gemm, AwkwardShapesBothLayoutsBothDtypes) {
  REQUIRE_SM90();
  std::vector<int> const rows = {0, 1, 64, 65, 128, 129, 300, 7};
  uint32_t seed = 11;
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    for (WeightLayout lay : {WeightLayout::kInOut, WeightLayout::kOutIn}) {
      run_case({dt, lay, false, Activation::kSilu, 200, 264, rows, 3}, seed++);
      run_case({dt, lay, true, Activation::kSilu, 136, 72, rows, 2}, seed++);
      run_case({dt, lay, true, Activation::kGelu, 8, 40, rows, 132}, seed++);
      run_case({dt, lay, false, Activation::kSilu, 64, 8, {3, 0, 130}, 1}, seed++);
    }
  }
}

TEST(GpuSm90Gemm, RefusesWhatItCannotRun) {
  gemm::GroupedGemmArgs g;
  g.k = 12;  // not a multiple of 8
  g.n_out = 8;
  g.b_cols = 8;
  g.num_experts = 1;
  Status s = gemm::check_sm90_grouped_gemm(g, DType::kBFloat16, WeightLayout::kInOut);
  EXPECT_EQ(s.code(), StatusCode::kNotSupported) << s.message();
  g.k = 16;
  s = gemm::check_sm90_grouped_gemm(g, DType::kFloat32, WeightLayout::kInOut);
  EXPECT_EQ(s.code(), StatusCode::kUnsupportedType) << s.message();
  s = gemm::check_sm90_grouped_gemm(g, DType::kBFloat16, WeightLayout::kInOut);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.message();  // null pointers
}

}  // namespace
}  // namespace flashmoe::gpu_test
