// flashmoe (internal): device helpers shared by the sm_90a grouped GEMM kernels (the FP8 one in
// sm90_fp8_grouped_gemm.cuh and the bf16/fp16 one in sm90_grouped_gemm.cuh): activations,
// output stores, mbarrier waits that fault instead of hanging, cp.async with mbarrier completion.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include <cutlass/arch/barrier.h>

namespace flashmoe::gemm::sm90_util {

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }
__device__ __forceinline__ float gelu(float g) {
  return 0.5f * g * (1.0f + erff(g * 0.70710678118654752f));
}

/// Stores two adjacent output values (8-byte float2, or 4-byte bf16x2 / half2).
__device__ __forceinline__ void store_pair(void* out, int32_t dtype, int64_t index, float v0,
                                           float v1) {
  if (dtype == 0) {
    *reinterpret_cast<float2*>(static_cast<float*>(out) + index) = make_float2(v0, v1);
  } else if (dtype == 1) {
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(out) + index) =
        __floats2bfloat162_rn(v0, v1);
  } else {
    *reinterpret_cast<__half2*>(static_cast<__half*>(out) + index) = __floats2half2_rn(v0, v1);
  }
}

/// A compiler-only fence: the CUTLASS barrier helpers are asm volatile without a "memory"
/// clobber, so shared-memory accesses around them are pinned in place with this.
__device__ __forceinline__ void compiler_fence() { asm volatile("" ::: "memory"); }

/// Orders this thread's generic-proxy global accesses with async-proxy ones (TMA loads) on either
/// side of it: for rows written with st.global and then read by TMA in the same launch (the
/// dense A rows). Hand-written: CUTLASS 4.2 wraps only the shared-memory form
/// (fence_view_async_shared).
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;" ::: "memory");
}

/// atomicAdd with acquire-release semantics at GPU scope: a count that publishes this CTA's
/// earlier writes (ordered before it by a CTA barrier) and, in the thread that reads the final
/// count, acquires the others'. MEMBAR.ALL.GPU + the atomic, where `__threadfence(); atomicAdd`
/// is MEMBAR.SC.GPU + an L1 invalidation + the atomic (readers after it must go through L2).
__device__ __forceinline__ int atomic_add_acq_rel_gpu(int* p, int v) {
  int old;
  asm volatile("atom.add.acq_rel.gpu.global.s32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v)
               : "memory");
  return old;
}

/// out[index], out[index + 1] += (v0, v1) with one 32-bit atomic (index even); dtype 1 bf16,
/// 2 fp16 (store_pair's codes). The non-deterministic combine of the one-kernel forwards.
__device__ __forceinline__ void add_pair_atomic(void* out, int32_t dtype, int64_t index, float v0,
                                                float v1) {
  if (dtype == 1) {
    atomicAdd(reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(out) + index),
              __floats2bfloat162_rn(v0, v1));
  } else {
    atomicAdd(reinterpret_cast<__half2*>(static_cast<__half*>(out) + index),
              __floats2half2_rn(v0, v1));
  }
}

/// Two output values as one 32-bit word (dtype 1 bf16x2, 2 half2; store_pair's codes).
__device__ __forceinline__ uint32_t pack_pair(int32_t dtype, float v0, float v1) {
  if (dtype == 1) {
    __nv_bfloat162 const b = __floats2bfloat162_rn(v0, v1);
    return *reinterpret_cast<uint32_t const*>(&b);
  }
  __half2 const h = __floats2half2_rn(v0, v1);
  return *reinterpret_cast<uint32_t const*>(&h);
}

/// Two 8-column groups j, j + 1 of one output row, held by the four lanes of a quad as the
/// wgmma fragment has them: lane q's w0 packs columns 8 j + 2 q, + 1 and w1 the same of group
/// j + 1. Lanes q and q ^ 1 swap one word (one shuffle): even lanes then hold four consecutive
/// columns of group j, odd lanes four of group j + 1, stored as 8-byte vectors -- the quad
/// writes the row's 16 columns (one 32-byte sector) with four stores instead of eight. Every
/// lane of the warp calls it (the shuffle); `ok`: this quad's row exists. `row_elem`: the
/// group-j column 0 of the row (16-bit elements, a multiple of 4: 8-byte aligned). The plain
/// epilogues of both sm_90a GEMMs; measured on an H200 (docs/perf-log.md v0.23): the FP8
/// forwards 5-9% faster than with 4-byte pair stores.
__device__ __forceinline__ void store_quad_pair(void* out, int64_t row_elem, uint32_t w0,
                                                uint32_t w1, bool ok) {
  int const q = threadIdx.x & 3;
  bool const odd = (q & 1) != 0;
  uint32_t const got = __shfl_xor_sync(0xffffffffu, odd ? w0 : w1, 1);
  if (ok) {
    // even q: columns 2 q .. 2 q + 3 of group j; odd q: 2 (q - 1) .. + 3 of group j + 1.
    int64_t const col = odd ? 8 + 2 * (q - 1) : 2 * q;
    *reinterpret_cast<uint2*>(static_cast<uint16_t*>(out) + row_elem + col) =
        odd ? make_uint2(got, w1) : make_uint2(w0, got);
  }
}

/// Ends the kernel with a launch error (an illegal-address fault: a store to the null page).
/// Not __trap(): with a trap anywhere in the math warpgroups' code, ptxas keeps their register
/// allocation at the launch bound (168) instead of the setmaxnreg budget, and the 128-row
/// kernel's accumulators spill.
__device__ __forceinline__ void fatal_protocol_error() {
  asm volatile("st.global.u32 [%0], %1;\n" ::"l"(static_cast<uint64_t>(8)), "r"(0xdeadu) : "memory");
}

/// Waits for the phase of parity `phase` of an mbarrier to complete. A wait of more than ~2^35
/// cycles (~20 s) can only be a protocol bug: fault (a launch error) instead of hanging.
__device__ __forceinline__ void wait_barrier(uint64_t const* bar, uint32_t phase) {
  if (!cutlass::arch::ClusterBarrier::try_wait(bar, phase)) {
    long long const start = clock64();
    while (!cutlass::arch::ClusterBarrier::try_wait(bar, phase)) {
      if (clock64() - start > (1ll << 35)) fatal_protocol_error();
    }
  }
  compiler_fence();
}

/// Arrives on an mbarrier after this thread's preceding shared-memory accesses.
__device__ __forceinline__ void arrive_barrier(uint64_t const* bar) {
  compiler_fence();
  cutlass::arch::ClusterBarrier::arrive(bar);
}

/// 16 bytes global -> shared, zero-filled past src_bytes (0 or 16); `hint`: with an L2
/// evict_last policy (created here: one instruction, no register kept across the loop).
__device__ __forceinline__ void cp_async_16(uint32_t smem_addr, void const* gmem, int src_bytes,
                                            bool hint) {
  if (hint) {
    asm volatile(
        "{\n .reg .b64 policy;\n"
        " createpolicy.fractional.L2::evict_last.b64 policy, 1.0;\n"
        " cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, policy;\n}\n" ::"r"(smem_addr),
        "l"(gmem), "r"(src_bytes)
        : "memory");
  } else {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr), "l"(gmem),
                 "r"(src_bytes)
                 : "memory");
  }
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

/// 4 bytes global -> shared through L1 (.ca: for data that no SM writes during the launch),
/// zero-filled when src_bytes is 0.
__device__ __forceinline__ void cp_async_4(uint32_t smem_addr, void const* gmem, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr), "l"(gmem),
               "r"(src_bytes)
               : "memory");
}

/// Arrives on `bar` when this thread's earlier cp.async copies have landed (counts as one of the
/// barrier's expected arrivals).
__device__ __forceinline__ void cp_async_arrive_noinc(uint64_t const* bar) {
  uint32_t const addr = static_cast<uint32_t>(__cvta_generic_to_shared(bar));
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(addr) : "memory");
}

/// Dependencies between the work items of a GEMM body that runs two GEMMs back to back (the
/// fused gated-FFN forwards: the down projection of an m block reads rows that the gate/up
/// GEMM's items of that block produce). The bodies call, for GEMM g (0 or 1) and m slot `slot`
/// (the tile-list slot of the item's first tile):
///   wait_rows(g, slot)    producer thread 0, before any copy of the item's A rows;
///   item_done(g, slot, row0, rows, mt, word)
///                         the 256 math threads (mt = 0..255, all of them, after the item's
///                         epilogue); `word` is a shared int for a broadcast among them;
///   item_stored(g, n_tile, mt, pending)
///                         the same threads right after item_done (the FP8 body only): the
///                         item's output columns (its n tile) are stored; `pending` (2 shared
///                         words, zero at the body's start) is the hooks' record across items;
///   after_tiles(mt, pending)
///                         the same threads after the CTA's last item (the FP8 body only);
///   wait_routed(g)        producer thread 0 of the FP8 body, after its first take from GEMM g's
///                         queue and before it reads the tile list: the fused kernel's solo mode
///                         waits there for CTA 0's dispatch (nothing of it is read before);
///   wait_rest(g)          the same thread after GEMM g's last item, before its end marker and
///                         before the CTA counts itself done (the FP8 body only);
///   finish_slot(p, e, slot, row0, rows, mt, warp_amax)
///                         kSlotFinish only (the FP8 body's split GEMM 0 with p.split_by_slot):
///                         the 256 math threads of the CTA whose K range was the slot's last,
///                         instead of the epilogue, item_done and item_stored of each n tile;
///                         `warp_amax` is 16 shared floats.
/// kActive false: none is called (the single-GEMM kernels).
struct NoPipeDeps {
  static constexpr bool kActive = false;
  static constexpr bool kSlotFinish = false;
  __device__ __forceinline__ void wait_routed(int) const {}
  __device__ __forceinline__ void wait_rest(int) const {}
  __device__ __forceinline__ void wait_rows(int, int) const {}
  __device__ __forceinline__ void item_done(int, int, int, int, int, int32_t*) const {}
  __device__ __forceinline__ void item_stored(int, int, int, uint32_t*) const {}
  __device__ __forceinline__ void after_tiles(int, uint32_t const*) const {}
};

/// What the math warpgroups of a GEMM body run after their last tile: nothing (the GEMM kernels;
/// the fused kernels pass their combine).
struct NoMathDone {
  __device__ __forceinline__ void operator()() const {}
};

__device__ __forceinline__ void producer_sync() {
  compiler_fence();
  cutlass::arch::NamedBarrier::sync(128, 0);  // the producer warpgroup only
  compiler_fence();
}
}  // namespace flashmoe::gemm::sm90_util
