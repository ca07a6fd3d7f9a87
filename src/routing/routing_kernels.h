// flashmoe (internal): the GPU routing stage -- launchers of the routing kernels and the
// sequence that runs them (routing_pipeline.cu). Every launcher enqueues on `stream`, never
// synchronizes, and returns a kCudaError Status naming file and line when a launch fails.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "flashmoe/types.h"
#include "routing/routing_params.h"

namespace flashmoe::routing {

/// The most experts (E, the routing space) the per-token top-k kernel handles.
inline constexpr int kMaxRoutingExperts = 1024;

/// The optional outputs of a run (null = not wanted), written on the device.
struct RoutingOutputs {
  int32_t* topk_ids = nullptr;        // [T, k]
  float* topk_weights = nullptr;      // [T, k]
  int32_t* expert_load = nullptr;     // [E]
  int64_t* drop_reroute_counts = nullptr;  // [2]
};

/// Items per thread of the top-k kernel for E experts (0: E too large).
int topk_items_per_thread(int64_t num_experts);

Status launch_topk(RoutingParams const& rp, RoutingBuffers const& rb, cudaStream_t stream);
Status launch_prerouted(RoutingParams const& rp, RoutingBuffers const& rb, cudaStream_t stream);
Status launch_capacity_expert_keys(RoutingParams const& rp, RoutingBuffers const& rb,
                                   cudaStream_t stream);
Status launch_capacity_mark(RoutingParams const& rp, RoutingBuffers const& rb,
                            cudaStream_t stream);
Status launch_reroute(RoutingParams const& rp, RoutingBuffers const& rb, cudaStream_t stream);
Status launch_finalize(RoutingParams const& rp, RoutingBuffers const& rb,
                       RoutingOutputs const& out, cudaStream_t stream);
Status launch_build_tiles(RoutingParams const& rp, RoutingBuffers const& rb,
                          cudaStream_t stream);
Status launch_scatter(RoutingParams const& rp, RoutingBuffers const& rb, cudaStream_t stream);

/// Bytes of CUB scratch the routing of this shape needs (the largest of its device sorts,
/// histograms and scans). Asks CUB on the current device; no work is enqueued.
Status routing_cub_temp_bytes(int64_t num_assignments, int64_t num_experts,
                              int64_t num_local_experts, bool capacity, std::size_t* bytes);

/// Runs the whole routing (steps 1-7 of routing.h and the dispatch): afterwards rb.tiles,
/// rb.row_token, rb.slot_row and rb.weights describe the GEMM and combine work, and `out`'s
/// non-null arrays are filled.
Status enqueue_routing(RoutingParams const& rp, RoutingBuffers const& rb,
                       RoutingOutputs const& out, cudaStream_t stream);

}  // namespace flashmoe::routing
