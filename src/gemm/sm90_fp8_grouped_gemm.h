// flashmoe (internal): the sm_90a FP8 grouped expert GEMM -- what a launch reads and writes.
// Host-only header (no device code); the kernel is in sm90_fp8_grouped_gemm.cuh.
//
// For every M tile of the dense assignment list (gemm::TileInfo, built with tile_m =
// kSm90Fp8BlockM, see grouped_gemm_args.h) and every row r of it, with e = the tile's expert and
// src(r) = a_rows[r] (the gather: a token index) or r (a_rows == nullptr, e.g. the FFN's down
// projection reading h):
//
//   A[r, k]   = e4m3(a[src(r), k] / a_scales[src(r)])            quantized inside the gather
//   acc[r, p] = sum over 128-wide K blocks b of  sum_{k in b} A[r, k] * W8[e, p, k]  * bs(e, p, b)
//               (each K block in a fresh wgmma accumulator, promoted into fp32 registers:
//               "periodic promotion"; bs = the block scale, 1 for channel scales; with
//               promote_kb = 2, two consecutive K blocks of a 128-row item share one fresh
//               accumulator before the promotion)
//   plain:    out[r, n] = acc[r, n] * a_scales[src(r)] * cs(e, n)                  n < n
//   gate-up:  g = acc[r, gate row of i] * a_scales[src(r)] * cs(e, i)
//             u = acc[r, up row of i]   * a_scales[src(r)] * cs(e, I + i)
//             out[r, i] = act(g) * u                                                i < I = n
//   (cs = the channel scale, 1 for block scales). Rows past a tile's `rows` are never stored.
// W8 and the scales are laid out as quantize_weights_fp8.h describes.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "flashmoe/options.h"
#include "flashmoe/types.h"
#include "gemm/grouped_gemm_args.h"
#include "gemm/quantize_weights_fp8.h"

namespace flashmoe::gemm {

/// The M tile of the tile list: the TileInfo list must be built with tile_m == kSm90Fp8BlockM
/// (every variant; the 128-row variants run an expert's last two 64-row tiles as one item by
/// themselves, see Sm90Fp8Variant).
inline constexpr int kSm90Fp8BlockM = 64;

enum class Fp8Epilogue : int {
  kPlain = 0,       // out = acc * scales
  kGateUpSilu = 1,  // out = silu(g) * u   (weights prepared with gate_up = true)
  kGateUpGelu = 2,  // out = gelu(g) * u   (exact erf gelu)
};

/// Kernel variants (all compute the same function, bit for bit; they differ in speed only).
/// kAuto resolves to the FLASHMOE_SM90_VARIANT environment variable (a name below) when it is set,
/// else to kSm90Fp8DefaultVariant. See sm90_fp8_grouped_gemm.cuh for the designs.
///   base   the first kernel: CTA tile 64 x 256, 5 stages, the producer gathers + quantizes the
///          token rows through registers one K block ahead (control for comparisons)
///   m64    CTA tile 64 x 256, cp.async producer (token rows copied several stages ahead, the
///          next tile's rows resolved while the current one streams), runtime stage count
///   m128   CTA tile 128 x 256: an expert's last two 64-row tiles run as one work item, so its
///          weights are streamed once for up to 128 rows (each math warpgroup loops over the
///          two 64-row halves with one accumulator); same producer as m64
///   m128h  m128 with L2 cache hints: weights EVICT_FIRST (read once), token rows EVICT_LAST
///   m128c  128 x 256 items whose producer only copies (bf16 rows by cp.async into a staging
///          ring, weights by TMA); the math warpgroups quantize the staged rows into the e4m3
///          tile before their wgmma (sm90_fp8_convert_kernel.cuh). With pre-quantized rows
///          (a_fp8) it runs m128.
enum class Sm90Fp8Variant : int {
  kAuto = -1,
  kBase = 0,
  kM64 = 1,
  kM128 = 2,
  kM128Hint = 3,
  kM128Convert = 4,
};
inline constexpr int kSm90Fp8NumVariants = 5;
inline constexpr Sm90Fp8Variant kSm90Fp8DefaultVariant = Sm90Fp8Variant::kM128;

/// "base", "m64", "m128", "m128h", "m128c" ("auto" for kAuto).
char const* sm90_fp8_variant_name(Sm90Fp8Variant v);
/// The variant of a name above; false (out untouched) for an unknown name.
bool sm90_fp8_parse_variant(char const* name, Sm90Fp8Variant* out);
/// kAuto -> FLASHMOE_SM90_VARIANT (when set to a known name) -> kSm90Fp8DefaultVariant; any other
/// value is returned as is.
Sm90Fp8Variant sm90_fp8_resolve_variant(Sm90Fp8Variant requested);
/// Whether a resolved variant runs Sm90Fp8GemmParams::promote_kb = 2 on pre-quantized (E4M3)
/// rows: the 128-row pipelined kernel -- m128, m128h, and m128c, which runs m128 on such rows.
inline bool sm90_fp8_variant_pairs_kb(Sm90Fp8Variant v) {
  return v == Sm90Fp8Variant::kM128 || v == Sm90Fp8Variant::kM128Hint ||
         v == Sm90Fp8Variant::kM128Convert;
}
/// The variant FLASHMOE_SM90_VARIANT names when set to a known name, else `chosen` (the forward's
/// heuristic choice: the environment overrides it, for comparisons).
Sm90Fp8Variant sm90_fp8_env_variant_or(Sm90Fp8Variant chosen);

/// Upper bound of the M tiles of `num_rows` assignments over `num_experts` experts:
/// sum_e ceil(count_e / BM) <= num_rows / BM + num_experts.
inline constexpr int64_t sm90_fp8_max_tiles(int64_t num_rows, int64_t num_experts) {
  return num_rows / kSm90Fp8BlockM + num_experts;
}

/// Everything one launch needs (device pointers).
struct Sm90Fp8GemmParams {
  // A: source rows of `a` ([*, k], a_row_stride elements apart; bf16 or fp16; 16-byte aligned
  // rows: a % 16 == 0, a_row_stride % 8 == 0). May be null when a_fp8 is given (see below).
  void const* a = nullptr;
  DType a_dtype = DType::kBFloat16;
  int64_t a_row_stride = 0;
  int32_t const* a_rows = nullptr;   // [dense rows] -> source row; nullptr: the identity
  float const* a_scales = nullptr;   // [source rows] token_scales.h (must be > 0)

  // The M tiles (expert, first dense row, rows <= kSm90Fp8BlockM); a slot with expert < 0 ends
  // the list. num_tile_slots is the host's bound (sm90_fp8_max_tiles).
  TileInfo const* tiles = nullptr;
  int32_t num_tile_slots = 0;

  // Weights: quantize_weights_fp8.h's prepared layout.
  void const* w_fp8 = nullptr;       // [E, Np, k] E4M3, 16-byte aligned
  float const* w_scales = nullptr;
  Fp8ScaleKind scale_kind = Fp8ScaleKind::kChannel;
  int64_t num_experts = 0;           // E (the tensor map's extent; tile experts must be < E)

  int64_t k = 0;                     // reduction length, k % 16 == 0
  int64_t n = 0;                     // output columns: N (plain) or I (gate-up); n % 8 == 0
  Fp8Epilogue epilogue = Fp8Epilogue::kPlain;

  // Output: [dense rows, n] with out_row_stride elements between rows, float32 / bf16 / fp16.
  void* out = nullptr;
  DType out_dtype = DType::kFloat32;
  int64_t out_row_stride = 0;

  // The work queue: 2 int32 of device memory, zero before the first launch; every launch that
  // completes leaves them zero again (the last CTA resets them), so a workspace slice is set to
  // zero once when it is created. Launches running concurrently need separate slices.
  int32_t* scheduler = nullptr;

  int max_ctas = 0;                  // persistent CTAs; 0 = one per SM (tests use a few)

  // Optional pre-quantized A rows (token_scales.h, launch_token_quantize_fp8): row s holds
  // e4m3(a[s, k] / a_scales[s]), a_fp8_row_stride bytes apart (% 16 == 0, >= k; a_fp8 % 16 == 0).
  // When set, the gather copies these bytes (half the traffic of bf16 rows, no conversion in the
  // kernel) and `a` is not read (it may be null, except for the variant `base`, which always
  // gathers `a`). The output is bit for bit the same as without it.
  void const* a_fp8 = nullptr;
  int64_t a_fp8_row_stride = 0;
  // a_fp8 in dense order (v0.38): row r of a tile is row tile.row0 + r of a_fp8 (the identity of
  // a_rows == nullptr, or a copy of the routed rows made in dense order), a_fp8_dense_rows of
  // them. Then the producer loads each 64-row half of a stage with one TMA box instead of 64
  // per-row cp.async copies (the gather cost ~3x the weights' TMA per byte, round 175); a_rows
  // still names each row's source for its scale. The same bits. Needs a_fp8 and a pipelined
  // variant (m64, m128, m128h; m128c then runs m128).
  bool a_fp8_dense = false;
  int64_t a_fp8_dense_rows = 0;

  // Which kernel runs (kAuto: FLASHMOE_SM90_VARIANT, else the default).
  Sm90Fp8Variant variant = Sm90Fp8Variant::kAuto;

  // Split-K (decode shapes whose few (tile, n-tile) items would leave most SMs idle): each item
  // is cut into k_splits ranges of ceil(K blocks / k_splits) 128-wide K blocks, none of them
  // empty (sm90_fp8_k_splits() chooses such a count; kInvalid otherwise). Each range's
  // fp32 sums go to split_partial; the CTA that finishes an item's last range (a count per item
  // in split_count) adds the ranges in order 0, 1, ... and runs the epilogue: deterministic.
  // Only the pipelined variants on pre-quantized rows (a_fp8; m64, m128, m128h, and m128c which
  // then runs m128) split; k_splits > 1 with another is kNotSupported.
  //   split_partial  [split_tile_slots * n_tiles * k_splits * 128 * 256] float32
  //   split_count    [split_tile_slots * n_tiles] int32, zero before the launch (left non-zero)
  // split_tile_slots bounds the tile slots in use (<= the dense rows: every tile has a row).
  int32_t k_splits = 1;
  int32_t split_tile_slots = 0;
  float* split_partial = nullptr;
  int32_t* split_count = nullptr;

  // K blocks per fp32 promotion (1 or 2). 2: in 128-row items (m128, m128h, and m128c on a_fp8,
  // which runs m128), each 64-row half issues the wgmma of two consecutive K blocks into one
  // fresh accumulator and promotes once -- half the promotions and wgmma waits per K block (the
  // prefill GEMM's math warps spend most of their time there), at the cost of the e4m3 wgmma's
  // reduced-precision accumulation running over 256 products instead of 128 (rel. error of the
  // sums ~4e-4 instead of ~2e-4). Only with channel scales and the plain epilogue (block scales
  // change per K block; the gate-up epilogue re-quantizes h, which amplifies the error); other
  // variants: kNotSupported. Changes the output bits against promote_kb = 1.
  int32_t promote_kb = 1;
};

/// The N tile of the sm_90a FP8 kernels (two math warpgroups of 128 columns).
inline constexpr int64_t kSm90Fp8BlockN = 256;

/// N tiles of the kernels for `n` output columns (n = I for the gate-up epilogue, whose
/// prepared weights interleave 2I rows): ceil(prepared rows / kSm90Fp8BlockN).
inline constexpr int64_t sm90_fp8_n_tiles(int64_t n, bool gate_up) {
  return (fp8_prepared_rows(gate_up ? 2 * n : n, gate_up) + kSm90Fp8BlockN - 1) / kSm90Fp8BlockN;
}

/// Floats of split_partial per (tile slot, n tile, K range): one 128 x 256 fp32 tile.
inline constexpr int64_t kSm90Fp8SplitPartialFloats = 128 * 256;

/// K ranges for split-K of a GEMM with `items` (tile, n-tile) work items (an upper bound) and K
/// blocks of 128 on `ctas` persistent CTAs: 1 unless the items fill at most a quarter of the CTAs
/// and K has at least 8 blocks; then as many ranges (of at least 4 blocks) as fill the CTAs,
/// every range non-empty.
int sm90_fp8_k_splits(int64_t items, int64_t k, int ctas);

/// Bytes of the `scheduler` slice.
inline constexpr std::size_t kSm90Fp8SchedulerBytes = 2 * sizeof(int32_t);

/// Checks shapes, types and alignments (no device access). kNotSupported names the limit.
Status check_sm90_fp8_grouped_gemm(Sm90Fp8GemmParams const& params);

/// Enqueues the GEMM on `stream` (one persistent kernel). Needs a compute capability 9.0 device
/// (kNotSupported otherwise). Never allocates, never synchronizes.
Status launch_sm90_fp8_grouped_gemm(Sm90Fp8GemmParams const& params, cudaStream_t stream);

/// Dynamic shared memory bytes of the default variant, bf16 gather (for reports).
int sm90_fp8_grouped_gemm_smem_bytes();
/// Dynamic shared memory bytes of `variant` (kAuto resolved) gathering bf16/fp16 rows
/// (fp8_source false) or pre-quantized rows (true).
int sm90_fp8_grouped_gemm_smem_bytes(Sm90Fp8Variant variant, bool fp8_source);

}  // namespace flashmoe::gemm
