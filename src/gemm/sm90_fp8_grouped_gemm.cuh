// flashmoe (internal): the sm_90a FP8 grouped expert GEMM kernel (see sm90_fp8_grouped_gemm.h
// for the function it computes).
//
// One persistent grid (one CTA per SM) takes work items  item = m_slot * n_tiles + n_tile  (N
// fastest) from a global counter, in order: the CTAs of one M tile run side by side, so its
// gathered token rows are read from L2 while hot, and the M tiles of an expert with more than 64
// rows stream that expert's weights from HBM about once (the later reads hit L2). A dynamic queue
// rather than a static stride because items whose weights hit L2 finish early: a static schedule
// drifts, and the CTAs that share an expert's weights would stop running at the same time. Items
// past the last tile have expert < 0 and end a CTA's walk; the last CTA out resets the counters.
//
// Warp specialisation, 3 warpgroups (384 threads):
//   WG 0, producer (setmaxnreg down): thread 0 issues one TMA load of the stage's weight box
//        (kBlockN rows x 128 bytes of K, 128B swizzle, OOB rows/columns zero-filled); all 128
//        threads gather the stage's A rows from `a` with 16-byte loads (8 rows x one 8-element
//        chunk per thread), quantize them with the row's 1/scale (cvt.rn.satfinite.e4m3x2) and
//        store them in the same 128B-swizzled K-major layout, then fence.proxy.async and arrive on
//        the stage's full barrier (128 arrivals + the TMA's transaction bytes). The loads of the
//        next K block are issued before the current one is quantized (software pipeline), so a
//        stage costs the producer its conversion, not an L2 round trip. Thread 0 also takes the
//        work items and hands each tile's coordinates to the consumers in shared memory.
//   WG 1..kNumMathWG, consumers (setmaxnreg up): math warpgroup w owns columns
//        [128 w, 128 w + 128) of the CTA tile (64 x kBlockN). Per 128-wide K block: four
//        m64n128k32 e4m3 wgmma (CuTe SM90_64x128x32_F32E4M3E4M3_SS_TN on smem descriptors) into a
//        fresh accumulator (scale-d = 0 on the first), wait, release the stage (one arrival per
//        warp), then promote: total += acc * block_scale (Hopper's fp8 wgmma accumulates in
//        reduced precision, so long K sums are kept in fp32 registers, as DeepGEMM does). The
//        epilogue scales and stores straight from registers while the producer already fills the
//        stages of the next tile, so the weight stream does not pause between tiles.
//
// Shared memory (1024-byte aligned, 128B swizzle: 16-byte chunk c of row r sits at chunk c ^ (r%8)):
//   sA [kStages][64 rows][128 B]           gathered, quantized tokens
//   sB [kStages][kBlockN rows][128 B]      weight box from TMA
//   full[kStages], empty[kStages]          mbarriers
//   tile[kStages]                          the producer's (expert, row0, rows, n_tile) of the tile
//                                          whose first K block a stage holds (expert -1: the end)
//   item[2]                                the producer warpgroup's next work item (ping-pong)
#pragma once

#include <cuda.h>  // CUtensorMap (type only; the map is encoded through the runtime's entry point)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include <cute/arch/copy_sm90_desc.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "gemm/grouped_gemm_args.h"
#include "gemm/sm90_fp8_grouped_gemm.h"

namespace flashmoe::gemm {

/// The compiled tile configuration.
template <int Stages_, int NumMathWG_>
struct Sm90Fp8Tile {
  static constexpr int kBlockM = kSm90Fp8BlockM;  // 64: one wgmma M; decode/seed ~64 rows/expert
  static constexpr int kWgN = 128;                // N of one math warpgroup (one m64n128 wgmma)
  static constexpr int kNumMathWG = NumMathWG_;
  static constexpr int kBlockN = kWgN * kNumMathWG;
  static constexpr int kBlockK = 128;             // one 128B swizzle row of e4m3; promotion block
  static constexpr int kStages = Stages_;
  static constexpr int kThreads = 128 * (1 + kNumMathWG);
  // setmaxnreg budgets: 128 * producer + 128 * kNumMathWG * math <= 65536 / kThreads * kThreads.
  // The producer holds two K blocks of token chunks in flight (64 registers of data); the math
  // warpgroups need ~165 (64 accumulators + 64 promoted sums + addressing).
  static constexpr int kProducerRegs = 152;
  static constexpr int kMathRegs = 176;

  static constexpr int kSmemABytes = kBlockM * kBlockK;  // per stage
  static constexpr int kSmemBBytes = kBlockN * kBlockK;  // per stage (the TMA box)
  static constexpr int kSmemDataBytes = kStages * (kSmemABytes + kSmemBBytes);
  static constexpr int kSmemControlBytes = 2 * kStages * 8 + kStages * 16 + 16;
  static constexpr int kSmemBytes = 1024 /* alignment slack */ + kSmemDataBytes + kSmemControlBytes;

  static_assert(kBlockK == 128, "one K block is one 128-byte swizzle row");
  static_assert(kBlockN <= 256, "a TMA box has at most 256 rows");
  static_assert(kBlockM * kBlockK / 8 == 128 * 8, "the producer gathers 8 chunks per thread");
  static_assert(kStages >= 2, "a pipeline needs two stages");
  static_assert(kSmemABytes % 1024 == 0 && kSmemBBytes % 1024 == 0,
                "each stage must keep the 1024-byte alignment of the 128B swizzle");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory budget of an sm_90 CTA exceeded");
  static_assert(kNumMathWG == 2 || kProducerRegs * 128 + kMathRegs * 128 * kNumMathWG <= 65536,
                "register budget");
  static_assert(kNumMathWG != 2 ||
                    kProducerRegs * 128 + kMathRegs * 256 <= (65536 / kThreads) * kThreads,
                "setmaxnreg budget exceeds the registers allocated to the CTA at launch");
};

/// The compiled configuration: 5 stages of (8 KB tokens + 32 KB weights) = 200 KB; two math
/// warpgroups (CTA tile 64 x 256) so every gathered token row feeds 256 weight rows.
using Sm90Fp8TileDefault = Sm90Fp8Tile<5, 2>;

/// The kernel's parameters (by value, __grid_constant__: the TMA map is read in place).
struct Sm90Fp8KernelParams {
  CUtensorMap tmap_w;              // W8 [E, Np, K] as a 3-D uint8 tensor, box {128, kBlockN, 1}
  void const* a;
  int32_t const* a_rows;
  float const* a_scales;
  TileInfo const* tiles;
  int32_t* scheduler;              // [0] next work item, [1] CTAs done
  float const* w_scales;
  void* out;
  int64_t a_row_stride;
  int64_t out_row_stride;
  int32_t num_tile_slots;
  int32_t n_tiles;                 // ceil(Np / kBlockN)
  int32_t k;
  int32_t num_kb;                  // ceil(K / 128)
  int32_t n_out;                   // N (plain) or I (gate-up)
  int32_t n_raw;                   // N or 2I: the channel count of the scales
  int32_t n_prep;                  // Np
  int32_t n_scale_blocks;          // ceil(n_raw / 128)
  int32_t scale_block;             // 1: Fp8ScaleKind::kBlock128
  int32_t epilogue;                // Fp8Epilogue
  int32_t a_bf16;                  // 1: bf16 A, 0: fp16 A
  int32_t out_dtype;               // 0 float32, 1 bf16, 2 fp16
};

namespace sm90_fp8_detail {

/// 8 consecutive 16-bit values (one 16-byte load) times `inv`, rounded to 8 e4m3 bytes.
template <bool kBf16>
__device__ __forceinline__ uint2 quantize_chunk(uint4 const& v, float inv) {
  uint32_t const words[4] = {v.x, v.y, v.z, v.w};
  uint32_t packed[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 f;
    if constexpr (kBf16) {
      __nv_bfloat162 h;
      memcpy(&h, &words[i], 4);
      f = __bfloat1622float2(h);
    } else {
      __half2 h;
      memcpy(&h, &words[i], 4);
      f = __half22float2(h);
    }
    f.x *= inv;
    f.y *= inv;
    packed[i] = __nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3);  // .x in the low byte
  }
  return make_uint2(packed[0] | (packed[1] << 16), packed[2] | (packed[3] << 16));
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }
__device__ __forceinline__ float gelu(float g) {
  return 0.5f * g * (1.0f + erff(g * 0.70710678118654752f));
}

/// Stores two adjacent output values (8-byte float2, or 4-byte bf16x2 / half2).
__device__ __forceinline__ void store_pair(void* out, int32_t dtype, int64_t index, float v0,
                                           float v1) {
  if (dtype == 0) {
    *reinterpret_cast<float2*>(static_cast<float*>(out) + index) = make_float2(v0, v1);
  } else if (dtype == 1) {
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(out) + index) =
        __floats2bfloat162_rn(v0, v1);
  } else {
    *reinterpret_cast<__half2*>(static_cast<__half*>(out) + index) = __floats2half2_rn(v0, v1);
  }
}

/// A compiler-only fence: the CUTLASS barrier helpers are asm volatile without a "memory"
/// clobber, so shared-memory accesses around them are pinned in place with this.
__device__ __forceinline__ void compiler_fence() { asm volatile("" ::: "memory"); }

/// Waits for the phase of parity `phase` of an mbarrier to complete. A wait of more than ~2^35
/// cycles (~20 s) can only be a protocol bug: trap (a launch error) instead of hanging.
__device__ __forceinline__ void wait_barrier(uint64_t const* bar, uint32_t phase) {
  if (!cutlass::arch::ClusterBarrier::try_wait(bar, phase)) {
    long long const start = clock64();
    while (!cutlass::arch::ClusterBarrier::try_wait(bar, phase)) {
      if (clock64() - start > (1ll << 35)) __trap();
    }
  }
  compiler_fence();
}

/// Arrives on an mbarrier after this thread's preceding shared-memory accesses.
__device__ __forceinline__ void arrive_barrier(uint64_t const* bar) {
  compiler_fence();
  cutlass::arch::ClusterBarrier::arrive(bar);
}

/// The tile of work item `item`; false past the last tile (slots after it have expert < 0).
__device__ __forceinline__ bool decode_item(Sm90Fp8KernelParams const& p, int item, int4& tile) {
  int const m_slot = item / p.n_tiles;
  int const n_tile = item - m_slot * p.n_tiles;
  if (m_slot >= p.num_tile_slots) return false;
  tile = __ldg(reinterpret_cast<int4 const*>(p.tiles + m_slot));  // {expert, row0, rows, pad}
  tile.w = n_tile;
  return tile.x >= 0;
}

/// Shared-memory control block of the pipeline.
template <int kStages>
struct Control {
  uint64_t full[kStages];   // producer -> consumers: 128 arrivals + the TMA's bytes
  uint64_t empty[kStages];  // consumers -> producer: one arrival per math warp
  int4 tile[kStages];       // the tile starting in that stage (written with its first K block)
  int32_t item[2];
};

/// The producer warpgroup: work queue, TMA for weights, gather + quantize for tokens.
template <class Cfg, bool kBf16>
__device__ __forceinline__ void producer_loop(Sm90Fp8KernelParams const& p, uint8_t* smem_a,
                                              uint8_t* smem_b, Control<Cfg::kStages>* ctl) {
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  int const pt = threadIdx.x;         // 0..127
  int const chunk = pt & 15;          // 8-element chunk of the 128-wide K block
  int const row_base = pt >> 4;       // this thread's rows: row_base + 8 i, i = 0..7
  // Swizzled byte offset of (row_base, chunk); row_base + 8i adds 1024 bytes (same row % 8).
  uint32_t const sw_off = row_base * 128 + ((((chunk >> 1) ^ row_base) << 4) | ((chunk & 1) << 3));
  using Elem = typename std::conditional<kBf16, __nv_bfloat16, __half>::type;
  Elem const* const a = static_cast<Elem const*>(p.a);

  int stage = 0;
  uint32_t phase = 0;
  int next_item = 0;
  if (pt == 0) next_item = atomicAdd(p.scheduler, 1);
  for (int iter = 0;; ++iter) {
    // Broadcast the item to the warpgroup (two slots: thread 0 cannot lap the readers).
    if (pt == 0) ctl->item[iter & 1] = next_item;
    compiler_fence();
    cutlass::arch::NamedBarrier::sync(128, 0);  // the producer warpgroup only
    compiler_fence();
    int4 tile;
    bool const valid = decode_item(p, ctl->item[iter & 1], tile);
    if (!valid) {
      // The end: one more stage whose tile says expert -1 releases the consumers.
      wait_barrier(&ctl->empty[stage], phase ^ 1);
      if (pt == 0) ctl->tile[stage] = make_int4(-1, 0, 0, 0);
      arrive_barrier(&ctl->full[stage]);
      if (pt == 0 && atomicAdd(p.scheduler + 1, 1) == static_cast<int>(gridDim.x) - 1) {
        // Every CTA has taken its last item (each counted itself done only after its last take
        // returned): leave the queue zero for the next launch.
        __threadfence();
        p.scheduler[0] = 0;
        p.scheduler[1] = 0;
      }
      return;
    }
    if (pt == 0) next_item = atomicAdd(p.scheduler, 1);  // its latency hides behind this tile
    int const expert = tile.x;
    int const row0 = tile.y;
    int const rows = tile.z;
    int const n_tile = tile.w;
    if (rows > Cfg::kBlockM) __trap();  // a tile list built with tile_m != kSm90Fp8BlockM

    int32_t src[8];   // source row of each of this thread's rows, -1 = padding
    float inv[8];     // 1 / its scale
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      int const r = row_base + 8 * i;
      src[i] = -1;
      inv[i] = 0.0f;
      if (r < rows) {
        int const dense = row0 + r;
        src[i] = p.a_rows != nullptr ? __ldg(p.a_rows + dense) : dense;
        inv[i] = 1.0f / __ldg(p.a_scales + src[i]);
      }
    }

    // Token chunks of K block kb (zero past K and in padding rows).
    auto load_chunks = [&](uint4 (&v)[8], int kb) {
      int const k = kb * Cfg::kBlockK + chunk * 8;
      bool const k_ok = k < p.k;  // K % 8 == 0: a chunk is all in or all out
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        v[i] = make_uint4(0u, 0u, 0u, 0u);
        if (k_ok && src[i] >= 0) {
          v[i] = __ldg(reinterpret_cast<uint4 const*>(a + src[i] * p.a_row_stride + k));
        }
      }
    };
    // Software pipeline: the loads of K block kb + 1 are in flight while block kb is quantized
    // and while the producer waits for the next free stage, so a stage costs the producer its
    // conversion only, not an L2 round trip.
    uint4 cur[8];
    load_chunks(cur, 0);
    for (int kb = 0; kb < p.num_kb; ++kb) {
      wait_barrier(&ctl->empty[stage], phase ^ 1);
      if (pt == 0) {
        if (kb == 0) ctl->tile[stage] = tile;  // published by the arrive below
        TxBarrier::expect_transaction(&ctl->full[stage], Cfg::kSmemBBytes);
        cute::SM90_TMA_LOAD_3D::copy(&p.tmap_w, &ctl->full[stage],
                                     static_cast<uint64_t>(cute::TMA::CacheHintSm90::EVICT_NORMAL),
                                     smem_b + stage * Cfg::kSmemBBytes, kb * Cfg::kBlockK,
                                     n_tile * Cfg::kBlockN, expert);
      }
      uint4 next[8];
      if (kb + 1 < p.num_kb) {
        load_chunks(next, kb + 1);
      }
      uint8_t* const sa = smem_a + stage * Cfg::kSmemABytes + sw_off;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        *reinterpret_cast<uint2*>(sa + i * 1024) = quantize_chunk<kBf16>(cur[i], inv[i]);
      }
      // The generic-proxy stores above are read by wgmma (async proxy) after the barrier.
      compiler_fence();
      cutlass::arch::fence_view_async_shared();
      arrive_barrier(&ctl->full[stage]);
      if (++stage == Cfg::kStages) {
        stage = 0;
        phase ^= 1;
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) cur[i] = next[i];
    }
  }
}

}  // namespace sm90_fp8_detail

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    sm90_fp8_grouped_gemm_kernel(__grid_constant__ Sm90Fp8KernelParams const p) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace cute;
  using Barrier = cutlass::arch::ClusterBarrier;
  constexpr int kStages = Cfg::kStages;
  constexpr int kBlockM = Cfg::kBlockM;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kBlockK = Cfg::kBlockK;

  extern __shared__ uint8_t smem_raw[];
  // The 128B swizzle pattern repeats every 1024 bytes: align the stages to it.
  uint32_t const raw_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  uint8_t* const smem_a = smem_raw + ((1024u - (raw_addr & 1023u)) & 1023u);
  uint8_t* const smem_b = smem_a + kStages * Cfg::kSmemABytes;
  auto* const ctl = reinterpret_cast<sm90_fp8_detail::Control<kStages>*>(
      smem_b + kStages * Cfg::kSmemBBytes);
  static_assert(sizeof(sm90_fp8_detail::Control<kStages>) <= Cfg::kSmemControlBytes,
                "control block exceeds its shared memory budget");

  int const warp_group = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    cute::prefetch_tma_descriptor(&p.tmap_w);
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      Barrier::init(&ctl->full[s], 128);                   // producer threads (+ TMA tx bytes)
      Barrier::init(&ctl->empty[s], 4 * Cfg::kNumMathWG);  // one arrival per math warp
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  if (warp_group == 0) {
    // ---------------------------------------------------------------- producer warpgroup
    cutlass::arch::warpgroup_reg_dealloc<Cfg::kProducerRegs>();
    if (p.a_bf16) {
      sm90_fp8_detail::producer_loop<Cfg, true>(p, smem_a, smem_b, ctl);
    } else {
      sm90_fp8_detail::producer_loop<Cfg, false>(p, smem_a, smem_b, ctl);
    }
  } else {
    // ---------------------------------------------------------------- math warpgroups
    cutlass::arch::warpgroup_reg_alloc<Cfg::kMathRegs>();
    int const mt = threadIdx.x - 128;   // 0 .. 128 * kNumMathWG - 1
    int const wg = mt >> 7;             // this warpgroup's 128 columns of the CTA tile
    int const warp = (mt >> 5) & 3;     // rows 16 * warp .. of the 64
    int const lane = mt & 31;

    // (64, 128, kStages) and (kBlockN, 128, kStages) e4m3, K-major, 128B swizzle: exactly the
    // bytes the producer and the TMA wrote.
    using SmemLayoutA = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<float_e4m3_t>{},
                                               make_shape(Int<kBlockM>{}, Int<kBlockK>{},
                                                          Int<kStages>{})));
    using SmemLayoutB = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<float_e4m3_t>{},
                                               make_shape(Int<kBlockN>{}, Int<kBlockK>{},
                                                          Int<kStages>{})));
    Tensor sA = make_tensor(make_smem_ptr(reinterpret_cast<float_e4m3_t*>(smem_a)), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(reinterpret_cast<float_e4m3_t*>(smem_b)), SmemLayoutB{});
    // One m64n128k32 atom per math warpgroup, the warpgroups side by side along N (warpgroup w
    // reads B rows 128 w .. 128 w + 127).
    TiledMMA tiled_mma = make_tiled_mma(SM90_64x128x32_F32E4M3E4M3_SS_TN<>{},
                                        Layout<Shape<_1, Int<Cfg::kNumMathWG>, _1>>{});
    auto thr_mma = tiled_mma.get_thread_slice(mt);
    Tensor tCrA = thr_mma.make_fragment_A(thr_mma.partition_A(sA));  // (MMA, 1, 4, kStages)
    Tensor tCrB = thr_mma.make_fragment_B(thr_mma.partition_B(sB));  // (MMA, 1, 4, kStages)
    Tensor acc = partition_fragment_C(tiled_mma, Shape<Int<kBlockM>, Int<kBlockN>>{});
    static_assert(size<2>(decltype(tCrA){}) == kBlockK / 32, "four k32 wgmma per K block");
    static_assert(size(decltype(acc){}) == 64, "one m64n128 fp32 accumulator per thread");
    // acc(v), v = i0 + 2 i1 + 4 j (GMMA CLayout_64x128) holds row 16 warp + lane/4 + 8 i1,
    // column 8 j + 2 (lane % 4) + i0 of this warpgroup's 64 x 128 tile.
    float total[64];

    bool const gate_up = p.epilogue != static_cast<int32_t>(Fp8Epilogue::kPlain);
    int stage = 0;
    uint32_t phase = 0;
    for (;;) {
      // The tile starts in the next stage; the producer wrote its coordinates there.
      sm90_fp8_detail::wait_barrier(&ctl->full[stage], phase);
      int4 const tile = ctl->tile[stage];
      if (tile.x < 0) break;
      int const e = tile.x;
      int const row0 = tile.y;
      int const rows = tile.z;
      int const n_tile = tile.w;
      int const chunk128 = n_tile * Cfg::kNumMathWG + wg;   // this warpgroup's 128-row chunk
      bool const active = chunk128 * 128 < p.n_prep;       // all rows zero-filled OOB: skip
      // Block scales: raw channel block of columns 0..63 and 64..127 of the chunk.
      int64_t scale_lo = 0;
      int64_t scale_hi = 0;
      if (p.scale_block) {
        int const blk_lo = gate_up ? (64 * chunk128) / 128 : chunk128;
        int const blk_hi = gate_up ? (p.n_out + 64 * chunk128) / 128 : chunk128;
        scale_lo = (static_cast<int64_t>(e) * p.n_scale_blocks + blk_lo) * p.num_kb;
        scale_hi = (static_cast<int64_t>(e) * p.n_scale_blocks + blk_hi) * p.num_kb;
      }
#pragma unroll
      for (int v = 0; v < 64; ++v) total[v] = 0.0f;

      for (int kb = 0; kb < p.num_kb; ++kb) {
        float s_lo = 1.0f;
        float s_hi = 1.0f;
        if (p.scale_block && active) {  // issued before the wait: latency hidden by the wgmma
          s_lo = __ldg(p.w_scales + scale_lo + kb);
          s_hi = __ldg(p.w_scales + scale_hi + kb);
        }
        if (kb > 0) sm90_fp8_detail::wait_barrier(&ctl->full[stage], phase);
        if (active) {
          warpgroup_fence_operand(acc);
          warpgroup_arrive();
          tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;  // fresh accumulator per K block
#pragma unroll
          for (int k = 0; k < size<2>(tCrA); ++k) {
            cute::gemm(tiled_mma, tCrA(_, _, k, stage), tCrB(_, _, k, stage), acc);
            tiled_mma.accumulate_ = GMMA::ScaleOut::One;
          }
          warpgroup_commit_batch();
          warpgroup_wait<0>();
          warpgroup_fence_operand(acc);
        }
        // This warp's wgmma reads of the stage are complete: hand it back to the producer.
        if (lane == 0) sm90_fp8_detail::arrive_barrier(&ctl->empty[stage]);
        if (active) {
#pragma unroll
          for (int v = 0; v < 64; ++v) total[v] = fmaf(acc(v), v < 32 ? s_lo : s_hi, total[v]);
        }
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
      if (!active) continue;

      // ------------------------------------------------------------ epilogue
      bool const channel = !p.scale_block;
      int const r0 = 16 * warp + (lane >> 2);
      int const c0 = 2 * (lane & 3);
      float s_tok[2];
      bool row_ok[2];
      int64_t out_row[2];
#pragma unroll
      for (int i1 = 0; i1 < 2; ++i1) {
        int const r = r0 + 8 * i1;
        row_ok[i1] = r < rows;
        int const dense = row0 + r;
        out_row[i1] = static_cast<int64_t>(dense) * p.out_row_stride;
        s_tok[i1] = 0.0f;
        if (row_ok[i1]) {
          int const src = p.a_rows != nullptr ? __ldg(p.a_rows + dense) : dense;
          s_tok[i1] = __ldg(p.a_scales + src);
        }
      }
      float const* const cs = p.w_scales + static_cast<int64_t>(e) * p.n_raw;
      if (!gate_up) {
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          int const n = chunk128 * 128 + 8 * j + c0;
          if (n < p.n_out) {
            float sw0 = 1.0f;
            float sw1 = 1.0f;
            if (channel) {
              sw0 = __ldg(cs + n);
              sw1 = __ldg(cs + n + 1);
            }
#pragma unroll
            for (int i1 = 0; i1 < 2; ++i1) {
              if (row_ok[i1]) {
                float const v0 = total[4 * j + 2 * i1] * s_tok[i1] * sw0;
                float const v1 = total[4 * j + 2 * i1 + 1] * s_tok[i1] * sw1;
                sm90_fp8_detail::store_pair(p.out, p.out_dtype, out_row[i1] + n, v0, v1);
              }
            }
          }
        }
      } else {
        bool const use_gelu = p.epilogue == static_cast<int32_t>(Fp8Epilogue::kGateUpGelu);
        // Columns 0..63 of the chunk are gate channels 64 chunk + c, 64..127 the matching up
        // channels: value v (column c) pairs with v + 32 (column c + 64).
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          int const h = 64 * chunk128 + 8 * j + c0;  // output column (intermediate channel)
          if (h < p.n_out) {
            float sg0 = 1.0f, sg1 = 1.0f, su0 = 1.0f, su1 = 1.0f;
            if (channel) {
              sg0 = __ldg(cs + h);
              sg1 = __ldg(cs + h + 1);
              su0 = __ldg(cs + p.n_out + h);
              su1 = __ldg(cs + p.n_out + h + 1);
            }
#pragma unroll
            for (int i1 = 0; i1 < 2; ++i1) {
              if (row_ok[i1]) {
                float const g0 = total[4 * j + 2 * i1] * s_tok[i1] * sg0;
                float const g1 = total[4 * j + 2 * i1 + 1] * s_tok[i1] * sg1;
                float const u0 = total[32 + 4 * j + 2 * i1] * s_tok[i1] * su0;
                float const u1 = total[32 + 4 * j + 2 * i1 + 1] * s_tok[i1] * su1;
                float const a0 = use_gelu ? sm90_fp8_detail::gelu(g0) : sm90_fp8_detail::silu(g0);
                float const a1 = use_gelu ? sm90_fp8_detail::gelu(g1) : sm90_fp8_detail::silu(g1);
                sm90_fp8_detail::store_pair(p.out, p.out_dtype, out_row[i1] + h, a0 * u0,
                                            a1 * u1);
              }
            }
          }
        }
      }
    }
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // no sm_90a code in this build (the launcher refuses before getting here)
#endif
}

}  // namespace flashmoe::gemm
