// flashmoe: the GPU routing sequence (routing.h steps 1-7 and the dispatch), enqueued on one
// stream with no host synchronisation. CUB's device radix sort, histogram and scan do the
// sorting, counting and scanning; the small kernels in this folder do the rest.
//
//   top-k (or pre-routed)                     orig_ids, final_ids, weights
//   capacity > 0:
//     sort by priority desc (stable, a asc)   perm_prio
//     sort by expert (stable)                 perm_expert: (expert, priority desc, t, j)
//     histogram + exclusive scan              expert_starts
//     mark ranks >= cap                       final_ids = -1 (drop) / pending (reroute)
//     reroute rounds (one block)              final_ids of accepted moves
//   finalize                                  user outputs, counts, local dispatch keys
//   sort by local expert (stable)             assign_sorted: (local expert, t, j)
//   histogram                                 local_counts
//   build tiles (one block)                   local_offsets, tiles
//   scatter                                   row_token, slot_row
//   histogram of final_ids (if wanted)        expert_load
#include <cub/device/device_histogram.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>

#include "fused/cuda_check.h"
#include "routing/routing_kernels.h"

namespace flashmoe::routing {
namespace {

// Bits that hold every value 0..v (radix sorts only look at these).
int bits_for(int64_t v) {
  int b = 1;
  while ((int64_t{1} << b) <= v) ++b;
  return b;
}

}  // namespace

Status routing_cub_temp_bytes(int64_t num_assignments, int64_t num_experts,
                              int64_t num_local_experts, bool capacity, std::size_t* bytes) {
  int const n = static_cast<int>(num_assignments);
  int const E = static_cast<int>(num_experts);
  int const EL = static_cast<int>(num_local_experts);
  std::size_t best = 0;
  std::size_t b = 0;
  FLASHMOE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, b, static_cast<uint32_t const*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<int32_t const*>(nullptr), static_cast<int32_t*>(nullptr), n, 0, bits_for(EL)));
  best = std::max(best, b);
  FLASHMOE_CUDA_CHECK(cub::DeviceHistogram::HistogramEven(
      nullptr, b, static_cast<uint32_t const*>(nullptr), static_cast<int32_t*>(nullptr), EL + 1,
      0u, static_cast<uint32_t>(EL), n));
  best = std::max(best, b);
  FLASHMOE_CUDA_CHECK(cub::DeviceHistogram::HistogramEven(
      nullptr, b, static_cast<int32_t const*>(nullptr), static_cast<int32_t*>(nullptr), E + 1, 0,
      E, n));
  best = std::max(best, b);
  if (capacity) {
    FLASHMOE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
        nullptr, b, static_cast<uint64_t const*>(nullptr), static_cast<uint64_t*>(nullptr),
        static_cast<int32_t const*>(nullptr), static_cast<int32_t*>(nullptr), n, 0, 64));
    best = std::max(best, b);
    FLASHMOE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
        nullptr, b, static_cast<uint32_t const*>(nullptr), static_cast<uint32_t*>(nullptr),
        static_cast<int32_t const*>(nullptr), static_cast<int32_t*>(nullptr), n, 0, bits_for(E)));
    best = std::max(best, b);
    FLASHMOE_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(
        nullptr, b, static_cast<int32_t const*>(nullptr), static_cast<int32_t*>(nullptr), E));
    best = std::max(best, b);
  }
  *bytes = best;
  return Status::Ok();
}

Status enqueue_routing(RoutingParams const& rp, RoutingBuffers const& rb,
                       RoutingOutputs const& out, cudaStream_t stream) {
  int const n = rp.num_tokens * rp.top_k;
  int const E = rp.num_experts;
  int const EL = rp.num_local_experts;
  std::size_t temp_bytes = rb.cub_temp_bytes;

  if (rp.prerouted) {
    FLASHMOE_RETURN_IF_ERROR(launch_prerouted(rp, rb, stream));
  } else {
    FLASHMOE_RETURN_IF_ERROR(launch_topk(rp, rb, stream));
  }

  if (rp.capacity > 0) {
    if (rp.reroute) {
      FLASHMOE_CUDA_CHECK(cudaMemsetAsync(rb.pending, 0, sizeof(int32_t) * n, stream));
    }
    FLASHMOE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
        rb.cub_temp, temp_bytes, rb.prio_keys, rb.prio_keys_sorted, rb.iota, rb.perm_prio, n, 0,
        64, stream));
    FLASHMOE_RETURN_IF_ERROR(launch_capacity_expert_keys(rp, rb, stream));
    temp_bytes = rb.cub_temp_bytes;
    FLASHMOE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
        rb.cub_temp, temp_bytes, rb.expert_keys, rb.expert_keys_sorted, rb.perm_prio,
        rb.perm_expert, n, 0, bits_for(E), stream));
    temp_bytes = rb.cub_temp_bytes;
    FLASHMOE_CUDA_CHECK(cub::DeviceHistogram::HistogramEven(
        rb.cub_temp, temp_bytes, static_cast<int32_t const*>(rb.orig_ids), rb.expert_counts,
        E + 1, 0, E, n, stream));
    temp_bytes = rb.cub_temp_bytes;
    FLASHMOE_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(rb.cub_temp, temp_bytes, rb.expert_counts,
                                                      rb.expert_starts, E, stream));
    FLASHMOE_RETURN_IF_ERROR(launch_capacity_mark(rp, rb, stream));
    if (rp.reroute) FLASHMOE_RETURN_IF_ERROR(launch_reroute(rp, rb, stream));
  }

  if (out.drop_reroute_counts != nullptr) {
    FLASHMOE_CUDA_CHECK(
        cudaMemsetAsync(out.drop_reroute_counts, 0, 2 * sizeof(int64_t), stream));
  }
  FLASHMOE_RETURN_IF_ERROR(launch_finalize(rp, rb, out, stream));
  temp_bytes = rb.cub_temp_bytes;
  FLASHMOE_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      rb.cub_temp, temp_bytes, rb.local_keys, rb.local_keys_sorted, rb.iota, rb.assign_sorted, n,
      0, bits_for(EL), stream));
  temp_bytes = rb.cub_temp_bytes;
  FLASHMOE_CUDA_CHECK(cub::DeviceHistogram::HistogramEven(
      rb.cub_temp, temp_bytes, static_cast<uint32_t const*>(rb.local_keys), rb.local_counts,
      EL + 1, 0u, static_cast<uint32_t>(EL), n, stream));
  FLASHMOE_RETURN_IF_ERROR(launch_build_tiles(rp, rb, stream));
  FLASHMOE_RETURN_IF_ERROR(launch_scatter(rp, rb, stream));
  if (out.expert_load != nullptr) {
    temp_bytes = rb.cub_temp_bytes;
    FLASHMOE_CUDA_CHECK(cub::DeviceHistogram::HistogramEven(
        rb.cub_temp, temp_bytes, static_cast<int32_t const*>(rb.final_ids), out.expert_load,
        E + 1, 0, E, n, stream));
  }
  return Status::Ok();
}

}  // namespace flashmoe::routing
