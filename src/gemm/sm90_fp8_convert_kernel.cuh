// flashmoe (internal): variant m128c of the sm_90a FP8 grouped GEMM -- the token rows are
// quantized by the math warpgroups, not by the producer (sm90_fp8_grouped_gemm.h lists the
// variants; the function computed is the same, bit for bit).
//
// Why (docs/perf-log.md): the pipelined kernel streams weights at 0.95-1.02 of copy when its
// producer only copies (pre-quantized e4m3 rows, or the bf16 GEMM's 16-bit rows), and at 0.52-0.84
// when the same producer warpgroup -- 56 registers after setmaxnreg, one stage of lookahead --
// also converts every bf16 row to e4m3. Here the producer copies the bf16 rows by cp.async into a
// per-stage staging buffer, exactly as the bf16 GEMM does, and the two math warpgroups (256
// threads, idle most of a memory-bound K block) convert the stage's rows into one shared e4m3 tile
// before their wgmma: the rows are still quantized inside the gather (issue 4 item 2), no
// quantized copy goes to HBM.
//
// Per K block (128 wide), both math warpgroups:
//   1. wait for the stage (bf16 rows + weight box);
//   2. convert: thread t takes chunk t % 16 (8 elements) of rows t / 16 + 16 i, multiplies by the
//      row's 1/scale and stores 8 e4m3 bytes into the 128B-swizzled K-major tile sA (the layout the
//      producer of the other variants writes); fence.proxy.async; named barrier (256 threads);
//   3. wgmma and promotion as the m128 variant (a fresh accumulator per 64-row half, total +=
//      acc * block scale), then release the stage;
// sA is double-buffered by the parity of a running K-block count: a thread that passed the
// barrier of K block j - 1 knows that both warpgroups have completed their wgmma of block j - 2,
// the last reader of the buffer it now fills for block j. 2 x 16 KB of sA leave room for 3
// stages of 32 KB rows + 32 KB weights. The row scales travel in a 3-slot ring; the slot of a
// tile is packed into the stage's tile record (rows | slot << 16). The producer runs at most 3
// stages ahead, so with >= 2 K blocks per tile the math is at most one tile behind the tile
// whose slot the producer refills (the launcher runs K <= 128 on m128 instead).
#pragma once

#include "gemm/sm90_fp8_grouped_gemm.cuh"

namespace flashmoe::gemm {

struct Sm90Fp8ConvTile {
  static constexpr int kBlockM = 128;               // an expert's last two 64-row tiles, merged
  static constexpr int kMHalves = 2;
  static constexpr int kWgN = 128;
  static constexpr int kNumMathWG = 2;
  static constexpr int kBlockN = kWgN * kNumMathWG;  // 256
  static constexpr int kBlockK = 128;               // e4m3 bytes; 256 bytes of bf16 per row
  static constexpr int kThreads = 128 * (1 + kNumMathWG);
  static constexpr int kStages = 3;
  static constexpr int kInvSlots = 3;
  static constexpr int kABuffers = 2;
  static constexpr int kProducerRegs = 40;
  static constexpr int kMathRegs = 232;
  static constexpr int kSmemABytes = kBlockM * kBlockK;       // one e4m3 tile (of kABuffers)
  static constexpr int kSmemBBytes = kBlockN * kBlockK;       // per stage
  static constexpr int kStagingBytes = kBlockM * kBlockK * 2;  // per stage
  static_assert(kProducerRegs * 128 + kMathRegs * 256 <= 168 * kThreads, "setmaxnreg budget");
};

namespace sm90_fp8_detail {

struct ConvControl {
  uint64_t full[Sm90Fp8ConvTile::kStages];   // 128 cp.async arrivals + thread 0's expect_tx
  uint64_t empty[Sm90Fp8ConvTile::kStages];  // one arrival per math warp
  int4 tile[Sm90Fp8ConvTile::kStages];       // (expert, row0, rows | inv slot << 16, n_tile)
  int4 next[2];
  int32_t src[2][Sm90Fp8ConvTile::kBlockM];
  float inv[Sm90Fp8ConvTile::kInvSlots][Sm90Fp8ConvTile::kBlockM];
};

inline constexpr int conv_smem_bytes() {
  using C = Sm90Fp8ConvTile;
  return C::kABuffers * C::kSmemABytes + C::kStages * (C::kSmemBBytes + C::kStagingBytes) +
         static_cast<int>((sizeof(ConvControl) + 127) / 128 * 128);
}
static_assert(conv_smem_bytes() <= 227 * 1024, "shared memory of one CTA");

/// The producer: TMA for the weight box, cp.async for the bf16/fp16 rows (no conversion).
__device__ __forceinline__ void conv_producer(Sm90Fp8KernelParams const& p, uint8_t* smem_b,
                                              uint8_t* staging, ConvControl* ctl) {
  using Cfg = Sm90Fp8ConvTile;
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  int const pt = threadIdx.x;
  // 16-byte chunks `chunk` and chunk + 8 (128 bytes apart) of rows rb + 16 i: one row index
  // serves two copies (16 rows x 1 chunk per thread needs more than the producer's 40 registers).
  int const chunk = pt & 7;
  int const rb = pt >> 3;
  uint32_t const stg_base =
      static_cast<uint32_t>(__cvta_generic_to_shared(staging)) + rb * 256 + chunk * 16;
  char const* const a16 = static_cast<char const*>(p.a);

  int cand = 0;
  if (pt == 0) cand = atomicAdd(p.scheduler, 1);
  int stage = 0;
  uint32_t phase = 0;
  auto load_rows = [&](int4 const& t, int src_slot, int inv_slot) {
    if (t.x >= 0 && pt < t.z) {
      int const dense = t.y + pt;
      int const src = p.a_rows != nullptr ? __ldg(p.a_rows + dense) : dense;
      ctl->src[src_slot][pt] = src;
      ctl->inv[inv_slot][pt] = 1.0f / __ldg(p.a_scales + src);
    }
  };
  auto resolve_next = [&](int slot) {
    if (pt == 0) {
      int slot_unused = 0;
      int split_unused = 0;
      int4 const next = resolve_item<Cfg>(p, cand, slot_unused, split_unused);
      if (next.z > Cfg::kBlockM) fatal_protocol_error();
      ctl->next[slot] = next;
      // No second take when the first ones cover the queue (the pipelined body's rule).
      bool const one_pass =
          p.num_tile_slots * p.n_tiles * p.k_splits <= static_cast<int>(gridDim.x);
      if (next.x >= 0) cand = one_pass ? INT32_MAX : atomicAdd(p.scheduler, 1);
    }
  };

  int meta = 0;  // src / next slot
  int islot = 0;  // inv slot
  resolve_next(meta);
  producer_sync();
  int4 tile = ctl->next[meta];
  load_rows(tile, meta, islot);
  producer_sync();
  while (tile.x >= 0) {
    int const rows = tile.z;
    int const next_islot = (islot + 1) % Cfg::kInvSlots;
    for (int kb = 0; kb < p.num_kb; ++kb) {
      wait_barrier(&ctl->empty[stage], phase ^ 1);
      if (pt == 0) {
        if (kb == 0) ctl->tile[stage] = make_int4(tile.x, tile.y, rows | (islot << 16), tile.w);
        compiler_fence();
        TxBarrier::arrive_and_expect_tx(&ctl->full[stage], Cfg::kSmemBBytes);
        cute::SM90_TMA_LOAD_3D::copy(&p.tmap_w, &ctl->full[stage], p.w_cache_hint,
                                     smem_b + stage * Cfg::kSmemBBytes, kb * Cfg::kBlockK,
                                     tile.w * Cfg::kBlockN, tile.x);
      }
      int const k = kb * Cfg::kBlockK + chunk * 8;
      bool const k_ok = k < p.k;        // K % 8 == 0: a chunk is all in or all out
      bool const k2_ok = k + 64 < p.k;  // the chunk 128 bytes further
      uint32_t const dst = stg_base + stage * Cfg::kStagingBytes;
#pragma unroll
      for (int i = 0; i < Cfg::kBlockM / 16; ++i) {
        int const row = rb + 16 * i;
        if (row < rows) {
          int const src = ctl->src[meta][row];
          char const* g = a16 + (static_cast<int64_t>(src) * p.a_row_stride + (k_ok ? k : 0)) * 2;
          cp_async_16(dst + i * 4096, g, k_ok ? 16 : 0, false);
          cp_async_16(dst + i * 4096 + 128, k2_ok ? g + 128 : g, k2_ok ? 16 : 0, false);
        }
      }
      cp_async_arrive_noinc(&ctl->full[stage]);
      if (++stage == Cfg::kStages) {
        stage = 0;
        phase ^= 1;
      }
      if (kb == 1) resolve_next(meta ^ 1);
      if (kb == 2) {
        producer_sync();
        load_rows(ctl->next[meta ^ 1], meta ^ 1, next_islot);
      }
    }
    if (p.num_kb <= 2) {
      if (p.num_kb <= 1) resolve_next(meta ^ 1);
      producer_sync();
      load_rows(ctl->next[meta ^ 1], meta ^ 1, next_islot);
    }
    producer_sync();
    meta ^= 1;
    islot = next_islot;
    tile = ctl->next[meta];
  }
  wait_barrier(&ctl->empty[stage], phase ^ 1);
  if (pt == 0) ctl->tile[stage] = make_int4(-1, 0, 0, 0);
  arrive_barrier(&ctl->full[stage]);
  if (pt == 0) arrive_barrier(&ctl->full[stage]);  // the 129th arrival
  if (pt == 0 && atomicAdd(p.scheduler + 1, 1) == static_cast<int>(gridDim.x) - 1) {
    __threadfence();
    p.scheduler[0] = 0;
    p.scheduler[1] = 0;
  }
}

__device__ __forceinline__ void math_sync() {
  compiler_fence();
  cutlass::arch::NamedBarrier::sync(256, 1);  // the two math warpgroups
  compiler_fence();
}

}  // namespace sm90_fp8_detail

template <bool kBf16>
__global__ void __launch_bounds__(Sm90Fp8ConvTile::kThreads, 1)
    sm90_fp8_convert_kernel(__grid_constant__ Sm90Fp8KernelParams const p) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace cute;
  using Cfg = Sm90Fp8ConvTile;
  using Barrier = cutlass::arch::ClusterBarrier;
  using sm90_fp8_detail::ConvControl;
  constexpr int kStages = Cfg::kStages;
  extern __shared__ __align__(1024) uint8_t smem_conv[];
  if ((static_cast<uint32_t>(__cvta_generic_to_shared(smem_conv)) & 1023u) != 0) {
    sm90_fp8_detail::fatal_protocol_error();
  }
  // sA [2][16 KB] | sB [3][32 KB] | staging [3][32 KB] | control
  uint8_t* const smem_a = smem_conv;
  uint8_t* const smem_b = smem_conv + Cfg::kABuffers * Cfg::kSmemABytes;
  uint8_t* const staging = smem_b + kStages * Cfg::kSmemBBytes;
  ConvControl* const ctl =
      reinterpret_cast<ConvControl*>(staging + kStages * Cfg::kStagingBytes);

  if (threadIdx.x == 0) {
    cute::prefetch_tma_descriptor(&p.tmap_w);
    for (int s = 0; s < kStages; ++s) {
      Barrier::init(&ctl->full[s], 129);
      Barrier::init(&ctl->empty[s], 4 * Cfg::kNumMathWG);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x < 128) {
    cutlass::arch::warpgroup_reg_dealloc<Cfg::kProducerRegs>();
    sm90_fp8_detail::conv_producer(p, smem_b, staging, ctl);
    return;
  }
  cutlass::arch::warpgroup_reg_alloc<Cfg::kMathRegs>();
  int const mt = threadIdx.x - 128;
  int const wg = mt >> 7;
  int const warp = (mt >> 5) & 3;
  int const lane = mt & 31;

  using SmemLayoutA = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<float_e4m3_t>{},
                                             make_shape(Int<Cfg::kBlockM>{}, Int<Cfg::kBlockK>{},
                                                        Int<Cfg::kABuffers>{})));
  using SmemLayoutB = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<float_e4m3_t>{},
                                             make_shape(Int<Cfg::kBlockN>{}, Int<Cfg::kBlockK>{},
                                                        Int<kStages>{})));
  Tensor sA = make_tensor(make_smem_ptr(reinterpret_cast<float_e4m3_t*>(smem_a)), SmemLayoutA{});
  Tensor sB = make_tensor(make_smem_ptr(reinterpret_cast<float_e4m3_t*>(smem_b)), SmemLayoutB{});
  TiledMMA tiled_mma = make_tiled_mma(SM90_64x128x32_F32E4M3E4M3_SS_TN<>{},
                                      Layout<Shape<_1, Int<Cfg::kNumMathWG>, _1>>{});
  auto thr_mma = tiled_mma.get_thread_slice(mt);
  Tensor tCrA = thr_mma.make_fragment_A(thr_mma.partition_A(sA));  // (MMA, 2, 4, buffers)
  Tensor tCrB = thr_mma.make_fragment_B(thr_mma.partition_B(sB));  // (MMA, 1, 4, stages)
  Tensor acc = partition_fragment_C(tiled_mma, Shape<_64, Int<Cfg::kBlockN>>{});
  Tensor acc_v = acc(_, _0{}, _0{});
  static_assert(size<1>(decltype(tCrA){}) == 2, "two m64 halves");
  static_assert(size(decltype(acc){}) == 64, "one m64n128 fp32 accumulator per thread");
  float total[2][64];

  // Conversion: chunk (8 elements) `cchunk` of rows crow + 16 i.
  int const cchunk = mt & 15;
  int const crow = mt >> 4;
  // 32-bit offsets from the shared window (64-bit pointers kept across the loop spill).
  uint32_t const stg_off = static_cast<uint32_t>(staging - smem_conv) + crow * 256 + cchunk * 16;
  uint32_t const sa_off = crow * 128 + ((((cchunk >> 1) ^ (crow & 7)) << 4) | ((cchunk & 1) << 3));

  bool const gate_up = p.epilogue != static_cast<int32_t>(Fp8Epilogue::kPlain);
  int stage = 0;
  uint32_t phase = 0;
  uint32_t abuf = 0;  // running K-block parity: the sA buffer
  for (;;) {
    sm90_fp8_detail::wait_barrier(&ctl->full[stage], phase);
    int4 const tile = ctl->tile[stage];
    if (tile.x < 0) break;
    int const e = tile.x;
    int const row0 = tile.y;
    int const rows = tile.z & 0xffff;
    int const islot = tile.z >> 16;
    int const n_tile = tile.w;
    int const halves = rows > 64 ? 2 : 1;
    int const chunk128 = n_tile * Cfg::kNumMathWG + wg;
    bool const active = chunk128 * 128 < p.n_prep;
    int2 const scale_rows = sm90_fp8_detail::block_scale_rows(p, e, chunk128, gate_up);
    int32_t const scale_lo = scale_rows.x;
    int32_t const scale_hi = scale_rows.y;
    float const* const inv = &ctl->inv[islot][crow];  // row crow + 16 i: inv[16 i] (read per
                                                       // K block: registers are at the limit)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int v = 0; v < 64; ++v) total[h][v] = 0.0f;
    }

    for (int kb = 0; kb < p.num_kb; ++kb) {
      float s_lo = 1.0f;
      float s_hi = 1.0f;
      if (p.scale_block && active) {
        s_lo = __ldg(p.w_scales + scale_lo + kb);
        s_hi = __ldg(p.w_scales + scale_hi + kb);
      }
      if (kb > 0) sm90_fp8_detail::wait_barrier(&ctl->full[stage], phase);
      // ---- convert this stage's rows into sA
      uint8_t const* const stg = smem_conv + stg_off + stage * Cfg::kStagingBytes;
#pragma unroll
      for (int i = 0; i < Cfg::kBlockM / 16; ++i) {
        if (crow + 16 * i < rows) {
          uint4 const v = *reinterpret_cast<uint4 const*>(stg + i * 16 * 256);
          *reinterpret_cast<uint2*>(smem_conv + sa_off + abuf * Cfg::kSmemABytes + i * 16 * 128) =
              sm90_fp8_detail::quantize_chunk<kBf16>(v, inv[16 * i]);
        }
      }
      cutlass::arch::fence_view_async_shared();  // generic stores -> wgmma (async proxy)
      sm90_fp8_detail::math_sync();
      if (active) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (h < halves) {
            warpgroup_fence_operand(acc);
            warpgroup_arrive();
            tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
#pragma unroll
            for (int k = 0; k < size<2>(tCrA); ++k) {
              cute::gemm(tiled_mma, tCrA(_, h, k, abuf), tCrB(_, _0{}, k, stage), acc_v);
              tiled_mma.accumulate_ = GMMA::ScaleOut::One;
            }
            warpgroup_commit_batch();
            warpgroup_wait<0>();
            warpgroup_fence_operand(acc);
            if (h + 1 == halves && lane == 0) sm90_fp8_detail::arrive_barrier(&ctl->empty[stage]);
#pragma unroll
            for (int v = 0; v < 64; ++v) {
              total[h][v] = fmaf(acc(v), v < 32 ? s_lo : s_hi, total[h][v]);
            }
          }
        }
      } else if (lane == 0) {
        sm90_fp8_detail::arrive_barrier(&ctl->empty[stage]);
      }
      abuf ^= 1;
      if (++stage == kStages) {
        stage = 0;
        phase ^= 1;
      }
    }
    if (!active) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (h < halves) {
        sm90_fp8_detail::pipe_epilogue(p, total[h], e, row0, rows, 64 * h, chunk128, warp, lane,
                                       gate_up, sm90_fp8_detail::EpScalesLoaded{});
      }
    }
  }
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

}  // namespace flashmoe::gemm
