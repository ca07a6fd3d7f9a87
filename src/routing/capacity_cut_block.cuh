// flashmoe (internal): capacity (routing.h step 6) for one expert by one block, as the fused kernel
// runs it (fused_sm90_fp8.cu). The multi-kernel path gets the same set from two stable radix
// sorts over all assignments (routing_pipeline.cu); inside one persistent kernel each expert's
// over-capacity cut is found by the CTA that owns the expert instead:
//   - the expert's assignments are listed in ascending a (token, then slot) with their
//     descending-priority keys (routing_device.cuh: descending_key of p[t][e]);
//   - a radix select finds the key of rank cap among them: eight passes over the list, one 8-bit
//     digit each (a shared-memory histogram of the keys that match the digits found so far, then
//     the digit whose cumulative count reaches the rank sought);
//   - every entry is then kept or marked: a key below the cut is kept, a key above it is over
//     capacity, and of the keys equal to the cut the first `want` in list order are kept (the
//     reference's ties: the lower token, then the lower slot).
// Over capacity: final_ids[a] = -1 (dropped), and pending[a] = 1 when overflow is reroute.
// Cost: 8 reads of the list plus one (keys through L2: they were written by other SMs).
#pragma once

#include <cub/block/block_scan.cuh>
#include <cub/warp/warp_scan.cuh>

#include <cstdint>

#include "routing/routing_params.h"

namespace flashmoe::routing {

/// Shared memory of capacity_cut_block (the block scan's storage is the caller's).
struct CapacityCutSmem {
  int32_t hist[256];
  typename cub::WarpScan<int>::TempStorage warp_scan;
  int32_t digit;
  int32_t want;
};

/// Marks the over-capacity entries of one expert's list: keys[i] and list[i] (the assignment a)
/// for i < n, n > rp.capacity, in ascending a. All kThreads threads of the block call it.
template <int kThreads>
__device__ void capacity_cut_block(RoutingParams const& rp, RoutingBuffers const& rb,
                                   uint64_t const* keys, int32_t const* list, int n,
                                   CapacityCutSmem& sm,
                                   typename cub::BlockScan<int, kThreads>::TempStorage& scan) {
  int const tid = static_cast<int>(threadIdx.x);
  uint64_t prefix = 0;
  uint64_t mask = 0;
  int want = static_cast<int>(rp.capacity);  // rank (from 1) sought among the prefix's keys
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += kThreads) sm.hist[i] = 0;
    __syncthreads();
    for (int i = tid; i < n; i += kThreads) {
      uint64_t const key = __ldcg(keys + i);
      if ((key & mask) == prefix) atomicAdd(&sm.hist[(key >> shift) & 0xff], 1);
    }
    __syncthreads();
    if (tid < 32) {  // warp 0: eight digits per lane, in digit order
      int c[8];
      int sum = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        c[i] = sm.hist[tid * 8 + i];
        sum += c[i];
      }
      int incl = 0;
      cub::WarpScan<int>(sm.warp_scan).InclusiveSum(sum, incl);
      int w = want - (incl - sum);
      if (w > 0 && w <= sum) {  // exactly one lane: the prefix matches >= want keys
        int d = 0;
        bool found = false;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          if (!found) {
            if (w <= c[i]) {
              d = i;
              found = true;
            } else {
              w -= c[i];
            }
          }
        }
        sm.digit = tid * 8 + d;
        sm.want = w;
      }
    }
    __syncthreads();
    prefix |= static_cast<uint64_t>(sm.digit) << shift;
    mask |= uint64_t{0xff} << shift;
    want = sm.want;
    __syncthreads();  // hist, digit and want are rewritten by the next pass
  }

  using Scan = cub::BlockScan<int, kThreads>;
  uint64_t const cut = prefix;
  int seen = 0;  // entries equal to the cut in the chunks before
  for (int base = 0; base < n; base += kThreads) {
    int const i = base + tid;
    uint64_t const key = i < n ? __ldcg(keys + i) : 0;
    int const equal = (i < n && key == cut) ? 1 : 0;
    int before = 0;
    int total = 0;
    Scan(scan).ExclusiveSum(equal, before, total);
    bool const kept = key < cut || (equal != 0 && seen + before < want);
    if (i < n && !kept) {
      int32_t const a = __ldcg(list + i);
      rb.final_ids[a] = -1;
      if (rp.reroute) rb.pending[a] = 1;
    }
    seen += total;
    __syncthreads();  // the scan's storage is reused
  }
}

}  // namespace flashmoe::routing
