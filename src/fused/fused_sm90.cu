// flashmoe: the single-launch bf16/fp16 forward on Hopper (fused_sm90.h).
//
// The FP8 one-kernel forward's design (fused_sm90_fp8.cu describes the phases) with the 16-bit
// GEMM body: one persistent grid, one 384-thread CTA per SM, launched cooperatively:
//   1-2. routing_phases (fused_phases.cuh): top-k, capacity, dispatch into 128-row tiles -- the
//        tile list of the multi-kernel sm_90a path (no E4M3 rows: the GEMM reads the tokens);
//   3.   the GEMM body (sm90_gemm_body, sm90_grouped_gemm.cuh) as the multi-kernel GEMM runs it;
//        gated FFN: the gate/up GEMM and then the down projection through the same pipeline, a
//        down item of an m slot waiting only for that slot's gate/up items (Bf16FfnDeps: a
//        counter per slot), not for a grid-wide barrier;
//   4.   after their last tile the math warpgroups wait for every CTA's and combine the owned
//        tokens in slot order (CombineAfterGemm): deterministic, no atomics.
// The h rows the gate/up epilogue stores are read by the down projection's cp.async.cg (L2),
// after the slot's count was seen with ld.acquire.
#include "fused/fused_sm90.h"

#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "fused/cuda_check.h"
#include "fused/fused_phases.cuh"
#include "fused/multikernel_moe.h"
#include "gemm/sm90_device_util.cuh"
#include "gemm/sm90_grouped_gemm.cuh"

namespace flashmoe::fused {
namespace {

using namespace fused_phases;

struct FusedSm90Params {
  gemm::Sm90GemmKernelParams gemm;   // the first GEMM (x W1); its CUtensorMap keeps the 64-byte
  gemm::Sm90GemmKernelParams gemm2;  // alignment; gated FFN: the down projection (h W2)
  FusedRoutingParams r;              // r.tile_done: per m slot, the gate/up items stored
  int32_t ffn;
};

// The gated FFN's two GEMMs in one pipeline, ordered per m slot: every gate/up item of a slot
// counts itself once its h columns are stored; a down-projection item of the slot copies its A
// rows only after the count reached the slot's n tiles. No deadlock: a CTA's producer reaches
// the down projection only once the gate/up queue is empty, so every gate/up item has been taken
// by a running CTA whose math warpgroups finish it without waiting on anything.
struct Bf16FfnDeps {
  static constexpr bool kActive = true;
  FusedSm90Params const& fp;

  __device__ __forceinline__ void wait_rows(int gemm, int slot) const {
    if (gemm == 0) return;
    uint32_t const* flag = reinterpret_cast<uint32_t const*>(fp.r.tile_done + slot);
    uint32_t const ready = static_cast<uint32_t>(fp.gemm.n_tiles);
    while (ld_acquire(flag) != ready) __nanosleep(64);
  }

  __device__ __forceinline__ void item_done(int gemm, int slot, int, int, int mt, int32_t*) const {
    if (gemm != 0 || !fp.ffn) return;
    asm volatile("bar.sync %0, 256;" ::"n"(kDepsBarrier) : "memory");  // the item's h stores
    if (mt == 0) {
      __threadfence();
      atomicAdd(fp.r.tile_done + slot, 1);
    }
  }
};

template <class Cfg>
__global__ void __launch_bounds__(kFusedThreads, 1) fused_sm90_kernel(
    __grid_constant__ FusedSm90Params const fp) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  routing_phases(fp.r);
  // ---- phases 3 and 4: the GEMM body (gated FFN: both GEMMs); its math warpgroups then combine
  // the owned tokens.
  gemm::sm90_gemm_body<Cfg, 2>(fp.gemm, fp.gemm2, fp.ffn ? 2 : 1, CombineAfterGemm{fp.r},
                               Bf16FfnDeps{fp});
#else
  __trap();
#endif
}

using Bf16K = gemm::Sm90GemmTile<cute::bfloat16_t, false>;
using Bf16Mn = gemm::Sm90GemmTile<cute::bfloat16_t, true>;
using Fp16K = gemm::Sm90GemmTile<cute::half_t, false>;
using Fp16Mn = gemm::Sm90GemmTile<cute::half_t, true>;
static_assert(Bf16K::kThreads == kFusedThreads, "the routing phases' CTA is the GEMM body's");

template <class Cfg>
Status launch(FusedSm90Params const& fp, int ctas, cudaStream_t stream) {
  int const smem = std::max(gemm::sm90_gemm_smem_bytes<Cfg>(),
                            static_cast<int>(sizeof(RoutingSmem)));
  return launch_fused_kernel(&fused_sm90_kernel<Cfg>, fp, ctas, smem, stream,
                             "fused_sm90_kernel");
}

}  // namespace

Status run_fused_sm90(MoeProblem const& problem, MoeArgs const& args, MoeConfig const& config,
                      MoeWorkspace const& ws, cudaStream_t stream) {
  bool const ffn = problem.kind == ExpertKind::kGatedFFN;
  if (!config.sm90 || ws.fused_counts == nullptr || ws.expert_out == nullptr ||
      (ffn && (ws.hidden == nullptr || ws.fused_tile_done == nullptr))) {
    return Status(StatusCode::kInternal,
                  "fused sm90: configuration or workspace not carved for the sm_90a GEMM");
  }
  int ctas = 0;
  FLASHMOE_RETURN_IF_ERROR(begin_fused_forward(problem, args, ws, stream, "fused sm90", &ctas));

  FusedSm90Params fp{};
  DType const dtype = problem.token_dtype;
  FLASHMOE_RETURN_IF_ERROR(gemm::sm90_gemm_kernel_params(
      first_gemm_args(problem, args, config, ws), dtype, problem.layout, /*gate_up=*/ffn,
      ws.gemm_scheduler, &fp.gemm));
  fp.gemm2 = fp.gemm;  // unused by linear experts (one GEMM)
  if (ffn) {
    FLASHMOE_RETURN_IF_ERROR(gemm::sm90_gemm_kernel_params(
        down_gemm_args(problem, args, config, ws), dtype, problem.layout, /*gate_up=*/false,
        ws.gemm_scheduler + kGemmSchedulerInts, &fp.gemm2));
    fp.ffn = 1;
  }
  fp.r = make_fused_routing_params(problem, args, config, ws, ctas, /*fp8_rows=*/false);
  // Solo mode: the first GEMM's last CTA done clears the flag every CTA waited on by then.
  fp.gemm.clear_on_done = fp.r.solo ? fp.r.grid_sync + 2 : nullptr;
  if (fp.r.atomic_combine) {  // the last GEMM adds its rows into out (MoeProblem::deterministic)
    gemm::Sm90GemmKernelParams& last = ffn ? fp.gemm2 : fp.gemm;
    last.combine_out = args.out;
    last.row_token = ws.routing.row_token;
    last.row_weight = ws.routing.row_weight;
  }

  bool const mn = problem.layout == WeightLayout::kInOut;
  if (dtype == DType::kBFloat16) {
    return mn ? launch<Bf16Mn>(fp, ctas, stream) : launch<Bf16K>(fp, ctas, stream);
  }
  return mn ? launch<Fp16Mn>(fp, ctas, stream) : launch<Fp16K>(fp, ctas, stream);
}

}  // namespace flashmoe::fused
