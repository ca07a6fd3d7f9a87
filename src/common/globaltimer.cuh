// flashmoe (internal): the one profiling stamp every timeline uses (the one-kernel forwards'
// phases, the FP8 GEMM body's items, the top-k's steps).
#pragma once

#include <cstdint>

namespace flashmoe {

/// The %globaltimer nanoseconds.
__device__ __forceinline__ uint64_t globaltimer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

/// The %globaltimer nanoseconds into *slot.
__device__ __forceinline__ void stamp_globaltimer(uint64_t* slot) { *slot = globaltimer_ns(); }

/// The same, only while *slot is unset (zeroed by the caller): the first of several events.
__device__ __forceinline__ void stamp_globaltimer_once(uint64_t* slot) {
  if (*slot == 0) stamp_globaltimer(slot);
}

/// The latest of several threads' events: *slot = max(*slot, now).
__device__ __forceinline__ void stamp_globaltimer_max(uint64_t* slot) {
  atomicMax(reinterpret_cast<unsigned long long*>(slot),
            static_cast<unsigned long long>(globaltimer_ns()));
}

}  // namespace flashmoe
