// flashmoe (internal): the sm_90a bf16/fp16 gathered grouped GEMM kernel (sm90_grouped_gemm.h
// says what it computes).
//
// Why it exists (docs/perf-log.md): on the dsv3 shape the sm_80 mma.sync kernel's gate/up GEMM is
// bound by L2 throughput (ncu: L2 96.9%, DRAM 54.7%) and streams its weights at ~0.6 of copy; the
// FP8 kernel's producer, copying token rows with cp.async straight into the swizzled stage and
// the weights with TMA, streamed the same shapes at 0.95-1.02 of copy. This kernel is that
// producer and the FP8 kernel's persistent schedule with 16-bit operands: no conversion anywhere,
// HGMMA instead of QGMMA, and the accumulator kept over the whole K (no promotion: bf16/fp16
// products are exact in fp32 and the wgmma accumulates in fp32).
//
// One persistent grid (one CTA per SM) takes work items  item = m_slot * n_tiles + n_tile  from
// a global counter (N fastest: the CTAs of one M tile run side by side, so its gathered rows are
// read from L2 while hot); the last CTA out resets the counter. A work item is a 128-row M tile
// (the routing's tile list, tile_m = 128) times 256 weight columns.
//
// Warp specialisation, 3 warpgroups (384 threads):
//   WG 0, producer (setmaxnreg 40): thread 0 takes the work items and issues, per 64-wide K block,
//        four TMA loads of 64 weight columns x 64 k (128B swizzle, OOB zero-filled) -- plain: the
//        CTA's 256 consecutive columns; gate-up: for math warpgroup w, the gate columns
//        [64 c, 64 c + 64) and the matching up columns [I + 64 c, ...), c = 2 n_tile + w, so each
//        warpgroup's accumulator holds gate and up of the same 64 outputs. All 128 threads copy the
//        stage's A rows by cp.async (16 bytes = 8 elements, row r at r * 128 bytes, chunk c at
//        c ^ (r % 8)): exactly the layout of CuTe's K-major SW128 atom. Completion: each thread's
//        cp.async.mbarrier.arrive.noinc plus thread 0's arrive.expect_tx (129 arrivals + the TMA
//        bytes). The next item is resolved at K block 1 and its row indices loaded at K block 2,
//        into the other slot of two-slot rings, so a tile boundary costs one named barrier.
//   WG 1, 2, math (setmaxnreg 232): warpgroup w owns 128 weight columns; per K block and per
//        64-row half holding rows, four m64n128k16 wgmma into that half's accumulator (2 x 64 fp32
//        per thread), one batch in flight: the stage of the previous K block is released when the
//        current batch is issued and the previous one has completed (wgmma.wait_group 1).
//        Epilogue from registers (rows past the tile's `rows` are never stored; those rows of A
//        were never written this tile, so their accumulators hold garbage that stays there).
//
// B in either layout: kOutIn [E, n, k] is K-major in shared memory (CuTe Layout_K_SW128); kInOut
// [E, k, n] is MN-major (Layout_MN_SW128 tiled K first, so each TMA box of 64 columns is one 8 KB
// block) and the wgmma reads it transposed (the 16-bit wgmma takes MN-major B from shared memory).
//
// Shared memory (1024-byte aligned): sA [4][128 rows][128 B] = 64 KB, sB [4][256 x 64 x 2 B] =
// 128 KB, control (barriers, tile ring, row-index ring) < 2 KB.
#pragma once

#include <cuda.h>  // CUtensorMap (type only)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include <cute/arch/copy_sm90_desc.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "gemm/grouped_gemm_args.h"
#include "gemm/sm90_device_util.cuh"
#include "gemm/sm90_grouped_gemm.h"

namespace flashmoe::gemm {

/// The compiled configuration: element type (bf16 / fp16) and B's shared-memory major-ness.
template <class Element_, bool kMnMajorB_>
struct Sm90GemmTile {
  using Element = Element_;                         // cute::bfloat16_t or cute::half_t
  static constexpr bool kMnMajorB = kMnMajorB_;     // true: B is [E, k, n] (kInOut)
  static constexpr int kBlockM = kSm90GemmBlockM;   // 128 rows = two m64 halves
  static constexpr int kBlockN = kSm90GemmBlockN;   // 256 columns = two math warpgroups x 128
  static constexpr int kBlockK = 64;                // elements: one 128-byte swizzle row
  static constexpr int kBoxCols = 64;               // weight columns per TMA box
  static constexpr int kNumBoxes = kBlockN / kBoxCols;
  static constexpr int kNumMathWG = 2;
  static constexpr int kStages = 4;
  static constexpr int kThreads = 128 * (1 + kNumMathWG);
  // setmaxnreg: 168 x 384 registers are allocated at launch; 40 x 128 + 232 x 256 fits them.
  static constexpr int kProducerRegs = 40;
  static constexpr int kMathRegs = 232;
  static constexpr int kSmemABytes = kBlockM * kBlockK * 2;
  static constexpr int kSmemBBytes = kBlockN * kBlockK * 2;
  static constexpr int kBoxBytes = kBoxCols * kBlockK * 2;
  static_assert(kProducerRegs * 128 + kMathRegs * 256 <= 168 * kThreads, "setmaxnreg budget");
};

/// The kernel's parameters (by value, __grid_constant__: the TMA map is read in place).
struct Sm90GemmKernelParams {
  CUtensorMap tmap_b;            // B as a 3-D uint16 tensor, box 64 x 64 (see the launcher)
  void const* a;
  int32_t const* a_rows;         // nullptr: row r reads A row r
  void* c;
  TileInfo const* tiles;
  int32_t* scheduler;            // [0] next work item, [1] CTAs done
  uint32_t* clear_on_done;       // null, or a word zeroed with the queue (Sm90Fp8KernelParams)
  int64_t a_row_stride;          // elements (= k)
  int64_t c_row_stride;          // elements (= n_out)
  int32_t num_tile_slots;
  int32_t n_tiles;
  int32_t k;
  int32_t num_kb;                // ceil(k / 64)
  int32_t n_out;
  int32_t gate_up;
  int32_t activation;            // Activation
  int32_t out_dtype;             // 1 bf16, 2 fp16 (sm90_util::store_pair)
  // The one-kernel forward's atomic combine (MoeProblem::deterministic false; plain epilogue of
  // the last GEMM): dense row r's values, times row_weight[r], are added into the token's row
  // row_token[r] of combine_out (T x n_out) instead of being stored at row r of c.
  void* combine_out;
  int32_t const* row_token;
  float const* row_weight;
  int32_t out_vec8;              // c's rows are 8-byte aligned: the plain epilogue's 8-byte stores
};

/// The kernel parameters of one GEMM (shapes checked, B's TMA map encoded); host code, shared by
/// the GEMM's launcher and the fused bf16/fp16 forward.
Status sm90_gemm_kernel_params(GroupedGemmArgs const& args, DType dtype, WeightLayout layout,
                               bool gate_up, int32_t* scheduler, Sm90GemmKernelParams* out);

namespace sm90_gemm_detail {

using namespace sm90_util;

template <class Cfg>
struct Control {
  uint64_t full[Cfg::kStages];   // 128 cp.async arrivals + thread 0's arrive.expect_tx + TMA bytes
  uint64_t empty[Cfg::kStages];  // one arrival per math warp
  int4 tile[Cfg::kStages];       // (expert, row0, rows, n_tile) of the tile starting in a stage
  int32_t tile_tag[Cfg::kStages];  // its GEMM of the body (bit 0) and m slot (bits 1+)
  int4 next[2];                  // thread 0 -> producer warpgroup: the next tile (two slots)
  int32_t next_slot[2];          // the m slot of next[i]
  int32_t deps_word;             // the math warpgroups' broadcast word (NoPipeDeps::item_done)
  int32_t src[2][Cfg::kBlockM];  // source row of each row of a tile (two slots)
};

/// The tile of work item `item` (n_tile in .w) and its m slot; expert -1 past the last tile.
__device__ __forceinline__ int4 resolve_item(Sm90GemmKernelParams const& p, int item,
                                            int& slot_out) {
  int4 const none = make_int4(-1, 0, 0, 0);
  int const slot = item / p.n_tiles;
  if (slot >= p.num_tile_slots) return none;
  int4 tile = __ldg(reinterpret_cast<int4 const*>(p.tiles + slot));
  if (tile.x < 0) return none;
  tile.w = item - slot * p.n_tiles;
  slot_out = slot;
  return tile;
}

/// The producer warpgroup for GEMM `gemm` (0 or 1) of the body: stage and phase carry the ring's
/// position from one GEMM to the next; `last`: after its items, the end marker.
template <class Cfg, class Deps>
__device__ __forceinline__ void producer(Sm90GemmKernelParams const& p, uint8_t* smem_a,
                                         uint8_t* smem_b, Control<Cfg>* ctl, int gemm, bool last,
                                         int& stage, uint32_t& phase, Deps const& deps) {
  using TxBarrier = cutlass::arch::ClusterTransactionBarrier;
  int const pt = threadIdx.x;  // 0..127
  int const chunk = pt & 7;    // 16-byte chunk of the 128-byte K block
  int const rb = pt >> 3;      // this thread's rows: rb + 16 i, i < 8 (row % 8 == rb % 8)
  uint32_t const sw = rb * 128 + ((chunk ^ (rb & 7)) << 4);
  uint32_t const sa_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem_a));
  char const* const a = static_cast<char const*>(p.a);

  int cand = 0;
  if (pt == 0) cand = atomicAdd(p.scheduler, 1);

  auto load_rows = [&](int4 const& t, int slot) {
    if (t.x >= 0 && pt < t.z) {
      int const dense = t.y + pt;
      ctl->src[slot][pt] = p.a_rows != nullptr ? __ldg(p.a_rows + dense) : dense;
    }
  };
  // Thread 0: the next tile into ctl->next[slot], and the item after it taken from the queue
  // (its atomic completes while a whole tile streams) -- none when the queue holds no more items
  // than there are CTAs: the first takes cover them, and a second take could beat a later CTA's
  // first one (the FP8 body's resolve_next says why that costs).
  auto resolve_next = [&](int slot) {
    if (pt == 0) {
      int m_slot = 0;
      int4 const next = resolve_item(p, cand, m_slot);
      if (next.z > Cfg::kBlockM) fatal_protocol_error();  // a tile list with tile_m != 128
      ctl->next[slot] = next;
      ctl->next_slot[slot] = m_slot;
      bool const one_pass = static_cast<int64_t>(p.num_tile_slots) * p.n_tiles <= gridDim.x;
      if (next.x >= 0) cand = one_pass ? INT32_MAX : atomicAdd(p.scheduler, 1);
    }
  };
  // Thread 0, before the producer barrier that releases the copies of the item in next[slot].
  auto wait_deps = [&](int slot) {
    if constexpr (Deps::kActive) {
      if (pt == 0 && ctl->next[slot].x >= 0) deps.wait_rows(gemm, ctl->next_slot[slot]);
    }
  };

  // The first tile: resolved and its rows loaded before any copy. (After a previous GEMM of the
  // body, the barrier first: a lagging thread may still read ctl->next of its last boundary.)
  int meta = 0;  // ring slot of the current tile (its ctl->next and ctl->src)
  if (gemm > 0) producer_sync();
  resolve_next(meta);
  producer_sync();
  int4 tile = ctl->next[meta];
  load_rows(tile, meta);
  wait_deps(meta);
  producer_sync();

  while (tile.x >= 0) {
    int const rows = tile.z;
    for (int kb = 0; kb < p.num_kb; ++kb) {
      wait_barrier(&ctl->empty[stage], phase ^ 1);
      int const k0 = kb * Cfg::kBlockK;
      if (pt == 0) {
        if (kb == 0) {  // released by the arrival below
          ctl->tile[stage] = tile;
          ctl->tile_tag[stage] = gemm | (ctl->next_slot[meta] << 1);
        }
        compiler_fence();
        TxBarrier::arrive_and_expect_tx(&ctl->full[stage], Cfg::kSmemBBytes);
        uint8_t* const dst = smem_b + stage * Cfg::kSmemBBytes;
#pragma unroll
        for (int j = 0; j < Cfg::kNumBoxes; ++j) {
          int const n0 = p.gate_up ? (j & 1) * p.n_out + Cfg::kBoxCols * (2 * tile.w + (j >> 1))
                                   : tile.w * Cfg::kBlockN + Cfg::kBoxCols * j;
          if constexpr (Cfg::kMnMajorB) {
            cute::SM90_TMA_LOAD_3D::copy(&p.tmap_b, &ctl->full[stage], 0,
                                         dst + j * Cfg::kBoxBytes, n0, k0, tile.x);
          } else {
            cute::SM90_TMA_LOAD_3D::copy(&p.tmap_b, &ctl->full[stage], 0,
                                         dst + j * Cfg::kBoxBytes, k0, n0, tile.x);
          }
        }
      }
      int const k = k0 + chunk * 8;
      bool const k_ok = k < p.k;  // k % 8 == 0: a chunk is all in or all out (zero-filled)
      uint32_t const dst = sa_base + stage * Cfg::kSmemABytes + sw;
#pragma unroll
      for (int i = 0; i < Cfg::kBlockM / 16; ++i) {
        int const row = rb + 16 * i;
        if (row < rows) {
          int const src = ctl->src[meta][row];
          char const* g = a + (static_cast<int64_t>(src) * p.a_row_stride + (k_ok ? k : 0)) * 2;
          cp_async_16(dst + i * 2048, g, k_ok ? 16 : 0, false);
        }
      }
      cp_async_arrive_noinc(&ctl->full[stage]);
      if (++stage == Cfg::kStages) {
        stage = 0;
        phase ^= 1;
      }
      if (kb == 1) resolve_next(meta ^ 1);
      if (kb == 2) {
        producer_sync();  // ctl->next[meta ^ 1] written
        load_rows(ctl->next[meta ^ 1], meta ^ 1);
      }
    }
    if (p.num_kb <= 2) {  // short K: the same at the boundary
      if (p.num_kb <= 1) resolve_next(meta ^ 1);
      producer_sync();
      load_rows(ctl->next[meta ^ 1], meta ^ 1);
    }
    wait_deps(meta ^ 1);
    producer_sync();  // the next tile's rows are visible (and, after wait_deps, its A rows)
    meta ^= 1;
    tile = ctl->next[meta];  // rewritten two tiles from now, after several barriers
  }

  // ---- the end marker: one more stage whose tile says expert -1
  if (last) {
    wait_barrier(&ctl->empty[stage], phase ^ 1);
    if (pt == 0) ctl->tile[stage] = make_int4(-1, 0, 0, 0);
    arrive_barrier(&ctl->full[stage]);
    if (pt == 0) arrive_barrier(&ctl->full[stage]);  // the 129th arrival
  }
  if (pt == 0 && atomicAdd(p.scheduler + 1, 1) == static_cast<int>(gridDim.x) - 1) {
    // Every CTA has taken its last item: leave the queue zero for the next launch.
    __threadfence();
    p.scheduler[0] = 0;
    p.scheduler[1] = 0;
    if (p.clear_on_done != nullptr) *p.clear_on_done = 0u;
  }
}

/// Stores one 64-row half of a math warpgroup's accumulator (`acc` holds v = i0 + 2 i1 + 4 j:
/// row 16 warp + lane/4 + 8 i1, column 8 j + 2 (lane % 4) + i0 of the warpgroup's 64 x 128).
template <class Acc>
__device__ __forceinline__ void epilogue(Sm90GemmKernelParams const& p, Acc const& acc, int row0,
                                         int rows, int half_row, int n_tile, int wg, int warp,
                                         int lane) {
  int const r0 = half_row + 16 * warp + (lane >> 2);
  int const c0 = 2 * (lane & 3);
  int const col0 = n_tile * 256 + 128 * wg;
#pragma unroll
  for (int i1 = 0; i1 < 2; ++i1) {
    int const r = r0 + 8 * i1;
    if (!p.gate_up && p.combine_out == nullptr && p.out_vec8 && col0 + 128 <= p.n_out) {
      // 8-byte stores (store_quad_pair; every lane takes part in its shuffles, rows past the
      // tile's only skip the store). Warp-uniform condition.
      int64_t const out_row = static_cast<int64_t>(row0 + r) * p.c_row_stride + col0;
#pragma unroll
      for (int m = 0; m < 8; ++m) {
        uint32_t const w0 = pack_pair(p.out_dtype, acc(8 * m + 2 * i1), acc(8 * m + 2 * i1 + 1));
        uint32_t const w1 =
            pack_pair(p.out_dtype, acc(8 * m + 4 + 2 * i1), acc(8 * m + 4 + 2 * i1 + 1));
        store_quad_pair(p.c, out_row + 16 * m, w0, w1, r < rows);
      }
      continue;
    }
    if (r >= rows) continue;
    int64_t out_row = static_cast<int64_t>(row0 + r) * p.c_row_stride;
    if (!p.gate_up) {
      if (p.combine_out != nullptr) {  // the row's weight and its token's output row
        float const w = __ldcg(p.row_weight + row0 + r);
        out_row = static_cast<int64_t>(__ldcg(p.row_token + row0 + r)) * p.c_row_stride;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          int const n = col0 + 8 * j + c0;
          if (n < p.n_out) {
            add_pair_atomic(p.combine_out, p.out_dtype, out_row + n, w * acc(4 * j + 2 * i1),
                            w * acc(4 * j + 2 * i1 + 1));
          }
        }
        continue;
      }
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        int const n = col0 + 8 * j + c0;
        if (n < p.n_out) {
          store_pair(p.c, p.out_dtype, out_row + n, acc(4 * j + 2 * i1), acc(4 * j + 2 * i1 + 1));
        }
      }
    } else {
      bool const use_gelu = p.activation == static_cast<int32_t>(Activation::kGelu);
      int const h0 = 64 * (2 * n_tile + wg);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        int const h = h0 + 8 * j + c0;
        if (h < p.n_out) {
          float const g0 = acc(4 * j + 2 * i1);
          float const g1 = acc(4 * j + 2 * i1 + 1);
          float const u0 = acc(32 + 4 * j + 2 * i1);
          float const u1 = acc(32 + 4 * j + 2 * i1 + 1);
          float const a0 = use_gelu ? gelu(g0) : silu(g0);
          float const a1 = use_gelu ? gelu(g1) : silu(g1);
          store_pair(p.c, p.out_dtype, out_row + h, a0 * u0, a1 * u1);
        }
      }
    }
  }
}

/// The math warpgroups: each tile on its GEMM's parameter (from the tile's tag), then, after the
/// end marker, math_done(). kMaxGemms 1: only GEMM p0's copy of the tile loop is compiled.
template <class Cfg, int kMaxGemms, class MathDone, class Deps>
__device__ __forceinline__ void consumer(Sm90GemmKernelParams const& p0,
                                         Sm90GemmKernelParams const& p1, uint8_t* smem_a,
                                         uint8_t* smem_b, Control<Cfg>* ctl,
                                         MathDone const& math_done, Deps const& deps) {
  using namespace cute;
  using T = typename Cfg::Element;
  constexpr int kStages = Cfg::kStages;
  int const mt = threadIdx.x - 128;  // 0..255
  int const wg = mt >> 7;
  int const warp = (mt >> 5) & 3;
  int const lane = mt & 31;

  using SmemLayoutA = decltype(tile_to_shape(
      GMMA::Layout_K_SW128_Atom<T>{},
      make_shape(Int<Cfg::kBlockM>{}, Int<Cfg::kBlockK>{}, Int<kStages>{})));
  using SmemLayoutB = std::conditional_t<
      Cfg::kMnMajorB,
      decltype(tile_to_shape(GMMA::Layout_MN_SW128_Atom<T>{},
                             make_shape(Int<Cfg::kBlockN>{}, Int<Cfg::kBlockK>{}, Int<kStages>{}),
                             Step<_2, _1, _3>{})),
      decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<T>{},
                             make_shape(Int<Cfg::kBlockN>{}, Int<Cfg::kBlockK>{}, Int<kStages>{})))>;
  constexpr GMMA::Major kMajorB = Cfg::kMnMajorB ? GMMA::Major::MN : GMMA::Major::K;
  using Atom = std::conditional_t<std::is_same_v<T, cute::bfloat16_t>,
                                  SM90_64x128x16_F32BF16BF16_SS<GMMA::Major::K, kMajorB>,
                                  SM90_64x128x16_F32F16F16_SS<GMMA::Major::K, kMajorB>>;

  Tensor sA = make_tensor(make_smem_ptr(reinterpret_cast<T*>(smem_a)), SmemLayoutA{});
  Tensor sB = make_tensor(make_smem_ptr(reinterpret_cast<T*>(smem_b)), SmemLayoutB{});
  TiledMMA tiled_mma = make_tiled_mma(Atom{}, Layout<Shape<_1, Int<Cfg::kNumMathWG>, _1>>{});
  auto thr_mma = tiled_mma.get_thread_slice(mt);
  Tensor tCrA = thr_mma.make_fragment_A(thr_mma.partition_A(sA));  // (MMA, 2, 4, stages)
  Tensor tCrB = thr_mma.make_fragment_B(thr_mma.partition_B(sB));  // (MMA, 1, 4, stages)
  Tensor acc = partition_fragment_C(tiled_mma, Shape<Int<Cfg::kBlockM>, Int<Cfg::kBlockN>>{});
  static_assert(size<1>(decltype(tCrA){}) == 2, "two m64 halves");
  static_assert(size<2>(decltype(tCrA){}) == Cfg::kBlockK / 16, "four k16 wgmma per K block");
  static_assert(size<1>(decltype(tCrB){}) == 1, "one n128 slice per warpgroup");
  static_assert(size(decltype(acc){}) == 128, "two m64n128 fp32 accumulators per thread");

  int stage = 0;
  uint32_t phase = 0;
  // The wgmma of one K block, both 64-row halves; the previous block's batch is complete on
  // return (one batch stays in flight).
  auto issue_batch = [&](int kb) {
    constexpr int kHalves = 2;
    warpgroup_fence_operand(acc);
    warpgroup_arrive();
#pragma unroll
    for (int h = 0; h < kHalves; ++h) {
      tiled_mma.accumulate_ = kb == 0 ? GMMA::ScaleOut::Zero : GMMA::ScaleOut::One;
#pragma unroll
      for (int k = 0; k < size<2>(tCrA); ++k) {
        cute::gemm(tiled_mma, tCrA(_, h, k, stage), tCrB(_, _0{}, k, stage), acc(_, h, _0{}));
        tiled_mma.accumulate_ = GMMA::ScaleOut::One;
      }
    }
    warpgroup_commit_batch();
    warpgroup_wait<1>();
    warpgroup_fence_operand(acc);
  };
  for (;;) {
    wait_barrier(&ctl->full[stage], phase);
    int4 const tile = ctl->tile[stage];
    if (tile.x < 0) break;
    int const tag = ctl->tile_tag[stage];
    // The tile on its GEMM's parameter: one copy of the loop per GEMM, each addressing its
    // kernel parameter directly (kGemm known at compile time in each copy).
    auto run_tile = [&](Sm90GemmKernelParams const& p, auto gemm_constant) {
      constexpr int kGemm = decltype(gemm_constant)::value;
      int const row0 = tile.y;
      int const rows = tile.z;
      int const n_tile = tile.w;
      int const halves = rows > 64 ? 2 : 1;  // halves holding rows (the epilogue's)
      int const first_col = p.gate_up ? 64 * (2 * n_tile + wg) : n_tile * 256 + 128 * wg;
      bool const active = first_col < p.n_out;  // else every column is padding: nothing to store

      int prev = -1;  // the stage of the previous K block, released once its batch completed
      for (int kb = 0; kb < p.num_kb; ++kb) {
        if (kb > 0) wait_barrier(&ctl->full[stage], phase);
        cutlass::arch::fence_view_async_shared();  // A landed by cp.async (generic proxy)
        // Always both halves, and also in a warpgroup whose columns are all padding: a branch
        // around the batch (on the tile's rows or columns) with a batch in flight across it makes
        // ptxas serialize the wgmma (C7518/C7520). A tile of <= 64 rows computes its second half
        // on stale rows that are never stored; the tensor cores have the time (~0.6 us of MMA
        // per ~2 us stage of weight bytes at copy speed).
        issue_batch(kb);
        if (prev >= 0 && lane == 0) arrive_barrier(&ctl->empty[prev]);
        prev = stage;
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc);
      if (prev >= 0 && lane == 0) arrive_barrier(&ctl->empty[prev]);
      if (active) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (h < halves) {
            epilogue(p, acc(_, h, _0{}), row0, rows, 64 * h, n_tile, wg, warp, lane);
          }
        }
      }
      if constexpr (Deps::kActive) {
        deps.item_done(kGemm, tag >> 1, row0, rows, mt, &ctl->deps_word);
      }
    };
    if constexpr (kMaxGemms > 1) {
      if (tag & 1) {
        run_tile(p1, cute::Int<1>{});
        continue;
      }
    }
    run_tile(p0, cute::Int<0>{});
  }
  math_done();
}

}  // namespace sm90_gemm_detail

/// The body of the GEMM kernel, also run by the fused bf16/fp16 kernel after its routing phase:
/// GEMM p0, then (num_gemms == 2) GEMM p1 through the same pipeline (the ring and its barriers
/// carry on; the math warpgroups take each tile's parameters from its tag), with `deps` ordering
/// items across the two (sm90_util::NoPipeDeps: none). Both must be the kernel's __grid_constant__
/// parameter (or members of it): the TMA maps are read in place. After the last tile each math
/// thread calls math_done() (the fused kernel's combine); the producer warpgroup returns when its
/// work ends. kMaxGemms: 1 compiles one GEMM's code only (num_gemms must then be 1), 2 both (the
/// math warpgroups' tile loop twice: a larger instruction footprint).
template <class Cfg, int kMaxGemms, class MathDone, class Deps = sm90_util::NoPipeDeps>
__device__ __forceinline__ void sm90_gemm_body(Sm90GemmKernelParams const& p0,
                                               Sm90GemmKernelParams const& p1, int num_gemms,
                                               MathDone const& math_done,
                                               Deps const& deps = Deps{}) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Barrier = cutlass::arch::ClusterBarrier;
  using Control = sm90_gemm_detail::Control<Cfg>;
  // The 128B swizzle repeats every 1024 bytes: the window is declared 1024-aligned; a misaligned
  // one would be a toolchain change: fault, never compute.
  extern __shared__ __align__(1024) uint8_t smem_gemm[];
  if ((static_cast<uint32_t>(__cvta_generic_to_shared(smem_gemm)) & 1023u) != 0) {
    sm90_util::fatal_protocol_error();
  }
  uint8_t* const smem_a = smem_gemm;
  uint8_t* const smem_b = smem_gemm + Cfg::kStages * Cfg::kSmemABytes;
  Control* const ctl = reinterpret_cast<Control*>(
      smem_gemm + Cfg::kStages * (Cfg::kSmemABytes + Cfg::kSmemBBytes));

  if (threadIdx.x == 0) {
    cute::prefetch_tma_descriptor(&p0.tmap_b);
    if (kMaxGemms > 1 && num_gemms > 1) cute::prefetch_tma_descriptor(&p1.tmap_b);
    for (int s = 0; s < Cfg::kStages; ++s) {
      Barrier::init(&ctl->full[s], 129);
      Barrier::init(&ctl->empty[s], 4 * Cfg::kNumMathWG);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x < 128) {
    cutlass::arch::warpgroup_reg_dealloc<Cfg::kProducerRegs>();
    int stage = 0;
    uint32_t phase = 0;
    sm90_gemm_detail::producer<Cfg>(p0, smem_a, smem_b, ctl, 0, num_gemms == 1, stage, phase,
                                    deps);
    if (kMaxGemms > 1 && num_gemms > 1) {
      sm90_gemm_detail::producer<Cfg>(p1, smem_a, smem_b, ctl, 1, true, stage, phase, deps);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Cfg::kMathRegs>();
    sm90_gemm_detail::consumer<Cfg, kMaxGemms>(p0, p1, smem_a, smem_b, ctl, math_done, deps);
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // no sm_90a code in this build (the launchers refuse before getting here)
#endif
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    sm90_grouped_gemm_kernel(__grid_constant__ Sm90GemmKernelParams const p) {
  sm90_gemm_body<Cfg, 1>(p, p, 1, sm90_util::NoMathDone{});
}

/// Dynamic shared memory of one CTA.
template <class Cfg>
constexpr int sm90_gemm_smem_bytes() {
  return Cfg::kStages * (Cfg::kSmemABytes + Cfg::kSmemBBytes) +
         static_cast<int>((sizeof(sm90_gemm_detail::Control<Cfg>) + 127) / 128 * 128);
}

}  // namespace flashmoe::gemm
