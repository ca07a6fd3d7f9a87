// flashmoe: carving the multi-kernel path's workspace (moe_workspace.h).
#include "fused/moe_workspace.h"

#include <cstdint>

#include "fused/cuda_check.h"
#include "fused/fused_limits.h"
#include "gemm/sm90_fp8_grouped_gemm.h"
#include "gemm/sm90_grouped_gemm.h"
#include "routing/routing_kernels.h"

namespace flashmoe::fused {
namespace {

constexpr std::size_t kAlign = 256;

// Hands out 256-byte aligned slices of [base, base + size); with base == nullptr it only
// counts, and every slice is null.
class Carver {
 public:
  // The caller's pointer need not be 256-byte aligned: slices start at the next aligned
  // address, and bytes() includes that slack.
  explicit Carver(void* base)
      : base_(((reinterpret_cast<std::uintptr_t>(base) + kAlign - 1) / kAlign) * kAlign) {}

  template <typename T>
  T* take(std::size_t count) {
    offset_ = ((offset_ + kAlign - 1) / kAlign) * kAlign;
    T* const p = base_ != 0 && count > 0 ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += count * sizeof(T);
    return p;
  }
  std::size_t bytes() const { return offset_ + kAlign; }

 private:
  std::uintptr_t base_ = 0;
  std::size_t offset_ = 0;
};

}  // namespace

Status carve_moe_workspace(MoeProblem const& problem, MoeConfig const& config, void* base,
                           MoeWorkspace* ws) {
  using routing::TokenStats;
  std::size_t const T = static_cast<std::size_t>(problem.num_tokens);
  std::size_t const n = static_cast<std::size_t>(config.num_assignments);
  std::size_t const E = static_cast<std::size_t>(problem.num_experts);
  std::size_t const EL = static_cast<std::size_t>(problem.num_local_experts);
  bool const capacity = problem.routing.capacity_factor > 0.0;
  bool const reroute = capacity && problem.routing.overflow == Overflow::kReroute;
  bool const ffn = problem.kind == ExpertKind::kGatedFFN;
  std::size_t const elem = dtype_size(problem.token_dtype);
  // The FP8 path (prepared E4M3 weights): bf16 hidden rows, token / hidden-row scales and the
  // GEMMs' work queues.
  bool const fp8 = problem.precision == Precision::kFP8 && problem.weights_prepared;
  std::size_t const hidden_elem = fp8 ? 2 : elem;

  std::size_t cub_bytes = 0;
  FLASHMOE_RETURN_IF_ERROR(routing::routing_cub_temp_bytes(
      config.num_assignments, problem.num_experts, problem.num_local_experts, capacity,
      &cub_bytes));

  Carver c(base);
  // The sync region first: at the same place for every problem (moe_workspace.h).
  ws->gemm_scheduler = c.take<int32_t>(kSyncRegionInts);
  routing::RoutingBuffers& rb = ws->routing;
  rb = routing::RoutingBuffers{};
  rb.orig_ids = c.take<int32_t>(n);
  rb.final_ids = c.take<int32_t>(n);
  rb.weights = c.take<float>(n);
  rb.iota = c.take<int32_t>(n);
  if (reroute) rb.token_stats = c.take<TokenStats>(T);
  if (capacity) {
    rb.prio_keys = c.take<uint64_t>(n);
    rb.prio_keys_sorted = c.take<uint64_t>(n);
    rb.perm_prio = c.take<int32_t>(n);
    rb.expert_keys = c.take<uint32_t>(n);
    rb.expert_keys_sorted = c.take<uint32_t>(n);
    rb.perm_expert = c.take<int32_t>(n);
    rb.expert_counts = c.take<int32_t>(E);
    rb.expert_starts = c.take<int32_t>(E);
  }
  if (reroute) {
    rb.pending = c.take<int32_t>(n);
    rb.rr_list = c.take<int32_t>(n);
    rb.rr_list_next = c.take<int32_t>(n);
    rb.rr_target = c.take<int32_t>(n);
    rb.rr_prio = c.take<double>(n);
    rb.rr_accepted = c.take<int32_t>(n);
    rb.rr_bucket_items = c.take<int32_t>(n);
    rb.rr_load = c.take<int32_t>(E);
    rb.rr_bucket_count = c.take<int32_t>(E);
    rb.rr_bucket_start = c.take<int32_t>(E);
    rb.rr_bucket_fill = c.take<int32_t>(E);
  }
  rb.local_keys = c.take<uint32_t>(n);
  rb.local_keys_sorted = c.take<uint32_t>(n);
  rb.assign_sorted = c.take<int32_t>(n);
  rb.local_counts = c.take<int32_t>(EL);
  rb.local_offsets = c.take<int32_t>(2 * (EL + 1));
  rb.tiles = c.take<gemm::TileInfo>(static_cast<std::size_t>(config.num_tile_slots));
  rb.row_token = c.take<int32_t>(n);
  rb.row_weight = c.take<float>(n);
  rb.slot_row = c.take<int32_t>(n);
  // Never a null scratch pointer: CUB treats d_temp_storage == nullptr as a size query.
  cub_bytes = cub_bytes < 16 ? 16 : cub_bytes;
  rb.cub_temp = c.take<unsigned char>(cub_bytes);
  rb.cub_temp_bytes = cub_bytes;
  std::size_t const inter = ffn ? static_cast<std::size_t>(problem.inter_dim) : 0;
  ws->hidden = ffn ? c.take<unsigned char>(n * inter * hidden_elem) : nullptr;
  ws->expert_out =
      c.take<unsigned char>(n * static_cast<std::size_t>(problem.output_dim()) * elem);
  ws->token_scales = nullptr;
  ws->hidden_scales = nullptr;
  ws->token_fp8 = nullptr;
  ws->hidden_fp8 = nullptr;
  ws->token_fp8_dense = nullptr;
  ws->fused_counts = nullptr;
  ws->fused_timeline = nullptr;
  ws->fused_tile_done = nullptr;
  if (fp8) {
    ws->token_scales = c.take<float>(T);
    ws->hidden_scales = ffn ? c.take<float>(n) : nullptr;
    ws->token_fp8 = c.take<unsigned char>(T * static_cast<std::size_t>(problem.hidden));
    ws->hidden_fp8 = ffn ? c.take<unsigned char>(n * inter) : nullptr;
    if (config.fp8_dense_rows > 0) {
      ws->token_fp8_dense = c.take<unsigned char>(static_cast<std::size_t>(config.fp8_dense_rows) *
                                                  static_cast<std::size_t>(problem.hidden));
    }
  }
  if (fp8 || config.sm90) {  // the one-kernel forwards (FP8; bf16/fp16 on the sm_90a GEMM)
    ws->fused_counts = c.take<int32_t>(E * static_cast<std::size_t>(kFusedMaxCtas));
    ws->fused_timeline = c.take<uint64_t>(static_cast<std::size_t>(kFusedMaxCtas) *
                                          kFusedTimelineSlots);
    ws->fused_tile_done =
        ffn ? c.take<int32_t>(static_cast<std::size_t>(config.num_tile_slots)) : nullptr;
  }
  // The sync region's two work queues (the FFN's two GEMMs) serve whichever sm_90a GEMM runs.
  static_assert(gemm::kSm90Fp8SchedulerBytes == kGemmSchedulerInts * sizeof(int32_t) &&
                    gemm::kSm90GemmSchedulerBytes == kGemmSchedulerInts * sizeof(int32_t),
                "one queue layout for both sm_90a GEMMs");
  // Split-K counts: in the sync region, after the queues and the fused kernels' words.
  ws->split_partial = nullptr;
  ws->split_count = nullptr;
  if (fp8 && config.fp8_k_splits > 1) {
    if (config.fp8_split_items > kSyncSplitMaxInts) {
      return Status(StatusCode::kInternal, "fp8 split-K: more items than the sync region counts");
    }
    ws->split_partial = c.take<float>(static_cast<std::size_t>(config.fp8_split_items) *
                                      config.fp8_k_splits * gemm::kSm90Fp8SplitPartialFloats);
    if (ws->gemm_scheduler != nullptr && config.fp8_split_items > 0) {
      ws->split_count = ws->gemm_scheduler + 2 * kGemmSchedulerInts + kFusedSyncInts;
    }
  }
  ws->bytes = c.bytes();
  return Status::Ok();
}

Status zero_gemm_queues(MoeWorkspace const& ws, cudaStream_t stream) {
  if (ws.gemm_scheduler == nullptr) {
    return Status(StatusCode::kInternal, "workspace carved without the GEMM work queues");
  }
  FLASHMOE_CUDA_CHECK(
      cudaMemsetAsync(ws.gemm_scheduler, 0, kSyncRegionInts * sizeof(int32_t), stream));
  return Status::Ok();
}

}  // namespace flashmoe::fused
