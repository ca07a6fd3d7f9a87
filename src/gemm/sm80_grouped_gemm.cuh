// flashmoe (internal): the sm_80 gathered grouped GEMM (mma.sync m16n8k16, fp32 accumulation,
// ldmatrix, cp.async multi-stage pipeline). Runs on Ampere and Hopper.
//
// One CTA computes a BM x BN tile of one expert: rows of the dense assignment list (gathered
// straight from `tokens` through a_rows, so no permuted copy of the activations exists in HBM),
// columns of that expert's weight matrix. K is walked in 64-wide steps through a kStages-deep
// cp.async ring in shared memory. Loads out of range (rows past the tile's valid rows, columns
// past n_out, k past K) are zero-filled by cp.async's src-size operand; they read nothing.
//
// Shared memory, per stage (16-byte chunks XOR-swizzled by row so ldmatrix is conflict free):
//   sA [BM][64]             A rows, K contiguous
//   sB [BN][64]  (kOutIn)   weight rows = output columns, K contiguous -> ldmatrix
//   sB [64][BN]  (kInOut)   weight rows = k, N contiguous           -> ldmatrix.trans
// The gate-up variant (gated-FFN GEMM1) loads, for its BN/2 output columns, the gate and the up
// columns interleaved in 8-column chunks (gate, up, gate, up, ...), so each thread's accumulator
// fragments hold gate and up of the same columns and act(g) * u is fused in the epilogue.
//
// Grid: blockIdx.x = m_slot * n_tiles + n_tile (N fastest): the CTAs of one M tile run side by
// side, so its A rows are read from L2 while hot, and an expert with two M tiles streams its
// weights from HBM about once. Slots past the last tile exit at once.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include <cute/arch/copy_sm75.hpp>
#include <cute/arch/copy_sm80.hpp>
#include <cute/arch/mma_sm80.hpp>

#include "fused/cuda_check.h"
#include "gemm/grouped_gemm_args.h"

namespace flashmoe::gemm {

/// A CTA tile: BM x BN outputs (of the weight's column space), K step 64, kStages pipeline
/// stages, WarpsM x WarpsN warps each owning a (BM/WarpsM) x (BN/WarpsN) sub-tile.
template <int BM_, int BN_, int Stages_, int WarpsM_, int WarpsN_, int MinBlocks_>
struct Sm80TileShape {
  static constexpr int kBM = BM_;
  static constexpr int kBN = BN_;
  static constexpr int kBK = 64;
  static constexpr int kStages = Stages_;
  static constexpr int kWarpsM = WarpsM_;
  static constexpr int kWarpsN = WarpsN_;
  static constexpr int kMinBlocks = MinBlocks_;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kWarpM = kBM / kWarpsM;
  static constexpr int kWarpN = kBN / kWarpsN;
  static constexpr int kMI = kWarpM / 16;  // m16 fragments per warp
  static constexpr int kNI = kWarpN / 8;   // n8 fragments per warp
  static constexpr int kStageElems = (kBM + kBN) * kBK;
  static constexpr int kSmemBytes = kStages * kStageElems * 2;  // 16-bit elements

  static_assert(kBM % (16 * kWarpsM) == 0, "warp rows must be whole m16 fragments");
  // Whole n16 pairs per warp: one ldmatrix.x4 feeds two n8 fragments, and the gate-up
  // epilogue pairs fragment 2q (gate) with 2q+1 (up).
  static_assert(kBN % (16 * kWarpsN) == 0, "warp columns must be whole n16 pairs");
  static_assert(kBN % 64 == 0, "the kInOut swizzle needs BN/8 to be a multiple of 8 chunks");
  static_assert(kStages >= 2, "a pipeline needs two stages");
  static_assert((kBM * kBK / 8) % kThreads == 0, "A chunks must split evenly over threads");
  static_assert((kBN * kBK / 8) % kThreads == 0, "B chunks must split evenly over threads");
  static_assert(kThreads % (kBN / 8) == 0, "kInOut B rows must split evenly over threads");
  // 227 KB is the most a Hopper CTA may opt into; Ampere (A100) allows 163 KB.
  static_assert(kSmemBytes <= 163 * 1024, "shared memory budget of an sm_80 CTA exceeded");
};

// Decode: few rows per expert. 16 rows, 4 warps side by side along N; 4 stages of 18 KB keep
// 3 CTAs (12 warps) per SM streaming weights.
using Sm80TileM16N128 = Sm80TileShape<16, 128, 4, 1, 4, 3>;
// Everything else: 128 rows hold a typical expert's tokens at the seed shape (~64), so weights
// are read once; warps whose 32 rows are all padding skip their MMAs. 3 stages of 32 KB, 2 CTAs
// per SM on Hopper (96 KB each), 8 warps, 32x64 per warp.
using Sm80TileM128N128 = Sm80TileShape<128, 128, 3, 4, 2, 2>;
// W8A16 with >16 rows per expert: the E4M3 staging ring (8 KB per stage) would leave no room for
// a second CTA per SM anyway, so one CTA with 4 stages (128 + 32 KB: fits an A100's 163 KB) and
// the whole register file (the dequantization's state spills at 128 registers).
using Sm80TileM128N128W8 = Sm80TileShape<128, 128, 4, 4, 2, 1>;

/// The launch geometry of one grouped GEMM, known on the host.
template <class Shape, bool kGateUp, bool kW8 = false>
struct Sm80GroupedGemmParams {
  static constexpr int kBNOut = kGateUp ? Shape::kBN / 2 : Shape::kBN;  // output columns/tile
  static constexpr int kCStride = kBNOut + 8;  // staging row (+16 B: conflict-free stores)
  // W8A16: after the ring, a staging ring of the E4M3 weight tiles (BN rows x 64 bytes per stage).
  static constexpr int kW8StageBytes = kW8 ? Shape::kBN * Shape::kBK : 0;
  static constexpr int kSmemBytes = Shape::kSmemBytes + Shape::kStages * kW8StageBytes;
  static_assert(Shape::kBM * kCStride * 2 <= kSmemBytes, "epilogue staging must fit the ring");

  GroupedGemmArgs args;
  int32_t n_tiles;

  static Sm80GroupedGemmParams make(GroupedGemmArgs const& a) {
    Sm80GroupedGemmParams p;
    p.args = a;
    p.n_tiles = static_cast<int32_t>((a.n_out + kBNOut - 1) / kBNOut);
    return p;
  }
  dim3 grid() const {
    return dim3(static_cast<unsigned>(n_tiles) * static_cast<unsigned>(args.num_tile_slots));
  }
  dim3 block() const { return dim3(Shape::kThreads); }
};

namespace detail {

template <class Element>
struct MmaAtom;
template <>
struct MmaAtom<__nv_bfloat16> {
  using type = cute::SM80_16x8x16_F32BF16BF16F32_TN;
};
template <>
struct MmaAtom<__half> {
  using type = cute::SM80_16x8x16_F32F16F16F32_TN;
};

__device__ __forceinline__ uint32_t pack2(__nv_bfloat16*, float lo, float hi) {
  __nv_bfloat162 const v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t const*>(&v);
}
__device__ __forceinline__ uint32_t pack2(__half*, float lo, float hi) {
  __half2 const v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t const*>(&v);
}

// 16 bytes global -> shared, zero-filled (nothing read) when !pred. `src` must be a valid
// address even when !pred (callers pass the operand's base pointer).
__device__ __forceinline__ void cp_async_16(void* smem_dst, void const* gmem_src, bool pred) {
  cute::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>::copy(
      *static_cast<cute::uint128_t const*>(gmem_src), *static_cast<cute::uint128_t*>(smem_dst),
      pred);
}

__device__ __forceinline__ void ldsm_x4(void const* smem, uint32_t (&r)[4]) {
  cute::SM75_U32x4_LDSM_N::copy(*static_cast<cute::uint128_t const*>(smem), r[0], r[1], r[2],
                                r[3]);
}
__device__ __forceinline__ void ldsm_x4_trans(void const* smem, uint32_t (&r)[4]) {
  cute::SM75_U16x8_LDSM_T::copy(*static_cast<cute::uint128_t const*>(smem), r[0], r[1], r[2],
                                r[3]);
}

__device__ __forceinline__ float activate(Activation act, float g) {
  if (act == Activation::kSilu) return g / (1.0f + expf(-g));
  return 0.5f * g * (1.0f + erff(g * 0.70710678118654752440f));  // exact gelu
}

}  // namespace detail

template <class Element, class Shape, bool kOutIn, bool kGateUp, bool kW8 = false>
__global__ void __launch_bounds__(Shape::kThreads, Shape::kMinBlocks)
    sm80_grouped_gemm_kernel(Sm80GroupedGemmParams<Shape, kGateUp, kW8> const p) {
  using Atom = typename detail::MmaAtom<Element>::type;
  using Params = Sm80GroupedGemmParams<Shape, kGateUp, kW8>;
  static_assert(!kW8 || kOutIn, "E4M3 weights are prepared K-major ([E, Np, K])");
  constexpr int BM = Shape::kBM;
  constexpr int BN = Shape::kBN;
  constexpr int BK = Shape::kBK;
  constexpr int kStages = Shape::kStages;
  constexpr int kThreads = Shape::kThreads;
  constexpr int WM = Shape::kWarpM;
  constexpr int WN = Shape::kWarpN;
  constexpr int MI = Shape::kMI;
  constexpr int NI = Shape::kNI;
  constexpr int kStageElems = Shape::kStageElems;
  constexpr int kRowChunks = BK / 8;  // 16-byte chunks in a K-contiguous tile row

  extern __shared__ __align__(128) unsigned char smem_raw[];
  Element* const smem = reinterpret_cast<Element*>(smem_raw);

  GroupedGemmArgs const& args = p.args;
  int const n_tile = static_cast<int>(blockIdx.x % static_cast<unsigned>(p.n_tiles));
  int const m_slot = static_cast<int>(blockIdx.x / static_cast<unsigned>(p.n_tiles));
  TileInfo const tile = args.tiles[m_slot];
  if (tile.expert < 0) return;  // past the last M tile

  int const tid = static_cast<int>(threadIdx.x);
  int const lane = tid & 31;
  int const warp = tid >> 5;
  int const warp_m = warp / Shape::kWarpsN;
  int const warp_n = warp % Shape::kWarpsN;
  // 32-bit sizes (the host guarantees < 2^31) keep the loop's address math in fewer registers.
  int const K = static_cast<int>(args.k);
  int const n_out = static_cast<int>(args.n_out);
  int const b_cols = static_cast<int>(args.b_cols);
  Element const* const A = static_cast<Element const*>(args.a);
  Element const* const B =
      static_cast<Element const*>(args.b) + (kW8 ? 0 : static_cast<int64_t>(tile.expert) * K * b_cols);

  // Weight column of tile column n (only n % 8 == 0 matters for kInOut), or -1 past n_out.
  auto weight_col = [&](int n) -> int {
    if constexpr (kGateUp) {
      int const j = n_tile * (BN / 2) + (n / 16) * 8 + (n % 8);
      if (j >= n_out) return -1;
      return ((n / 8) & 1) ? n_out + j : j;
    } else {
      int const j = n_tile * BN + n;
      return j < n_out ? j : -1;
    }
  };

  // ---- Per-thread load plan (fixed over K: only the k offset moves). ----
  constexpr int kALoads = BM * kRowChunks / kThreads;
  int const a_chunk = tid % kRowChunks;
  constexpr int kARowStep = kThreads / kRowChunks;
  static_assert(kARowStep % 8 == 0 || kALoads == 1, "row steps must keep the swizzle phase");
  // Rows r0 + i * kARowStep share r & 7, so the swizzled offsets differ by a constant.
  int const a_dst0 = (tid / kRowChunks) * BK + ((a_chunk ^ ((tid / kRowChunks) & 7)) * 8);
  int32_t a_row[kALoads];  // source row in A, -1 for padding rows (32-bit: fewer registers)
#pragma unroll
  for (int i = 0; i < kALoads; ++i) {
    int const r = tid / kRowChunks + i * kARowStep;
    a_row[i] = -1;
    if (r < tile.rows) a_row[i] = args.a_rows != nullptr ? args.a_rows[tile.row0 + r] : tile.row0 + r;
  }

  constexpr int kBLoads = BN * BK / 8 / kThreads;
  // kOutIn: rows n0 + i * kBRowStepOI (n), K chunk b_chunk; kInOut: rows b_krow + i * kBRowStepIO
  // (k), N chunk tid % (BN / 8). Both steps are multiples of 8 (same swizzle phase).
  constexpr int kBRowStepOI = kThreads / kRowChunks;
  constexpr int kBRowStepIO = kThreads / (BN / 8);
  static_assert(kBLoads == 1 || (kBRowStepOI % 8 == 0 && kBRowStepIO % 8 == 0),
                "row steps must keep the swizzle phase");
  Element const* b_src[kOutIn ? kBLoads : 1];
  int b_dst0;
  int b_chunk = 0;  // kOutIn: K chunk of this thread
  int b_krow = 0;   // kInOut: first k row of this thread
  if constexpr (kW8) {
    b_dst0 = 0;  // the E4M3 plan below replaces the 16-bit one
  } else if constexpr (kOutIn) {
    b_chunk = tid % kRowChunks;
    int const n0 = tid / kRowChunks;
    b_dst0 = n0 * BK + ((b_chunk ^ (n0 & 7)) * 8);
#pragma unroll
    for (int i = 0; i < kBLoads; ++i) {
      int const col = weight_col(n0 + i * kBRowStepOI);
      b_src[i] = col >= 0 ? B + static_cast<int64_t>(col) * K + b_chunk * 8 : nullptr;
    }
  } else {
    int const c = tid % (BN / 8);
    b_krow = tid / (BN / 8);
    b_dst0 = b_krow * BN + ((c ^ (b_krow & 7)) * 8);
    int const col = weight_col(c * 8);
    b_src[0] = col >= 0 ? B + col : nullptr;
  }

  // ---- W8A16: E4M3 weight rows in the prepared layout (quantize_weights_fp8.h), copied raw into
  // a staging ring; each thread converts the chunks it copied (x scale, to Element) into the
  // 16-bit B tile of the stage before the stage's barrier, so the MMA path is the kOutIn one.
  constexpr int kB8Chunks = BK / 16;  // 16-byte chunks of a 64-byte E4M3 row
  constexpr int kB8Loads = kW8 ? BN * kB8Chunks / kThreads : 1;
  constexpr int kB8RowStep = kThreads / kB8Chunks;
  static_assert(!kW8 || BN * kB8Chunks % kThreads == 0, "E4M3 chunks must split evenly");
  int const b8_chunk = tid % kB8Chunks;
  int32_t b8_row[kB8Loads];   // prepared row of tile column n, -1 past n_out
  int32_t b8_raw[kB8Loads];   // its raw channel (the scale's index)
  float b8_scale[kB8Loads];   // channel scale (channel scales; block scales load per K tile)
  uint8_t const* const Bq = static_cast<uint8_t const*>(args.b) +
                            (kW8 ? static_cast<int64_t>(tile.expert) * b_cols * K : 0);
  int const n_raw = kGateUp ? 2 * n_out : n_out;
  if constexpr (kW8) {
#pragma unroll
    for (int i = 0; i < kB8Loads; ++i) {
      int const raw = weight_col(tid / kB8Chunks + i * kB8RowStep);
      b8_raw[i] = raw;
      b8_row[i] = -1;
      b8_scale[i] = 0.0f;
      if (raw >= 0) {
        if constexpr (kGateUp) {  // rows 128 j .. +63 gate 64 j.., rows 128 j + 64 .. the up ones
          bool const up = raw >= n_out;
          int const c = up ? raw - n_out : raw;
          b8_row[i] = 128 * (c / 64) + (up ? 64 : 0) + c % 64;
        } else {
          b8_row[i] = raw;
        }
        if (!args.w_scale_block) {
          b8_scale[i] = __ldg(args.w_scales + static_cast<int64_t>(tile.expert) * n_raw + raw);
        }
      }
    }
  }
  auto convert_w8 = [&](int kt, int slot) {
    unsigned char const* const stg = smem_raw + Shape::kSmemBytes + slot * Params::kW8StageBytes;
    Element* const sB = smem + slot * kStageElems + BM * BK;
    int const n_blocks = (n_raw + 127) / 128;
    int const k_blocks = (K + 127) / 128;
#pragma unroll
    for (int i = 0; i < kB8Loads; ++i) {
      int const n = tid / kB8Chunks + i * kB8RowStep;
      float sc = b8_scale[i];
      if (args.w_scale_block && b8_raw[i] >= 0) {
        sc = __ldg(args.w_scales +
                   (static_cast<int64_t>(tile.expert) * n_blocks + b8_raw[i] / 128) * k_blocks +
                   (kt * BK) / 128);
      }
      uint4 const q = *reinterpret_cast<uint4 const*>(stg + n * BK + b8_chunk * 16);
      uint32_t const words[4] = {q.x, q.y, q.z, q.w};
      uint32_t packed[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {  // byte pair j = elements 2j, 2j + 1 (low byte first)
        __half2_raw const hr = __nv_cvt_fp8x2_to_halfraw2(
            static_cast<__nv_fp8x2_storage_t>((words[j / 2] >> (16 * (j % 2))) & 0xffffu), __NV_E4M3);
        float2 const f = __half22float2(__half2(hr));  // exact: E4M3 values are halves
        packed[j] = detail::pack2(static_cast<Element*>(nullptr), f.x * sc, f.y * sc);
      }
      int const c0 = 2 * b8_chunk;  // 16-bit chunks c0, c0 + 1 of row n, swizzled as load_stage's
      *reinterpret_cast<uint4*>(sB + n * BK + ((c0 ^ (n & 7)) * 8)) =
          make_uint4(packed[0], packed[1], packed[2], packed[3]);
      *reinterpret_cast<uint4*>(sB + n * BK + (((c0 + 1) ^ (n & 7)) * 8)) =
          make_uint4(packed[4], packed[5], packed[6], packed[7]);
    }
  };

  auto load_stage = [&](int kt, int slot) {
    Element* const sA = smem + slot * kStageElems;
    Element* const sB = sA + BM * BK;
    int const k0 = kt * BK;
    bool const a_kin = k0 + a_chunk * 8 < K;  // K % 8 == 0: a chunk is wholly in or out
#pragma unroll
    for (int i = 0; i < kALoads; ++i) {
      bool const pred = a_kin && a_row[i] >= 0;
      detail::cp_async_16(sA + a_dst0 + i * kARowStep * BK,
                          pred ? A + static_cast<int64_t>(a_row[i]) * K + k0 + a_chunk * 8 : A,
                          pred);
    }
    if constexpr (kW8) {
      unsigned char* const stg = smem_raw + Shape::kSmemBytes + slot * Params::kW8StageBytes;
      bool const kin = k0 + b8_chunk * 16 < K;  // K % 16 == 0 for E4M3 weights
#pragma unroll
      for (int i = 0; i < kB8Loads; ++i) {
        int const n = tid / kB8Chunks + i * kB8RowStep;
        bool const pred = kin && b8_row[i] >= 0;
        detail::cp_async_16(stg + n * BK + b8_chunk * 16,
                            pred ? Bq + static_cast<int64_t>(b8_row[i]) * K + k0 + b8_chunk * 16
                                 : args.b,
                            pred);
      }
    } else if constexpr (kOutIn) {
      bool const b_kin = k0 + b_chunk * 8 < K;
#pragma unroll
      for (int i = 0; i < kBLoads; ++i) {
        bool const pred = b_kin && b_src[i] != nullptr;
        detail::cp_async_16(sB + b_dst0 + i * kBRowStepOI * BK, pred ? b_src[i] + k0 : B, pred);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kBLoads; ++i) {
        int const kr = k0 + b_krow + i * kBRowStepIO;
        bool const pred = b_src[0] != nullptr && kr < K;
        detail::cp_async_16(sB + b_dst0 + i * kBRowStepIO * BN,
                            pred ? b_src[0] + static_cast<int64_t>(kr) * b_cols : B, pred);
      }
    }
  };

  // ---- Fragments: ldmatrix from the swizzled tiles into mma.sync operand registers. ----
  // Every ldmatrix row a lane addresses has (row & 7) == (lane & 7), so its swizzled chunk is
  // (chunk ^ (lane & 7)), and the chunk bits (4..6 of the byte offset) of the k16 step kk (A,
  // kOutIn B) or of the n16 pair ni (kInOut B) enter by XOR while the row enters by addition:
  // a few base offsets per thread instead of one register per (kk, fragment).
  static_assert((NI & (NI - 1)) == 0 && NI <= 8, "kInOut swizzle needs NI a power of 2, <= 8");
  constexpr int kRowBytes = BK * 2;  // 128: one K-contiguous tile row
  int const lrow = lane & 7;
  uint32_t const a_ld = (warp_m * WM + (lane & 15)) * kRowBytes + ((((lane >> 4) ^ lrow)) << 4);
  uint32_t b_ld;
  if constexpr (kOutIn) {
    b_ld = (warp_n * WN + ((lane >> 4) << 3) + lrow) * kRowBytes +
           (((((lane >> 3) & 1) ^ lrow)) << 4);
  } else {
    int const cw = warp_n * NI;  // first 8-column chunk of this warp
    b_ld = ((((lane >> 3) & 1) << 3) + lrow) * (BN * 2) + ((cw & ~7) << 4) +
           ((((cw & 7) | (lane >> 4)) ^ lrow) << 4);
  }

  auto load_frags = [&](unsigned char const* stage, int kk, uint32_t (&af)[MI][4],
                        uint32_t (&bf)[NI][2]) {
    unsigned char const* const sA = stage;
    unsigned char const* const sB = stage + BM * kRowBytes;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
      detail::ldsm_x4(sA + ((a_ld ^ (kk << 5)) + mi * 16 * kRowBytes), af[mi]);
    }
#pragma unroll
    for (int ni = 0; ni < NI; ni += 2) {
      uint32_t r[4];
      if constexpr (kOutIn) {
        detail::ldsm_x4(sB + ((b_ld ^ (kk << 5)) + ni * 8 * kRowBytes), r);
      } else {
        detail::ldsm_x4_trans(sB + ((b_ld ^ (ni << 4)) + kk * 16 * BN * 2), r);
      }
      bf[ni][0] = r[0];
      bf[ni][1] = r[1];
      bf[ni + 1][0] = r[2];
      bf[ni + 1][1] = r[3];
    }
  };

  float acc[MI][NI][4];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int x = 0; x < 4; ++x) acc[mi][ni][x] = 0.0f;

  // Warps whose rows are all padding still load (every thread owns chunks) but skip the MMAs.
  bool const warp_active = warp_m * WM < tile.rows;
  int const k_tiles = (K + BK - 1) / BK;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    cute::cp_async_fence();
  }

  int read_slot = 0;
  int write_slot = kStages - 1;
  for (int kt = 0; kt < k_tiles; ++kt) {
    cute::cp_async_wait<kStages - 2>();
    if constexpr (kW8) convert_w8(kt, read_slot);  // this thread's own copies: landed
    __syncthreads();  // stage kt landed for every thread; slot write_slot is free (kt-1 done)
    if (kt + kStages - 1 < k_tiles) load_stage(kt + kStages - 1, write_slot);
    cute::cp_async_fence();
    if (warp_active) {
      unsigned char const* const stage = smem_raw + read_slot * (kStageElems * 2);
      // The k16 steps are fully unrolled: ptxas hoists the ldmatrix of step kk+1 above the
      // MMAs of step kk as far as registers allow (explicit double buffers spill at 128 regs).
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) {
        uint32_t af[MI][4];
        uint32_t bf[NI][2];
        load_frags(stage, kk, af, bf);
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
          for (int ni = 0; ni < NI; ++ni) {
            uint32_t const(&a)[4] = af[mi];
            uint32_t const(&b)[2] = bf[ni];
            float(&d)[4] = acc[mi][ni];
            Atom::fma(d[0], d[1], d[2], d[3], a[0], a[1], a[2], a[3], b[0], b[1], d[0], d[1], d[2],
                      d[3]);
          }
        }
      }
    }
    read_slot = read_slot + 1 == kStages ? 0 : read_slot + 1;
    write_slot = write_slot + 1 == kStages ? 0 : write_slot + 1;
  }
  cute::cp_async_wait<0>();
  __syncthreads();  // the ring is reused as the epilogue's staging tile

  // ---- Epilogue: registers -> shared (as Element) -> 16-byte coalesced global stores. ----
  constexpr int kBNOut = Params::kBNOut;
  constexpr int kCStride = Params::kCStride;
  Element* const sC = smem;
  Activation const act = args.activation;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi) {
    int const r = warp_m * WM + mi * 16 + (lane >> 2);
#pragma unroll
    for (int ni = 0; ni < NI; ni += (kGateUp ? 2 : 1)) {
      float v[4];
      int c;
      if constexpr (kGateUp) {
        c = warp_n * (WN / 2) + (ni / 2) * 8 + (lane & 3) * 2;
#pragma unroll
        for (int x = 0; x < 4; ++x) v[x] = detail::activate(act, acc[mi][ni][x]) * acc[mi][ni + 1][x];
      } else {
        c = warp_n * WN + ni * 8 + (lane & 3) * 2;
#pragma unroll
        for (int x = 0; x < 4; ++x) v[x] = acc[mi][ni][x];
      }
      *reinterpret_cast<uint32_t*>(sC + r * kCStride + c) =
          detail::pack2(static_cast<Element*>(nullptr), v[0], v[1]);
      *reinterpret_cast<uint32_t*>(sC + (r + 8) * kCStride + c) =
          detail::pack2(static_cast<Element*>(nullptr), v[2], v[3]);
    }
  }
  __syncthreads();

  constexpr int kOutChunks = kBNOut / 8;
  Element* const C = static_cast<Element*>(args.c);
  int const col0 = n_tile * kBNOut;
  for (int idx = tid; idx < BM * kOutChunks; idx += kThreads) {
    int const r = idx / kOutChunks;
    int const c = idx % kOutChunks;
    int const gc = col0 + c * 8;
    if (r < tile.rows && gc < n_out) {
      *reinterpret_cast<uint4*>(C + static_cast<int64_t>(tile.row0 + r) * n_out + gc) =
          *reinterpret_cast<uint4 const*>(sC + r * kCStride + c * 8);
    }
  }
}

/// Launches one instantiation. The dynamic shared memory opt-in is set once per device.
template <class Element, class Shape, bool kOutIn, bool kGateUp, bool kW8 = false>
Status run_sm80_grouped_gemm(GroupedGemmArgs const& args, cudaStream_t stream) {
  using Params = Sm80GroupedGemmParams<Shape, kGateUp, kW8>;
  Params const params = Params::make(args);
  if (params.grid().x == 0) return Status::Ok();
  auto kernel = sm80_grouped_gemm_kernel<Element, Shape, kOutIn, kGateUp, kW8>;

  static std::atomic<uint64_t> configured{0};  // bit d: device d has the smem opt-in
  int device = 0;
  FLASHMOE_CUDA_CHECK(cudaGetDevice(&device));
  uint64_t const bit = device < 64 ? (uint64_t{1} << device) : 0;
  if (bit == 0 || (configured.load(std::memory_order_acquire) & bit) == 0) {
    FLASHMOE_CUDA_CHECK(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Params::kSmemBytes));
    // All of L1 as shared memory: kMinBlocks CTAs per SM need it (cp.async.cg bypasses L1), and
    // without a preference the driver may pick a carveout that fits fewer CTAs.
    FLASHMOE_CUDA_CHECK(cudaFuncSetAttribute(
        kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
    configured.fetch_or(bit, std::memory_order_acq_rel);
  }
  kernel<<<params.grid(), params.block(), Params::kSmemBytes, stream>>>(params);
  FLASHMOE_LAUNCH_CHECK("sm80_grouped_gemm_kernel");
  return Status::Ok();
}

}  // namespace flashmoe::gemm
