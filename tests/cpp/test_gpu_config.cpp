// The GPU path's tile chooser (src/fused/moe_config.h): a pure function of the problem, so it is
// tested on the host, with or without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "fused/moe_config.h"
#include "fused/multikernel_fp8.h"
#include "gemm/sm90_fp8_grouped_gemm.h"

namespace flashmoe::fused {
namespace {

MoeProblem seed_like(int64_t T, int64_t E, int k, int64_t E_local) {
  MoeProblem p;
  p.num_tokens = T;
  p.hidden = 4096;
  p.num_experts = E;
  p.num_local_experts = E_local;
  p.has_expert_map = E_local != E;
  p.out_dim = 4096;
  p.routing.top_k = k;
  p.token_dtype = p.weight_dtype = DType::kBFloat16;
  return p;
}

TEST(GpuConfig, DecodeTakesSixteenRowTilesSeedTakesOneTilePerExpert) {
  EXPECT_EQ(choose_moe_config(seed_like(1, 256, 8, 256), false).bm, 16);
  EXPECT_EQ(choose_moe_config(seed_like(128, 256, 8, 256), false).bm, 16);   // 4 rows per expert
  EXPECT_EQ(choose_moe_config(seed_like(2048, 256, 8, 256), false).bm, 128);  // 64 per expert
  EXPECT_EQ(choose_moe_config(seed_like(16384, 256, 8, 256), false).bm, 128);
  MoeConfig const c = choose_moe_config(seed_like(2048, 256, 8, 256), false);
  EXPECT_EQ(c.num_assignments, 2048 * 8);
  EXPECT_FALSE(c.sm90);
  std::string const line =
      describe_moe_config(seed_like(2048, 256, 8, 256), c, KernelPath::kMultiKernelSm80);
  EXPECT_NE(line.find("path=multikernel-sm80 "), std::string::npos) << line;
}

TEST(GpuConfig, Sm90TakesOneHundredTwentyEightRowItemsAtEveryT) {
  for (int64_t T : {1, 128, 2048, 16384}) {
    MoeConfig const c = choose_moe_config(seed_like(T, 256, 8, 256), true);
    EXPECT_TRUE(c.sm90);
    EXPECT_EQ(c.bm, gemm::kSm90GemmBlockM);
    EXPECT_EQ(c.bn, gemm::kSm90GemmBlockN);
    EXPECT_EQ(c.num_tile_slots, tile_slot_bound(seed_like(T, 256, 8, 256), T * 8, 128));
    std::string const line =
        describe_moe_config(seed_like(T, 256, 8, 256), c, KernelPath::kMultiKernelSm90);
    EXPECT_NE(line.find("path=multikernel-sm90 "), std::string::npos) << line;
    // The one-kernel forward runs the same configuration and says so.
    std::string const fused = describe_moe_config(seed_like(T, 256, 8, 256), c,
                                                  KernelPath::kFusedSm90);
    EXPECT_NE(fused.find("path=fused-sm90 tile="), std::string::npos) << fused;
  }
}

// FP8, default: a pass quantizes the A rows, the m128 kernel copies them, at every T.
TEST(GpuConfig, Fp8PrequantizesByDefault) {
  using gemm::Sm90Fp8Variant;
  char const* saved = std::getenv("FLASHMOE_FP8_ACT");
  std::string const keep = saved != nullptr ? saved : "";
  unsetenv("FLASHMOE_FP8_ACT");
  for (int64_t T : {1, 16, 512, 2048, 16384}) {
    MoeConfig const c = choose_fp8_config(seed_like(T, 256, 8, 256));
    EXPECT_TRUE(c.fp8_prequant) << "T=" << T;
    EXPECT_EQ(c.fp8_variant, static_cast<int32_t>(Sm90Fp8Variant::kM128)) << "T=" << T;
    EXPECT_EQ(c.bm, gemm::kSm90Fp8BlockM);
    std::string const line =
        describe_fp8_config(seed_like(T, 256, 8, 256), c, KernelPath::kFusedSm90Fp8);
    EXPECT_NE(line.find(" act=prepass"), std::string::npos) << line;
    EXPECT_NE(line.find("path=fused-sm90-fp8 m_tile="), std::string::npos) << line;
  }
  if (saved != nullptr) setenv("FLASHMOE_FP8_ACT", keep.c_str(), 1);
}

// FLASHMOE_FP8_ACT=gather: the producer quantizes at decode (m128), the math warpgroups above
// 16 rows per expert (m128c).
TEST(GpuConfig, Fp8GatherVariantByRowsPerExpert) {
  using gemm::Sm90Fp8Variant;
  char const* saved = std::getenv("FLASHMOE_FP8_ACT");
  std::string const keep = saved != nullptr ? saved : "";
  setenv("FLASHMOE_FP8_ACT", "gather", 1);
  for (int64_t T : {1, 16, 512}) {  // 0.03 .. 16 rows per expert
    MoeConfig const c = choose_fp8_config(seed_like(T, 256, 8, 256));
    EXPECT_FALSE(c.fp8_prequant) << "T=" << T;
    EXPECT_EQ(c.fp8_variant, static_cast<int32_t>(Sm90Fp8Variant::kM128)) << "T=" << T;
    EXPECT_EQ(c.bm, gemm::kSm90Fp8BlockM);
  }
  for (int64_t T : {520, 2048, 16384}) {
    MoeConfig const c = choose_fp8_config(seed_like(T, 256, 8, 256));
    EXPECT_FALSE(c.fp8_prequant) << "T=" << T;
    EXPECT_EQ(c.fp8_variant, static_cast<int32_t>(Sm90Fp8Variant::kM128Convert)) << "T=" << T;
  }
  if (saved != nullptr) setenv("FLASHMOE_FP8_ACT", keep.c_str(), 1);
  else unsetenv("FLASHMOE_FP8_ACT");
}

// However the T*k assignments fall on the local experts, their M tiles fit the grid's slots.
TEST(GpuConfig, TileSlotsCoverEveryRouting) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 400; ++trial) {
    int64_t const E = 1 + rng() % 300;
    int64_t const E_local = 1 + rng() % E;
    int const k = 1 + static_cast<int>(rng() % std::min<int64_t>(E, 16));
    int64_t const T = 1 + rng() % 3000;
    MoeConfig const c = choose_moe_config(seed_like(T, E, k, E_local), trial % 3 == 0);
    // Worst cases: spread one row over as many experts as possible, the rest piled on one.
    std::vector<int64_t> rows(E_local, 0);
    int64_t left = T * k;
    std::uniform_int_distribution<int64_t> pick(0, E_local - 1);
    bool const spread = trial % 2 == 0;
    for (int64_t e = 0; e < E_local && left > 0 && spread; ++e, --left) rows[e] = 1;
    while (left > 0) {
      int64_t const e = pick(rng);
      int64_t const n = std::min<int64_t>(left, 1 + static_cast<int64_t>(rng() % 97));
      rows[e] += n;
      left -= n;
    }
    int64_t tiles = 0;
    for (int64_t r : rows) tiles += (r + c.bm - 1) / c.bm;
    ASSERT_LE(tiles, c.num_tile_slots) << "T=" << T << " k=" << k << " E_local=" << E_local;
  }
}

}  // namespace
}  // namespace flashmoe::fused
