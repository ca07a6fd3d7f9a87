// flashmoe (internal): the sm_90a FP8 grouped expert GEMM kernels (see sm90_fp8_grouped_gemm.h
// for the function they compute and the variant names).
//
// Two kernels: sm90_fp8_grouped_gemm_kernel (the first one, variant `base`, described right
// below) and sm90_fp8_pipelined_kernel (variants m64 / m128 / m128h, described further down,
// where the measurements that motivated it are).
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
#include "common/globaltimer.cuh"
#include "gemm/sm90_device_util.cuh"
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
  CUtensorMap tmap_a;              // a_dense: a_fp8 [dense rows, K] uint8, box {128, 64}
  void const* a;
  int32_t const* a_rows;
  float const* a_scales;
  TileInfo const* tiles;
  int32_t* scheduler;              // [0] next work item, [1] CTAs done
  // The pipelined kernel: null, or a word zeroed with the queue by the last CTA done (the fused
  // kernels' solo flag, which every CTA has passed by then: the workspace is left clean).
  uint32_t* clear_on_done;
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
  // ---- the pipelined kernel only (the base kernel ignores these)
  void const* a_fp8;               // pre-quantized rows (a_mode 2)
  int64_t a_fp8_row_stride;        // bytes
  uint64_t w_cache_hint;           // L2 cache hint of the weight TMA loads
  int32_t a_mode;                  // 0 bf16 gather, 1 fp16 gather, 2 pre-quantized e4m3 rows
  int32_t token_hint;              // 1: token copies carry an L2 evict_last policy
  int32_t merge_pairs;             // BlockM 128: an expert's last two 64-row tiles -> one item
  int32_t num_stages;              // stages in use (<= Cfg::kMaxStages)
  uint32_t staging_offset;         // bytes from the 1024-aligned base: bf16/fp16 staging ring
  uint32_t control_offset;         // bytes from the 1024-aligned base: PipeControl
  int32_t promote_kb;              // Sm90Fp8GemmParams::promote_kb (the pipelined kernel)
  int32_t k_splits;                // K ranges per (tile, n-tile) item (1: none)
  int32_t kb_per_split;            // K blocks per range
  int32_t split_tile_slots;        // tile slots covered by split_partial / split_count
  float* split_partial;
  int32_t* split_count;
  // The one-kernel gated FFN's split gate/up GEMM (I <= 256): the ranges count on their m slot
  // (split_count[slot * n_tiles], n_tiles x k_splits arrivals) and the slot's last one finishes
  // every n tile of it through the body's Deps hook (finish_slot: the sums, h, its E4M3 row,
  // the slot's release) instead of the epilogue of each n tile.
  int32_t split_by_slot;
  // The one-kernel forwards' atomic combine (MoeProblem::deterministic false; plain epilogue of
  // the last GEMM): dense row r's values, times row_weight[r], are added into the token's row
  // row_token[r] of combine_out (T x n_out, out_dtype) instead of being stored at row r of out.
  void* combine_out;
  int32_t const* row_token;
  float const* row_weight;
  // Profiling (the one-kernel FP8 forward's FLASHMOE_FUSED_TIMELINE=1; null otherwise): the
  // pipelined body stamps %globaltimer at timeline[blockIdx.x * timeline_stride + i] for its
  // last item: 0 its rows ready (producer), 1 its first weight TMA issued, 2 its last weight TMA
  // issued, 3 its first stage full (math), 4 its K loop done, 5 its epilogue done.
  uint64_t* timeline;
  int32_t timeline_stride;
  int32_t out_vec8;   // out is 16-bit with 8-byte aligned rows: the plain epilogue's 8-byte stores
  // Sm90Fp8GemmParams::a_fp8_dense (a_mode 2 only): thread 0 loads A by TMA boxes of 64 rows.
  int32_t a_dense;
  // The pipelined body with channel scales: 1 -- the producer copies each tile's row scales
  // (a_scales[a_rows[row]]) into shared memory with its channel scales, so that the epilogue
  // does not wait on two dependent global loads per row and half (v0.40); 0 -- the epilogue
  // loads them (the one-kernel FFN's down projection, whose h scales other SMs write during
  // the GEMM phase: the producer's early copy could run before the slot's release).
  int32_t row_scales_early;
};

/// The parameters of the m128 pipelined kernel body on pre-quantized rows (p.a_fp8 set; the
/// variant field is ignored) and its dynamic shared memory bytes, for a kernel that runs
/// sm90_fp8_pipelined_body<Sm90Fp8PipeTile<128>> (the fused kernel). Host code
/// (sm90_fp8_grouped_gemm.cu); checks p as launch_sm90_fp8_grouped_gemm does.
Status sm90_fp8_prequant_m128_params(Sm90Fp8GemmParams const& p, Sm90Fp8KernelParams* kp,
                                     int* smem_bytes);

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

// silu, gelu, store_pair, the barrier and cp.async helpers: gemm/sm90_device_util.cuh.
using namespace sm90_util;


/// The first of the num_kb consecutive block scales of the two 64-column halves of the math
/// warpgroup's 128-row chunk `chunk128` (gate-up: its gate half and its up half); 0 with channel
/// scales. 32-bit: the launcher checks E * scale blocks * K blocks < 2^30, and two registers
/// fewer than 64-bit indices keep the m128c consumer free of spills.
__device__ __forceinline__ int2 block_scale_rows(Sm90Fp8KernelParams const& p, int e, int chunk128,
                                                 bool gate_up) {
  if (!p.scale_block) return make_int2(0, 0);
  int const blk_lo = gate_up ? (64 * chunk128) / 128 : chunk128;
  int const blk_hi = gate_up ? (p.n_out + 64 * chunk128) / 128 : chunk128;
  return make_int2((e * p.n_scale_blocks + blk_lo) * p.num_kb,
                   (e * p.n_scale_blocks + blk_hi) * p.num_kb);
}

/// The tile of work item `item`; false past the last tile (slots after it have expert < 0).
__device__ __forceinline__ bool decode_item(Sm90Fp8KernelParams const& p, int item, int4& tile) {
  int const m_slot = item / p.n_tiles;
  int const n_tile = item - m_slot * p.n_tiles;
  if (m_slot >= p.num_tile_slots) return false;
  tile = __ldg(reinterpret_cast<int4 const*>(p.tiles + m_slot));  // {expert, row0, rows, index}
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

/// The gated epilogue of one 64-row half of a math warpgroup's promoted sums (both FP8 GEMM
/// kernels): h = act(g) * u for the (row, channel) pairs this thread holds -- columns 0..63 of
/// the warpgroup's chunk are gate channels 64 chunk + c, 64..127 the matching up channels (value
/// v pairs with v + 32) -- g and u scaled by the row's token scale and, with channel scales, by
/// col_scale(n, local) (n the raw channel, local its column 0..127 in the chunk). act: the
/// activation, chosen by store_gate_up outside the unrolled loop (perf-log v0.54).
template <class ColScale, class Act>
__device__ __forceinline__ void store_gate_up_act(Sm90Fp8KernelParams const& p,
                                                  float const (&total)[64], int chunk128, int c0,
                                                  float const (&s_tok)[2],
                                                  bool const (&row_ok)[2],
                                                  int64_t const (&out_row)[2], bool channel,
                                                  ColScale const& col_scale, Act const& act) {
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    int const h = 64 * chunk128 + 8 * j + c0;  // output column (intermediate channel)
    if (h < p.n_out) {
      float sg0 = 1.0f, sg1 = 1.0f, su0 = 1.0f, su1 = 1.0f;
      if (channel) {
        int const l = 8 * j + c0;
        sg0 = col_scale(h, l);
        sg1 = col_scale(h + 1, l + 1);
        su0 = col_scale(p.n_out + h, 64 + l);
        su1 = col_scale(p.n_out + h + 1, 64 + l + 1);
      }
#pragma unroll
      for (int i1 = 0; i1 < 2; ++i1) {
        if (row_ok[i1]) {
          float const g0 = total[4 * j + 2 * i1] * s_tok[i1] * sg0;
          float const g1 = total[4 * j + 2 * i1 + 1] * s_tok[i1] * sg1;
          float const u0 = total[32 + 4 * j + 2 * i1] * s_tok[i1] * su0;
          float const u1 = total[32 + 4 * j + 2 * i1 + 1] * s_tok[i1] * su1;
          store_pair(p.out, p.out_dtype, out_row[i1] + h, act(g0) * u0, act(g1) * u1);
        }
      }
    }
  }
}

/// store_gate_up_act with p.epilogue's activation (GELU or SiLU): one unrolled loop each.
template <class ColScale>
__device__ __forceinline__ void store_gate_up(Sm90Fp8KernelParams const& p,
                                              float const (&total)[64], int chunk128, int c0,
                                              float const (&s_tok)[2], bool const (&row_ok)[2],
                                              int64_t const (&out_row)[2], bool channel,
                                              ColScale const& col_scale) {
  if (p.epilogue == static_cast<int32_t>(Fp8Epilogue::kGateUpGelu)) {
    store_gate_up_act(p, total, chunk128, c0, s_tok, row_ok, out_row, channel, col_scale,
                      [](float g) { return gelu(g); });
  } else {
    store_gate_up_act(p, total, chunk128, c0, s_tok, row_ok, out_row, channel, col_scale,
                      [](float g) { return silu(g); });
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
      int2 const scale_rows = sm90_fp8_detail::block_scale_rows(p, e, chunk128, gate_up);
      int32_t const scale_lo = scale_rows.x;
      int32_t const scale_hi = scale_rows.y;
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
        sm90_fp8_detail::store_gate_up(p, total, chunk128, c0, s_tok, row_ok, out_row, channel,
                                       [&](int n, int) { return __ldg(cs + n); });
      }
    }
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // no sm_90a code in this build (the launcher refuses before getting here)
#endif
}

// =====================================================================================================
// The pipelined kernel (variants m64, m128, m128h of sm90_fp8_grouped_gemm.h).
//
// What the first kernel (above, variant `base`) measured on an H100 -- seed shape 2.32 ms, 61.7%
// of copy -- and why this one differs:
//  1. Its producer loads each K block of token rows through registers one block ahead, so every
//     stage costs the producer one L2 round trip, and every new tile starts with three dependent
//     round trips (tile -> a_rows -> a_scales/a). Here the token rows travel by cp.async: with a
//     pre-quantized e4m3 copy (a_mode 2) straight into the swizzled stage, the stage's full barrier
//     counting the copies' completion (cp.async.mbarrier.arrive.noinc), so the producer runs as far
//     ahead as the stages allow; with bf16/fp16 rows into a staging ring that the same thread
//     converts kLookahead stages later (its own copies: cp.async.wait_group, no barrier). Weight
//     TMA loads are issued with the stage's copies, S-1 stages ahead of the math.
//  2. With 64-row tiles, every expert with more than 64 rows (about half of the seed's) streams its
//     weights twice (the second time mostly from L2) and spends a full work item of 32 stages on a
//     handful of rows. BlockM = 128 runs an expert's last two 64-row tiles as one item (resolved
//     from the tile list itself, see resolve_item), each math warpgroup looping over the two
//     64-row halves of the stage with one m64n128 accumulator (64 + 2 x 64 promoted sums per
//     thread; the second half is skipped when the tile has <= 64 rows).
//  3. The next work item is resolved (thread 0, at K block 1) and its rows' source indices (and
//     reciprocal scales) loaded into the other slot of a two-slot shared ring (all producer
//     threads, K block 2) while the current tile streams, so a tile boundary costs the producer
//     one named barrier, not a chain of dependent loads in front of the next weight TMA.
//  4. Runtime stage count: S = 5 (m64) / 4 (m128) stages for e4m3 rows, 4 / 3 plus the staging
//     ring for 16-bit rows (227 KB). Variant m128h adds L2 hints: weight boxes EVICT_FIRST
//     (streamed once), token copies evict_last (re-read by every n-tile).
// Ordering: 16-bit rows are converted with st.shared, then fence.proxy.async and a release
// arrival (as the first kernel); e4m3 rows land by cp.async, whose completion arrives on the
// barrier asynchronously, so thread 0 adds a 129th, plain arrive.expect_tx (releasing the tile
// coordinates it wrote) and the math warps execute fence.proxy.async after their wait, before
// the wgmma reads the stage. Dense A rows (Sm90Fp8GemmParams::a_fp8_dense, v0.38): the rows of a
// tile are consecutive, so thread 0 loads each 64-row half with one TMA box; the full barrier
// counts its one arrival and the bytes, the math warps need no proxy fence, and only thread 0
// waits on the empty barriers (the other producer threads have no per-stage work left).
//
// Warp roles as in the first kernel: warpgroup 0 produces (all 128 threads copy; thread 0 also
// takes work items and issues the weight TMA), warpgroups 1 and 2 multiply (columns 128 w ..).
// Registers (setmaxnreg): m64 152 producer / 176 math; m128 56 / 224 (64 accumulators + 2 x 64
// promoted sums). Shared memory (a 1024-aligned window): sA [S][BlockM rows][128 B],
// sB [S][256 rows][128 B], staging [kLookahead + 1][BlockM rows x 128 x 16 bit] (bf16/fp16 gather
// only), PipeControl.
// =====================================================================================================

// kTimeline_: the profiling stamps (Sm90Fp8KernelParams::timeline) compiled in. Off in every
// production kernel: tested at run time, the stamps cost ~1-1.5 us at T = 1 and ~1-1.5% at seed
// and prefill (v0.49, rounds 232-234 in docs/perf-log.md); the fused kernel has a profiling
// instantiation (FLASHMOE_FUSED_TIMELINE=1).
// kE4m3RowsOnly_: the body's A rows are always E4M3 (a_mode 2: the one-kernel forward, whose
// routing phases quantize them), so only the E4M3 producers are compiled, not the bf16/fp16
// gathers, dead code there (perf-log v0.54).
template <int BlockM_, bool kTimeline_ = false, bool kE4m3RowsOnly_ = false>
struct Sm90Fp8PipeTile {
  static constexpr bool kTimeline = kTimeline_;
  static constexpr bool kE4m3RowsOnly = kE4m3RowsOnly_;
  static constexpr int kBlockM = BlockM_;           // 64 or 128 rows per work item
  static constexpr int kMHalves = kBlockM / 64;     // m64 wgmma per warpgroup per k32 step
  static constexpr int kWgN = 128;
  static constexpr int kNumMathWG = 2;
  static constexpr int kBlockN = kWgN * kNumMathWG;  // 256
  static constexpr int kBlockK = 128;
  static constexpr int kThreads = 128 * (1 + kNumMathWG);
  static constexpr int kMaxStages = 6;
  static constexpr int kMetaSlots = 2;              // the current tile's rows and the next's
  // bf16/fp16 gather: stages between a stage's copies and their conversion (the staging ring has
  // kLookahead + 1 slots of kStagingBytes).
  static constexpr int kLookahead = kBlockM == 128 ? 1 : 2;
  // setmaxnreg budgets; 168 x 384 registers are allocated at launch.
  //   m64:  64 accumulators + 64 promoted sums (as the first kernel); the producer keeps 152.
  //   m128: 64 accumulators + 128 promoted sums (ptxas: up to R221); the cp.async producer
  //   fits 56 (232 / 40 spills the producer).
  static constexpr int kProducerRegs = kBlockM == 128 ? 56 : 152;
  static constexpr int kMathRegs = kBlockM == 128 ? 224 : 176;
  static constexpr int kSmemABytes = kBlockM * kBlockK;
  static constexpr int kSmemBBytes = kBlockN * kBlockK;
  static constexpr int kStageBytes = kSmemABytes + kSmemBBytes;
  static constexpr int kStagingBytes = kBlockM * kBlockK * 2;
  static constexpr int kSmemLimit = 227 * 1024;
  static_assert(kBlockM == 64 || kBlockM == 128, "64 or 128 rows");
  static_assert(kProducerRegs * 128 + kMathRegs * 256 <= 168 * kThreads, "setmaxnreg budget");
  static_assert(kLookahead >= 1 && kLookahead <= 2, "the pending-stage shift register");
};

namespace sm90_fp8_detail {

/// Dense A (Sm90Fp8KernelParams::a_dense): one TMA box per 64-row half of a stage, 64 x 128 bytes,
/// with the default L2 policy (the rows are read once per n tile, like the cp.async copies).
inline constexpr uint32_t kDenseBoxBytes = 64 * 128;
inline constexpr uint64_t kDenseBoxHint =
    static_cast<uint64_t>(cute::TMA::CacheHintSm90::EVICT_NORMAL);

/// Profiling stamp i of Sm90Fp8KernelParams::timeline (nothing without one, or unless the
/// kernel is the profiling build: Cfg::kTimeline).
template <class Cfg>
__device__ __forceinline__ void pipe_stamp(Sm90Fp8KernelParams const& p, int i) {
  if constexpr (Cfg::kTimeline) {
    if (p.timeline == nullptr) return;
    stamp_globaltimer(p.timeline + static_cast<int64_t>(blockIdx.x) * p.timeline_stride + i);
  }
}
/// The same, only if slot i is still unset (zeroed by the caller): the CTA's first item.
template <class Cfg>
__device__ __forceinline__ void pipe_stamp_first(Sm90Fp8KernelParams const& p, int i) {
  if constexpr (Cfg::kTimeline) {
    if (p.timeline == nullptr) return;
    stamp_globaltimer_once(p.timeline + static_cast<int64_t>(blockIdx.x) * p.timeline_stride +
                           i);
  }
}

template <class Cfg>
struct PipeControl {
  uint64_t full[Cfg::kMaxStages];   // 128 (129: e4m3 rows) producer arrivals + the TMA's bytes
  uint64_t empty[Cfg::kMaxStages];  // one arrival per math warp
  int4 tile[Cfg::kMaxStages];       // (expert, row0, rows, n_tile) of the tile starting there
  int32_t tile_tag[Cfg::kMaxStages];  // its GEMM, K range and m slot: pipe_tag()
  int32_t next_slot[Cfg::kMetaSlots];  // the m slot of next[i] (written by producer thread 0)
  int32_t next_split[Cfg::kMetaSlots];  // its K range (split-K)
  int32_t deps_word;                // the math warpgroups' broadcast word (PipeDeps::item_done)
  float deps_amax[16];              // the math warps' maxima (PipeDeps::finish_slot)
  uint32_t deps_pending[2];         // the Deps hooks' record across a CTA's items (item_stored
                                    // sets, after_tiles reads; zeroed at the body's start)
  int4 next[Cfg::kMetaSlots];       // thread 0 -> producer warpgroup: the next tile, in the
                                    // ring slot it will have (double-buffered: the slot just
                                    // read is rewritten only after the next tile boundary)
  int32_t src[Cfg::kMetaSlots][Cfg::kBlockM];  // source row of each row of a tile
  float inv[Cfg::kMetaSlots][Cfg::kBlockM];    // 1 / its scale (bf16/fp16 gather)
  // A tile's channel scales (channel-scaled weights only), copied by the producer warpgroup
  // with the tile's first stage (cp.async, no wait) so that the math warpgroups' epilogue reads
  // them from shared memory instead of waiting on 32 global loads per thread (round 112).
  // Double-buffered by the parity of the tile's position in the ring (tag_ep).
  uint64_t ep_full[2];                  // producer -> math: 128 cp.async arrivals
  uint64_t ep_free[2];                  // math -> producer: one arrival per math warp
  float ep_col_scale[2][Cfg::kBlockN];  // warpgroup w's 128 from 128 w (gate/up: its 64 gate,
                                        // then its 64 up channels)
  float ep_row_scale[2][Cfg::kBlockM];  // row_scales_early: row r's a_scales[a_rows[row0 + r]]
};

/// pipe_epilogue's channel scales: loaded by the epilogue itself (the convert kernel) ...
struct EpScalesLoaded {
  static constexpr bool kShared = false;
};

/// ... or read from buffer `b` of PipeControl::ep_col_scale (the pipelined body; warpgroup
/// `wg`'s columns). Addressed through the control block (already in a register) and two small
/// ints: pointers of their own made the 224-register math warpgroups spill.
template <class Cfg>
struct EpScalesShared {
  static constexpr bool kShared = true;
  PipeControl<Cfg> const* ctl;
  int b;
  int wg;
  __device__ __forceinline__ float col_scale(int j) const {
    return ctl->ep_col_scale[b][128 * wg + j];
  }
  __device__ __forceinline__ float row_scale(int r) const { return ctl->ep_row_scale[b][r]; }
};

/// A tile's tag (PipeControl::tile_tag): its GEMM of the body (bit 0), its K range (bits 1-7,
/// split-K), its channel-scale buffer and that buffer's use parity (bits 8 and 9: the producer's
/// count of channel-scaled tiles mod 4, see pipe_producer) and its m slot (bits 10+).
__device__ __forceinline__ int pipe_tag(int gemm, int split, int ep, int slot) {
  return gemm | (split << 1) | (ep << 8) | (slot << 10);
}
__device__ __forceinline__ int tag_gemm(int tag) { return tag & 1; }
__device__ __forceinline__ int tag_split(int tag) { return (tag >> 1) & 127; }
__device__ __forceinline__ int tag_ep(int tag) { return (tag >> 8) & 3; }
__device__ __forceinline__ int tag_slot(int tag) { return tag >> 10; }

/// Shared memory plan of one launch.
struct PipeSmemPlan {
  int stages = 0;
  int staging_slots = 0;
  uint32_t staging_offset = 0;
  uint32_t control_offset = 0;
  int bytes = 0;
};

template <class Cfg>
inline PipeSmemPlan pipe_smem_plan(bool fp8_source) {
  PipeSmemPlan plan;
  int const ctl = static_cast<int>((sizeof(PipeControl<Cfg>) + 127) / 128 * 128);
  plan.staging_slots = fp8_source ? 0 : Cfg::kLookahead + 1;
  int const avail = Cfg::kSmemLimit - ctl - plan.staging_slots * Cfg::kStagingBytes;
  plan.stages = avail / Cfg::kStageBytes;
  if (plan.stages > Cfg::kMaxStages) plan.stages = Cfg::kMaxStages;
  plan.staging_offset = static_cast<uint32_t>(plan.stages * Cfg::kStageBytes);
  plan.control_offset = plan.staging_offset +
                        static_cast<uint32_t>(plan.staging_slots * Cfg::kStagingBytes);
  plan.bytes = static_cast<int>(plan.control_offset) + ctl;
  return plan;
}


/// a, b: consecutive 64-row tiles of one expert (b the rows right after a's 64).
__device__ __forceinline__ bool pairable(int4 const& a, int4 const& b) {
  return a.x >= 0 && a.x == b.x && a.z == 64 && b.y == a.y + 64 && b.z > 0 && b.z <= 64;
}

/// Thread 0 of the producer: the tile of work item `cand`, taking further items while `cand` is a
/// 64-row tile that its predecessor's item runs (BlockM 128). expert -1: no work left.
///
/// Pairing (merge_pairs): an expert's tiles 2i and 2i + 1 (TileInfo::index, written by the tile
/// list's builders) form one item -- the even one leads (runs its 64 rows + the next tile's),
/// the odd one is absorbed; an expert's last tile of an odd count runs alone. Every CTA decides
/// from the tile itself, so the decisions agree, and runs of any length are paired completely.
template <class Cfg>
__device__ __forceinline__ int4 resolve_item(Sm90Fp8KernelParams const& p, int& cand,
                                            int& slot_out, int& split_out) {
  int4 const none = make_int4(-1, 0, 0, 0);
  int const per_slot = p.n_tiles * p.k_splits;  // items of a tile slot: (n tile, K range)
  int const total = p.num_tile_slots * per_slot;
  for (;;) {
    if (cand >= total) return none;
    int const slot = cand / per_slot;
    int const rem = cand - slot * per_slot;
    int const n_tile = rem / p.k_splits;
    slot_out = slot;
    split_out = rem - n_tile * p.k_splits;
    int4 tile = __ldg(reinterpret_cast<int4 const*>(p.tiles + slot));
    if (tile.x < 0) return none;
    if constexpr (Cfg::kBlockM == 128) {
      if (p.merge_pairs) {
        if (tile.w & 1) {  // absorbed: tile index - 1 of its expert (64 rows) runs it
          cand = atomicAdd(p.scheduler, 1);
          continue;
        }
        int4 const next = slot + 1 < p.num_tile_slots
                              ? __ldg(reinterpret_cast<int4 const*>(p.tiles + slot + 1))
                              : none;
        if (pairable(tile, next)) tile.z += next.z;  // else its expert's last tile
      }
    }
    tile.w = n_tile;
    return tile;
  }
}

/// The producer warpgroup of the pipelined kernel for GEMM `gemm` (0 or 1) of the body. kMode:
/// 0 bf16 rows, 1 fp16 rows, 2 e4m3 rows, 3 e4m3 rows in dense order (a_dense). stage and phase
/// carry the ring's position from one GEMM to the next (phase bit 0: the stage ring's parity;
/// bits 1-2: the count of channel-scaled tiles mod 4, whose bit 0 picks the tile's channel-scale
/// buffer and bit 1 is that buffer's use parity -- packed there because a separate counter cost
/// the 56-register producer a spill); `last`: after its items, the end marker.
template <class Cfg, int kMode, class Deps>
__device__ __forceinline__ void pipe_producer(Sm90Fp8KernelParams const& p, uint8_t* smem_a,
                                              uint8_t* smem_b, uint8_t* staging,
                                              PipeControl<Cfg>* ctl, int gemm, bool last,
                                              int& stage, uint32_t& phase, Deps const& deps) {
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  // kMode 3: e4m3 rows in dense order (p.a_dense), a compile-time mode of its own: as runtime
  // branches in the mode-2 producer the dense path cost the gathered one ~8% at decode
  // (multi-kernel decode-16, rounds 207-210).
  constexpr bool kFp8 = kMode >= 2;
  constexpr bool kDense = kMode == 3;
  constexpr int kD = Cfg::kLookahead;
  constexpr int kHalves = Cfg::kMHalves;
  int const pt = threadIdx.x;  // 0..127
  int const S = p.num_stages;

  // 16-bit rows: chunk = 8 elements (16 bytes) of the 128-wide K block, rows rb8 + 8 i (i < 8)
  // of each 64-row half. Staging is thread-private: [half][i][thread] x 16 bytes.
  int const chunk16 = pt & 15;
  int const rb8 = pt >> 4;
  uint32_t const sw16 = rb8 * 128 + ((((chunk16 >> 1) ^ rb8) << 4) | ((chunk16 & 1) << 3));
  // e4m3 rows: chunk = 16 bytes, rows rb16 + 16 i (i < 4) of each half.
  int const chunk8 = pt & 7;
  int const rb16 = pt >> 3;
  uint32_t const sw8 = rb16 * 128 + ((chunk8 ^ (rb16 & 7)) << 4);

  uint32_t const sa_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem_a));
  uint32_t const stg_base = static_cast<uint32_t>(__cvta_generic_to_shared(staging)) + pt * 16;
  char const* const a16 = static_cast<char const*>(p.a);
  char const* const a8 = static_cast<char const*>(p.a_fp8);

  int cand = 0;
  if (pt == 0) cand = atomicAdd(p.scheduler, 1);
  int slot = 0;      // staging slot of the next stage (16-bit rows)
  int pend[kD];      // stages whose copies are in flight, newest first: packed descriptors
  int npend = 0;
#pragma unroll
  for (int i = 0; i < kD; ++i) pend[i] = 0;

  // Converts the staged rows of a pending stage into its swizzled e4m3 tile and marks it full.
  auto finish = [&](int desc) {
    int const s = desc & 7;
    int const sl = (desc >> 3) & 3;
    int const mt = (desc >> 5) & 3;
    int const r = desc >> 8;
    uint8_t* const dst = smem_a + s * Cfg::kSmemABytes + sw16;
    uint8_t const* const stg = staging + sl * Cfg::kStagingBytes + pt * 16;
#pragma unroll
    for (int h = 0; h < kHalves; ++h) {
      if (64 * h < r) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          int const row = 64 * h + rb8 + 8 * i;
          if (row < r) {
            uint4 const v = *reinterpret_cast<uint4 const*>(stg + h * 16384 + i * 2048);
            float const inv = ctl->inv[mt][row];
            *reinterpret_cast<uint2*>(dst + h * 8192 + i * 1024) =
                quantize_chunk<kMode == 0>(v, inv);
          }
        }
      }
    }
    compiler_fence();
    cutlass::arch::fence_view_async_shared();  // generic stores -> wgmma (async proxy)
    arrive_barrier(&ctl->full[s]);
  };

  // Converts every pending stage (oldest first): at a tile boundary, so that the next tile's
  // rows can take the other slot of the row ring.
  auto drain = [&]() {
    if constexpr (!kFp8) {
      cp_async_wait<0>();
#pragma unroll
      for (int i = kD - 1; i >= 0; --i) {
        if (i < npend) finish(pend[i]);
      }
      npend = 0;
    }
  };

  // The rows of tile `t` (source index; 1 / scale for 16-bit rows) go to slot (meta) of the
  // shared ring, one row per thread.
  auto load_rows = [&](int4 const& t, int slot_of_rows) {
    if (t.x >= 0 && pt < t.z) {
      int const dense = t.y + pt;
      int const src = p.a_rows != nullptr ? __ldg(p.a_rows + dense) : dense;
      ctl->src[slot_of_rows][pt] = src;
      if constexpr (!kFp8) ctl->inv[slot_of_rows][pt] = 1.0f / __ldg(p.a_scales + src);
    }
  };
  // Thread 0: the tile of the next work item into ctl->next[slot] (expert -1: none left), and
  // the item after it taken from the queue (its atomic completes while a whole tile streams).
  // With one slot, thread 0 could rewrite it at kb == kResolveAt of a tile while a lagging warp
  // had not yet read it after that tile's boundary barrier (compute-sanitizer racecheck, round
  // 38): the slot read at a boundary is only rewritten after the next boundary's barrier.
  // When the queue holds no more items than there are CTAs, the first takes cover them all and no
  // CTA takes a second: a take right after a CTA's first could come before a later CTA's first
  // one, and then one CTA runs two items back to back (decode: +20 us) while the later one idles
  // (v0.28b).
  auto resolve_next = [&](int slot) {
    if (pt == 0) {
      int m_slot = 0;
      int split = 0;
      int4 const next = resolve_item<Cfg>(p, cand, m_slot, split);
      if (next.z > Cfg::kBlockM) fatal_protocol_error();  // a tile list with tile_m != 64
      ctl->next[slot] = next;
      ctl->next_slot[slot] = m_slot;
      ctl->next_split[slot] = split;
      bool const one_pass =
          p.num_tile_slots * p.n_tiles * p.k_splits <= static_cast<int>(gridDim.x);
      if (next.x >= 0) cand = one_pass ? INT32_MAX : atomicAdd(p.scheduler, 1);
    }
  };
  // Thread 0, before the producer barrier that releases the copies of the item in next[slot].
  auto wait_deps = [&](int slot) {
    if constexpr (Deps::kActive) {
      if (pt == 0 && ctl->next[slot].x >= 0) deps.wait_rows(gemm, ctl->next_slot[slot]);
    }
  };

  // The channel scales of tile `t` (PipeControl::ep_col_scale) into buffer ep & 1 (ep = phase
  // bits 1-2: the count of such tiles mod 4), once the math warpgroups are done with that
  // buffer's previous tile: two 4-byte cp.async per thread (the scales are weights: no SM writes
  // them during the launch, so L1 may cache them), whose completion arrives on ep_full -- the
  // producer does not wait for them. Only with channel scales (block128 epilogues have none).
  // With p.row_scales_early also the tile's row scales (ep_row_scale), one per thread from its
  // source row in ctl->src[rows_slot] (load_rows wrote it from this thread): scales written
  // before the launch or before the fused kernel's GEMM phase, which this SM has not read yet.
  auto fetch_col_scales = [&](int4 const& t, int rows_slot) {
    if (p.scale_block) return;
    uint32_t const ep = (phase >> 1) & 3;
    int const b = static_cast<int>(ep & 1);
    wait_barrier(&ctl->ep_free[b], (ep >> 1) ^ 1);
    bool const gate_up = p.epilogue != static_cast<int32_t>(Fp8Epilogue::kPlain);
    int const base = t.x * p.n_raw;  // the expert's first scale (E_local * N_raw < 2^31)
    uint32_t const dst = static_cast<uint32_t>(__cvta_generic_to_shared(&ctl->ep_col_scale[b][0]));
#pragma unroll
    for (int i = 0; i < Cfg::kBlockN / 128; ++i) {
      int const c = pt + 128 * i;  // column of the CTA tile: warpgroup c / 128, its c % 128
      int const chunk128 = t.w * Cfg::kNumMathWG + (c >> 7);
      int const j = c & 127;
      // plain: output channel n; gate/up: gate (j < 64) or up index n, the up scales after I
      int const n = gate_up ? 64 * chunk128 + (j & 63) : 128 * chunk128 + j;
      bool const in = n < p.n_out;
      int const idx = in ? base + n + (gate_up && j >= 64 ? p.n_out : 0) : 0;
      cp_async_4(dst + 4 * c, p.w_scales + idx, in ? 4 : 0);
    }
    if (p.row_scales_early && pt < Cfg::kBlockM) {
      bool const in = pt < t.z;
      uint32_t const rdst =
          static_cast<uint32_t>(__cvta_generic_to_shared(&ctl->ep_row_scale[b][pt]));
      cp_async_4(rdst, p.a_scales + (in ? ctl->src[rows_slot][pt] : 0), in ? 4 : 0);
    }
    cp_async_arrive_noinc(&ctl->ep_full[b]);
    phase = (phase & 1) | (((ep + 1) & 3) << 1);
  };

  // The first tile: resolved and its rows loaded before any copy. (After a previous GEMM of the
  // body, the barrier first: a lagging thread may still read ctl->next of its last boundary.)
  int meta = 0;
  if (gemm > 0) producer_sync();
  if constexpr (Deps::kActive) {
    if (pt == 0) deps.wait_routed(gemm);  // (the take above is in flight meanwhile)
  }
  resolve_next(meta);
  producer_sync();
  int4 tile = ctl->next[meta];
  load_rows(tile, meta);
  wait_deps(meta);
  producer_sync();

  // The next tile is resolved (thread 0, kb == 1) and its rows loaded (kb == 2) while this one
  // streams: a stall there only delays copies that run S - 1 stages ahead of the math, where
  // the same work at the tile boundary would delay the next tile's first weight loads.
  constexpr int kResolveAt = 1;
  while (tile.x >= 0) {
    int const rows = tile.z;
    if (pt == 0) {
      pipe_stamp<Cfg>(p, 0);
      pipe_stamp_first<Cfg>(p, 10);
    }
    // The tile's K blocks: all of them, or its range (split-K).
    int const kb0 = ctl->next_split[meta] * p.kb_per_split;
    int const kb1 = min(p.num_kb, kb0 + p.kb_per_split);
    for (int kb = kb0; kb < kb1; ++kb) {
      // Dense A by TMA boxes: thread 0 alone fills and releases the stages (the one arrival). The
      // other threads have no per-stage work and must not wait on a stage's parity: free of the
      // stages they can fall a whole ring behind, and the wait would then alias a later phase
      // and never return (round 183: a deadlock).
      if (!kDense || pt == 0) wait_barrier(&ctl->empty[stage], (phase & 1) ^ 1);
      if (pt == 0) {
        if (kb == kb0) {  // published by this thread's (release) arrival
          ctl->tile[stage] = tile;
          ctl->tile_tag[stage] = pipe_tag(gemm, ctl->next_split[meta],
                                          static_cast<int>(phase >> 1) & 3, ctl->next_slot[meta]);
        }
        if constexpr (kFp8) {
          // The copies' arrivals are asynchronous: this plain arrival (the 129th) releases the
          // tile coordinates above.
          // Dense A: the only arrival, with the A boxes' bytes (a box is counted whole, rows
          // past the tensor zero-filled).
          compiler_fence();
          TxBarrier::arrive_and_expect_tx(
              &ctl->full[stage],
              Cfg::kSmemBBytes + (kDense ? (rows > 64 ? 2 : 1) * kDenseBoxBytes : 0));
        } else {
          TxBarrier::expect_transaction(&ctl->full[stage], Cfg::kSmemBBytes);
        }
        cute::SM90_TMA_LOAD_3D::copy(&p.tmap_w, &ctl->full[stage], p.w_cache_hint,
                                     smem_b + stage * Cfg::kSmemBBytes, kb * Cfg::kBlockK,
                                     tile.w * Cfg::kBlockN, tile.x);
        if constexpr (kDense) {
          // Each 64-row half holding rows: one box (1024-aligned, 128B swizzle: the layout the
          // cp.async path writes and the wgmma reads).
#pragma unroll
          for (int h = 0; h < kHalves; ++h) {
            if (64 * h < rows) {
              uint8_t* const dst = smem_a + stage * Cfg::kSmemABytes + h * kDenseBoxBytes;
              cute::SM90_TMA_LOAD_2D::copy(&p.tmap_a, &ctl->full[stage], kDenseBoxHint, dst,
                                           kb * Cfg::kBlockK, tile.y + 64 * h);
            }
          }
        }
        if (kb == kb0) pipe_stamp<Cfg>(p, 1);
        if (kb + 1 == kb1) pipe_stamp<Cfg>(p, 2);
      }
      if constexpr (kDense) {
        // thread 0 loaded A above
      } else if constexpr (kFp8) {
        int const k = kb * Cfg::kBlockK + chunk8 * 16;
        bool const k_ok = k < p.k;
        uint32_t const dst = sa_base + stage * Cfg::kSmemABytes + sw8;
#pragma unroll
        for (int h = 0; h < kHalves; ++h) {
          if (64 * h < rows) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              int const row = 64 * h + rb16 + 16 * i;
              if (row < rows) {
                int const src = ctl->src[meta][row];
                char const* g = a8 + static_cast<int64_t>(src) * p.a_fp8_row_stride + (k_ok ? k : 0);
                cp_async_16(dst + h * 8192 + i * 2048, g, k_ok ? 16 : 0, p.token_hint != 0);
              }
            }
          }
        }
        cp_async_arrive_noinc(&ctl->full[stage]);
      } else {
        int const k = kb * Cfg::kBlockK + chunk16 * 8;
        bool const k_ok = k < p.k;
        uint32_t const dst = stg_base + slot * Cfg::kStagingBytes;
#pragma unroll
        for (int h = 0; h < kHalves; ++h) {
          if (64 * h < rows) {
#pragma unroll
            for (int i = 0; i < 8; ++i) {
              int const row = 64 * h + rb8 + 8 * i;
              if (row < rows) {
                int const src = ctl->src[meta][row];
                char const* g =
                    a16 + (static_cast<int64_t>(src) * p.a_row_stride + (k_ok ? k : 0)) * 2;
                cp_async_16(dst + h * 16384 + i * 2048, g, k_ok ? 16 : 0, p.token_hint != 0);
              }
            }
          }
        }
        cp_async_commit();
        int const desc = stage | (slot << 3) | (meta << 5) | (rows << 8);
        if (npend == kD) {
          cp_async_wait<kD>();  // the oldest pending stage's copies have landed
          finish(pend[kD - 1]);
        } else {
          ++npend;
        }
#pragma unroll
        for (int i = kD - 1; i > 0; --i) pend[i] = pend[i - 1];
        pend[0] = desc;
        if (++slot == kD + 1) slot = 0;
      }
      if (++stage == S) {
        stage = 0;
        phase ^= 1;
      }
      if (kb == kb0) fetch_col_scales(tile, meta);
      if (kb - kb0 == kResolveAt) resolve_next(meta ^ 1);
      if (kb - kb0 == kResolveAt + 1) {
        producer_sync();  // ctl->next[meta ^ 1] written
        load_rows(ctl->next[meta ^ 1], meta ^ 1);
      }
    }
    if (kb1 - kb0 <= kResolveAt + 1) {  // short K: the same at the boundary
      if (kb1 - kb0 <= kResolveAt) resolve_next(meta ^ 1);
      producer_sync();
      load_rows(ctl->next[meta ^ 1], meta ^ 1);
    }
    // ---- tile boundary: convert what is still staged, then switch to the next tile's rows
    drain();
    wait_deps(meta ^ 1);
    producer_sync();  // the next tile's rows are visible (and, after wait_deps, its A rows)
    tile = ctl->next[meta ^ 1];
    meta ^= 1;
  }

  // ---- the end marker (everything was drained at the last boundary)
  cp_async_wait_all();
  if constexpr (Deps::kActive) {
    if (pt == 0) deps.wait_rest(gemm);  // before the marker and before this CTA counts itself done
  }
  if (last) {
    if constexpr (kDense) {  // one arrival, thread 0's (see the stage loop)
      if (pt == 0) {
        wait_barrier(&ctl->empty[stage], (phase & 1) ^ 1);
        ctl->tile[stage] = make_int4(-1, 0, 0, 0);
        arrive_barrier(&ctl->full[stage]);
      }
    } else {
      wait_barrier(&ctl->empty[stage], (phase & 1) ^ 1);
      if (pt == 0) ctl->tile[stage] = make_int4(-1, 0, 0, 0);
      arrive_barrier(&ctl->full[stage]);
      if (kFp8 && pt == 0) arrive_barrier(&ctl->full[stage]);  // the 129th arrival
    }
  }
  if (pt == 0 && atomicAdd(p.scheduler + 1, 1) == static_cast<int>(gridDim.x) - 1) {
    __threadfence();
    p.scheduler[0] = 0;
    p.scheduler[1] = 0;
    if (p.clear_on_done != nullptr) *p.clear_on_done = 0u;
  }
}

/// Scales one 64-row half of a math warpgroup's promoted sums and stores them (the first
/// kernel's epilogue; `half_row` = 64 * half). The channel scales come from `ep`
/// (EpScalesShared: copied by the producer, the pipelined body) or are loaded here
/// (EpScalesLoaded: the convert kernel).
template <class Ep>
__device__ __forceinline__ void pipe_epilogue(Sm90Fp8KernelParams const& p, float const (&total)[64],
                                              int e, int row0, int rows, int half_row,
                                              int chunk128, int warp, int lane, bool gate_up,
                                              Ep const& ep) {
  constexpr bool kSharedScales = Ep::kShared;
  bool const channel = !p.scale_block;
  int const r0 = half_row + 16 * warp + (lane >> 2);
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
      bool early = false;  // copied with the channel scales (fetch_col_scales)
      if constexpr (kSharedScales) {
        early = p.row_scales_early != 0;
        if (early) s_tok[i1] = ep.row_scale(r);
      }
      if (!early) {
        // Through L2 (ld.global.cg), not the non-coherent path: in the fused kernel the scales
        // of the down projection's rows are written by other SMs during the launch.
        int const src = p.a_rows != nullptr ? __ldcg(p.a_rows + dense) : dense;
        s_tok[i1] = __ldcg(p.a_scales + src);
      }
      if (!gate_up && p.combine_out != nullptr) {  // the row's weight and its token's output row
        s_tok[i1] *= __ldcg(p.row_weight + dense);
        out_row[i1] = static_cast<int64_t>(__ldcg(p.row_token + dense)) * p.out_row_stride;
      }
    }
  }
  float const* const cs = p.w_scales + static_cast<int64_t>(e) * p.n_raw;
  // The channel scale at cs[n], which is the warpgroup's column `local` (0..127; gate/up: the
  // gate at 0..63, the up at 64..127).
  auto col_scale = [&](int n, int local) -> float {
    if constexpr (kSharedScales) {
      return ep.col_scale(local);
    } else {
      return __ldg(cs + n);
    }
  };
  // 8-byte stores (store_quad_pair) when the warpgroup's columns are all inside N and the
  // output is 16-bit with 8-byte aligned rows, and stored (not added atomically).
  if (!gate_up && p.out_vec8 && p.combine_out == nullptr && (chunk128 + 1) * 128 <= p.n_out) {
#pragma unroll
    for (int m = 0; m < 8; ++m) {  // groups j = 2 m, 2 m + 1: columns 128 chunk128 + 16 m + [0, 16)
      int const j = 2 * m;
      int const n = chunk128 * 128 + 16 * m + c0;
      int const l = 16 * m + c0;
      float const sa0 = channel ? col_scale(n, l) : 1.0f;
      float const sa1 = channel ? col_scale(n + 1, l + 1) : 1.0f;
      float const sb0 = channel ? col_scale(n + 8, l + 8) : 1.0f;
      float const sb1 = channel ? col_scale(n + 9, l + 9) : 1.0f;
#pragma unroll
      for (int i1 = 0; i1 < 2; ++i1) {
        uint32_t const w0 = pack_pair(p.out_dtype, total[4 * j + 2 * i1] * s_tok[i1] * sa0,
                                      total[4 * j + 2 * i1 + 1] * s_tok[i1] * sa1);
        uint32_t const w1 = pack_pair(p.out_dtype, total[4 * j + 4 + 2 * i1] * s_tok[i1] * sb0,
                                      total[4 * j + 4 + 2 * i1 + 1] * s_tok[i1] * sb1);
        store_quad_pair(p.out, out_row[i1] + chunk128 * 128 + 16 * m, w0, w1, row_ok[i1]);
      }
    }
  } else if (!gate_up) {
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      int const n = chunk128 * 128 + 8 * j + c0;
      if (n < p.n_out) {
        float sw0 = 1.0f;
        float sw1 = 1.0f;
        if (channel) {
          sw0 = col_scale(n, 8 * j + c0);
          sw1 = col_scale(n + 1, 8 * j + c0 + 1);
        }
#pragma unroll
        for (int i1 = 0; i1 < 2; ++i1) {
          if (row_ok[i1]) {
            float const v0 = total[4 * j + 2 * i1] * s_tok[i1] * sw0;
            float const v1 = total[4 * j + 2 * i1 + 1] * s_tok[i1] * sw1;
            if (p.combine_out != nullptr) {
              add_pair_atomic(p.combine_out, p.out_dtype, out_row[i1] + n, v0, v1);
            } else {
              store_pair(p.out, p.out_dtype, out_row[i1] + n, v0, v1);
            }
          }
        }
      }
    }
  } else {
    store_gate_up(p, total, chunk128, c0, s_tok, row_ok, out_row, channel, col_scale);
  }
}

/// Where a split-K partial holds (row, col) of its item: the register image of the math
/// warpgroups' m64n128 fragments, [half][value][thread].
__device__ __forceinline__ int split_image_index(int row, int col) {
  // The m64n128 wgmma C fragment: thread 128 wg + 32 warp + lane, value v (sm90 layout).
  int const wg = col >> 7;
  int const c = col & 127;
  int const r = row & 63;
  int const t = 128 * wg + 32 * (r >> 4) + 4 * (r & 7) + ((c & 7) >> 1);
  int const v = 4 * (c >> 3) + 2 * ((r >> 3) & 1) + (c & 1);
  return ((row >> 6) * 64 + v) * 256 + t;
}

/// The first float of range `split`'s partial of the item (slot, n_tile).
__device__ __forceinline__ float* split_partial_image(Sm90Fp8KernelParams const& p, int slot,
                                                      int n_tile, int split) {
  int64_t const item = static_cast<int64_t>(slot) * p.n_tiles + n_tile;
  return p.split_partial + (item * p.k_splits + split) * kSm90Fp8SplitPartialFloats;
}

/// Split-K, run by the 256 math threads after their K range of an item: stores this range's
/// sums (rows < `rows` only) in a register-image layout [half][value][thread], counts the range,
/// and -- in the CTA whose range is the item's last -- replaces `total` by the sum of all ranges
/// in range order (fixed: the result does not depend on which CTA finishes last). Returns
/// whether this CTA finishes the item. Partials go through L2 only (other SMs wrote them during
/// the launch). The sum is formed in two steps so that no thread holds more than its 128 sums
/// plus a few loads: (a) the 256 threads add the ranges of the valid (row, column) elements, a
/// column per thread, into range 0's partial; (b) each thread loads its own sums from there.
/// With p.split_by_slot (Deps::kSlotFinish: the one-kernel gated FFN) the ranges count on their
/// m slot instead, and the slot's last range hands the whole slot to deps.finish_slot, which
/// reads the partials itself (split_partial_image, split_image_index): this returns false.
template <int kHalves, class Deps>
__device__ __forceinline__ bool split_k_reduce(Sm90Fp8KernelParams const& p,
                                               float (&total)[kHalves][64], int tag, int e,
                                               int n_tile, int row0, int rows, bool active,
                                               int mt, int32_t* word, float* warp_amax,
                                               Deps const& deps) {
  int const slot = tag_slot(tag);
  int const split = tag_split(tag);
  int const halves = (kHalves == 2 && rows > 64) ? 2 : 1;
  if (slot >= p.split_tile_slots) fatal_protocol_error();  // the host's slot bound is wrong
  int const warp = (mt >> 5) & 3;
  int const lane = mt & 31;
  int const r0 = 16 * warp + (lane >> 2);  // + 8 * ((v >> 1) & 1) + 64 * h: the C fragment's row
  int64_t const item = static_cast<int64_t>(slot) * p.n_tiles + n_tile;
  float* const base = split_partial_image(p, slot, n_tile, 0);
  if (active) {
    float* const mine = base + static_cast<int64_t>(split) * kSm90Fp8SplitPartialFloats;
#pragma unroll
    for (int h = 0; h < kHalves; ++h) {
      if (h < halves) {
        bool const ok0 = 64 * h + r0 < rows;
        bool const ok1 = 64 * h + r0 + 8 < rows;
#pragma unroll
        for (int v = 0; v < 64; ++v) {
          if ((v & 2) ? ok1 : ok0) __stcg(mine + (h * 64 + v) * 256 + mt, total[h][v]);
        }
      }
    }
  }
  cutlass::arch::NamedBarrier::sync(256, 2);  // the item's partial stores
  bool by_slot = false;
  if constexpr (Deps::kSlotFinish) by_slot = p.split_by_slot != 0;
  if (mt == 0) {
    // Release (this range's partials, ordered before by the barrier) and, for the last range,
    // acquire (the others'); the barrier below orders the 256 threads' L2 reads after it.
    int64_t const counter = by_slot ? static_cast<int64_t>(slot) * p.n_tiles : item;
    int const arrivals = by_slot ? p.n_tiles * p.k_splits : p.k_splits;
    int const before = sm90_util::atomic_add_acq_rel_gpu(p.split_count + counter, 1);
    bool const last = before == arrivals - 1;
    if (last) p.split_count[counter] = 0;  // every range has counted: leave the workspace clean
    *word = last;
  }
  cutlass::arch::NamedBarrier::sync(256, 2);
  if (*word == 0) return false;  // the same for all 256 threads
  if constexpr (Deps::kSlotFinish) {
    if (by_slot) {
      deps.finish_slot(p, e, slot, row0, rows, mt, warp_amax);
      return false;
    }
  }
  // (a) column mt of every valid row: the ranges in order, into range 0's partial. Columns of an
  // inactive warpgroup (past N) hold nothing and are skipped.
  int const cols = min(256, p.n_prep - n_tile * 256);
  if (mt < cols) {
    for (int row = 0; row < rows; ++row) {
      int const idx = split_image_index(row, mt);
      float sum = 0.0f;
      // Eight loads in flight: the decode shapes that split (dsv3-tp8: 8 ranges) read all their
      // ranges in one L2 round trip (perf-log v0.51; the order of the adds is unchanged).
#pragma unroll 8
      for (int s = 0; s < p.k_splits; ++s) {
        sum += __ldcg(base + static_cast<int64_t>(s) * kSm90Fp8SplitPartialFloats + idx);
      }
      __stcg(base + idx, sum);
    }
  }
  cutlass::arch::NamedBarrier::sync(256, 2);  // range 0's partial now holds the sums
  // (b) this thread's own sums. Every value is redefined (0 for rows past `rows`, which the
  // epilogue never stores, and for an inactive warpgroup): the range's own sums are then dead
  // from their stores on instead of live across (a) (ptxas spilled).
#pragma unroll
  for (int h = 0; h < kHalves; ++h) {
    bool const ok0 = active && 64 * h + r0 < rows;
    bool const ok1 = active && 64 * h + r0 + 8 < rows;
#pragma unroll
    for (int v = 0; v < 64; ++v) {
      total[h][v] = ((v & 2) ? ok1 : ok0) ? __ldcg(base + (h * 64 + v) * 256 + mt) : 0.0f;
    }
  }
  return true;
}

}  // namespace sm90_fp8_detail

/// The body of the pipelined kernel, also run by the fused kernel after its routing phase:
/// GEMM p0, then (num_gemms == 2) GEMM p1 through the same pipeline (the ring, its barriers and
/// its stage/phase carry on; the math warpgroups take each tile's parameters from its tag), with
/// `deps` ordering items across the two (sm90_util::NoPipeDeps: none; the hooks are described
/// there). Both must be the kernel's
/// __grid_constant__ parameter (or members of it): the TMA maps are read in place, and they must
/// have the same a_mode. After the last tile each math thread calls math_done() (the fused
/// kernel's combine); the producer warpgroup returns when its work ends.
template <class Cfg, class MathDone, class Deps = sm90_util::NoPipeDeps>
__device__ __forceinline__ void sm90_fp8_pipelined_body(Sm90Fp8KernelParams const& p0,
                                                        Sm90Fp8KernelParams const& p1,
                                                        int num_gemms, MathDone const& math_done,
                                                        Deps const& deps = Deps{}) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace cute;
  using Barrier = cutlass::arch::ClusterBarrier;
  constexpr int kBlockM = Cfg::kBlockM;
  constexpr int kBlockN = Cfg::kBlockN;
  constexpr int kBlockK = Cfg::kBlockK;
  constexpr int kMaxStages = Cfg::kMaxStages;
  constexpr int kHalves = Cfg::kMHalves;
  Sm90Fp8KernelParams const& p = p0;  // what the GEMMs share: stages, carve-up, a_mode
  int const S = p.num_stages;

  // The 128B swizzle repeats every 1024 bytes: the dynamic window is declared 1024-aligned (as
  // DeepGEMM does; no runtime re-alignment, whose pointer the producer would have to keep in a
  // register or spill). A misaligned window would be a toolchain change: fault, never compute.
  extern __shared__ __align__(1024) uint8_t smem_pipe[];
  if ((static_cast<uint32_t>(__cvta_generic_to_shared(smem_pipe)) & 1023u) != 0) {
    sm90_fp8_detail::fatal_protocol_error();
  }
  // The carve-up, computed again inside each role after its setmaxnreg (the empty asm makes the
  // offsets opaque, the base stays the shared array, so accesses stay LDS/STS): a pointer
  // computed before the role split and live across it gets spilled.
  auto carve = [&](uint8_t*& smem_a, uint8_t*& smem_b, uint8_t*& staging,
                   sm90_fp8_detail::PipeControl<Cfg>*& ctl) {
    uint32_t b_off = static_cast<uint32_t>(S * Cfg::kSmemABytes);
    uint32_t s_off = p.staging_offset;
    uint32_t c_off = p.control_offset;
    asm volatile("" : "+r"(b_off), "+r"(s_off), "+r"(c_off));
    smem_a = smem_pipe;
    smem_b = smem_pipe + b_off;
    staging = smem_pipe + s_off;
    ctl = reinterpret_cast<sm90_fp8_detail::PipeControl<Cfg>*>(smem_pipe + c_off);
  };
  uint8_t* smem_a;
  uint8_t* smem_b;
  uint8_t* staging;
  sm90_fp8_detail::PipeControl<Cfg>* ctl;

  int const warp_group = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    carve(smem_a, smem_b, staging, ctl);
    cute::prefetch_tma_descriptor(&p0.tmap_w);
    if (num_gemms > 1) cute::prefetch_tma_descriptor(&p1.tmap_w);
    if (p0.a_dense) cute::prefetch_tma_descriptor(&p0.tmap_a);
    if (num_gemms > 1 && p1.a_dense) cute::prefetch_tma_descriptor(&p1.tmap_a);
    // full: the 128 producer threads (their copies' completion for e4m3 rows, plus thread 0's
    // arrive.expect_tx) + the TMA's bytes. empty: one arrival per math warp.
    // (dense A: thread 0's arrival alone, the TMA's bytes count the rest)
    uint32_t const full_count = p.a_mode == 2 ? (p.a_dense ? 1u : 129u) : 128u;
    for (int s = 0; s < S; ++s) {
      Barrier::init(&ctl->full[s], full_count);
      Barrier::init(&ctl->empty[s], 4 * Cfg::kNumMathWG);
    }
    for (int b = 0; b < 2; ++b) {
      Barrier::init(&ctl->ep_full[b], 128u);
      Barrier::init(&ctl->ep_free[b], 4u * Cfg::kNumMathWG);
      ctl->deps_pending[b] = 0u;
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  if (warp_group == 0) {
    // ---------------------------------------------------------------- producer warpgroup
    cutlass::arch::warpgroup_reg_dealloc<Cfg::kProducerRegs>();
    carve(smem_a, smem_b, staging, ctl);
    int stage = 0;
    uint32_t phase = 0;
    // One call per GEMM on its own parameter (not a pointer chosen at run time: the 56-register
    // producer addresses each kernel parameter directly).
    auto produce = [&](Sm90Fp8KernelParams const& pg, int g, bool last) {
      if (p.a_mode == 2 && p.a_dense) {  // (p0 and p1 share a_mode and a_dense)
        sm90_fp8_detail::pipe_producer<Cfg, 3>(pg, smem_a, smem_b, staging, ctl, g, last, stage,
                                               phase, deps);
      } else if (Cfg::kE4m3RowsOnly || p.a_mode == 2) {
        sm90_fp8_detail::pipe_producer<Cfg, 2>(pg, smem_a, smem_b, staging, ctl, g, last, stage,
                                               phase, deps);
      } else if (p.a_mode == 0) {
        sm90_fp8_detail::pipe_producer<Cfg, 0>(pg, smem_a, smem_b, staging, ctl, g, last, stage,
                                               phase, deps);
      } else {
        sm90_fp8_detail::pipe_producer<Cfg, 1>(pg, smem_a, smem_b, staging, ctl, g, last, stage,
                                               phase, deps);
      }
    };
    produce(p0, 0, num_gemms == 1);
    if (num_gemms > 1) produce(p1, 1, true);
  } else {
    // ---------------------------------------------------------------- math warpgroups
    cutlass::arch::warpgroup_reg_alloc<Cfg::kMathRegs>();
    carve(smem_a, smem_b, staging, ctl);
    int const mt = threadIdx.x - 128;
    int const wg = mt >> 7;
    int const warp = (mt >> 5) & 3;
    int const lane = mt & 31;

    // (BlockM, 128, stages) and (256, 128, stages) e4m3, K-major, 128B swizzle; the stage count
    // in the layouts is the maximum, the base pointers place the runtime count.
    using SmemLayoutA = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<float_e4m3_t>{},
                                               make_shape(Int<kBlockM>{}, Int<kBlockK>{},
                                                          Int<kMaxStages>{})));
    using SmemLayoutB = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<float_e4m3_t>{},
                                               make_shape(Int<kBlockN>{}, Int<kBlockK>{},
                                                          Int<kMaxStages>{})));
    Tensor sA = make_tensor(make_smem_ptr(reinterpret_cast<float_e4m3_t*>(smem_a)), SmemLayoutA{});
    Tensor sB = make_tensor(make_smem_ptr(reinterpret_cast<float_e4m3_t*>(smem_b)), SmemLayoutB{});
    TiledMMA tiled_mma = make_tiled_mma(SM90_64x128x32_F32E4M3E4M3_SS_TN<>{},
                                        Layout<Shape<_1, Int<Cfg::kNumMathWG>, _1>>{});
    auto thr_mma = tiled_mma.get_thread_slice(mt);
    Tensor tCrA = thr_mma.make_fragment_A(thr_mma.partition_A(sA));  // (MMA, halves, 4, stages)
    Tensor tCrB = thr_mma.make_fragment_B(thr_mma.partition_B(sB));  // (MMA, 1, 4, stages)
    Tensor acc = partition_fragment_C(tiled_mma, Shape<_64, Int<kBlockN>>{});
    Tensor acc_v = acc(_, _0{}, _0{});  // (MMA): the rank of one half's A and B slices
    static_assert(size<1>(decltype(tCrA){}) == kHalves, "one m64 wgmma row block per half");
    static_assert(size<2>(decltype(tCrA){}) == kBlockK / 32, "four k32 wgmma per K block");
    static_assert(size(decltype(acc){}) == 64, "one m64n128 fp32 accumulator per thread");
    float total[kHalves][64];

    // A written by cp.async (generic proxy); dense A arrives by TMA (async proxy): no fence
    bool const copy_filled = p.a_mode == 2 && !p.a_dense;
    int stage = 0;
    uint32_t phase = 0;
    for (;;) {
      sm90_fp8_detail::wait_barrier(&ctl->full[stage], phase);
      int4 const tile = ctl->tile[stage];
      if (tile.x < 0) break;
      int const tag = ctl->tile_tag[stage];
      if (mt == 0) sm90_fp8_detail::pipe_stamp<Cfg>(p0, 3);
      // The tile, on its GEMM's parameter: one copy of the loop per GEMM, each addressing its
      // kernel parameter directly (a pointer chosen at run time cost ptxas a spill).
      // kGemm: which GEMM, known at compile time in each copy (only the first splits K).
      // always_inline: with the epilogue's store path ptxas outlined the lambda in the fused
      // kernel and moved the 128 sums to a 1 KB stack frame.
      auto run_tile = [&](Sm90Fp8KernelParams const& p, auto gemm_constant)
                          __attribute__((always_inline)) {
      constexpr int kGemm = decltype(gemm_constant)::value;
      // (GEMM 1 of the body is the FFN's down projection: plain, so its copy of the epilogue
      // has no gate/up code.)
      bool const gate_up = kGemm == 0 && p.epilogue != static_cast<int32_t>(Fp8Epilogue::kPlain);
      int const e = tile.x;
      int const row0 = tile.y;
      int const rows = tile.z;
      int const n_tile = tile.w;
      int const halves = (kHalves == 2 && rows > 64) ? 2 : 1;  // 64-row halves holding rows
      int const chunk128 = n_tile * Cfg::kNumMathWG + wg;
      bool const active = chunk128 * 128 < p.n_prep;
      int2 const scale_rows = sm90_fp8_detail::block_scale_rows(p, e, chunk128, gate_up);
      // The tile's K blocks: all, or its range (split-K) -- as a count down and block-scale
      // indices that move along (no extra live register in the K loop: the 224-register math
      // warpgroups spilled with a [kb0, kb1) loop).
      int const kb0 = sm90_fp8_detail::tag_split(tag) * p.kb_per_split;
      int left = min(p.num_kb - kb0, p.kb_per_split);
      int32_t scale_lo = scale_rows.x + kb0;
      int32_t scale_hi = scale_rows.y + kb0;
#pragma unroll
      for (int h = 0; h < kHalves; ++h) {
#pragma unroll
        for (int v = 0; v < 64; ++v) total[h][v] = 0.0f;
      }
      // The first wgmma of each K block overwrites the accumulator (ScaleOut::Zero), but the
      // operand fences read it: defined here, the previous tile's values are dead from their
      // last promotion on, which frees 64 registers for the epilogue and deps.item_done.
#pragma unroll
      for (int v = 0; v < size(acc); ++v) acc(v) = 0.0f;

      // Two K blocks per promotion (promote_kb, v0.34): 128-row items take their stages two at a
      // time, stage and stage + 1 (same phase). The host enables it only where the ring has an
      // even stage count and every tile an even count of K blocks (check_sm90_fp8_grouped_gemm),
      // so every tile starts at an even stage and a pair never wraps: the pairs are K blocks
      // (kb0, kb0 + 1), (kb0 + 2, kb0 + 3), ... whatever the CTA ran before -- the same bits in
      // every run. A tile that starts elsewhere is a broken contract: stop, never compute.
      // (promote_kb is read per tile through a volatile load: hoisted out of the tile loop, the
      // launch-wide value stayed live across the epilogue and ptxas spilled a register.)
      int promote_kb = 1;
      asm volatile("ld.s32 %0, [%1];" : "=r"(promote_kb) : "l"(&p.promote_kb));
      bool const pair_kb = kHalves == 2 && halves == 2 && promote_kb == 2;
      if (pair_kb && ((stage | S) & 1) != 0) sm90_fp8_detail::fatal_protocol_error();
      for (;;) {  // the first stage's barrier was waited on with the tile
        float s_lo = 1.0f;
        float s_hi = 1.0f;
        if (p.scale_block && active) {
          s_lo = __ldg(p.w_scales + scale_lo);
          s_hi = __ldg(p.w_scales + scale_hi);
        }
        bool const two = pair_kb && left >= 2;
        if (two) sm90_fp8_detail::wait_barrier(&ctl->full[stage + 1], phase);
        int const used = two ? 2 : 1;
        if (copy_filled) cutlass::arch::fence_view_async_shared();
        if (active) {
#pragma unroll
          for (int h = 0; h < kHalves; ++h) {
            if (h < halves) {
              tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
              // One batch per stage (a pair: two, into the same accumulator). Not unrolled: one
              // set of descriptor registers (unrolled, the pair's second set spilled).
#pragma unroll 1
              for (int j = 0; j < used; ++j) {
                warpgroup_fence_operand(acc);
                warpgroup_arrive();
#pragma unroll
                for (int k = 0; k < size<2>(tCrA); ++k) {
                  cute::gemm(tiled_mma, tCrA(_, h, k, stage + j), tCrB(_, _0{}, k, stage + j),
                             acc_v);
                  tiled_mma.accumulate_ = GMMA::ScaleOut::One;
                }
                warpgroup_commit_batch();
              }
              warpgroup_wait<0>();
              warpgroup_fence_operand(acc);
              // The stage's last reads are complete: hand it back before promoting.
              if (h + 1 == halves && lane == 0) {
                sm90_fp8_detail::arrive_barrier(&ctl->empty[stage]);
                if (two) sm90_fp8_detail::arrive_barrier(&ctl->empty[stage + 1]);
              }
#pragma unroll
              for (int v = 0; v < 64; ++v) {
                total[h][v] = fmaf(acc(v), v < 32 ? s_lo : s_hi, total[h][v]);
              }
            }
          }
        } else if (lane == 0) {
          sm90_fp8_detail::arrive_barrier(&ctl->empty[stage]);
          if (two) sm90_fp8_detail::arrive_barrier(&ctl->empty[stage + 1]);
        }
        stage += used;
        if (stage == S) {
          stage = 0;
          phase ^= 1;
        }
        left -= used;
        if (left == 0) break;
        ++scale_lo;
        ++scale_hi;
        sm90_fp8_detail::wait_barrier(&ctl->full[stage], phase);
      }
      if (mt == 0) {
        sm90_fp8_detail::pipe_stamp<Cfg>(p, 4);
        sm90_fp8_detail::pipe_stamp_first<Cfg>(p, 11);
        if (Cfg::kTimeline && kGemm == 0 && p.timeline != nullptr) {  // GEMM 0: count, last K
          uint64_t* const row = p.timeline + static_cast<int64_t>(blockIdx.x) * p.timeline_stride;
          atomicAdd(reinterpret_cast<unsigned long long*>(row + 14), 1ull);
          sm90_fp8_detail::pipe_stamp<Cfg>(p, 15);
        }
      }
      // Split-K: only the CTA that completes the item's last K range goes on, with the sum.
      bool const finish = !(kGemm == 0 && p.k_splits > 1) ||
                          sm90_fp8_detail::split_k_reduce<kHalves>(p, total, tag, e, n_tile,
                                                                   row0, rows, active, mt,
                                                                   &ctl->deps_word, ctl->deps_amax,
                                                                   deps);
      if (mt == 0) sm90_fp8_detail::pipe_stamp_first<Cfg>(p, 12);
      // With channel scales every tile uses one buffer of them, read or not: wait for it only
      // to read it, hand it back in any case (the producer refills it two tiles later).
      // (The tag made opaque here: ptxas hoisted the buffer index to the tile's start and spilled
      // it across the K loop.)
      int ept = sm90_fp8_detail::tag_ep(tag);
      asm volatile("" : "+r"(ept));
      int const epb = ept & 1;
      bool const channel = !p.scale_block;
      if (finish && active) {
        if (channel) sm90_fp8_detail::wait_barrier(&ctl->ep_full[epb], ept >> 1);
        sm90_fp8_detail::EpScalesShared<Cfg> const ep{ctl, epb, wg};
#pragma unroll
        for (int h = 0; h < kHalves; ++h) {
          if (h < halves) {
            sm90_fp8_detail::pipe_epilogue(p, total[h], e, row0, rows, 64 * h, chunk128, warp,
                                           lane, gate_up, ep);
          }
        }
      }
      if (channel) {
        __syncwarp();
        if (lane == 0) sm90_fp8_detail::arrive_barrier(&ctl->ep_free[epb]);
      }
      if (!finish) return;
      if (mt == 0) sm90_fp8_detail::pipe_stamp<Cfg>(p, 5);
      if constexpr (Deps::kActive) {
        deps.item_done(kGemm, sm90_fp8_detail::tag_slot(tag), row0, rows, mt,
                       &ctl->deps_word);
        deps.item_stored(kGemm, n_tile, mt, ctl->deps_pending);
      }
      };
      if (sm90_fp8_detail::tag_gemm(tag)) {
        run_tile(p1, cute::Int<1>{});
      } else {
        run_tile(p0, cute::Int<0>{});
      }
    }
    if constexpr (Deps::kActive) deps.after_tiles(mt, ctl->deps_pending);
    math_done();
  }
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    sm90_fp8_pipelined_kernel(__grid_constant__ Sm90Fp8KernelParams const p) {
  sm90_fp8_pipelined_body<Cfg>(p, p, 1, sm90_util::NoMathDone{});
}


}  // namespace flashmoe::gemm
