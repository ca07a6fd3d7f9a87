// E4M3 / bf16 / fp16 rounding rules of flashmoe/quantization.h and the bit conversions of
// reference/float_bits.h.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "flashmoe/quantization.h"
#include "reference/float_bits.h"

namespace flashmoe {
namespace {

double const kInf = std::numeric_limits<double>::infinity();

// Decodes an E4M3FN byte by its definition (independent of the rounding code under test).
double decode_e4m3(uint8_t b) {
  int const sign = b >> 7;
  int const exp = (b >> 3) & 0xf;
  int const man = b & 0x7;
  if (exp == 0xf && man == 0x7) return std::numeric_limits<double>::quiet_NaN();
  double const v = exp == 0 ? man * std::pow(2.0, -9) : (1.0 + man / 8.0) * std::pow(2.0, exp - 7);
  return sign ? -v : v;
}

TEST(E4M3, KnownValues) {
  EXPECT_EQ(round_to_e4m3(1.0), 1.0);
  EXPECT_EQ(round_to_e4m3(448.0), 448.0);
  EXPECT_EQ(round_to_e4m3(-448.0), -448.0);
  EXPECT_EQ(round_to_e4m3(240.0), 240.0);
  // 0.1 = 12.8 quanta of 2^-7 in [2^-4, 2^-3) -> 13 * 2^-7.
  EXPECT_EQ(round_to_e4m3(0.1), 0.1015625);
  EXPECT_EQ(round_to_e4m3(3.0), 3.0);
  EXPECT_EQ(round_to_e4m3(-3.3), -3.25);  // quantum 0.25 in [2, 4)
  EXPECT_EQ(round_to_e4m3(0.0), 0.0);
  EXPECT_TRUE(std::signbit(round_to_e4m3(-0.0)));
}

TEST(E4M3, TiesToEven) {
  // 1.0625 is halfway between 1.0 (mantissa 000) and 1.125 (001): even is 1.0.
  EXPECT_EQ(round_to_e4m3(1.0625), 1.0);
  // 1.1875 is halfway between 1.125 (001) and 1.25 (010): even is 1.25.
  EXPECT_EQ(round_to_e4m3(1.1875), 1.25);
  EXPECT_EQ(round_to_e4m3(-1.1875), -1.25);
  // 232 is halfway between 224 (1.75 * 2^7, 110) and 240 (1.875 * 2^7, 111): even is 224.
  EXPECT_EQ(round_to_e4m3(232.0), 224.0);
  // Just off the tie goes to the nearest.
  EXPECT_EQ(round_to_e4m3(1.0625 + 1e-9), 1.125);
  EXPECT_EQ(round_to_e4m3(1.1875 - 1e-9), 1.125);
}

TEST(E4M3, Saturation) {
  // 464 is halfway between 448 and 480 (not a finite E4M3FN value): saturates to 448.
  EXPECT_EQ(round_to_e4m3(464.0), 448.0);
  EXPECT_EQ(round_to_e4m3(470.0), 448.0);
  EXPECT_EQ(round_to_e4m3(1e9), 448.0);
  EXPECT_EQ(round_to_e4m3(-1000.0), -448.0);
  EXPECT_EQ(round_to_e4m3(kInf), 448.0);
  EXPECT_EQ(round_to_e4m3(-kInf), -448.0);
  EXPECT_TRUE(std::isnan(round_to_e4m3(std::nan(""))));
}

TEST(E4M3, Subnormals) {
  double const q = std::ldexp(1.0, -9);  // smallest subnormal
  EXPECT_EQ(round_to_e4m3(q), q);
  EXPECT_EQ(round_to_e4m3(0.5 * q), 0.0);  // tie between 0 and q: even is 0
  EXPECT_TRUE(std::signbit(round_to_e4m3(-0.5 * q)));
  EXPECT_EQ(round_to_e4m3(0.5 * q * 1.001), q);  // just above the tie
  EXPECT_EQ(round_to_e4m3(0.75 * q), q);
  EXPECT_EQ(round_to_e4m3(0.25 * q), 0.0);
  EXPECT_EQ(round_to_e4m3(1.5 * q), 2 * q);  // tie between 1 and 2 quanta: even is 2
  EXPECT_EQ(round_to_e4m3(2.5 * q), 2 * q);  // tie between 2 and 3 quanta: even is 2
  EXPECT_EQ(round_to_e4m3(7 * q), 7 * q);    // largest subnormal
  EXPECT_EQ(round_to_e4m3(7.5 * q), 8 * q);  // tie to the smallest normal 2^-6 (even)
  double const n = std::ldexp(1.0, -6);      // smallest normal, quantum 2^-9 as below it
  EXPECT_EQ(round_to_e4m3(n + 0.5 * q), n);
  EXPECT_EQ(round_to_e4m3(n + 1.5 * q), n + 2 * q);
}

TEST(E4M3, EveryCodeAndMidpoint) {
  // All finite positive codes in increasing order; each rounds to itself, and the midpoint of two
  // neighbours rounds to the one whose code is even.
  std::vector<uint8_t> codes;
  for (int b = 0; b < 0x7f; ++b) codes.push_back(static_cast<uint8_t>(b));
  for (size_t i = 0; i < codes.size(); ++i) {
    double const v = decode_e4m3(codes[i]);
    EXPECT_EQ(round_to_e4m3(v), v) << "code " << int(codes[i]);
    EXPECT_EQ(round_to_e4m3(-v), -v) << "code " << int(codes[i]);
    if (i + 1 < codes.size()) {
      double const w = decode_e4m3(codes[i + 1]);
      ASSERT_LT(v, w);
      double const mid = 0.5 * (v + w);
      double const even = (codes[i] % 2 == 0) ? v : w;
      EXPECT_EQ(round_to_e4m3(mid), even) << "between " << v << " and " << w;
      EXPECT_EQ(round_to_e4m3(mid - (w - v) * 1e-6), v);
      EXPECT_EQ(round_to_e4m3(mid + (w - v) * 1e-6), w);
    }
  }
  EXPECT_EQ(decode_e4m3(0x7e), 448.0);
}

TEST(BF16, Rounding) {
  EXPECT_EQ(round_to_bf16(1.0), 1.0);
  EXPECT_EQ(round_to_bf16(3.140625), 3.140625);
  EXPECT_EQ(round_to_bf16(M_PI), 3.140625);
  EXPECT_EQ(round_to_bf16(1.0 + std::ldexp(1.0, -8)), 1.0);  // tie: even is 1.0
  EXPECT_EQ(round_to_bf16(1.0 + 3 * std::ldexp(1.0, -8)), 1.0 + std::ldexp(1.0, -6));
  // Rounded straight from float64: through float32 the 2^-40 would be lost and the tie would go
  // down to 1.0.
  EXPECT_EQ(round_to_bf16(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40)),
            1.0 + std::ldexp(1.0, -7));
  EXPECT_EQ(round_to_bf16(detail::kBf16Max), detail::kBf16Max);
  EXPECT_EQ(round_to_bf16(static_cast<double>(std::numeric_limits<float>::max())), kInf);
  EXPECT_EQ(round_to_bf16(-1e39), -kInf);
  EXPECT_EQ(round_to_bf16(std::ldexp(1.0, -133)), std::ldexp(1.0, -133));  // smallest subnormal
  EXPECT_EQ(round_to_bf16(std::ldexp(1.0, -134)), 0.0);                    // tie to 0
  EXPECT_TRUE(std::isnan(round_to_bf16(std::nan(""))));
}

TEST(FP16, Rounding) {
  EXPECT_EQ(round_to_fp16(65504.0), 65504.0);
  EXPECT_EQ(round_to_fp16(65519.0), 65504.0);
  EXPECT_EQ(round_to_fp16(65520.0), kInf);  // tie between 65504 and 2^16: even overflows
  EXPECT_EQ(round_to_fp16(-70000.0), -kInf);
  EXPECT_EQ(round_to_fp16(1.0 + std::ldexp(1.0, -11)), 1.0);
  EXPECT_EQ(round_to_fp16(1.0 + 3 * std::ldexp(1.0, -11)), 1.0 + std::ldexp(1.0, -9));
  EXPECT_EQ(round_to_fp16(std::ldexp(1.0, -24)), std::ldexp(1.0, -24));
  EXPECT_EQ(round_to_fp16(std::ldexp(1.0, -25)), 0.0);
  EXPECT_EQ(round_to_fp16(std::ldexp(3.0, -26)), std::ldexp(1.0, -24));
  EXPECT_EQ(round_to_fp16(0.1), 0.0999755859375);
}

TEST(FakeQuantize, GroupWithStride) {
  // amax 3.5 -> scale 3.5 / 448 = 1/128; v / scale = 64, -224, 448, 12.8 -> 64, -224, 448, 13.
  std::vector<double> v = {0.5, 99.0, -1.75, 99.0, 3.5, 99.0, 0.1, 99.0};
  double const scale = fake_quantize_e4m3_group(v.data(), 4, 2);
  EXPECT_EQ(scale, 1.0 / 128);
  EXPECT_EQ(v[0], 0.5);
  EXPECT_EQ(v[2], -1.75);
  EXPECT_EQ(v[4], 3.5);
  EXPECT_EQ(v[6], 13.0 / 128);
  for (int i = 1; i < 8; i += 2) EXPECT_EQ(v[i], 99.0);  // outside the group
}

TEST(FakeQuantize, AmaxIsNegativeAndZeroGroup) {
  // amax 8 (from -8): scale 1/56; 1 * 56 = 56 (exact); 0.3 * 56 = 16.8 -> 16 (quantum 2 in
  // [16, 32)); dequantized 16/56.
  std::vector<double> v = {1.0, -8.0, 0.3};
  double const scale = fake_quantize_e4m3_group(v.data(), 3, 1);
  EXPECT_DOUBLE_EQ(scale, 8.0 / 448);
  EXPECT_DOUBLE_EQ(v[0], 1.0);
  EXPECT_DOUBLE_EQ(v[1], -8.0);
  EXPECT_DOUBLE_EQ(v[2], 16.0 / 56);
  std::vector<double> z = {0.0, -0.0, 0.0};
  EXPECT_EQ(fake_quantize_e4m3_group(z.data(), 3, 1), 1.0);
  for (double x : z) EXPECT_EQ(x, 0.0);
}

TEST(FloatBits, HalfDecode) {
  EXPECT_EQ(detail::fp16_bits_to_double(0x3c00), 1.0);
  EXPECT_EQ(detail::fp16_bits_to_double(0xc000), -2.0);
  EXPECT_EQ(detail::fp16_bits_to_double(0x7bff), 65504.0);
  EXPECT_EQ(detail::fp16_bits_to_double(0x0001), std::ldexp(1.0, -24));
  EXPECT_EQ(detail::fp16_bits_to_double(0x0400), std::ldexp(1.0, -14));
  EXPECT_EQ(detail::fp16_bits_to_double(0x3555), 0.333251953125);
  EXPECT_EQ(detail::fp16_bits_to_double(0x7c00), kInf);
  EXPECT_EQ(detail::fp16_bits_to_double(0xfc00), -kInf);
  EXPECT_TRUE(std::isnan(detail::fp16_bits_to_double(0x7e00)));
}

TEST(FloatBits, BF16Decode) {
  EXPECT_EQ(detail::bf16_bits_to_double(0x3f80), 1.0);
  EXPECT_EQ(detail::bf16_bits_to_double(0x4049), 3.140625);
  EXPECT_EQ(detail::bf16_bits_to_double(0xc000), -2.0);
  EXPECT_EQ(detail::bf16_bits_to_double(0x7f80), kInf);
}

TEST(FloatBits, EveryHalfAndBF16PatternRoundTrips) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    uint16_t const bits = static_cast<uint16_t>(b);
    double const h = detail::fp16_bits_to_double(bits);
    if (!std::isnan(h)) {
      ASSERT_EQ(detail::double_to_fp16_bits(h), bits) << std::hex << b;
      ASSERT_EQ(round_to_fp16(h), h);
    }
    double const f = detail::bf16_bits_to_double(bits);
    if (!std::isnan(f)) {
      ASSERT_EQ(detail::double_to_bf16_bits(f), bits) << std::hex << b;
      ASSERT_EQ(round_to_bf16(f), f);
    }
  }
}

TEST(FloatBits, EncodeRounds) {
  EXPECT_EQ(detail::double_to_fp16_bits(1.0 + std::ldexp(1.0, -11)), 0x3c00);  // tie down
  EXPECT_EQ(detail::double_to_fp16_bits(1.0 + 3 * std::ldexp(1.0, -11)), 0x3c02);
  EXPECT_EQ(detail::double_to_fp16_bits(1e6), 0x7c00);
  EXPECT_EQ(detail::double_to_fp16_bits(-0.0), 0x8000);
  EXPECT_EQ(detail::double_to_bf16_bits(M_PI), 0x4049);
  EXPECT_EQ(detail::double_to_bf16_bits(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40)), 0x3f81);
  uint16_t const nan_bits = detail::double_to_bf16_bits(std::nan(""));
  EXPECT_TRUE(std::isnan(detail::bf16_bits_to_double(nan_bits)));
}

TEST(FloatBits, LoadStoreEveryDType) {
  float f32[1];
  double f64[1];
  uint16_t f16[1], b16[1];
  detail::store_from_double(f32, DType::kFloat32, 0, 0.1);
  detail::store_from_double(f64, DType::kFloat64, 0, 0.1);
  detail::store_from_double(f16, DType::kFloat16, 0, 0.1);
  detail::store_from_double(b16, DType::kBFloat16, 0, 0.1);
  EXPECT_EQ(detail::load_as_double(f32, DType::kFloat32, 0), static_cast<double>(0.1f));
  EXPECT_EQ(detail::load_as_double(f64, DType::kFloat64, 0), 0.1);
  EXPECT_EQ(detail::load_as_double(f16, DType::kFloat16, 0), 0.0999755859375);
  EXPECT_EQ(detail::load_as_double(b16, DType::kBFloat16, 0), 0.10009765625);
}

}  // namespace
}  // namespace flashmoe
