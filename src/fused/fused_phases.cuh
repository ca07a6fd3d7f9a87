// flashmoe (internal): the phases of the one-kernel forwards around their GEMM body -- the
// routing (top-k, capacity, dispatch) before it and the combine after it -- written once for
// the FP8 kernel (fused_sm90_fp8.cu, which describes the phases) and the bf16/fp16 one
// (fused_sm90.cu). Both run 384-thread CTAs, one per SM, launched cooperatively; what one CTA
// wrote is read by the others after a grid barrier, through L2 (ld.global.cg).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include <cub/block/block_scan.cuh>
#include <cub/warp/warp_scan.cuh>

#include "fused/combine.h"
#include "common/globaltimer.cuh"
#include "common/str_cat.h"
#include "fused/combine_device.cuh"
#include "fused/cuda_check.h"
#include "fused/fused_limits.h"
#include "fused/moe_config.h"
#include "fused/moe_workspace.h"
#include "fused/multikernel_moe.h"
#include "gemm/sm90_device_util.cuh"
#include "gemm/sm90_grouped_gemm.h"
#include "gemm/token_quantize.cuh"
#include "routing/capacity_cut_block.cuh"
#include "routing/reroute_block.cuh"
#include "routing/routing_device.cuh"
#include "routing/topk_token.cuh"

namespace flashmoe::fused {
namespace fused_phases {
namespace {  // each kernel's translation unit its own copy (device functions, launch caches)

/// Threads of a fused kernel's CTA: three warpgroups (the GEMM bodies' producer and two math).
constexpr int kFusedThreads = 384;
constexpr int kWarps = kFusedThreads / 32;
// The top-k of a token by a warpgroup (at most 3 tokens per CTA: the latency of one token is
// what counts) or by a warp (more tokens per CTA: twelve at a time).
using TopkSmemWg = routing::TopkSmem<128, 2>;
using TopkSmemWarp = routing::TopkSmem<32, 8>;
constexpr int kWarpgroupTopkMaxChunk = 3;
// Solo mode (FusedRoutingParams::solo): CTA 0 routes and dispatches every token alone -- one
// token per warpgroup, one slot per lane of warp 0. Two tokens, not three: a third would take
// warpgroup 2, whose warps quantize the rows meanwhile (measured at T = 3, round 97: the rows
// then wait for the top-k and the GEMM starts later than on the general path).
constexpr int kSoloMaxTokens = 2;
constexpr int kSoloMaxSlots = 32;
using WarpScan = cub::WarpScan<int>;
using BlockScan = cub::BlockScan<int, kFusedThreads>;
static_assert(TopkSmemWg::kMaxE >= kFusedMaxExperts && TopkSmemWarp::kMaxE >= kFusedMaxExperts,
              "the top-k shared memory covers E");
static_assert(kFusedTimelineTopkSlot + routing::kTopkStamps <= kFusedTimelineSlots,
              "the top-k's timeline slots");
static_assert(kFusedMaxExperts % 32 == 0, "whole lanes of local experts in warp 0's scans");

// Hardware named barriers of the phases (CUTLASS keeps 0-7; the GEMM bodies' producers use 8).
constexpr int kTopkBarrier = 12;  // 12, 13, 14: warpgroups 0..2 in phase 1
constexpr int kMathBarrier = 15;  // the 256 math threads in phase 4
constexpr int kDepsBarrier = 11;  // the 256 math threads after a gate/up item (the FFN deps)
constexpr int kRowsBarrier = 9;   // solo_fast: CTA 0's warp 0 and the warps quantizing the row
// solo_fast: the row's quantizing warps among themselves (phase 1 only: hardware barrier 10 is
// also the GEMM body's split-K barrier, CUTLASS NamedBarrier 2, which runs after the phases)
constexpr int kRowQuantBarrier = 10;
// solo_fast: warp 4 runs warp 0's release routine dry, warps 5-7 run the top-k dry from its
// later steps (phase 1's solo_fast branch), warps 8-11 quantize the token's row.
constexpr int kSoloWarmWarp = 4;
constexpr int kSoloDryWarps = 3;
constexpr int kSoloRowWarps = kWarps - kSoloWarmWarp - 1 - kSoloDryWarps;
static_assert(kSoloWarmWarp >= 4 && kSoloWarmWarp % 4 == 0,
              "outside warpgroup 0 (the top-k), on warp 0's sub-partition");
static_assert(kSoloDryWarps == routing::kTopkStepSelection, "one dry warp per later step");
static_assert((3 + kSoloDryWarps) * sizeof(TopkSmemWg) <= kWarps * sizeof(TopkSmemWarp),
              "the dry warps' scratch within the top-k union");
// solo_fast: the dry top-k warps' own barriers, one each (phase 1 only: warpgroups 1-2 own no
// token at T = 1, and 15 is phase 4's, after the phases' last CTA barrier)
constexpr int kSoloDryBarrier = 13;  // 13, 14, 15
static_assert(kSoloDryBarrier == kTopkBarrier + 1 && kSoloDryBarrier + kSoloDryWarps - 1 ==
                                                         kMathBarrier,
              "the dry warps' barriers");

/// What the routing phases and the combine read and write: the kernels' parameters hold one.
struct FusedRoutingParams {
  routing::RoutingParams rp;
  routing::RoutingBuffers rb;
  CombineParams cp;
  void const* tokens;
  float* token_scales;  // FP8 GEMMs: the E4M3 token rows phase 1 writes and their scales;
  uint8_t* token_fp8;   // null: the GEMM reads the 16-bit rows (no quantization)
  // MoeConfig::fp8_a_dense: phase 2 quantizes each owned token straight into its slots' dense
  // rows here (phase 1 then skips token_fp8), which the GEMM loads by TMA boxes (null: the GEMM
  // gathers from token_fp8).
  uint8_t* token_fp8_dense;
  int32_t* cta_counts;  // [E, kFusedMaxCtas]: column c = CTA c's final ids per expert
  uint32_t* grid_sync;  // [3] arrivals, generation, solo dispatch done: zero at launch but for
                        // the generation (relative); the run leaves them so (the barrier's last
                        // arrival, and the first GEMM's last CTA done for the flag:
                        // Sm90Fp8KernelParams::clear_on_done)
  int32_t* topk_ids_out;
  float* topk_weights_out;
  int32_t* expert_load_out;
  int64_t* drop_reroute_out;
  uint64_t* timeline;   // [CTAs, kFusedTimelineSlots] or null (FLASHMOE_FUSED_TIMELINE=1)
  int32_t* tile_done;   // gated FFN: per m slot, the gate/up items done (zeroed in phase 2)
  int32_t hidden;
  int32_t token_bf16;   // 1 bf16, 0 fp16
  int32_t tokens_vec16;
  int32_t chunk;        // tokens per CTA
  int32_t active_ctas;  // ceil(T / chunk)
  int32_t solo;         // 1: CTA 0 owns every token and dispatches alone (solo_dispatch)
  // Solo mode, FP8 forward (perf-log v0.46b): the CTAs other than 0 do not wait for CTA 0's flag
  // here but in the GEMM's producer, after the body's set-up and their first queue take
  // (FusedDeps::wait_routed): the set-up's cold code then runs while CTA 0 routes.
  int32_t solo_wait_in_gemm;
  // Solo mode with one token, FP8 forward (perf-log v0.47): CTA 0's warp 0 writes the GEMM's
  // inputs and releases the flag (kSoloDispatched) right after the selection; the weights and
  // the rest follow, released with kSoloRest, which every producer acquires before its end
  // marker (FusedDeps::wait_rest) -- before the combine reads the weights.
  int32_t solo_fast;
  // Solo mode, FP8 forward, deterministic combine: per n tile of the last GEMM, the count of its
  // finished items (in the sync region: zero at launch, zeroed again by the item that completes
  // it). The item that completes an n tile combines those columns of every token
  // (FusedDeps::item_stored): no barrier 3. Null: barrier 3, then CTA 0 combines.
  int32_t* tile_combine_count;
  int32_t atomic_combine;  // 1: MoeProblem::deterministic false -- the owned tokens' output rows
                           // are zeroed in phase 1, the last GEMM's epilogue adds into them
                           // (rb.row_token, rb.row_weight), and phase 4 is skipped
};

// Dynamic shared memory of phases 1-2 (the GEMM's pipeline reuses the window afterwards).
struct RoutingSmem {
  union {
    // [0..2]: warpgroups 0..2; solo_fast: [3..]: the dry top-k warps' scratch, one each (the
    // union's size is warp[]'s either way)
    TopkSmemWg wg[3 + kSoloDryWarps];
    TopkSmemWarp warp[kWarps];
  } topk;
  typename WarpScan::TempStorage warp_scan[2];
  int32_t count[kFusedMaxExperts];      // phase 1: this CTA's final ids per expert
  int32_t total[kFusedMaxExperts];      // phase 2, per expert: all CTAs
  int32_t before[kFusedMaxExperts];     //                      the CTAs before this one
  int32_t lbefore[kFusedMaxExperts];    // per local expert: its rows of the CTAs before this one
  int32_t lcount[kFusedMaxExperts];     //                   its rows
  int32_t row0[kFusedMaxExperts];       //                   its first dense row
  int32_t run[kFusedMaxExperts];        //                   this CTA's next dense row of it
  int32_t tile0[kFusedMaxExperts + 1];  //                   its first tile; [EL]: the count
  // Capacity (capacity_phases), per expert of the routing space: the first position of its list
  // of assignments, this CTA's next position in it; the cut's and the reroute's scratch.
  int32_t estart[kFusedMaxExperts];
  int32_t erun[kFusedMaxExperts];
  routing::CapacityCutSmem cut;
  typename BlockScan::TempStorage block_scan;
  int32_t dropped;
  int32_t rerouted;
  // Solo mode, per slot a < T * k: its key (local expert, or >= E_local when not computed here),
  // its final id, 1 if it leads its local expert's group.
  int32_t solo_key[kSoloMaxSlots];
  int32_t solo_id[kSoloMaxSlots];
  int32_t solo_leader[kSoloMaxSlots];
  float solo_row_amax[kSoloRowWarps];  // solo_fast: the row's quantizing warps' maxima
};


__device__ __forceinline__ uint32_t ld_acquire(uint32_t const* p) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release(uint32_t* p, uint32_t v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

// One thread per CTA: waits until every CTA of the grid has arrived. The generation is read
// before arriving (it can only move once this CTA has arrived), the last arrival resets the count
// before it releases the next generation, so the next barrier's arrivals start from zero.
__device__ __forceinline__ void grid_arrive_wait(uint32_t* sync, uint32_t ctas) {
  uint32_t const gen = ld_acquire(&sync[1]);
  __threadfence();  // this CTA's writes (made visible to this thread by the CTA barrier)
  if (atomicAdd(&sync[0], 1u) == ctas - 1) {
    atomicExch(&sync[0], 0u);
    st_release(&sync[1], gen + 1);
  } else {
    while (ld_acquire(&sync[1]) == gen) __nanosleep(32);
  }
  __threadfence();
}

__device__ __forceinline__ void stamp(FusedRoutingParams const& fp, int slot) {
  if (fp.timeline == nullptr) return;
  stamp_globaltimer(fp.timeline + blockIdx.x * kFusedTimelineSlots + slot);
}

__device__ __forceinline__ void cta_grid_sync(uint32_t* sync) {
  __syncthreads();
  if (threadIdx.x == 0) grid_arrive_wait(sync, gridDim.x);
  __syncthreads();
}

// Barrier 3 in solo mode, one thread per CTA: only CTA 0 combines (it owns every token), so the
// others arrive and leave -- a release add on the arrival count, no generation, no wait -- and
// CTA 0 waits for all of them, then zeroes the count (every CTA has arrived: nothing touches it
// again in this launch, which leaves the workspace clean). The acquire reads the last add of the
// count's release sequence, so it synchronizes with every CTA's release.
__device__ __forceinline__ void solo_arrive_or_wait(uint32_t* sync, uint32_t ctas, bool waiter) {
  asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(sync) : "memory");
  if (!waiter) return;
  while (ld_acquire(sync) != ctas) __nanosleep(32);
  sync[0] = 0u;
}


// Solo mode's flag word (grid_sync[2]): the GEMM's inputs are written; solo_fast: the rest too
// (the weights, which the combine reads).
constexpr uint32_t kSoloDispatched = 1u;
constexpr uint32_t kSoloRest = 2u;

// Solo mode: the tiles of the dispatch (tile_starts[EL], which solo_dispatch writes before its
// flag).
__device__ __forceinline__ int solo_tile_count(FusedRoutingParams const& fp) {
  return __ldcg(fp.rb.local_offsets + 2 * fp.rp.num_local_experts + 1);
}

// f(T{}) with T the tokens' element type, __nv_bfloat16 or __half: the one place that reads
// FusedRoutingParams::token_bf16 (the phases that read token rows, and the combine, whose y and
// out rows are in that type).
template <class F>
__device__ __forceinline__ void with_token_type(FusedRoutingParams const& fp, F const& f) {
  if (fp.token_bf16) {
    f(__nv_bfloat16{});
  } else {
    f(__half{});
  }
}

// combine_token in the tokens' dtype (y and out are in it).
template <int kSteps = 1>
__device__ __forceinline__ void combine_token_of(FusedRoutingParams const& fp, int t, int tid,
                                                 int nthreads, int64_t c0 = 0, int64_t c1 = -1) {
  with_token_type(fp, [&](auto tag) {
    combine_token<decltype(tag), kSteps>(fp.cp, t, tid, nthreads, c0, c1);
  });
}

// Tokens [t0, t1) by the 256 math threads (mt): with two or more, each half of them takes every
// other token, two steps of loads in flight per thread (combine_token's kSteps), so that each
// SM has two tokens' loads in flight rather than a chain of round trips per token.
__device__ __forceinline__ void combine_owned(FusedRoutingParams const& fp, int t0, int t1,
                                              int mt) {
  if (t1 - t0 >= 2) {
    for (int t = t0 + (mt >> 7); t < t1; t += 2) combine_token_of<2>(fp, t, mt & 127, 128);
  } else {
    for (int t = t0; t < t1; ++t) combine_token_of<2>(fp, t, mt, 256);
  }
}

// Phase 4, run by every math thread after its last GEMM tile. (The owned tokens are recomputed
// here: a value live across the GEMM body would cost the 56-register producer a spill.)
struct CombineAfterGemm {
  FusedRoutingParams const& fp;
  __device__ __forceinline__ void operator()() const {
    if (fp.atomic_combine) {  // the epilogues added every row into out: nothing left to do
      if (threadIdx.x == 128) stamp(fp, 5);  // (stamp: nothing without a timeline)
      return;
    }
    int const mt = static_cast<int>(threadIdx.x) - 128;  // 0..255
    int const T = fp.rp.num_tokens;
    int const t0 = min(T, static_cast<int>(blockIdx.x) * fp.chunk);
    int const t1 = min(T, t0 + fp.chunk);
    if (fp.tile_combine_count != nullptr) {
      // Solo mode: the last GEMM's items combined every column that has a tile. With no tile at
      // all (every slot non-local), CTA 0 writes the tokens' zero rows here: nobody waits.
      if (mt == 0) stamp(fp, 5);
      if (blockIdx.x != 0 || solo_tile_count(fp) > 0) return;
      combine_owned(fp, t0, t1, mt);
      return;
    }
    asm volatile("bar.sync %0, 256;" ::"n"(kMathBarrier) : "memory");
    if (mt == 0) {
      stamp(fp, 5);
      if (fp.solo) {
        solo_arrive_or_wait(fp.grid_sync, gridDim.x, blockIdx.x == 0);
      } else {
        grid_arrive_wait(fp.grid_sync, gridDim.x);
      }
      stamp(fp, 6);  // solo mode: CTA 0 past the barrier, the others arrived
    }
    asm volatile("bar.sync %0, 256;" ::"n"(kMathBarrier) : "memory");
    combine_owned(fp, t0, t1, mt);
    if (fp.timeline != nullptr) {
      asm volatile("bar.sync %0, 256;" ::"n"(kMathBarrier) : "memory");
      if (mt == 0) stamp(fp, 7);
    }
  }
};


// This CTA's final ids per expert (its owned slots [a0, a1)) into column cta of the [E,
// kFusedMaxCtas] table. After capacity (tally): also its dropped and rerouted slots, added to the
// user's two counts. final_ids is read through L2: the capacity cut marks other CTAs' slots.
__device__ __forceinline__ void count_owned(FusedRoutingParams const& fp, RoutingSmem& sm,
                                            int64_t a0, int64_t a1, bool tally) {
  routing::RoutingBuffers const& rb = fp.rb;
  int const tid = static_cast<int>(threadIdx.x);
  int const E = fp.rp.num_experts;
  for (int e = tid; e < E; e += kFusedThreads) sm.count[e] = 0;
  if (tid == 0) {
    sm.dropped = 0;
    sm.rerouted = 0;
  }
  __syncthreads();
  int dropped = 0;
  int rerouted = 0;
  for (int64_t a = a0 + tid; a < a1; a += kFusedThreads) {
    int32_t const e = __ldcg(rb.final_ids + a);
    if (e >= 0) atomicAdd(&sm.count[e], 1);  // a count: the order of the adds does not matter
    if (tally) {
      int32_t const o = rb.orig_ids[a];  // written by this CTA
      dropped += (o >= 0 && e < 0) ? 1 : 0;
      rerouted += (e >= 0 && e != o) ? 1 : 0;
    }
  }
  if (tally && fp.drop_reroute_out != nullptr && (dropped | rerouted) != 0) {
    atomicAdd(&sm.dropped, dropped);
    atomicAdd(&sm.rerouted, rerouted);
  }
  __syncthreads();
  int const cta = static_cast<int>(blockIdx.x);
  if (cta < fp.active_ctas) {
    for (int e = tid; e < E; e += kFusedThreads) {
      fp.cta_counts[e * kFusedMaxCtas + cta] = sm.count[e];
    }
  }
  if (tally && tid == 0 && fp.drop_reroute_out != nullptr && (sm.dropped | sm.rerouted) != 0) {
    // Integer sums (zeroed by CTA 0 before the capacity phases): any order gives the same totals.
    auto* counts = reinterpret_cast<unsigned long long*>(fp.drop_reroute_out);
    atomicAdd(&counts[0], static_cast<unsigned long long>(sm.dropped));
    atomicAdd(&counts[1], static_cast<unsigned long long>(sm.rerouted));
  }
}

// Every expert's total over the table and this CTA's base in it (the CTAs before this one), one
// thread per expert reading its row, four CTAs per (independent) load.
__device__ __forceinline__ void read_count_table(FusedRoutingParams const& fp, RoutingSmem& sm) {
  int const cta = static_cast<int>(blockIdx.x);
  for (int e = static_cast<int>(threadIdx.x); e < fp.rp.num_experts; e += kFusedThreads) {
    int4 const* row = reinterpret_cast<int4 const*>(fp.cta_counts + e * kFusedMaxCtas);
    int total = 0;
    int before = 0;
#pragma unroll 8
    for (int c4 = 0; c4 < (fp.active_ctas + 3) / 4; ++c4) {
      int4 const v = __ldcg(row + c4);
      int const vals[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        int const c = 4 * c4 + i;
        int const x = c < fp.active_ctas ? vals[i] : 0;  // columns past the active CTAs: unset
        total += x;
        before += c < cta ? x : 0;
      }
    }
    sm.total[e] = total;
    sm.before[e] = before;
  }
}

// Capacity (routing.h step 6), between the top-k and the dispatch, with sm.total / sm.before
// holding the original ids' counts: (1) every CTA lists its owned slots under their expert, in
// (token, slot) order, with their priority keys (positions: the expert's start + the CTAs before
// + the rank among this CTA's); (2) each expert over capacity is cut by one CTA
// (capacity_cut_block: final_ids = -1, pending = 1); (3) reroute: CTA 0 runs the rounds
// (reroute_block.cuh) while the others wait; (4) the final ids are counted again. Five grid
// barriers; ends with sm.total / sm.before of the final ids, as the dropless path has them.
__device__ __noinline__ void capacity_phases(FusedRoutingParams const& fp, RoutingSmem& sm,
                                             int64_t a0, int64_t a1) {
  routing::RoutingParams const& rp = fp.rp;
  routing::RoutingBuffers const& rb = fp.rb;
  int const tid = static_cast<int>(threadIdx.x);
  int const cta = static_cast<int>(blockIdx.x);
  int const E = rp.num_experts;
  if (tid < 32) {  // exclusive scan of the totals over the experts (eight per lane, in order)
    constexpr int kPer = kFusedMaxExperts / 32;
    int sum = 0;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      int const e = tid * kPer + i;
      sum += e < E ? sm.total[e] : 0;
    }
    int off = 0;
    WarpScan(sm.warp_scan[0]).ExclusiveSum(sum, off);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      int const e = tid * kPer + i;
      if (e < E) {
        sm.estart[e] = off;
        sm.erun[e] = off + sm.before[e];
        if (cta == 0) rb.expert_counts[e] = sm.total[e];  // the reroute's original loads
        off += sm.total[e];
      }
    }
  }
  if (rp.reroute) {
    for (int64_t a = a0 + tid; a < a1; a += kFusedThreads) rb.pending[a] = 0;
  }
  if (cta == 0 && tid < 2 && fp.drop_reroute_out != nullptr) fp.drop_reroute_out[tid] = 0;
  __syncthreads();
  if (tid < 32) {  // the owned slots into their experts' lists, in (token, slot) order
    int const lane = tid;
    unsigned const lower = (1u << lane) - 1u;
    for (int64_t base = a0; base < a1; base += 32) {
      int64_t const a = base + lane;
      int32_t const e = a < a1 ? rb.orig_ids[a] : -1;  // written by this CTA
      unsigned const group = __match_any_sync(0xffffffffu, e >= 0 ? e : E + lane);
      if (e >= 0) {
        int const pos = sm.erun[e] + __popc(group & lower);
        rb.perm_expert[pos] = static_cast<int32_t>(a);
        rb.prio_keys_sorted[pos] = rb.prio_keys[a];
      }
      __syncwarp();
      if (e >= 0 && lane == 31 - __clz(group)) sm.erun[e] += __popc(group);
      __syncwarp();
    }
  }
  cta_grid_sync(fp.grid_sync);
  int const cap = static_cast<int>(rp.capacity);
  for (int e = cta; e < E; e += static_cast<int>(gridDim.x)) {
    if (sm.total[e] > cap) {
      routing::capacity_cut_block<kFusedThreads>(rp, rb, rb.prio_keys_sorted + sm.estart[e],
                                            rb.perm_expert + sm.estart[e], sm.total[e], sm.cut,
                                            sm.block_scan);
    }
  }
  cta_grid_sync(fp.grid_sync);
  if (rp.reroute) {
    if (cta == 0) routing::reroute_rounds<kFusedThreads>(rp, rb, sm.block_scan);
    cta_grid_sync(fp.grid_sync);
  }
  count_owned(fp, sm, a0, a1, true);
  cta_grid_sync(fp.grid_sync);
  read_count_table(fp, sm);
}

// Solo mode, lane a of a warp holding slot a's final id e (-1: none; a >= n: no slot): the
// slot's place in (local expert, slot) order. One function for solo_dispatch and the one-token
// early release (solo_release_gemm_inputs), so that both give the same rows and tiles.
struct SoloSlotRank {
  int key;         // local expert, or E_local + a when not computed here (above every expert)
  unsigned group;  // the lanes of the same key
  bool computed;
  bool leader;     // computed, and the first slot of its local expert: it owns the tile
  int row;         // computed slots before this one: its dense row
  int tile;        // local experts with rows before this one's: its tile
  int tiles;       // tiles in all (the same in every lane)
};
__device__ __forceinline__ SoloSlotRank solo_slot_rank(routing::RoutingParams const& rp, int a,
                                                       int n, int32_t e) {
  int const EL = rp.num_local_experts;
  int32_t le = -1;
  if (e >= 0) le = rp.expert_map != nullptr ? rp.expert_map[e] : e;
  SoloSlotRank r;
  r.computed = a < n && le >= 0 && le < EL;
  r.key = r.computed ? le : EL + a;
  r.group = __match_any_sync(0xffffffffu, r.key);
  r.leader = r.computed && a == __ffs(r.group) - 1;
  r.row = 0;
  r.tile = 0;
  for (int j = 0; j < n; ++j) {
    int const kj = __shfl_sync(0xffffffffu, r.key, j);
    bool const lj = __shfl_sync(0xffffffffu, r.leader, j);
    r.row += (kj < EL && (kj < r.key || (kj == r.key && j < a))) ? 1 : 0;
    r.tile += (lj && kj < r.key) ? 1 : 0;
  }
  r.tiles = __popc(__ballot_sync(0xffffffffu, r.leader));
  return r;
}

// Solo mode, warp 0 (lane a = slot a, n slots): what the GEMM reads (the tile list with its
// empty slots, dense row -> token, the FFN's zeroed counts) and what the items that combine read
// besides the weights (the slots' rows, the tile count: tile_starts[EL], written again by
// solo_dispatch). The caller's __syncwarp and lane 0's release follow. dry: the same code with
// no store (solo_release_gemm_inputs' warm-up run).
__device__ __forceinline__ void solo_write_gemm_inputs(FusedRoutingParams const& fp, int a, int n,
                                                       SoloSlotRank const& sr, bool dry = false) {
  routing::RoutingParams const& rp = fp.rp;
  routing::RoutingBuffers const& rb = fp.rb;
  int const k = rp.top_k;
  int const EL = rp.num_local_experts;
  if (sr.computed && !dry) {
    rb.row_token[sr.row] = a / k;
    if (fp.atomic_combine) rb.row_weight[sr.row] = rb.weights[a];  // (never with solo_fast)
  }
  if (sr.leader && !dry) rb.tiles[sr.tile] = gemm::TileInfo{sr.key, sr.row, __popc(sr.group), 0};
  if (a < n && !dry) rb.slot_row[a] = sr.computed ? sr.row : -1;
  if (a == 0 && !dry) rb.local_offsets[2 * EL + 1] = sr.tiles;
  int const slots = dry ? 0 : rp.num_tile_slots;
  for (int m = sr.tiles + a; m < slots; m += 32) rb.tiles[m] = gemm::TileInfo{-1, 0, 0, 0};
  if (fp.tile_done != nullptr) {  // the gate/up counts start at zero
    for (int m = a; m < slots; m += 32) fp.tile_done[m] = 0;
  }
}

// solo_fast (T = 1), warp 0 of CTA 0 right after topk_select: the GEMM's inputs from the
// selection in `tk`, then, once the E4M3 row is written (its kSoloRowWarps warps arrive on
// kRowsBarrier), the flag. The release is cumulative over the row's stores, which the named
// barrier ordered before it, and over the lanes' stores (__syncwarp).
// dry (warp kSoloWarmWarp at the start of phase 1, perf-log v0.50): the same instructions with
// no slot (every lane's id -1), no store, no barrier and no release -- a run that only brings
// this code into the SM's instruction caches before warp 0 needs it (~3 us of first fetch on
// the T = 1 chain otherwise, round 227). Not inlined, so both runs fetch the same addresses.
__device__ __noinline__ void solo_release_gemm_inputs(FusedRoutingParams const& fp,
                                                      TopkSmemWg const& tk, uint32_t* done,
                                                      bool dry) {
  int const a = static_cast<int>(threadIdx.x % 32);
  int const n = fp.rp.top_k;  // T = 1
  int32_t e = -1;  // lane a's slot: its expert (topk_write's rule), -1 past E or in a dry run
  if (a < n && !dry) e = tk.selected[a] < fp.rp.num_experts ? tk.selected[a] : -1;
  SoloSlotRank const sr = solo_slot_rank(fp.rp, a, n, e);
  solo_write_gemm_inputs(fp, a, n, sr, dry);
  __syncwarp();
  if (dry) return;
  if (a == 0) stamp(fp, 27);  // profiling: the inputs written, before the wait for the row
  asm volatile("bar.sync %0, %1;" ::"n"(kRowsBarrier), "n"(32 * (1 + kSoloRowWarps)) : "memory");
  if (a == 0) {
    stamp(fp, 3);
    st_release(done, kSoloDispatched);
  }
}

// Solo mode (T <= kSoloMaxTokens, T * k <= kSoloMaxSlots, no capacity): CTA 0 owns every token
// and, after its phase 1, writes the whole dispatch of its <= 32 slots itself -- what phase 2
// writes, in the same order and values. Warp 0, one lane per slot, gives each computed slot its
// dense row (the computed slots before it in (local expert, token, slot) order) and each local
// expert's group leader (its first slot) the expert's tile (its <= 32 rows: one tile), writes
// what the GEMM reads (the tile list with its empty slots, dense row -> token, the FFN's
// counters) and releases the other CTAs with one flag `done` -- no count table, no grid barrier
// (at T = 1 those cost ~10 us of a ~100 us forward). Then, while they stream, every thread writes
// its share of the rest (slot -> row, per-local-expert offsets, the user's outputs), all read
// after a later grid barrier or by the caller. Ends with a CTA barrier. (solo_fast: the GEMM's
// part was written and released in phase 1 by solo_release_gemm_inputs; this writes the rest
// and releases it with kSoloRest.)
__device__ __noinline__ void solo_dispatch(FusedRoutingParams const& fp, RoutingSmem& sm,
                                           uint32_t* done) {
  routing::RoutingParams const& rp = fp.rp;
  routing::RoutingBuffers const& rb = fp.rb;
  int const tid = static_cast<int>(threadIdx.x);
  int const k = rp.top_k;
  int const E = rp.num_experts;
  int const EL = rp.num_local_experts;
  int const n = rp.num_tokens * k;  // <= kSoloMaxSlots (the host's condition)
  if (tid < 32) {
    int const a = tid;
    bool const valid = a < n;
    int32_t const e = valid ? rb.final_ids[a] : -1;  // written by this CTA in phase 1
    SoloSlotRank const sr = solo_slot_rank(rp, a, n, e);
    if (!fp.solo_fast) {
      // What the GEMM reads, then the flag (the rows and scales of phase 1 were written before
      // the caller's CTA barrier; __syncwarp orders the lanes' writes before lane 0's release
      // store, which is cumulative over them: no separate fence). (solo_fast: written and
      // released in phase 1 already, solo_release_gemm_inputs.)
      solo_write_gemm_inputs(fp, a, n, sr);
      __syncwarp();
      if (a == 0) {
        stamp(fp, 3);
        st_release(done, kSoloDispatched);
      }
    }
    if (valid) {
      if (fp.topk_ids_out != nullptr) fp.topk_ids_out[a] = e;
      if (fp.topk_weights_out != nullptr) fp.topk_weights_out[a] = e >= 0 ? rb.weights[a] : 0.f;
      sm.solo_key[a] = sr.key;
      sm.solo_id[a] = e;
      sm.solo_leader[a] = sr.leader ? 1 : 0;
    }
  }
  __syncthreads();
  // Per local expert (and EL: the totals): first dense row, first tile, rows.
  int32_t* const tile_starts = rb.local_offsets + (EL + 1);
  for (int le = tid; le <= EL; le += kFusedThreads) {
    int rows_before = 0;
    int tiles_before = 0;
    int count = 0;
    for (int j = 0; j < n; ++j) {
      int const kj = sm.solo_key[j];
      rows_before += kj < le ? 1 : 0;  // keys >= EL (not computed) never count
      tiles_before += (kj < le && sm.solo_leader[j]) ? 1 : 0;
      count += kj == le ? 1 : 0;
    }
    rb.local_offsets[le] = rows_before;
    tile_starts[le] = tiles_before;
    if (le < EL) rb.local_counts[le] = count;
  }
  if (fp.expert_load_out != nullptr) {  // final ids per expert of the routing space
    for (int e = tid; e < E; e += kFusedThreads) {
      int count = 0;
      for (int j = 0; j < n; ++j) count += sm.solo_id[j] == e ? 1 : 0;
      fp.expert_load_out[e] = count;
    }
  }
  if (tid < 2 && fp.drop_reroute_out != nullptr) fp.drop_reroute_out[tid] = 0;  // no capacity
  __syncthreads();  // sm.solo_* read; the GEMM's pipeline reuses the shared memory
  // solo_fast: the rest (phase 1's weights included) is written: cumulative over the CTA's
  // stores, which the barrier above ordered before this release.
  if (fp.solo_fast && tid == 0) st_release(done, kSoloDispatched | kSoloRest);
}

// Phases 1 and 2 (everything before the GEMM), not inlined: compiled apart from the GEMM body,
// whose warpgroups run at 56 and 224 registers (setmaxnreg), so that neither allocation
// constrains the other (inlined, ptxas spilled a few bytes).
__device__ __noinline__ void routing_phases(FusedRoutingParams const& fp) {
  extern __shared__ __align__(1024) uint8_t smem_fused[];
  RoutingSmem& sm = *reinterpret_cast<RoutingSmem*>(smem_fused);
  routing::RoutingParams const& rp = fp.rp;
  routing::RoutingBuffers const& rb = fp.rb;
  int const tid = static_cast<int>(threadIdx.x);
  int const cta = static_cast<int>(blockIdx.x);
  int const T = rp.num_tokens;
  int const k = rp.top_k;
  int const E = rp.num_experts;
  int const EL = rp.num_local_experts;
  int const t0 = min(T, cta * fp.chunk);
  int const t1 = min(T, t0 + fp.chunk);
  int64_t const a0 = static_cast<int64_t>(t0) * k;
  int64_t const a1 = static_cast<int64_t>(t1) * k;
  if (tid == 0) stamp(fp, 0);

  // ---- phase 1: top-k of the owned tokens, one warpgroup per token; their E4M3 rows.
  {
    // Profiling: the top-k steps of the CTA's first token (routing::topk_stamp).
    uint64_t* const topk_stamps =
        fp.timeline != nullptr ? fp.timeline + cta * kFusedTimelineSlots + kFusedTimelineTopkSlot
                               : nullptr;
    if (rp.prerouted) {
      for (int64_t a = a0 + tid; a < a1; a += kFusedThreads) {
        routing::prerouted_assignment(rp, rb, a);
      }
    } else if (fp.solo_fast) {
      // CTA 0, T = 1: warpgroup 0 selects the token's experts, warp 0 writes the GEMM's inputs
      // and raises the flag, then the weights. Warps kSoloWarmWarp + 1.. run the same selection
      // code dry at the same time, warp kSoloWarmWarp + j from step j (routing::kTopkStepExp..):
      // no load of the logits, a barrier and scratch shared memory of their own warp, no global
      // store (reroute off). Between them they bring the selection's later steps into the SM's
      // instruction caches while warpgroup 0 waits for the logits: run first inside the one
      // kernel, those steps took ~5.5 us more than warm (rounds 287-288, perf-log v0.64). One
      // call site for both, so that they run the same instructions.
      int const w = tid / 32;
      bool const real = w < 4;
      int const step = real ? 0 : w - kSoloWarmWarp;  // the dry warps': 1..kSoloDryWarps
      if (t0 < t1 && (real || (step >= 1 && step <= kSoloDryWarps))) {
        routing::RoutingParams rpl = rp;  // (topk_token says why)
        if (!real) rpl.reroute = false;
        routing::NamedSync const sync{real ? kTopkBarrier : kSoloDryBarrier + step - 1,
                                      real ? 128 : 32};
        routing::topk_select<128, 2>(rpl, rb, t0, real ? tid : tid % 32,
                                     sm.topk.wg[real ? 0 : 2 + step], sync,
                                     real ? topk_stamps : nullptr, step);
        if (real) {
          if (tid < 32) solo_release_gemm_inputs(fp, sm.topk.wg[0], fp.grid_sync + 2, false);
          routing::topk_write<128, 2>(rpl, rb, t0, tid, sm.topk.wg[0], sync);
        }
      }
    } else if (fp.chunk <= kWarpgroupTopkMaxChunk) {
      int const wg = tid / 128;
      for (int t = t0 + wg; t < t1; t += 3) {
        routing::WarpgroupSync const sync{kTopkBarrier + wg};
        routing::topk_token<128, 2>(rp, rb, t, tid % 128, sm.topk.wg[wg], sync,
                                    t == t0 ? topk_stamps : nullptr);
        sync();  // the next token rewrites sm.topk.wg[wg]
      }
    } else {
      int const w = tid / 32;
      for (int t = t0 + w; t < t1; t += kWarps) {
        routing::topk_token<32, 8>(
            rp, rb, t, tid % 32, sm.topk.warp[w], routing::WarpSync{},
            t == t0 ? topk_stamps : nullptr);
        __syncwarp();  // the next token rewrites sm.topk.warp[w]
      }
    }
    if (tid == 0) stamp(fp, 8);
    // Rows go to the warps from the last one down: with one or two owned tokens the warps of the
    // warpgroups without a token quantize while warpgroup 0 is still in its top-k (no barrier
    // between the two loops).
    int const warp = kWarps - 1 - tid / 32;
    int const lane = tid % 32;
    int64_t const H = fp.hidden;
    // (Dense A rows: phase 2 quantizes each row straight to its slots' dense rows instead.)
    bool const rows_here = fp.token_fp8 != nullptr && fp.token_fp8_dense == nullptr;
    if (fp.solo_fast) {
      // One token, owned by CTA 0 (the other CTAs own none), whose warpgroup 0 runs the top-k:
      // warp kSoloWarmWarp warms warp 0's release routine (a dry run), the kSoloDryWarps warps
      // after it the top-k's later steps (above), the kSoloRowWarps warps after those
      // quantize the row together and arrive on kRowsBarrier, where warp 0 waits for the row
      // before its release (perf-log v0.50, v0.64).
      int const w = tid / 32;
      if (t0 < t1 && w >= kSoloWarmWarp) {
        if (w == kSoloWarmWarp) {
          solo_release_gemm_inputs(fp, sm.topk.wg[0], nullptr, true);
        } else if (w <= kSoloWarmWarp + kSoloDryWarps) {
          // (the dry top-k above)
        } else {
          int const i = tid - 32 * (kSoloWarmWarp + 1 + kSoloDryWarps);
          auto const rows_sync = [] {
            asm volatile("bar.sync %0, %1;" ::"n"(kRowQuantBarrier), "n"(32 * kSoloRowWarps)
                         : "memory");
          };
          bool const vec16 = fp.tokens_vec16 != 0;
          if (rows_here) {
            with_token_type(fp, [&](auto tag) {
              using T = decltype(tag);
              gemm::quantize_row_warps<T, kSoloRowWarps>(
                  static_cast<T const*>(fp.tokens) + t0 * H, H, vec16, i, sm.solo_row_amax,
                  rows_sync, fp.token_scales + t0, fp.token_fp8 + t0 * H);
            });
          }
          if (fp.timeline != nullptr) {  // profiling: the row quantized (all its warps' stores)
            rows_sync();
            if (i == 0) stamp(fp, 26);
          }
          asm volatile("bar.arrive %0, %1;" ::"n"(kRowsBarrier), "n"(32 * (1 + kSoloRowWarps))
                       : "memory");
        }
      }
    } else {
      for (int t = t0 + warp; rows_here && t < t1; t += kWarps) {
        with_token_type(fp, [&](auto tag) {
          using T = decltype(tag);
          gemm::quantize_row_warp<T>(static_cast<T const*>(fp.tokens) + t * H, H,
                                     fp.tokens_vec16 != 0, lane, fp.token_scales + t,
                                     fp.token_fp8 + t * H);
        });
        if (t == t0 && fp.timeline != nullptr) {  // profiling: the CTA's first row quantized
          __syncwarp();
          if (lane == 0) stamp(fp, 26);
        }
      }
    }
  }
  if (tid == 0) stamp(fp, 9);
  if (fp.atomic_combine) {  // the owned tokens' output rows start at zero (added to after barrier 2)
    int64_t const row_vecs = fp.cp.cols / 8;  // 16-byte vectors of 8 elements
    uint4* const out = static_cast<uint4*>(fp.cp.out);
    for (int64_t v = static_cast<int64_t>(t0) * row_vecs + tid;
         v < static_cast<int64_t>(t1) * row_vecs; v += kFusedThreads) {
      out[v] = make_uint4(0u, 0u, 0u, 0u);
    }
  }
  if (fp.solo) {  // CTA 0 owns every token: it dispatches them, the others wait for its flag
    __syncthreads();  // phase 1's ids, weights and E4M3 rows
    if (tid == 0) {
      stamp(fp, 1);
      stamp(fp, 2);
    }
    uint32_t* const done = fp.grid_sync + 2;
    if (cta == 0) {
      solo_dispatch(fp, sm, done);
    } else if (fp.solo_wait_in_gemm) {
      if (tid == 0) stamp(fp, 3);  // the GEMM's producer waits (FusedDeps::wait_routed)
    } else {
      if (tid == 0) {
        stamp(fp, 3);
        // The acquire and the CTA barrier order every later read of CTA 0's writes; none of
        // them can hit a stale L1 line (this SM has not read them in this launch).
        while (ld_acquire(done) == 0u) __nanosleep(32);
      }
      __syncthreads();
    }
    if (tid == 0) stamp(fp, 4);
    return;
  }
  // The owned slots' ids per expert (the final ids: before capacity, the top-k's).
  count_owned(fp, sm, a0, a1, false);
  if (tid == 0) stamp(fp, 1);
  cta_grid_sync(fp.grid_sync);
  if (tid == 0) stamp(fp, 2);

  // ---- phase 2: totals, this CTA's bases, row and tile scans of the local experts.
  read_count_table(fp, sm);
  if (rp.capacity > 0) {
    __syncthreads();
    capacity_phases(fp, sm, a0, a1);
  }
  for (int le = tid; le < EL; le += kFusedThreads) {
    sm.lcount[le] = 0;
    sm.lbefore[le] = 0;
  }
  __syncthreads();
  // Global -> local: the identity without an expert map. A map may send several global experts
  // to one local expert (nothing forbids it): their counts add up (integer adds, any order).
  for (int e = tid; e < E; e += kFusedThreads) {
    int const le = rp.expert_map != nullptr ? rp.expert_map[e] : e;
    if (le >= 0 && le < EL) {
      atomicAdd(&sm.lcount[le], sm.total[e]);
      atomicAdd(&sm.lbefore[le], sm.before[e]);
    }
  }
  __syncthreads();
  // Row and tile scans over the local experts by warp 0 (cub::WarpScan; E_local <= 256: eight
  // experts per lane, summed in order, then one warp-wide exclusive scan of the lane totals).
  int const bm = rp.tile_m;
  int32_t* const tile_starts = rb.local_offsets + (EL + 1);
  if (tid < 32) {
    constexpr int kPer = kFusedMaxExperts / 32;
    int cnt[kPer];
    int rows_sum = 0;
    int tiles_sum = 0;
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      int const le = tid * kPer + i;
      cnt[i] = le < EL ? sm.lcount[le] : 0;
      rows_sum += cnt[i];
      tiles_sum += (cnt[i] + bm - 1) / bm;
    }
    int row_off = 0;
    int rows_total = 0;
    int tile_off = 0;
    int tiles_total = 0;
    WarpScan(sm.warp_scan[0]).ExclusiveSum(rows_sum, row_off, rows_total);
    WarpScan(sm.warp_scan[1]).ExclusiveSum(tiles_sum, tile_off, tiles_total);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      int const le = tid * kPer + i;
      if (le < EL) {
        sm.row0[le] = row_off;
        sm.run[le] = row_off + sm.lbefore[le];
        sm.tile0[le] = tile_off;
        if (cta == 0) {
          rb.local_offsets[le] = row_off;
          tile_starts[le] = tile_off;
          rb.local_counts[le] = cnt[i];
        }
      }
      row_off += cnt[i];
      tile_off += (cnt[i] + bm - 1) / bm;
    }
    if (tid == 0) {
      sm.tile0[EL] = tiles_total;
      if (cta == 0) {
        rb.local_offsets[EL] = rows_total;
        tile_starts[EL] = tiles_total;
      }
    }
  }
  if (cta == 0) {
    if (fp.expert_load_out != nullptr) {
      for (int e = tid; e < E; e += kFusedThreads) fp.expert_load_out[e] = sm.total[e];
    }
    if (tid < 2 && fp.drop_reroute_out != nullptr && rp.capacity == 0) {
      fp.drop_reroute_out[tid] = 0;  // dropless (capacity_phases counts them otherwise)
    }
  }
  __syncthreads();
  int const tiles_total = sm.tile0[EL];
  if (fp.tile_done != nullptr) {  // the gate/up counts start at zero (read after the barrier)
    for (int m = cta * kFusedThreads + tid; m < rp.num_tile_slots;
         m += static_cast<int>(gridDim.x) * kFusedThreads) {
      fp.tile_done[m] = 0;
    }
  }

  // The tile list, as moe_build_tiles_kernel writes it: this CTA's share of the slots.
  for (int m = cta * kFusedThreads + tid; m < rp.num_tile_slots;
       m += static_cast<int>(gridDim.x) * kFusedThreads) {
    gemm::TileInfo info{-1, 0, 0, 0};
    if (m < tiles_total) {
      int lo = 0;
      int hi = EL;  // the last local expert whose first tile is <= m (empty experts share
      while (lo < hi) {  // their successor's start, so the last of equal starts has tiles)
        int const mid = (lo + hi) / 2;
        if (sm.tile0[mid] <= m) lo = mid + 1; else hi = mid;
      }
      int const le = lo - 1;
      int const first = (m - sm.tile0[le]) * bm;
      info.expert = le;
      info.row0 = sm.row0[le] + first;
      info.rows = min(bm, sm.lcount[le] - first);
      info.index = m - sm.tile0[le];
    }
    rb.tiles[m] = info;
  }

  // Dense rows of the owned slots, in (token, slot) order, by warp 0; the user's per-slot outputs.
  if (tid < 32) {
    int const lane = tid;
    unsigned const lower = (1u << lane) - 1u;
    for (int64_t base = a0; base < a1; base += 32) {
      int64_t const a = base + lane;
      bool const valid = a < a1;
      int32_t const e = valid ? __ldcg(rb.final_ids + a) : -1;  // capacity: other CTAs' marks
      int32_t le = -1;
      if (e >= 0) le = rp.expert_map != nullptr ? rp.expert_map[e] : e;
      bool const computed = le >= 0 && le < EL;
      // Lanes of one local expert form a group; the others get keys no other lane has.
      unsigned const group = __match_any_sync(0xffffffffu, computed ? le : EL + lane);
      int row = -1;
      if (computed) row = sm.run[le] + __popc(group & lower);
      __syncwarp();
      if (computed && lane == 31 - __clz(group)) sm.run[le] += __popc(group);
      __syncwarp();
      if (valid) {
        rb.slot_row[a] = row;
        if (row >= 0) {
          rb.row_token[row] = static_cast<int32_t>(a / k);
          if (fp.atomic_combine) rb.row_weight[row] = rb.weights[a];
        }
        if (fp.topk_ids_out != nullptr) fp.topk_ids_out[a] = e;
        if (fp.topk_weights_out != nullptr) fp.topk_weights_out[a] = e >= 0 ? rb.weights[a] : 0.f;
      }
    }
  }
  if (fp.token_fp8_dense != nullptr) {
    // The owned tokens' E4M3 rows, each written to its slots' dense rows (the GEMM's TMA boxes
    // read them after the barrier): a warp per token, one pass over its 16-bit row -- the same
    // bits as phase 1's quantization followed by a copy per slot, which took 2x the bytes' time
    // at prefill (round 195: 278 us). Each thread's fence.proxy.async orders its generic stores
    // before that barrier's release.
    __syncthreads();  // warp 0's rb.slot_row
    int64_t const H = fp.hidden;
    int const warp = tid / 32;
    int const lane = tid % 32;
    for (int t = t0 + warp; t < t1; t += kWarps) {
      int32_t const* rows = rb.slot_row + static_cast<int64_t>(t) * k;
      with_token_type(fp, [&](auto tag) {
        using T = decltype(tag);
        gemm::quantize_row_warp_to_rows<T>(static_cast<T const*>(fp.tokens) + t * H, H,
                                           fp.tokens_vec16 != 0, lane, fp.token_scales + t,
                                           fp.token_fp8_dense, rows, k);
      });
    }
    gemm::sm90_util::fence_proxy_async_global();
  }
  if (tid == 0) stamp(fp, 3);
  cta_grid_sync(fp.grid_sync);
  if (tid == 0) stamp(fp, 4);
}


// ---------------------------------------------------------------------------- host side

/// The routing/combine half of a fused kernel's parameters for `ctas` CTAs; fp8_rows: phase 1
/// also writes the tokens' E4M3 rows (the FP8 GEMM's A).
inline FusedRoutingParams make_fused_routing_params(MoeProblem const& problem,
                                                    MoeArgs const& args, MoeConfig const& config,
                                                    MoeWorkspace const& ws, int ctas,
                                                    bool fp8_rows) {
  int64_t const T = problem.num_tokens;
  int64_t const H = problem.hidden;
  FusedRoutingParams r{};
  r.rp = make_routing_params(problem, args, config);
  r.rb = ws.routing;
  r.cp = combine_params(problem, args, ws);
  r.tokens = args.tokens;
  r.token_scales = fp8_rows ? ws.token_scales : nullptr;
  r.token_fp8 = fp8_rows ? static_cast<uint8_t*>(ws.token_fp8) : nullptr;
  r.token_fp8_dense = fp8_rows && config.fp8_a_dense && ws.token_fp8_dense != nullptr
                          ? static_cast<uint8_t*>(ws.token_fp8_dense)
                          : nullptr;
  r.cta_counts = ws.fused_counts;
  r.grid_sync = reinterpret_cast<uint32_t*>(ws.gemm_scheduler + 2 * kGemmSchedulerInts);
  r.topk_ids_out = args.topk_ids_out;
  r.topk_weights_out = args.topk_weights_out;
  r.expert_load_out = args.expert_load;
  r.drop_reroute_out = args.drop_reroute_counts;
  char const* tl = std::getenv("FLASHMOE_FUSED_TIMELINE");
  r.timeline = tl != nullptr && std::strcmp(tl, "1") == 0 ? ws.fused_timeline : nullptr;
  r.tile_done = problem.kind == ExpertKind::kGatedFFN ? ws.fused_tile_done : nullptr;
  r.hidden = static_cast<int32_t>(H);
  r.token_bf16 = problem.token_dtype == DType::kBFloat16 ? 1 : 0;
  r.tokens_vec16 = reinterpret_cast<std::uintptr_t>(args.tokens) % 16 == 0 && H % 8 == 0;
  // Solo mode (solo_dispatch): CTA 0 takes every token when they fit its warpgroups.
  // (An expert's rows then fit one tile: at most kSoloMaxSlots <= tile_m.)
  r.solo = T >= 1 && T <= kSoloMaxTokens && T * r.rp.top_k <= kSoloMaxSlots &&
                   kSoloMaxSlots <= r.rp.tile_m && r.rp.capacity == 0
               ? 1
               : 0;
  r.chunk = static_cast<int32_t>(r.solo ? T : (T + ctas - 1) / ctas);
  r.active_ctas = static_cast<int32_t>((T + r.chunk - 1) / r.chunk);
  // The FP8 forward (the one whose phase 1 writes E4M3 rows) has its own rule (fused_limits.h).
  int64_t const atomic_max_tokens = fp8_rows ? kAtomicCombineMaxTokensFp8 : kAtomicCombineMaxTokens;
  r.atomic_combine = !problem.deterministic && T <= atomic_max_tokens ? 1 : 0;
  return r;
}

/// What every one-kernel forward does first on the host: refuses a problem it cannot run, sizes
/// its grid (one CTA per SM, at most kFusedMaxCtas) and zeroes the workspace's sync region on
/// `stream` -- unless the caller promised it clean (MoeArgs::workspace_zeroed: the previous run
/// on the workspace left it so), when the forward is the kernel alone. `name` prefixes the
/// messages.
inline Status begin_fused_forward(MoeProblem const& problem, MoeArgs const& args,
                                  MoeWorkspace const& ws, cudaStream_t stream, char const* name,
                                  int* ctas) {
  std::string const why = one_kernel_unsupported_reason(problem);
  if (!why.empty()) {
    return Status(StatusCode::kInternal,
                  detail::cat(name, " called for an unsupported problem: ", why));
  }
  int num_sms = 0;
  FLASHMOE_RETURN_IF_ERROR(gemm::sm90_device_sms(name, &num_sms));
  *ctas = std::max(1, std::min(num_sms, kFusedMaxCtas));
  if (args.workspace_zeroed) return Status::Ok();
  return zero_gemm_queues(ws, stream);
}

/// Launches a fused kernel cooperatively (the driver places every CTA at once or fails the
/// launch, which the grid barriers need), `ctas` CTAs of kFusedThreads threads. Its attributes
/// are checked and set once per (kernel, device, shared-memory size): a decode call's whole GPU
/// time is ~0.1 ms, host work per call matters.
template <class Params>
Status launch_fused_kernel(void (*kernel)(Params), Params const& params, int ctas, int smem_bytes,
                           cudaStream_t stream, char const* name) {
  using detail::cat;
  int device = 0;
  FLASHMOE_CUDA_CHECK(cudaGetDevice(&device));
  struct Configured {
    void const* kernel;
    int device;
    int smem;
  };
  static std::mutex mu;
  static Configured done[64] = {};
  void const* const key = reinterpret_cast<void const*>(kernel);
  bool configured = false;
  {
    std::lock_guard<std::mutex> lock(mu);
    for (Configured const& c : done) {
      configured = configured ||
                   (c.kernel == key && c.device == device && c.smem == smem_bytes);
    }
  }
  if (!configured) {
    cudaFuncAttributes attr{};
    FLASHMOE_CUDA_CHECK(cudaFuncGetAttributes(&attr, key));
    if (attr.ptxVersion < 90) {
      return Status::Unsupported(cat(name, ": this build has no sm_90a code (build with "
                                     "CMAKE_CUDA_ARCHITECTURES including 90a-real)"));
    }
    FLASHMOE_CUDA_CHECK(
        cudaFuncSetAttribute(key, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
    std::lock_guard<std::mutex> lock(mu);
    for (Configured& c : done) {
      if (c.kernel == nullptr || (c.kernel == key && c.device == device)) {
        c = Configured{key, device, smem_bytes};
        break;
      }
    }
  }
  cudaLaunchAttribute attrs[1];
  attrs[0].id = cudaLaunchAttributeCooperative;
  attrs[0].val.cooperative = 1;
  cudaLaunchConfig_t lc{};
  lc.gridDim = dim3(static_cast<unsigned>(ctas));
  lc.blockDim = dim3(kFusedThreads);
  lc.dynamicSmemBytes = static_cast<std::size_t>(smem_bytes);
  lc.stream = stream;
  lc.attrs = attrs;
  lc.numAttrs = 1;
  cudaError_t const launched = cudaLaunchKernelEx(&lc, kernel, params);
  if (launched == cudaErrorCooperativeLaunchTooLarge) {
    (void)cudaGetLastError();
    return Status(StatusCode::kCudaError,
                  cat(name, ": the one-kernel forward needs all ", ctas, " CTAs resident at "
                      "once (one per SM) and the device cannot place them now (",
                      cudaGetErrorString(launched), "); FLASHMOE_FUSED=0 runs the multi-kernel "
                      "path instead"));
  }
  FLASHMOE_CUDA_CHECK(launched);
  cudaError_t const err = cudaGetLastError();
  if (err != cudaSuccess) {
    return detail::cuda_status(err, cat("launch of ", name).c_str(), __FILE__, __LINE__);
  }
  return Status::Ok();
}

}  // namespace
}  // namespace fused_phases
}  // namespace flashmoe::fused
