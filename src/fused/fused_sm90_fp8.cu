// flashmoe: the single-launch FP8 forward on Hopper (fused_sm90_fp8.h).
//
// One persistent grid, one 384-thread CTA per SM (co-resident: launched cooperatively), in four
// phases separated by grid-wide barriers (an arrival counter and a generation word in the
// workspace):
//   1. routing: CTA c owns tokens [c * chunk, (c + 1) * chunk); its three warpgroups take one
//      token each at a time through topk_token (the top-k kernel's own code, on a named
//      barrier per warpgroup); then its twelve warps quantize the owned token rows to E4M3
//      (quantize_row_warp, the pre-pass kernel's code). The CTA counts its final ids per expert
//      into its row of the [CTAs, E] table.                                       -- barrier --
//   1b. capacity only (capacity_phases): each expert's slots listed in (token, slot) order, the
//      experts over capacity cut by one CTA each (a radix select of the cap-th priority key),
//      the reroute rounds by CTA 0, the final ids counted again.            -- 3 or 4 barriers --
//   2. dispatch: every CTA sums the table (totals, and its own base per expert = the counts of
//      the CTAs before it), scans the local experts' rows and 64-row tiles, writes its share of
//      the tile list, and warp 0 gives each owned assignment, in (token, slot) order, its dense
//      row: base + rank among the earlier ones of its expert (__match_any_sync over 32 slots
//      at a time). The same order as the multi-kernel path's stable sort: (local expert, token,
//      slot).                                                                      -- barrier --
//   3. the expert GEMM: the m128 pipelined kernel's body (sm90_fp8_pipelined_body) as is -- its
//      own work queue over (tile, n-tile) items, producer and math warpgroups. Gated FFN: the
//      body runs the gate/up GEMM and then the down projection through the same pipeline, a
//      down item waiting only for its own m slot (FfnDeps: per-slot counters; the last gate/up
//      item of a slot quantizes its h rows).
//   4. after its last tile, each CTA's math warpgroups wait for every CTA's (barrier between
//      them only; the producer warpgroup is done) and combine the owned tokens (combine_token,
//      the combine kernel's code) in slot order: deterministic, no atomics.
// Reads of what other CTAs wrote go through L2 (ld.global.cg) in phases 1-2; the GEMM body reads
// the tile list and rows written in phase 2 through its usual loads, for the first time on this
// SM after the barrier's acquire, so no L1 line can be stale (an SM's L1 starts every kernel
// empty of global data). What phase 3 writes and reads back within it (the FFN's h rows, their
// E4M3 copies and scales) goes through L2 only: ld.global.cg, cp.async.cg.
#include "fused/fused_sm90_fp8.h"

#include <cuda.h>
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

#include "common/str_cat.h"
#include "fused/combine.h"
#include "fused/combine_device.cuh"
#include "fused/cuda_check.h"
#include "fused/multikernel_fp8.h"
#include "fused/multikernel_moe.h"
#include "gemm/sm90_device_util.cuh"
#include "gemm/sm90_fp8_grouped_gemm.cuh"
#include "gemm/sm90_fp8_grouped_gemm.h"
#include "gemm/sm90_grouped_gemm.h"
#include "gemm/token_quantize.cuh"
#include "routing/capacity_cut_block.cuh"
#include "routing/reroute_block.cuh"
#include "routing/routing_device.cuh"
#include "routing/topk_token.cuh"

namespace flashmoe::fused {
namespace {

using detail::cat;
using Pipe = gemm::Sm90Fp8PipeTile<128>;
constexpr int kThreads = Pipe::kThreads;  // 384: three warpgroups
constexpr int kWarps = kThreads / 32;
// The top-k of a token by a warpgroup (at most 3 tokens per CTA: the latency of one token is
// what counts) or by a warp (more tokens per CTA: twelve at a time).
using TopkSmemWg = routing::TopkSmem<128, 2>;
using TopkSmemWarp = routing::TopkSmem<32, 8>;
constexpr int kWarpgroupTopkMaxChunk = 3;
using WarpScan = cub::WarpScan<int>;
using BlockScan = cub::BlockScan<int, kThreads>;
static_assert(TopkSmemWg::kMaxE >= kFusedMaxExperts && TopkSmemWarp::kMaxE >= kFusedMaxExperts,
              "the top-k shared memory covers E");
static_assert(kFusedMaxExperts % 32 == 0, "whole lanes of local experts in warp 0's scans");

// Hardware named barriers of the phases (CUTLASS keeps 0-7; the GEMM body's producer uses 8).
constexpr int kTopkBarrier = 12;  // 12, 13, 14: warpgroups 0..2 in phase 1
constexpr int kMathBarrier = 15;  // the 256 math threads in phase 4
constexpr int kDepsBarrier = 11;  // the 256 math threads after a gate/up item (FfnDeps)

struct FusedParams {
  gemm::Sm90Fp8KernelParams gemm;   // the first GEMM (x W1); its CUtensorMap keeps the 64-byte
  gemm::Sm90Fp8KernelParams gemm2;  // alignment; gated FFN: the down projection (h W2)
  routing::RoutingParams rp;
  routing::RoutingBuffers rb;
  CombineParams cp;
  void const* tokens;
  float* token_scales;
  uint8_t* token_fp8;
  int32_t* cta_counts;  // [E, kFusedMaxCtas]: column c = CTA c's final ids per expert
  uint32_t* grid_sync;  // [2] arrivals, generation (arrivals zero at launch)
  int32_t* topk_ids_out;
  float* topk_weights_out;
  int32_t* expert_load_out;
  int64_t* drop_reroute_out;
  uint64_t* timeline;   // [CTAs, kFusedTimelineSlots] or null (FLASHMOE_FUSED_TIMELINE=1)
  int32_t hidden;
  int32_t token_bf16;   // 1 bf16, 0 fp16
  int32_t tokens_vec16;
  int32_t chunk;        // tokens per CTA
  int32_t active_ctas;  // ceil(T / chunk)
  // Gated FFN (ffn = 1): h rows of the first GEMM (bf16), their E4M3 rows and scales, and per
  // m slot the count of finished gate/up items (gemm.n_tiles + 1 once its rows are quantized).
  int32_t ffn;
  int32_t inter;
  __nv_bfloat16 const* h_rows;
  float* hidden_scales;
  uint8_t* hidden_fp8;
  int32_t* tile_done;
};

// Dynamic shared memory of phases 1-2 (the GEMM's pipeline reuses the window afterwards).
struct RoutingSmem {
  union {
    TopkSmemWg wg[3];
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

__device__ __forceinline__ void stamp(FusedParams const& fp, int slot) {
  if (fp.timeline == nullptr) return;
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  fp.timeline[blockIdx.x * kFusedTimelineSlots + slot] = t;
}

__device__ __forceinline__ void cta_grid_sync(uint32_t* sync) {
  __syncthreads();
  if (threadIdx.x == 0) grid_arrive_wait(sync, gridDim.x);
  __syncthreads();
}

// Phase 4, run by every math thread after its last GEMM tile. (The owned tokens are recomputed
// here: a value live across the GEMM body would cost the 56-register producer a spill.)
struct CombineAfterGemm {
  FusedParams const& fp;
  __device__ __forceinline__ void operator()() const {
    int const mt = static_cast<int>(threadIdx.x) - 128;  // 0..255
    int const T = fp.rp.num_tokens;
    int const t0 = min(T, static_cast<int>(blockIdx.x) * fp.chunk);
    int const t1 = min(T, t0 + fp.chunk);
    asm volatile("bar.sync %0, 256;" ::"n"(kMathBarrier) : "memory");
    if (mt == 0) {
      stamp(fp, 5);
      grid_arrive_wait(fp.grid_sync, gridDim.x);
      stamp(fp, 6);
    }
    asm volatile("bar.sync %0, 256;" ::"n"(kMathBarrier) : "memory");
    for (int t = t0; t < t1; ++t) {
      if (fp.token_bf16) {  // y and out are in the tokens' dtype
        combine_token<__nv_bfloat16>(fp.cp, t, mt, 256);
      } else {
        combine_token<__half>(fp.cp, t, mt, 256);
      }
    }
    if (fp.timeline != nullptr) {
      asm volatile("bar.sync %0, 256;" ::"n"(kMathBarrier) : "memory");
      if (mt == 0) stamp(fp, 7);
    }
  }
};

// The gated FFN's two GEMMs in one pipeline, ordered per m slot instead of by a grid barrier:
// the CTA whose gate/up item of a slot finishes last (its count reaches n_tiles) quantizes the
// slot's h rows (quantize_row_warp, the multi-kernel pass's rule and code) and then releases the
// slot (count n_tiles + 1); a down-projection item of the slot copies its A rows only after
// seeing that. No deadlock: a CTA's producer reaches the down projection only once the gate/up
// queue is empty, so every gate/up item has been taken by a running CTA whose math warpgroups
// finish it without waiting on anything.
// The h rows [row0, row0 + rows) to E4M3, a warp per row (eight 16-byte loads in flight per
// lane: an L2 round trip per load would make a 128-row slot cost tens of microseconds). Inlined
// into the math warpgroups' tile loop, which frees the accumulators before it (called out of
// line, ptxas spilled the registers live across the call).
__device__ __forceinline__ void quantize_h_rows(FusedParams const& fp, int row0, int rows, int mt) {
  int const warp = mt / 32;
  int const lane = mt % 32;
  int64_t const I = fp.inter;
  for (int r = row0 + warp; r < row0 + rows; r += 8) {
    gemm::quantize_row_warp<__nv_bfloat16, true, 8>(fp.h_rows + r * I, I, true, lane,
                                                 fp.hidden_scales + r, fp.hidden_fp8 + r * I);
  }
}

struct FfnDeps {
  static constexpr bool kActive = true;
  FusedParams const& fp;

  __device__ __forceinline__ void wait_rows(int gemm, int slot) const {
    if (gemm == 0) return;
    uint32_t const* flag = reinterpret_cast<uint32_t const*>(fp.tile_done + slot);
    uint32_t const ready = static_cast<uint32_t>(fp.gemm.n_tiles) + 1u;
    while (ld_acquire(flag) != ready) __nanosleep(64);
  }

  __device__ __forceinline__ void item_done(int gemm, int slot, int row0, int rows, int mt,
                                            int32_t* word) const {
    if (gemm != 0 || !fp.ffn) return;
    asm volatile("bar.sync %0, 256;" ::"n"(kDepsBarrier) : "memory");  // the item's h stores
    if (mt == 0) {
      __threadfence();
      int const before = atomicAdd(fp.tile_done + slot, 1);
      *word = before == fp.gemm.n_tiles - 1;
    }
    asm volatile("bar.sync %0, 256;" ::"n"(kDepsBarrier) : "memory");
    if (*word == 0) return;  // the same for all 256 threads
    __threadfence();  // every gate/up item of the slot stored its h columns before its count
    quantize_h_rows(fp, row0, rows, mt);
    asm volatile("bar.sync %0, 256;" ::"n"(kDepsBarrier) : "memory");
    if (mt == 0) {
      __threadfence();
      st_release(reinterpret_cast<uint32_t*>(fp.tile_done + slot),
                 static_cast<uint32_t>(fp.gemm.n_tiles) + 1u);
    }
  }
};

// This CTA's final ids per expert (its owned slots [a0, a1)) into column cta of the [E,
// kFusedMaxCtas] table. After capacity (tally): also its dropped and rerouted slots, added to the
// user's two counts. final_ids is read through L2: the capacity cut marks other CTAs' slots.
__device__ __forceinline__ void count_owned(FusedParams const& fp, RoutingSmem& sm, int64_t a0,
                                            int64_t a1, bool tally) {
  routing::RoutingBuffers const& rb = fp.rb;
  int const tid = static_cast<int>(threadIdx.x);
  int const E = fp.rp.num_experts;
  for (int e = tid; e < E; e += kThreads) sm.count[e] = 0;
  if (tid == 0) {
    sm.dropped = 0;
    sm.rerouted = 0;
  }
  __syncthreads();
  int dropped = 0;
  int rerouted = 0;
  for (int64_t a = a0 + tid; a < a1; a += kThreads) {
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
    for (int e = tid; e < E; e += kThreads) fp.cta_counts[e * kFusedMaxCtas + cta] = sm.count[e];
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
__device__ __forceinline__ void read_count_table(FusedParams const& fp, RoutingSmem& sm) {
  int const cta = static_cast<int>(blockIdx.x);
  for (int e = static_cast<int>(threadIdx.x); e < fp.rp.num_experts; e += kThreads) {
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
__device__ __noinline__ void capacity_phases(FusedParams const& fp, RoutingSmem& sm, int64_t a0,
                                             int64_t a1) {
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
    for (int64_t a = a0 + tid; a < a1; a += kThreads) rb.pending[a] = 0;
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
      routing::capacity_cut_block<kThreads>(rp, rb, rb.prio_keys_sorted + sm.estart[e],
                                            rb.perm_expert + sm.estart[e], sm.total[e], sm.cut,
                                            sm.block_scan);
    }
  }
  cta_grid_sync(fp.grid_sync);
  if (rp.reroute) {
    if (cta == 0) routing::reroute_rounds<kThreads>(rp, rb, sm.block_scan);
    cta_grid_sync(fp.grid_sync);
  }
  count_owned(fp, sm, a0, a1, true);
  cta_grid_sync(fp.grid_sync);
  read_count_table(fp, sm);
}

// Phases 1 and 2 (everything before the GEMM), not inlined: compiled apart from the GEMM body,
// whose warpgroups run at 56 and 224 registers (setmaxnreg), so that neither allocation
// constrains the other (inlined, ptxas spilled a few bytes).
__device__ __noinline__ void routing_phases(FusedParams const& fp) {
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
    if (rp.prerouted) {
      for (int64_t a = a0 + tid; a < a1; a += kThreads) routing::prerouted_assignment(rp, rb, a);
    } else if (fp.chunk <= kWarpgroupTopkMaxChunk) {
      int const wg = tid / 128;
      for (int t = t0 + wg; t < t1; t += 3) {
        routing::topk_token<128, 2>(rp, rb, t, tid % 128, sm.topk.wg[wg],
                                    routing::WarpgroupSync{kTopkBarrier + wg});
        routing::WarpgroupSync{kTopkBarrier + wg}();  // the next token rewrites sm.topk.wg[wg]
      }
    } else {
      int const w = tid / 32;
      for (int t = t0 + w; t < t1; t += kWarps) {
        routing::topk_token<32, 8>(rp, rb, t, tid % 32, sm.topk.warp[w], routing::WarpSync{});
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
    for (int t = t0 + warp; t < t1; t += kWarps) {
      if (fp.token_bf16) {
        gemm::quantize_row_warp<__nv_bfloat16>(
            static_cast<__nv_bfloat16 const*>(fp.tokens) + t * H, H, fp.tokens_vec16 != 0, lane,
            fp.token_scales + t, fp.token_fp8 + t * H);
      } else {
        gemm::quantize_row_warp<__half>(static_cast<__half const*>(fp.tokens) + t * H, H,
                                        fp.tokens_vec16 != 0, lane, fp.token_scales + t,
                                        fp.token_fp8 + t * H);
      }
    }
  }
  if (tid == 0) stamp(fp, 9);
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
  for (int le = tid; le < EL; le += kThreads) {
    sm.lcount[le] = 0;
    sm.lbefore[le] = 0;
  }
  __syncthreads();
  // Global -> local: the identity without an expert map. A map may send several global experts
  // to one local expert (nothing forbids it): their counts add up (integer adds, any order).
  for (int e = tid; e < E; e += kThreads) {
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
      for (int e = tid; e < E; e += kThreads) fp.expert_load_out[e] = sm.total[e];
    }
    if (tid < 2 && fp.drop_reroute_out != nullptr && rp.capacity == 0) {
      fp.drop_reroute_out[tid] = 0;  // dropless (capacity_phases counts them otherwise)
    }
  }
  __syncthreads();
  int const tiles_total = sm.tile0[EL];
  if (fp.ffn) {  // the gate/up counts start at zero (read only after the next barrier)
    for (int m = cta * kThreads + tid; m < rp.num_tile_slots;
         m += static_cast<int>(gridDim.x) * kThreads) {
      fp.tile_done[m] = 0;
    }
  }

  // The tile list, as moe_build_tiles_kernel writes it: this CTA's share of the slots.
  for (int m = cta * kThreads + tid; m < rp.num_tile_slots;
       m += static_cast<int>(gridDim.x) * kThreads) {
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
        if (row >= 0) rb.row_token[row] = static_cast<int32_t>(a / k);
        if (fp.topk_ids_out != nullptr) fp.topk_ids_out[a] = e;
        if (fp.topk_weights_out != nullptr) fp.topk_weights_out[a] = e >= 0 ? rb.weights[a] : 0.f;
      }
    }
  }
  if (tid == 0) stamp(fp, 3);
  cta_grid_sync(fp.grid_sync);
  if (tid == 0) stamp(fp, 4);
}

__global__ void __launch_bounds__(kThreads, 1) fused_sm90_fp8_kernel(
    __grid_constant__ FusedParams const fp) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  routing_phases(fp);
  // ---- phases 3 and 4: the GEMM body (gated FFN: both GEMMs); its math warpgroups then combine
  // the owned tokens.
  gemm::sm90_fp8_pipelined_body<Pipe>(fp.gemm, fp.gemm2, fp.ffn ? 2 : 1, CombineAfterGemm{fp},
                                      FfnDeps{fp});
#else
  __trap();
#endif
}

}  // namespace

std::string fused_fp8_unsupported_reason(MoeProblem const& p) {
  if (p.num_experts > kFusedMaxExperts || p.num_local_experts > kFusedMaxExperts) {
    return cat("more than ", kFusedMaxExperts, " experts");
  }
  return "";
}

bool fused_fp8_preferred(MoeProblem const&) {
  char const* v = std::getenv("FLASHMOE_FUSED");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

Status run_fused_fp8(MoeProblem const& problem, MoeArgs const& args, MoeConfig const& config,
                     MoeWorkspace const& ws, cudaStream_t stream) {
  bool const ffn = problem.kind == ExpertKind::kGatedFFN;
  if (ws.token_scales == nullptr || ws.token_fp8 == nullptr || ws.fused_counts == nullptr ||
      ws.expert_out == nullptr ||
      (ffn && (ws.hidden == nullptr || ws.hidden_scales == nullptr || ws.hidden_fp8 == nullptr ||
               ws.fused_tile_done == nullptr))) {
    return Status(StatusCode::kInternal, "fused fp8: workspace carved without the FP8 slices");
  }
  std::string const why = fused_fp8_unsupported_reason(problem);
  if (!why.empty()) {
    return Status(StatusCode::kInternal, "fused fp8 called for an unsupported problem: " + why);
  }
  int num_sms = 0;
  FLASHMOE_RETURN_IF_ERROR(gemm::sm90_device_sms("fused fp8", &num_sms));
  int const ctas = std::max(1, std::min(num_sms, kFusedMaxCtas));
  int64_t const T = problem.num_tokens;
  int64_t const H = problem.hidden;

  // The GEMM's work queue and the grid barrier's arrivals start at zero.
  FLASHMOE_RETURN_IF_ERROR(zero_gemm_queues(ws, stream));

  // The multi-kernel forward's first GEMM on the E4M3 token rows the kernel writes in phase 1
  // (the m128 body runs whatever variant the configuration names).
  gemm::Sm90Fp8GemmParams const g = token_gemm_params(problem, args, config, ws, true);

  FusedParams fp{};
  int smem_bytes = 0;
  FLASHMOE_RETURN_IF_ERROR(gemm::sm90_fp8_prequant_m128_params(g, &fp.gemm, &smem_bytes));
  fp.gemm2 = fp.gemm;  // unused by linear experts (one GEMM)
  if (ffn) {
    // The down projection on the E4M3 h rows that the kernel quantizes per m slot.
    int smem2 = 0;
    FLASHMOE_RETURN_IF_ERROR(gemm::sm90_fp8_prequant_m128_params(
        down_gemm_params(problem, args, config, ws, true), &fp.gemm2, &smem2));
    // One pipeline runs both: the same ring (stages, carve-up) and A mode; only the first GEMM
    // may split K (the body compiles the split-K sum into its first GEMM's tiles only).
    if (fp.gemm2.k_splits != 1 || smem2 != smem_bytes ||
        fp.gemm2.num_stages != fp.gemm.num_stages ||
        fp.gemm2.control_offset != fp.gemm.control_offset || fp.gemm2.a_mode != fp.gemm.a_mode) {
      return Status(StatusCode::kInternal, "fused fp8: the FFN's two GEMMs plan different rings");
    }
    fp.ffn = 1;
    fp.inter = static_cast<int32_t>(problem.inter_dim);
    fp.h_rows = static_cast<__nv_bfloat16 const*>(ws.hidden);
    fp.hidden_scales = ws.hidden_scales;
    fp.hidden_fp8 = static_cast<uint8_t*>(ws.hidden_fp8);
    fp.tile_done = ws.fused_tile_done;
  }
  smem_bytes = std::max(smem_bytes, static_cast<int>(sizeof(RoutingSmem)));
  fp.rp = make_routing_params(problem, args, config);
  fp.rb = ws.routing;
  fp.cp = combine_params(problem, args, ws);
  fp.tokens = args.tokens;
  fp.token_scales = ws.token_scales;
  fp.token_fp8 = static_cast<uint8_t*>(ws.token_fp8);
  fp.cta_counts = ws.fused_counts;
  fp.grid_sync = reinterpret_cast<uint32_t*>(ws.gemm_scheduler + 2 * kGemmSchedulerInts);
  fp.topk_ids_out = args.topk_ids_out;
  fp.topk_weights_out = args.topk_weights_out;
  fp.expert_load_out = args.expert_load;
  fp.drop_reroute_out = args.drop_reroute_counts;
  char const* tl = std::getenv("FLASHMOE_FUSED_TIMELINE");
  fp.timeline = tl != nullptr && std::strcmp(tl, "1") == 0 ? ws.fused_timeline : nullptr;
  fp.hidden = static_cast<int32_t>(H);
  fp.token_bf16 = problem.token_dtype == DType::kBFloat16 ? 1 : 0;
  fp.tokens_vec16 = reinterpret_cast<std::uintptr_t>(args.tokens) % 16 == 0 && H % 8 == 0;
  fp.chunk = static_cast<int32_t>((T + ctas - 1) / ctas);
  fp.active_ctas = static_cast<int32_t>((T + fp.chunk - 1) / fp.chunk);

  // The kernel's attributes are checked and set once per device and shared-memory size (a
  // decode call's whole GPU time is ~0.1 ms: host work per call matters).
  int device = 0;
  FLASHMOE_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mu;
  static int configured_smem[64] = {};
  bool configured = false;
  {
    std::lock_guard<std::mutex> lock(mu);
    configured = device >= 0 && device < 64 && configured_smem[device] == smem_bytes;
  }
  if (!configured) {
    void const* kernel = reinterpret_cast<void const*>(&fused_sm90_fp8_kernel);
    cudaFuncAttributes attr{};
    FLASHMOE_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
    if (attr.ptxVersion < 90) {
      return Status::Unsupported("fused fp8: this build has no sm_90a code (build with "
                                 "CMAKE_CUDA_ARCHITECTURES including 90a-real)");
    }
    FLASHMOE_CUDA_CHECK(cudaFuncSetAttribute(&fused_sm90_fp8_kernel,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             smem_bytes));
    std::lock_guard<std::mutex> lock(mu);
    if (device >= 0 && device < 64) configured_smem[device] = smem_bytes;
  }
  // Cooperative: the driver places every CTA at once (or fails the launch), which the grid
  // barriers need.
  cudaLaunchAttribute attrs[1];
  attrs[0].id = cudaLaunchAttributeCooperative;
  attrs[0].val.cooperative = 1;
  cudaLaunchConfig_t lc{};
  lc.gridDim = dim3(static_cast<unsigned>(ctas));
  lc.blockDim = dim3(kThreads);
  lc.dynamicSmemBytes = static_cast<std::size_t>(smem_bytes);
  lc.stream = stream;
  lc.attrs = attrs;
  lc.numAttrs = 1;
  cudaError_t const launched = cudaLaunchKernelEx(&lc, fused_sm90_fp8_kernel, fp);
  if (launched == cudaErrorCooperativeLaunchTooLarge) {
    (void)cudaGetLastError();
    return Status(StatusCode::kCudaError,
                  cat("fused fp8: the one-kernel forward needs all ", ctas, " CTAs resident at "
                      "once (one per SM) and the device cannot place them now (",
                      cudaGetErrorString(launched), "); FLASHMOE_FUSED=0 runs the multi-kernel "
                      "path instead"));
  }
  FLASHMOE_CUDA_CHECK(launched);
  FLASHMOE_LAUNCH_CHECK("fused_sm90_fp8_kernel");
  return Status::Ok();
}

}  // namespace flashmoe::fused
