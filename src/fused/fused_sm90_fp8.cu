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
//   Solo mode (T <= 2 tokens of <= 32 slots, no capacity): CTA 0 owns every token and, after
//      phase 1, writes phase 2's outputs itself (solo_dispatch); the other CTAs wait for its flag
//      instead of barriers 1 and 2 -- in the GEMM's producer, after the body's set-up and their
//      first queue take (FusedDeps::wait_routed); the last GEMM's items combine (phase 4
//      below), so no CTA waits at barrier 3 (where the sync region has no room for their
//      counts, CTA 0 waits there alone and combines, the others only arrive). With one token
//      CTA 0 releases what the GEMM reads right after the selection and the rest later, its
//      idle warps quantizing the row meanwhile (FusedRoutingParams::solo_fast).
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
//      down item waiting only for its own m slot (FusedDeps: per-slot counters; the last gate/up
//      item of a slot quantizes its h rows).
//   4. after its last tile, each CTA's math warpgroups wait for every CTA's (barrier between
//      them only; the producer warpgroup is done) and combine the owned tokens (combine_token,
//      the combine kernel's code) in slot order: deterministic, no atomics. Solo mode instead
//      combines inside phase 3: the item that completes a count per n tile of the last GEMM
//      combines those columns of every token (FusedDeps::item_stored), and no CTA waits.
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

#include "common/env_flag.h"
#include "fused/cuda_check.h"
#include "fused/fused_phases.cuh"
#include "fused/multikernel_fp8.h"
#include "fused/multikernel_moe.h"
#include "fused/solo_down_gemv.cuh"
#include "gemm/sm90_device_util.cuh"
#include "gemm/sm90_fp8_grouped_gemm.cuh"
#include "gemm/sm90_fp8_grouped_gemm.h"
#include "gemm/sm90_grouped_gemm.h"

namespace flashmoe::fused {
namespace {

using namespace fused_phases;
using Pipe = gemm::Sm90Fp8PipeTile<128>;
static_assert(Pipe::kThreads == kFusedThreads, "the routing phases' CTA is the GEMM body's");
struct FusedParams {
  gemm::Sm90Fp8KernelParams gemm;   // the first GEMM (x W1); its CUtensorMap keeps the 64-byte
  gemm::Sm90Fp8KernelParams gemm2;  // alignment; gated FFN: the down projection (h W2)
  FusedRoutingParams r;             // the routing phases and the combine (r.tile_done: the FFN's
                                    // per-slot counts, gemm.n_tiles + 1 once a slot's h rows
                                    // are quantized)
  // Gated FFN (ffn = 1): h rows of the first GEMM (bf16), their E4M3 rows and scales.
  int32_t ffn;
  int32_t inter;
  __nv_bfloat16 const* h_rows;
  float* hidden_scales;
  uint8_t* hidden_fp8;
  // Gated FFN, one token (MoeConfig::fp8_down_gemv): the body runs the gate/up GEMM alone and
  // the math warpgroups then run the down projection and the combine as solo_down_gemv, over
  // gemv_blocks blocks of gemv_cols output columns (gemv_early: the weight copies before the h
  // rows' wait).
  uint8_t const* down_w;
  int32_t down_gemv;
  int32_t gemv_cols;
  int32_t gemv_blocks;
  int32_t gemv_early;
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

// The split gate/up GEMM with gemm.split_by_slot (MoeConfig::fp8_slot_finish, I <= 256): every
// K range of both n tiles counted on the slot, and the last one finishes the slot's h rows in
// one pass instead of each n tile's last range summing its ranges, storing bf16 h and counting
// itself, and the slot's last n tile reloading h to quantize it (perf-log v0.56). Thread c of
// the 256 math threads takes h channel c: its gate and up sums over the ranges in range order
// (split_k_reduce's adds), scaled as pipe_epilogue scales them, h = act(g) * u rounded to bf16
// (the h rows' type), then the row's E4M3 scale from the amax across the 256 threads and the
// channel's byte (quantize_row_warp's rule) -- the bits of the two-step path. The partials
// (written by other SMs during the launch) and the row scales through L2.
// Out of line (inlined into the tile loop, its code moved the T = 1 paths of the kernel that
// never run it: decode-1 +2..3 us, round 254), with what it reads of the kernel's parameters
// passed by value: through a reference each field would be a load on its chain.
struct SlotFinish {
  float const* partials;    // the slot's: n tile t's range s at + (t * k_splits + s) * floats
  float const* col_scales;  // the expert's channel scales (gate c, up inter + c); null: block
  int32_t const* a_rows;    // the rows' token (null: the dense row itself)
  float const* a_scales;    // the tokens' E4M3 scales
  uint8_t* h_fp8;           // [rows, inter] E4M3
  float* h_scales;
  uint32_t* release;        // the slot's count: `ready` once its h rows are written
  uint64_t* timeline;       // profiling: the CTA's timeline row (slots 31 "finish:start" and 23
                            // "slot released"), else null
  int32_t k_splits;
  int32_t inter;
  uint32_t ready;
  int32_t gelu;
  int32_t a_dense;          // the down projection boxes its A rows (async proxy)
};

__device__ __noinline__ void finish_split_slot(SlotFinish const f, int row0, int rows, int mt,
                                               float* warp_amax) {
  if (mt == 0 && f.timeline != nullptr) stamp_globaltimer_once(f.timeline + 31);  // profiling
  bool const has = mt < f.inter;
  int const chunk = mt >> 6;  // the 64-channel chunk: its 64 gate, then its 64 up columns
  int const gate_col = 128 * (chunk & 1) + (mt & 63);  // in its n tile (two chunks each)
  int64_t const range_floats = gemm::kSm90Fp8SplitPartialFloats;
  float const* const part = f.partials + (has ? chunk >> 1 : 0) * f.k_splits * range_floats;
  float sg = 1.0f;
  float su = 1.0f;
  if (f.col_scales != nullptr && has) {
    sg = __ldg(f.col_scales + mt);
    su = __ldg(f.col_scales + f.inter + mt);
  }
#pragma unroll 1
  for (int r = 0; r < rows; ++r) {
    int const dense = row0 + r;
    float h = 0.0f;
    if (has) {
      int const src = f.a_rows != nullptr ? __ldcg(f.a_rows + dense) : dense;
      int const gi = gemm::sm90_fp8_detail::split_image_index(r, gate_col);
      int const ui = gemm::sm90_fp8_detail::split_image_index(r, gate_col + 64);
      float g = 0.0f;
      float u = 0.0f;
#pragma unroll 8
      for (int s = 0; s < f.k_splits; ++s) {
        g += __ldcg(part + s * range_floats + gi);
        u += __ldcg(part + s * range_floats + ui);
      }
      float const s_tok = __ldcg(f.a_scales + src);
      float const gs = g * s_tok * sg;
      float const us = u * s_tok * su;
      float const a = f.gelu ? gemm::sm90_util::gelu(gs) : gemm::sm90_util::silu(gs);
      h = __bfloat162float(__float2bfloat16_rn(a * us));
    }
    float m = gemm::warp_max(fabsf(h));
    float* const maxima = warp_amax + 8 * (r & 1);  // by row parity: one barrier per row
    if ((mt & 31) == 0) maxima[mt >> 5] = m;
    asm volatile("bar.sync %0, 256;" ::"n"(kDepsBarrier) : "memory");
#pragma unroll
    for (int w = 0; w < 8; ++w) m = fmaxf(m, maxima[w]);
    float const scale = gemm::e4m3_row_scale(m);
    if (has) {
      f.h_fp8[static_cast<int64_t>(dense) * f.inter + mt] = gemm::e4m3_byte(h, 1.0f / scale);
    }
    if (mt == 0) f.h_scales[dense] = scale;
  }
  // Dense A: the down projection's TMA boxes read these rows through the async proxy.
  if (f.a_dense) gemm::sm90_util::fence_proxy_async_global();
  asm volatile("bar.sync %0, 256;" ::"n"(kDepsBarrier) : "memory");
  if (mt == 0) {  // a release store: cumulative over the rows the barrier ordered before it
    st_release(f.release, f.ready);
    if (f.timeline != nullptr) stamp_globaltimer_once(f.timeline + 23);  // profiling
  }
}

// Solo mode: the columns of the last GEMM's n tile `n_tile`, every token (token mt / 128: at most
// 2), by the 256 math threads (after the CTA's last item: FusedDeps::after_tiles).
static_assert(kSoloMaxTokens <= 2, "two tokens per 256 math threads");
__device__ __forceinline__ void combine_n_tile(FusedRoutingParams const& r, int n_tile, int mt) {
  int const t = mt >> 7;
  int64_t const c0 = static_cast<int64_t>(n_tile) * (Pipe::kBlockN / 8);
  if (t >= r.rp.num_tokens) return;
  combine_token_of(r, t, mt & 127, 128, c0, c0 + Pipe::kBlockN / 8);
}

// The math warpgroups after their last tile: the one-token gated FFN's down projection and combine
// (solo_down_gemv), else phase 4 (CombineAfterGemm).
struct Fp8AfterGemm {
  FusedParams const& fp;
  __device__ __forceinline__ void operator()() const {
    if (!fp.down_gemv) {
      CombineAfterGemm{fp.r}();
      return;
    }
    SoloDownGemv g;
    g.w = fp.down_w;
    g.w_scales = fp.gemm2.w_scales;
    g.h_fp8 = fp.hidden_fp8;
    g.h_scales = fp.hidden_scales;
    g.tiles = fp.gemm.tiles;
    g.tile_done = fp.r.tile_done;
    g.slot_row = fp.r.cp.slot_row;
    g.weights = fp.r.cp.weights;
    g.out = fp.r.cp.out;
    g.queue = fp.gemm2.scheduler;  // the down GEMM's queue, which the body does not run
    g.timeline = fp.r.timeline != nullptr ? fp.r.timeline + blockIdx.x * kFusedTimelineSlots
                                          : nullptr;
    g.n_prep = fp.gemm2.n_prep;
    g.ready = static_cast<uint32_t>(fp.gemm.n_tiles) + 1u;
    g.num_tile_slots = fp.gemm.num_tile_slots;
    g.hidden = fp.gemm2.n_out;
    g.inter = fp.inter;
    g.block_cols = fp.gemv_cols;
    g.num_blocks = fp.gemv_blocks;
    g.top_k = fp.r.cp.top_k;
    g.flags = (fp.gemm2.scale_block ? kGemvBlockScales : 0) | (fp.r.token_bf16 ? kGemvBf16 : 0) |
              (fp.gemv_early ? kGemvEarly : 0);
    extern __shared__ __align__(1024) uint8_t smem_gemv[];  // the pipeline's window
    int const mt = static_cast<int>(threadIdx.x) - 128;
    switch (fp.inter / 64) {  // I in {64, 128, 256, 512} (choose_fp8_config)
      case 1:
        solo_down_gemv<1>(g, mt, smem_gemv);
        break;
      case 2:
        solo_down_gemv<2>(g, mt, smem_gemv);
        break;
      case 4:
        solo_down_gemv<4>(g, mt, smem_gemv);
        break;
      default:
        solo_down_gemv<8>(g, mt, smem_gemv);
        break;
    }
  }
};

// The body's hooks (sm90_util::NoPipeDeps says when they run): the gated FFN's per-slot order
// (wait_rows, item_done) and solo mode's combine by the items (item_stored, after_tiles).
// kTimeline: the profiling build (FLASHMOE_FUSED_TIMELINE=1), whose hooks stamp the timeline;
// in the production kernel the stamps are compiled out (gemm::Sm90Fp8PipeTile::kTimeline).
template <bool kTimeline>
struct FusedDeps {
  static constexpr bool kActive = true;
  FusedParams const& fp;

  // Solo mode (FusedRoutingParams::solo_wait_in_gemm): CTA 0's flag, before the first GEMM's
  // tile list is read. The acquire and the producer's barriers and stage arrivals after it order
  // every later read of the dispatch in this CTA (the math warpgroups read it only after their
  // first item's stages; a CTA without an item has none to read); this SM has read none of it
  // before in this launch (no stale L1 line). Every producer passes here before it counts itself
  // done, so the flag's clearing (clear_on_done) comes after every wait.
  __device__ __forceinline__ void wait_routed(int gemm) const {
    if (gemm != 0 || !fp.r.solo_wait_in_gemm || blockIdx.x == 0) return;
    uint32_t const* flag = fp.r.grid_sync + 2;
    while ((ld_acquire(flag) & kSoloDispatched) == 0u) __nanosleep(32);
    if (kTimeline && fp.r.timeline != nullptr) {  // profiling: "barrier2", flag seen
      stamp_globaltimer(fp.r.timeline + blockIdx.x * kFusedTimelineSlots + 4);
    }
  }

  // solo_fast: the rest of CTA 0's routing (the weights, which the combine reads), acquired
  // before the end marker that the math warpgroups wait for before they combine, and before this
  // CTA counts itself done (so again before the flag's clearing). Off the math warpgroups'
  // chain: the producer gets here while they still work on the last stages.
  __device__ __forceinline__ void wait_rest(int gemm) const {
    if (gemm != 0 || !fp.r.solo_fast) return;
    uint32_t const* flag = fp.r.grid_sync + 2;
    while ((ld_acquire(flag) & kSoloRest) == 0u) __nanosleep(64);
  }

  __device__ __forceinline__ void wait_rows(int gemm, int slot) const {
    if (gemm == 0) return;
    uint32_t const* flag = reinterpret_cast<uint32_t const*>(fp.r.tile_done + slot);
    uint32_t const ready = static_cast<uint32_t>(fp.gemm.n_tiles) + 1u;
    while (ld_acquire(flag) != ready) __nanosleep(64);
    // Dense A: this thread's TMA boxes read the h rows through the async proxy.
    if (fp.gemm2.a_dense) gemm::sm90_util::fence_proxy_async_global();
  }

  __device__ __forceinline__ void item_done(int gemm, int slot, int row0, int rows, int mt,
                                            int32_t* word) const {
    if (gemm != 0 || !fp.ffn) return;
    asm volatile("bar.sync %0, 256;" ::"n"(kDepsBarrier) : "memory");  // the item's h stores
    if (mt == 0) {
      // Release (this item's h columns) and, for the slot's last item, acquire (the others');
      // the barrier orders the 256 threads' reads of the h rows (L2: __ldcg) after it.
      int const before = gemm::sm90_util::atomic_add_acq_rel_gpu(fp.r.tile_done + slot, 1);
      *word = before == fp.gemm.n_tiles - 1;
    }
    asm volatile("bar.sync %0, 256;" ::"n"(kDepsBarrier) : "memory");
    if (*word == 0) return;  // the same for all 256 threads
    quantize_h_rows(fp, row0, rows, mt);
    // Dense A: the down projection's TMA boxes read these rows through the async proxy; each
    // writer's proxy fence orders its stores before the release below.
    if (fp.gemm2.a_dense) gemm::sm90_util::fence_proxy_async_global();
    asm volatile("bar.sync %0, 256;" ::"n"(kDepsBarrier) : "memory");
    if (mt == 0) {  // a release store: cumulative over the rows the barrier ordered before it
      st_release(reinterpret_cast<uint32_t*>(fp.r.tile_done + slot),
                 static_cast<uint32_t>(fp.gemm.n_tiles) + 1u);
      if (kTimeline && fp.r.timeline != nullptr) {  // profiling: first slot released
        stamp_globaltimer_once(fp.r.timeline + blockIdx.x * kFusedTimelineSlots + 23);
      }
    }
  }

  // The split gate/up GEMM with gemm.split_by_slot: the slot's last K range (finish_split_slot).
  static constexpr bool kSlotFinish = true;
  __device__ __forceinline__ void finish_slot(gemm::Sm90Fp8KernelParams const& p, int e,
                                              int slot, int row0, int rows, int mt,
                                              float* warp_amax) const {
    SlotFinish f;
    f.partials = gemm::sm90_fp8_detail::split_partial_image(p, slot, 0, 0);
    f.col_scales = p.scale_block ? nullptr : p.w_scales + static_cast<int64_t>(e) * p.n_raw;
    f.a_rows = p.a_rows;
    f.a_scales = p.a_scales;
    f.h_fp8 = fp.hidden_fp8;
    f.h_scales = fp.hidden_scales;
    f.release = reinterpret_cast<uint32_t*>(fp.r.tile_done + slot);
    f.timeline = kTimeline && fp.r.timeline != nullptr
                     ? fp.r.timeline + blockIdx.x * kFusedTimelineSlots
                     : nullptr;
    f.k_splits = p.k_splits;
    f.inter = fp.inter;
    f.ready = static_cast<uint32_t>(fp.gemm.n_tiles) + 1u;
    f.gelu = p.epilogue == static_cast<int32_t>(gemm::Fp8Epilogue::kGateUpGelu) ? 1 : 0;
    f.a_dense = fp.gemm2.a_dense;
    finish_split_slot(f, row0, rows, mt, warp_amax);
  }

  // Solo mode (FusedRoutingParams::tile_combine_count): an item of the last GEMM counts itself
  // for its n tile; the CTA whose item completes the count (every tile of the dispatch has
  // stored those columns) zeroes it and, after its last item (after_tiles), combines those
  // columns for every token -- the same adds in the same order as combine_token over the whole
  // row, so the same bits. What it saves: barrier 3 and one CTA combining whole rows after it
  // (rounds 152-153: ~5-6 us at T = 1). (Combining inside the tile loop made ptxas spill the
  // loop's state, inlined or called: hence the record in `pending`, one bit per n tile.)
  __device__ __forceinline__ void item_stored(int gemm, int n_tile, int mt,
                                              uint32_t* pending) const {
    if (fp.r.tile_combine_count == nullptr || gemm != (fp.ffn ? 1 : 0)) return;
    asm volatile("bar.sync %0, 256;" ::"n"(kDepsBarrier) : "memory");  // the item's y stores
    if (mt == 0) {
      // Release (this item's columns) and, for the n tile's last item, acquire (the others'),
      // which the barriers before after_tiles' reads carry to the other threads.
      int const before =
          gemm::sm90_util::atomic_add_acq_rel_gpu(fp.r.tile_combine_count + n_tile, 1);
      if (before == solo_tile_count(fp.r) - 1) {
        fp.r.tile_combine_count[n_tile] = 0;  // its last arrival: nothing touches it again
        pending[n_tile >> 5] |= 1u << (n_tile & 31);
      }
    }
    asm volatile("bar.sync %0, 256;" ::"n"(kDepsBarrier) : "memory");
  }

  __device__ __forceinline__ void after_tiles(int mt, uint32_t const* pending) const {
    if (fp.r.tile_combine_count == nullptr) return;
    bool any = false;
    for (int w = 0; w < 2; ++w) {
      for (uint32_t bits = pending[w]; bits != 0u; bits &= bits - 1u) {
        combine_n_tile(fp.r, 32 * w + __ffs(static_cast<int>(bits)) - 1, mt);
        any = true;
      }
    }
    if (kTimeline && any && fp.r.timeline != nullptr) {  // profiling: "combined"
      asm volatile("bar.sync %0, 256;" ::"n"(kDepsBarrier) : "memory");
      if (mt == 0) stamp_globaltimer(fp.r.timeline + blockIdx.x * kFusedTimelineSlots + 7);
    }
  }
};

// kTimeline: the profiling build, launched when FLASHMOE_FUSED_TIMELINE=1 (the routing phases
// test their stamps at run time either way: they are not on the GEMM's paths).
template <bool kTimeline>
__global__ void __launch_bounds__(kFusedThreads, 1) fused_sm90_fp8_kernel(
    __grid_constant__ FusedParams const fp) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  routing_phases(fp.r);
  // ---- phases 3 and 4: the GEMM body (gated FFN: both GEMMs); its math warpgroups then combine
  // the owned tokens.
  gemm::sm90_fp8_pipelined_body<gemm::Sm90Fp8PipeTile<Pipe::kBlockM, kTimeline, true>>(
      fp.gemm, fp.gemm2, fp.ffn && !fp.down_gemv ? 2 : 1, Fp8AfterGemm{fp},
      FusedDeps<kTimeline>{fp});
#else
  __trap();
#endif
}

}  // namespace

Status run_fused_fp8(MoeProblem const& problem, MoeArgs const& args, MoeConfig const& config,
                     MoeWorkspace const& ws, cudaStream_t stream) {
  bool const ffn = problem.kind == ExpertKind::kGatedFFN;
  if (ws.token_scales == nullptr || ws.token_fp8 == nullptr || ws.fused_counts == nullptr ||
      ws.expert_out == nullptr ||
      (ffn && (ws.hidden == nullptr || ws.hidden_scales == nullptr || ws.hidden_fp8 == nullptr ||
               ws.fused_tile_done == nullptr))) {
    return Status(StatusCode::kInternal, "fused fp8: workspace carved without the FP8 slices");
  }
  int ctas = 0;
  FLASHMOE_RETURN_IF_ERROR(begin_fused_forward(problem, args, ws, stream, "fused fp8", &ctas));

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
    // The down projection's pairs need every item on the shared ring to be even (the first
    // GEMM's too): choose_fp8_config only pairs then (the kernel stops on a broken contract).
    bool const first_even = fp.gemm.kb_per_split % 2 == 0 && fp.gemm.num_kb % 2 == 0;
    if (fp.gemm2.k_splits != 1 || smem2 != smem_bytes ||
        (fp.gemm2.promote_kb == 2 && !first_even) || fp.gemm2.num_stages != fp.gemm.num_stages ||
        fp.gemm2.control_offset != fp.gemm.control_offset || fp.gemm2.a_mode != fp.gemm.a_mode ||
        fp.gemm2.a_dense != fp.gemm.a_dense) {
      return Status(StatusCode::kInternal, "fused fp8: the FFN's two GEMMs plan different rings");
    }
    // Its h scales are written by other SMs during the launch, after the producer's early
    // copy of a tile's row scales could run: the epilogue loads them itself.
    fp.gemm2.row_scales_early = 0;
    fp.gemm.split_by_slot = config.fp8_slot_finish && fp.gemm.k_splits > 1 ? 1 : 0;
    fp.ffn = 1;
    fp.inter = static_cast<int32_t>(problem.inter_dim);
    fp.h_rows = static_cast<__nv_bfloat16 const*>(ws.hidden);
    fp.hidden_scales = ws.hidden_scales;
    fp.hidden_fp8 = static_cast<uint8_t*>(ws.hidden_fp8);
  }
  smem_bytes = std::max(smem_bytes, static_cast<int>(sizeof(RoutingSmem)));
  fp.r = make_fused_routing_params(problem, args, config, ws, ctas, /*fp8_rows=*/true);
  fp.r.solo_wait_in_gemm = fp.r.solo;  // (FusedDeps::wait_routed)
  // One token, top-k routing, E4M3 rows gathered (warps 5-11 quantize the row in phase 1), the
  // deterministic combine: CTA 0 releases the GEMM's inputs right after the selection
  // (FusedRoutingParams::solo_fast).
  fp.r.solo_fast = fp.r.solo && problem.num_tokens == 1 && !fp.r.rp.prerouted &&
                   !fp.r.atomic_combine && fp.r.token_fp8 != nullptr &&
                   fp.r.token_fp8_dense == nullptr;
  // Solo mode: the first GEMM's last CTA done clears the flag every CTA waited on by then.
  fp.gemm.clear_on_done = fp.r.solo ? fp.r.grid_sync + 2 : nullptr;
  // One token, gated FFN (MoeConfig::fp8_down_gemv): the down projection and the combine by
  // solo_down_gemv over blocks of W output columns, at most two per CTA, W such that the CTAs
  // other than the (<= top_k) slot finishers take them all -- and every CTA together always
  // does -- where every row's weight bytes of two blocks fit the pipeline's window (else the
  // pipelined down projection runs, as with FLASHMOE_FP8_DOWN_GEMV=0).
  int64_t const gemv_ctas = std::max<int64_t>(1, ctas - problem.routing.top_k);
  int64_t const gemv_cols = ((problem.hidden + 2 * gemv_ctas - 1) / (2 * gemv_ctas) + 7) / 8 * 8;
  if (ffn && config.fp8_down_gemv && fp.r.solo && problem.num_tokens == 1 &&
      !fp.r.atomic_combine && problem.routing.top_k <= kSoloGemvMaxRows &&
      solo_down_gemv_smem_bytes(gemv_cols, problem.inter_dim) <=
          static_cast<int64_t>(fp.gemm.control_offset)) {
    fp.down_gemv = 1;
    fp.down_w = static_cast<uint8_t const*>(args.w2);
    fp.gemv_cols = static_cast<int32_t>(gemv_cols);
    fp.gemv_blocks = static_cast<int32_t>((problem.hidden + gemv_cols - 1) / gemv_cols);
    // FLASHMOE_FP8_GEMV_EARLY=0 (for comparisons): the copies after every h row is released.
    fp.gemv_early = detail::env_is("FLASHMOE_FP8_GEMV_EARLY", "0") ? 0 : 1;
  }
  // Solo mode: the last GEMM's items combine (FusedDeps::item_stored), counting per n tile in
  // the top of the sync region, above the split-K counts.
  int const combine_tiles = (ffn ? fp.gemm2 : fp.gemm).n_tiles;
  int const split_counts = fp.gemm.k_splits > 1 ? config.fp8_split_items : 0;
  if (fp.r.solo && !fp.r.atomic_combine && !fp.down_gemv &&
      combine_tiles + split_counts <= kSyncSplitMaxInts) {
    fp.r.tile_combine_count = ws.gemm_scheduler + kSyncRegionInts - combine_tiles;
  }
  if (fp.r.timeline != nullptr) {  // profiling: the GEMM body's own stamps (fused_limits.h)
    for (gemm::Sm90Fp8KernelParams* g : {&fp.gemm, &fp.gemm2}) {
      g->timeline = fp.r.timeline + kFusedTimelineGemmSlot;
      g->timeline_stride = kFusedTimelineSlots;
    }
  }
  if (fp.r.atomic_combine) {  // the last GEMM adds its rows into out (MoeProblem::deterministic)
    gemm::Sm90Fp8KernelParams& last = ffn ? fp.gemm2 : fp.gemm;
    last.combine_out = args.out;
    last.row_token = ws.routing.row_token;
    last.row_weight = ws.routing.row_weight;
  }
  return launch_fused_kernel(fp.r.timeline != nullptr ? &fused_sm90_fp8_kernel<true>
                                                      : &fused_sm90_fp8_kernel<false>,
                             fp, ctas, smem_bytes, stream,
                             "fused_sm90_fp8_kernel");
}

}  // namespace flashmoe::fused
