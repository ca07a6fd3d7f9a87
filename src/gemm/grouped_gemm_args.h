// flashmoe (internal): what a gathered grouped GEMM launch reads and writes.
//
// The assignment list is dense: the computed assignments of local expert e occupy rows
// [offset[e], offset[e] + count[e]) of every per-assignment buffer, ordered by token then slot.
// The GEMM walks it in M tiles: tile m covers rows [row0, row0 + rows) of one expert, rows <= BM
// (an expert's last tile is partial; the rows beyond `rows` are the padding, zero-filled in
// shared memory and never stored). Tiles are listed in expert order, then row order; a slot
// with expert < 0 is past the last tile (the grid is sized for the worst case on the host).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "flashmoe/options.h"
#include "flashmoe/types.h"

namespace flashmoe::gemm {

/// One M tile of the grouped GEMM.
struct alignas(16) TileInfo {
  int32_t expert;  // local expert whose weights the tile multiplies; < 0: no tile here
  int32_t row0;    // first row of the tile in the dense assignment list
  int32_t rows;    // valid rows, 1..BM
  int32_t index;   // position among the expert's tiles (0, 1, ...): the sm_90a FP8 body pairs
                   // tiles 2i and 2i + 1 of an expert into one 128-row work item
};

/// Operands of C[r, :] = epilogue(A[src(r), :] @ B[expert(r)]) for every row r of every tile.
///   A: [*, k] row-major. src(r) = a_rows[r] (gather: token index) or r (a_rows == nullptr).
///   B: [E_local, k, b_cols] (kInOut) or [E_local, b_cols, k] (kOutIn).
///   plain epilogue:   C[r, n] = acc[n]                          n < n_out, b_cols = n_out
///   gate-up epilogue: C[r, n] = act(acc_gate[n]) * acc_up[n]    n < n_out, b_cols = 2 * n_out,
///                     the gate column of n is n, the up column is n_out + n.
///   C: [rows, n_out] row-major, the same element type as A and B.
struct GroupedGemmArgs {
  void const* a = nullptr;
  int32_t const* a_rows = nullptr;
  void const* b = nullptr;
  void* c = nullptr;
  TileInfo const* tiles = nullptr;
  int32_t num_tile_slots = 0;  // M-tile slots in `tiles` (the host's upper bound)
  int64_t k = 0;
  int64_t n_out = 0;
  int64_t b_cols = 0;
  int64_t num_experts = 0;  // E_local: B's leading extent (the sm_90 kernel's TMA map needs it)
  // W8A16 (launch_sm80_grouped_gemm_w8 only): B is E4M3 in the prepared layout of
  // quantize_weights_fp8.h ([E_local, b_cols = Np, k]) with these float32 scales, dequantized
  // to the A dtype inside the kernel; w_scale_block 1 = 128x128 block scales, 0 = channel.
  float const* w_scales = nullptr;
  int32_t w_scale_block = 0;
  Activation activation = Activation::kSilu;
};

/// The CTA tile shapes that are compiled (see moe_config.h for when each is chosen).
enum class GemmTile : int {
  kM16N128 = 0,   // decode: few rows per expert; 4 warps side by side along N
  kM128N128 = 1,  // >16 rows per expert: one M tile holds a typical expert's rows
};

inline constexpr int gemm_tile_bm(GemmTile t) { return t == GemmTile::kM16N128 ? 16 : 128; }
inline constexpr int gemm_tile_bn(GemmTile t) { return t == GemmTile::kM16N128 ? 128 : 128; }

/// Enqueues the grouped GEMM on `stream` (bf16 or fp16 A/B/C, fp32 accumulation, mma.sync).
/// Returns a kCudaError Status with file and line if the launch fails.
Status launch_sm80_grouped_gemm(GroupedGemmArgs const& args, DType dtype, GemmTile tile,
                                WeightLayout layout, bool gate_up, cudaStream_t stream);

/// The same GEMM with E4M3 weights (W8A16, see w_scales above): A and C bf16 or fp16.
Status launch_sm80_grouped_gemm_w8(GroupedGemmArgs const& args, DType dtype, GemmTile tile,
                                   bool gate_up, cudaStream_t stream);

}  // namespace flashmoe::gemm
