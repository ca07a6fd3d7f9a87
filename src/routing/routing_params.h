// flashmoe (internal): what the GPU routing kernels read (RoutingParams, by value) and the
// device buffers they work in (RoutingBuffers, slices of the op's workspace).
//
// Layout of the work (routing.h's rules, in the global expert space of E experts):
//   assignment a = t * k + j       (token t, slot j), Tk = T * k of them
//   orig_ids[a]                    expert of step 4 (or pre-routed), -1 = none
//   final_ids[a]                   expert after capacity (step 6), -1 = dropped
//   weights[a]                     combine weight of step 5 (float32)
// then the dispatch for the local experts: the computed assignments sorted by (local expert,
// a) -- token then slot within each expert -- into a dense list, and the GEMM's M tiles over it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gemm/grouped_gemm_args.h"

namespace flashmoe::routing {

/// Host-built, passed by value. Options as in flashmoe/options.h.
struct RoutingParams {
  int32_t num_tokens = 0;         // T
  int32_t num_experts = 0;        // E (routing space)
  int32_t num_local_experts = 0;  // E_local (experts with weights here)
  int32_t top_k = 0;              // k
  int32_t scoring = 0;            // Scoring
  int32_t score_dtype = 0;        // DType of routing_weights
  int32_t n_group = 0;
  int32_t topk_group = 0;
  bool renormalize = true;
  bool has_bias = false;
  bool prerouted = false;
  bool reroute = false;           // overflow == kReroute (only with capacity > 0)
  double temperature = 1.0;
  double routed_scaling_factor = 1.0;
  int64_t capacity = 0;           // 0 = dropless; else cap = ceil(c * T * k / E)
  int32_t tile_m = 0;             // the GEMM's BM: the dispatch cuts the list in tiles of it
  int32_t num_tile_slots = 0;     // tile slots the GEMM grid covers (host upper bound)

  void const* routing_weights = nullptr;  // [T, E] score_dtype
  float const* correction_bias = nullptr; // [E]
  int32_t const* topk_ids_in = nullptr;   // [T, k] pre-routed
  float const* topk_weights_in = nullptr; // [T, k] pre-routed
  int32_t const* expert_map = nullptr;    // [E] global -> local, -1 = not local
};

/// The softmax normalisation of one token (so p[t][e] can be recomputed bit for bit later).
struct TokenStats {
  double zmax;
  double sum;
};

/// Device slices of the workspace used by the routing (see moe_workspace.h for sizes).
struct RoutingBuffers {
  int32_t* orig_ids = nullptr;          // [Tk]
  int32_t* final_ids = nullptr;         // [Tk]
  float* weights = nullptr;             // [Tk]
  TokenStats* token_stats = nullptr;    // [T]      reroute only
  // Capacity (step 6): all assignments sorted by (expert, priority desc, a) with two stable
  // radix sorts; an assignment is kept when its rank within its expert is < cap.
  uint64_t* prio_keys = nullptr;        // [Tk]     descending-priority keys
  uint64_t* prio_keys_sorted = nullptr; // [Tk]
  int32_t* iota = nullptr;              // [Tk]     0..Tk-1
  int32_t* perm_prio = nullptr;         // [Tk]     a, sorted by priority
  uint32_t* expert_keys = nullptr;      // [Tk]     orig expert of perm_prio[i] (E = none)
  uint32_t* expert_keys_sorted = nullptr;  // [Tk]
  int32_t* perm_expert = nullptr;       // [Tk]     a, sorted by (expert, priority, a)
  int32_t* expert_counts = nullptr;     // [E]      original load per expert
  int32_t* expert_starts = nullptr;     // [E]      exclusive scan of expert_counts
  int32_t* pending = nullptr;           // [Tk]     1 = over capacity (reroute candidates)
  // Reroute rounds (one block; see reroute_kernel.cu).
  int32_t* rr_list = nullptr;           // [Tk]     pending assignments, ascending a
  int32_t* rr_list_next = nullptr;      // [Tk]
  int32_t* rr_target = nullptr;         // [Tk]     proposal of list entry i (-1: dropped)
  double* rr_prio = nullptr;            // [Tk]     p[t][target]
  int32_t* rr_accepted = nullptr;       // [Tk]
  int32_t* rr_bucket_items = nullptr;   // [Tk]     list entries grouped by target
  int32_t* rr_load = nullptr;           // [E]
  int32_t* rr_bucket_count = nullptr;   // [E]
  int32_t* rr_bucket_start = nullptr;   // [E]
  int32_t* rr_bucket_fill = nullptr;    // [E]
  // Dispatch to the local experts.
  uint32_t* local_keys = nullptr;       // [Tk]     local expert of a (E_local = not computed)
  uint32_t* local_keys_sorted = nullptr;  // [Tk]
  int32_t* assign_sorted = nullptr;     // [Tk]     a, sorted by (local expert, a)
  int32_t* local_counts = nullptr;      // [E_local]
  int32_t* local_offsets = nullptr;     // [2 * (E_local + 1)]: first dense row of each expert
                                        // (+ the total), then first tile (+ the tile count)
  gemm::TileInfo* tiles = nullptr;      // [num_tile_slots]
  int32_t* row_token = nullptr;         // [Tk]     dense row -> token (the GEMM's gather)
  float* row_weight = nullptr;          // [Tk]     dense row -> its slot's combine weight (the
                                        //          one-kernel forwards' atomic combine)
  int32_t* slot_row = nullptr;          // [Tk]     a -> dense row, -1 = not computed here
  void* cub_temp = nullptr;             // CUB device-algorithm scratch
  std::size_t cub_temp_bytes = 0;
};

}  // namespace flashmoe::routing
