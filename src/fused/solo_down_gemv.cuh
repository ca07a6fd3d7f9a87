// flashmoe (internal): the one-kernel FP8 gated FFN's down projection and combine for a single
// token, as a GEMV over column blocks (perf-log v0.58), run by the 256 math threads of every CTA
// after the gate/up GEMM.
//
// Why: at T = 1 the down projection is 1 x I times I x H per expert (k experts): the pipelined
// body ran it as H / 256 * k items of 128-row wgmma tiles holding one row, in two waves over the
// grid, each item through a cold producer, K loop and epilogue, then wrote y rows and combined
// them per n tile after an atomic count (dsv3-tp8 on an H100: ~18 us from the h rows' release to
// the output, for 14.7 MB of weights). Here the CTAs take blocks of W output columns from a
// queue (at most two each); for each block one bulk copy per expert row brings its W x I weight
// bytes into the idle pipeline window (issued before the h rows exist: they do not depend on
// them), each warp computes one row's outputs with m16n8k16 f16 mma.sync on the E4M3 bytes
// converted to f16 (the token's h row as row 0 of A, converted once; sm_90 has no native e4m3
// mma.sync: ptxas expands one into the same conversions and two HMMA), and the CTA combines its
// columns over the k slots in slot order from shared memory -- no y round trip through L2, no
// counts, no second wave.
//
// Numerics: E4M3 values are exact in f16 and so are their products; each 64-wide K slice is
// summed in fp32 by four chained MMAs and promoted (scaled by its 128 x 128 block scale, or
// summed for channel scales), the row's h scale and the channel scale applied as the pipelined
// epilogue applies them, y rounded to the tokens' type, then the combine's fp32 adds in slot
// order (combine_token's rule). The sums are formed in another order than the wgmma path's
// (FP8 tensor cores, promoted per 128-wide K block), so the bits differ from the multi-kernel
// path within the FP8 tolerances; FLASHMOE_FP8_DOWN_GEMV=0 runs the pipelined down projection.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/arch/mma_sm80.hpp>
#include <cutlass/arch/barrier.h>

#include "common/globaltimer.cuh"
#include "fused/fused_phases.cuh"
#include "gemm/grouped_gemm_args.h"

namespace flashmoe::fused {

/// Rows of the down projection a GEMV CTA holds at once: T = 1 with top_k <= 8 (one warp each).
inline constexpr int kSoloGemvMaxRows = 8;
/// Column blocks a CTA takes at most (their weight bytes are copied together).
inline constexpr int kSoloGemvMaxBlocks = 2;
/// Tile slots the GEMV reads the dispatch from (T = 1: at most top_k <= 8 hold a tile).
inline constexpr int kSoloGemvMaxTiles = 32;

/// What solo_down_gemv reads (built by the kernel from its parameters; passed by value to the
/// out-of-line function, so that no field is a load on its chain).
struct SoloDownGemv {
  uint8_t const* w;             // W_down E4M3 [E_local, n_prep, I] (K = I contiguous)
  float const* w_scales;        // channel [E_local, H]; block128 [E_local, H/128, I/128] (ceil)
  uint8_t const* h_fp8;         // the h rows' E4M3 bytes [rows, I]
  float const* h_scales;        // their scales
  gemm::TileInfo const* tiles;  // the dispatch's tile list (expert, row0, rows) of the m slots
  int32_t const* tile_done;     // per m slot: `ready` once its h rows are written
  int32_t const* slot_row;      // the token's k slots: dense row (-1: not computed here)
  float const* weights;         // their combine weights
  void* out;                    // [1, H] in the tokens' type
  int32_t* queue;               // [0] next column block, [1] CTAs done (zero at launch; the
                                // last CTA done zeroes both again)
  uint64_t* timeline;           // profiling: this CTA's timeline row, else null
  int64_t n_prep;               // weight rows per expert
  uint32_t ready;
  int32_t num_tile_slots;
  int32_t hidden;               // H: output columns
  int32_t inter;                // I: 64, 128, 256 or 512 (the template's K slices x 64)
  int32_t block_cols;           // W: columns of a block, a multiple of 8
  int32_t num_blocks;           // ceil(H / W)
  int32_t top_k;                // <= kSoloGemvMaxRows
  // kGemvBlockScales: 128 x 128 block scales; kGemvBf16: bf16 y and out (else fp16);
  // kGemvEarly: the weight copies go out before the wait for the h rows. (One word: the struct
  // stays within the 128 bytes passed in registers; larger, it went to a 272-byte stack frame.)
  int32_t flags;
};
inline constexpr int32_t kGemvBlockScales = 1;
inline constexpr int32_t kGemvBf16 = 2;
inline constexpr int32_t kGemvEarly = 4;

/// Bytes of the pipeline window that solo_down_gemv uses (host check against the ring): per
/// block and row its weight bytes, y values and scales (floats), then the control block.
inline int64_t solo_down_gemv_smem_bytes(int64_t block_cols, int64_t inter) {
  int64_t const scales = block_cols > 8 ? block_cols : 8;
  return int64_t(kSoloGemvMaxBlocks) * kSoloGemvMaxRows *
             (block_cols * inter + block_cols * 4 + scales * 4) +
         1024;  // the control block
}

namespace solo_gemv_detail {

struct Meta {
  uint64_t bar;                         // the weight copies' transaction barrier
  int4 tile[kSoloGemvMaxTiles];         // the dispatch's tiles (expert, row0, rows, -)
  int32_t slot_row[kSoloGemvMaxRows];   // the token's slots: dense row, -1: not computed here
  float weight[kSoloGemvMaxRows];       // their combine weights
  int32_t block[kSoloGemvMaxBlocks];    // the column blocks this CTA took (-1: none)
};

// Two E4M3 bytes (the low one first) as an f16x2 word (exact: every E4M3 value is an f16 one).
__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint32_t word, int shift) {
  __half2_raw const h = __nv_cvt_fp8x2_to_halfraw2(
      static_cast<__nv_fp8x2_storage_t>((word >> shift) & 0xffffu), __NV_E4M3);
  return static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
}

__device__ __forceinline__ float round_to_token(float v, int bf16) {
  return bf16 ? __bfloat162float(__float2bfloat16_rn(v)) : __half2float(__float2half_rn(v));
}

// Dense row d's tile (its m slot) from the tile list in shared memory, or -1; `rows`: the rows
// of the dispatch (tiles hold rows [row0, row0 + rows) of expert x, in row order; x < 0 ends it).
__device__ __forceinline__ int tile_of_row(Meta const* meta, int num_tiles, int d, int& rows) {
  int found = -1;
  rows = 0;
  for (int s = 0; s < num_tiles; ++s) {
    int4 const t = meta->tile[s];
    if (t.x < 0) break;
    if (d >= t.y && d < t.y + t.z) found = s;
    rows = max(rows, t.y + t.z);
  }
  rows = min(rows, kSoloGemvMaxRows);
  return found;
}

// Warp 0 (lane = 0..31): each taken block's W x I weight bytes of every row into its slice of
// the window, one bulk copy per block and row, lane 8 k + d issuing block k's row d (the barrier
// counts every byte, announced by lane 0 first). Each lane finds its row's tile itself: issued
// by thread 0 alone, one tile-list walk and copy after another took ~8 us before the last copy
// went out (round 281), for copies that then land in ~2 us. Profiling: lane 0 stamps
// "gemv:issued" once every lane has issued its copy.
static_assert(kSoloGemvMaxBlocks * kSoloGemvMaxRows <= 32, "a lane per block and row");
__device__ __forceinline__ void issue_weight_copies(SoloDownGemv const& g, Meta* meta,
                                                    uint8_t* wsm, int num_tiles, int lane) {
  using Bar = cutlass::arch::ClusterTransactionBarrier;
  int const k = lane / kSoloGemvMaxRows;
  int const d = lane % kSoloGemvMaxRows;
  int rows = 0;
  int const s = tile_of_row(meta, num_tiles, d, rows);  // (rows: the same in every lane)
  if (lane == 0) {
    uint32_t total = 0;
    for (int j = 0; j < kSoloGemvMaxBlocks; ++j) {
      int const b = meta->block[j];
      if (b < 0) continue;
      int const cols = min(g.block_cols, g.hidden - b * g.block_cols);
      total += static_cast<uint32_t>(cols * g.inter * rows);
    }
    Bar::arrive_and_expect_tx(&meta->bar, total);
  }
  __syncwarp();
  int const b = k < kSoloGemvMaxBlocks ? meta->block[k] : -1;
  if (b >= 0 && d < rows) {  // (the dispatch numbers its rows 0 .. rows - 1 densely: every one
                             // lies in a tile)
    int const c0 = b * g.block_cols;
    int const cols = min(g.block_cols, g.hidden - c0);
    uint8_t const* src = g.w + (static_cast<int64_t>(meta->tile[s].x) * g.n_prep + c0) * g.inter;
    uint8_t* dst = wsm + static_cast<int64_t>(k * kSoloGemvMaxRows + d) * g.block_cols * g.inter;
    cute::SM90_BULK_COPY_G2S::copy(src, &meta->bar, dst, cols * g.inter);
  }
  __syncwarp();
  if (lane == 0 && g.timeline != nullptr) stamp_globaltimer(g.timeline + 30);  // "gemv:issued"
}

}  // namespace solo_gemv_detail

namespace {  // the one kernel's translation unit its own copy

/// The 256 math threads (mt = 0..255) of a CTA, after their last gate/up tile. `window`: the
/// pipeline's dynamic shared memory (1024-aligned), idle once both math warpgroups are past
/// their last stage.
/// - The column blocks come from a queue: the CTAs that finish their gate/up ranges first (all
///   but the slots' finishers, round 264) take them all and copy their weights during the
///   finishers' work.
/// - Every global load is issued off the chain that follows the h rows' release (round 263: the
///   scale loads per block, the tile list read one load at a time and the combine's slot loads
///   one after another were ~8 us of round trips after the release).
/// - The B fragments are 16-byte loads covering a 64-wide K slice (the k order inside it is
///   permuted alike in A and B): 4-byte loads of 8 columns I bytes apart hit one bank 8 ways
///   (round 264).
/// - The slice count is a template parameter, so that the slices' loads, conversions and MMAs
///   interleave (behind a run-time count each slice ran as its own serial chain, round 266).
template <int kKSlices>  // I / 64: 1, 2, 4 or 8
__device__ __noinline__ void solo_down_gemv(SoloDownGemv const g, int mt, uint8_t* window) {
  using namespace solo_gemv_detail;
  using Bar = cutlass::arch::ClusterTransactionBarrier;
  constexpr int kBarrier = fused_phases::kMathBarrier;  // the 256 math threads (phase 4's)
  bool const block_scales = (g.flags & kGemvBlockScales) != 0;
  int const bf16 = (g.flags & kGemvBf16) != 0 ? 1 : 0;
  bool const early = (g.flags & kGemvEarly) != 0;
  constexpr int kRowSlices = kSoloGemvMaxBlocks * kSoloGemvMaxRows;  // (block, row) slices
  int const warp = mt >> 5;
  int const lane = mt & 31;
  int const W = g.block_cols;
  int const num_tiles = min(g.num_tile_slots, kSoloGemvMaxTiles);
  int const scale_stride = W > 8 ? W : 8;
  uint8_t* const wsm = window;
  float* const ysm = reinterpret_cast<float*>(window + int64_t(kRowSlices) * W * g.inter);
  float* const ssm = ysm + kRowSlices * W;  // per block and row: its scales
  Meta* const meta = reinterpret_cast<Meta*>(ssm + kRowSlices * scale_stride);

  // Both math warpgroups are past their last stage: the window is free.
  asm volatile("bar.sync %0, 256;" ::"n"(kBarrier) : "memory");
  // The tile list and the token's slots, one load per thread (written by CTA 0 before its flags,
  // which this CTA's producer acquired before its end marker); the blocks from the queue.
  if (mt < num_tiles) {
    meta->tile[mt] = __ldcg(reinterpret_cast<int4 const*>(g.tiles + mt));
  } else if (mt >= 64 && mt < 64 + kSoloGemvMaxRows) {
    int const j = mt - 64;
    meta->slot_row[j] = j < g.top_k ? __ldcg(g.slot_row + j) : -1;
    meta->weight[j] = j < g.top_k ? __ldcg(g.weights + j) : 0.0f;
  } else if (mt == 96) {
    // One take of consecutive blocks (one L2 round trip before the copies; perf-log v0.59c).
    int const b = atomicAdd(g.queue, kSoloGemvMaxBlocks);
#pragma unroll
    for (int k = 0; k < kSoloGemvMaxBlocks; ++k) {
      meta->block[k] = b + k < g.num_blocks ? b + k : -1;
    }
  } else if (mt == 255) {
    if (g.timeline != nullptr) stamp_globaltimer(g.timeline + 5);  // "gemm done"
    Bar::init(&meta->bar, 1);
    cutlass::arch::fence_barrier_init();
  }
  asm volatile("bar.sync %0, 256;" ::"n"(kBarrier) : "memory");
  if (mt < 32 && early && meta->block[0] >= 0) issue_weight_copies(g, meta, wsm, num_tiles, mt);
  // Every CTA counts itself done after its take (the barrier above), off the copies' path: the
  // last one leaves the queue zeroed for the next launch.
  if (mt == 96 && atomicAdd(g.queue + 1, 1) == static_cast<int>(gridDim.x) - 1) {
    g.queue[0] = 0;
    g.queue[1] = 0;
  }
  if (meta->block[0] < 0) return;  // (the same for the whole CTA)

  // Warp d: row d's expert and m slot, its scales per block into shared memory (block128: the
  // 128-column blocks that the block's columns touch, times I / 128; channel: its W columns').
  int const d = warp;
  int rows = 0;
  int const s_d = tile_of_row(meta, num_tiles, d, rows);
  int const e = s_d >= 0 ? meta->tile[s_d].x : 0;
  int const n_sb = (g.hidden + 127) / 128;
  int const k_sb = (g.inter + 127) / 128;
  if (d < rows) {
    for (int k = 0; k < kSoloGemvMaxBlocks; ++k) {
      int const b = meta->block[k];
      if (b < 0) continue;
      int const c0 = b * W;
      int const cols = min(W, g.hidden - c0);
      float* const sc = ssm + (k * kSoloGemvMaxRows + d) * scale_stride;
      if (block_scales) {
        int const nb0 = c0 / 128;
        int const count = ((c0 + cols - 1) / 128 - nb0 + 1) * k_sb;
        for (int i = lane; i < count; i += 32) {
          sc[i] = __ldg(g.w_scales + (int64_t(e) * n_sb + nb0 + i / k_sb) * k_sb + i % k_sb);
        }
      } else {
        for (int c = lane; c < cols; c += 32) {
          sc[c] = __ldg(g.w_scales + int64_t(e) * g.hidden + c0 + c);
        }
      }
    }
  }

  // Row d's h as row 0 of the A fragments, once its m slot is released, converted to f16 once:
  // lane t < 4 holds, per 64-wide K slice p, the 16 bytes at 64 p + 16 t as eight f16x2 words
  // (ah[8 p + 2 q], ah[8 p + 2 q + 1]: the k-low and k-high words of the slice's MMA q); rows
  // 1-15 and the other lanes are zero. The B fragments take the same bytes of their column, so
  // each m16n8k16 MMA pairs h and w by byte (a k order permuted alike in A and B).
  int const tig = lane & 3;
  uint32_t ah[8 * kKSlices];
  float s_h = 0.0f;
#pragma unroll
  for (int i = 0; i < 8 * kKSlices; ++i) ah[i] = 0u;
  if (d < rows && lane < 4) {
    uint32_t const* flag = reinterpret_cast<uint32_t const*>(g.tile_done + s_d);
    while (fused_phases::ld_acquire(flag) != g.ready) __nanosleep(32);
    uint8_t const* h = g.h_fp8 + static_cast<int64_t>(d) * g.inter + 16 * tig;
#pragma unroll
    for (int p = 0; p < kKSlices; ++p) {
      uint4 const v = __ldcg(reinterpret_cast<uint4 const*>(h + 64 * p));
      uint32_t const w4[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        ah[8 * p + 2 * q] = e4m3x2_to_f16x2(w4[q], 0);
        ah[8 * p + 2 * q + 1] = e4m3x2_to_f16x2(w4[q], 16);
      }
    }
    s_h = __ldcg(g.h_scales + d);
    // Profiling: the CTA's last h row in registers ("gemv:h-last").
    if (lane == 0 && g.timeline != nullptr) stamp_globaltimer_max(g.timeline + 29);
  }
  if (!early) {
    asm volatile("bar.sync %0, 256;" ::"n"(kBarrier) : "memory");  // every row released
    if (mt < 32) issue_weight_copies(g, meta, wsm, num_tiles, mt);
  }
  // Profiling: the weights' arrival alone ("gemv:weights"), by a lane that loads no h row (a
  // wait consumes nothing); "barrier3" below is row 0's h and the weights.
  if (mt == 4 && g.timeline != nullptr) {
    Bar::wait(&meta->bar, 0);
    stamp_globaltimer(g.timeline + 28);
  }
  __syncwarp();  // the warp's scales written
  Bar::wait(&meta->bar, 0);
  if (mt == 0 && g.timeline != nullptr) stamp_globaltimer(g.timeline + 6);  // "barrier3"

  // Row d's outputs per block: n8 blocks of columns; per 64-wide K slice one 16-byte load per
  // lane, four chained f16 MMAs (exact products, fp32 sums), then the slice's block scale.
  // Lanes 0-3 hold row 0 of each result.
  if (d < rows) {
    int const gid = lane >> 2;
    for (int k = 0; k < kSoloGemvMaxBlocks; ++k) {
      int const b = meta->block[k];
      if (b < 0) continue;
      int const c0 = b * W;
      int const cols = min(W, g.hidden - c0);
      int const slice = k * kSoloGemvMaxRows + d;
      uint8_t const* const wrow = wsm + static_cast<int64_t>(slice) * W * g.inter;
      float const* const sc = ssm + slice * scale_stride;
      for (int nb = 0; nb < cols / 8; ++nb) {
        uint8_t const* const bcol = wrow + static_cast<int64_t>(nb * 8 + gid) * g.inter + 16 * tig;
        float const* const bs = sc + ((c0 + nb * 8) / 128 - c0 / 128) * k_sb;
        uint4 bv[kKSlices];
#pragma unroll
        for (int p = 0; p < kKSlices; ++p) bv[p] = *reinterpret_cast<uint4 const*>(bcol + 64 * p);
        float t0 = 0.0f;
        float t1 = 0.0f;
#pragma unroll
        for (int p = 0; p < kKSlices; ++p) {
          uint32_t const w4[4] = {bv[p].x, bv[p].y, bv[p].z, bv[p].w};
          float d0 = 0.0f, d1 = 0.0f, d2 = 0.0f, d3 = 0.0f;
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            cute::SM80_16x8x16_F32F16F16F32_TN::fma(
                d0, d1, d2, d3, ah[8 * p + 2 * q], 0u, ah[8 * p + 2 * q + 1], 0u,
                e4m3x2_to_f16x2(w4[q], 0), e4m3x2_to_f16x2(w4[q], 16), d0, d1, d2, d3);
          }
          float const s = block_scales ? bs[(64 * p) / 128] : 1.0f;
          t0 = fmaf(d0, s, t0);
          t1 = fmaf(d1, s, t1);
        }
        if (lane < 4) {  // row 0: columns nb * 8 + 2 tig and + 1
          int const col = nb * 8 + 2 * tig;
          float v0 = t0 * s_h;
          float v1 = t1 * s_h;
          if (!block_scales) {
            v0 *= sc[col];
            v1 *= sc[col + 1];
          }
          ysm[slice * W + col] = round_to_token(v0, bf16);
          ysm[slice * W + col + 1] = round_to_token(v1, bf16);
        }
      }
    }
  }
  asm volatile("bar.sync %0, 256;" ::"n"(kBarrier) : "memory");

  // The combine of the taken columns: the k slots in slot order (combine_token's adds).
  for (int k = 0; k < kSoloGemvMaxBlocks; ++k) {
    int const b = meta->block[k];
    if (b < 0) continue;
    int const c0 = b * W;
    int const cols = min(W, g.hidden - c0);
    for (int c = mt; c < cols; c += 256) {
      float acc = 0.0f;
#pragma unroll
      for (int j = 0; j < kSoloGemvMaxRows; ++j) {
        int32_t const row = meta->slot_row[j];
        if (row >= 0) acc = fmaf(meta->weight[j], ysm[(k * kSoloGemvMaxRows + row) * W + c], acc);
      }
      if (bf16) {
        static_cast<__nv_bfloat16*>(g.out)[c0 + c] = __float2bfloat16_rn(acc);
      } else {
        static_cast<__half*>(g.out)[c0 + c] = __float2half_rn(acc);
      }
    }
  }
  if (g.timeline != nullptr) {  // profiling: "combined"
    asm volatile("bar.sync %0, 256;" ::"n"(kBarrier) : "memory");
    if (mt == 0) stamp_globaltimer(g.timeline + 7);
  }
}

}  // namespace
}  // namespace flashmoe::fused
