// flashmoe (internal): overflow = reroute (routing.h step 6), the rounds, by one block -- written
// once for the reroute kernel (one 512-thread block) and the fused kernel (its CTA 0, 384 threads).
//
// The rounds only touch the pending assignments (at most T*k), so one block loops until nothing
// is pending, with __syncthreads() between the phases of a round (global memory written by the
// block is visible to the block after the barrier). What other SMs wrote before (the top-k's
// ids and softmax stats, the capacity marks: the fused kernel writes them from every CTA) is
// read through L2 (ld.global.cg), never from a line this SM's L1 may hold from before. Each round:
//   a. proposals: the pending list is in ascending a = t*k + j order, so a token's pending slots
//      are contiguous and in slot order; one thread walks a token's run and gives each slot the
//      best expert (q descending, ties to the lower index, all E experts) that is not full at the
//      start of the round, not one of the token's original experts, not a target it was
//      accepted by, and not the proposal of an earlier slot of the run. None: the slot is
//      dropped.
//   b. acceptance: proposals are bucketed by target (counting sort: histogram, scan, scatter);
//      an expert with room r accepts all of its bucket if it fits, else the proposals whose rank
//      in the bucket -- by p[t][e] descending, then a ascending, which is token then slot -- is
//      below r. Atomic slot claims order a bucket arbitrarily, but ranks compare unique keys,
//      so the result is deterministic.
//   c. the rejected proposals stay pending (compacted in order); accepted ones move.
// Cost per round: O(pending * E) score loads for the proposals (plus 2k id loads each time a
// candidate would win: ~ln E + k times per scan) and O(sum of bucket sizes^2) for the
// ranks of overflowing buckets; the rounds end because every proposed-to expert with room
// accepts at least one proposal (a guard stops after T*k + 1 rounds regardless).
#pragma once

#include <cub/block/block_scan.cuh>

#include "routing/routing_device.cuh"
#include "routing/routing_params.h"

namespace flashmoe::routing {
namespace reroute_detail {

// Writes value(i) for every i < n with keep(i), in order, to out; returns the count (all threads).
template <int kThreads, class Keep, class Value>
__device__ int block_compact(int n, Keep keep, Value value, int32_t* out,
                             typename cub::BlockScan<int, kThreads>::TempStorage& tmp) {
  using Scan = cub::BlockScan<int, kThreads>;
  int written = 0;
  for (int base = 0; base < n; base += kThreads) {
    int const i = base + static_cast<int>(threadIdx.x);
    int const flag = (i < n && keep(i)) ? 1 : 0;
    int pos = 0;
    int total = 0;
    Scan(tmp).ExclusiveSum(flag, pos, total);
    if (flag) out[written + pos] = value(i);
    written += total;
    __syncthreads();
  }
  return written;
}

// Whether token t already uses expert e: an original expert or an accepted target of a slot.
__device__ __forceinline__ bool token_uses(RoutingBuffers const& rb, int64_t t, int k, int e) {
  for (int j = 0; j < k; ++j) {
    int64_t const a = t * k + j;
    if (__ldcg(rb.orig_ids + a) == e || __ldcg(rb.final_ids + a) == e) return true;
  }
  return false;
}

}  // namespace reroute_detail

/// The reroute rounds over the pending assignments (rb.pending[a] != 0), by all kThreads threads
/// of the calling block; rb.expert_counts holds the original load per expert and rb.final_ids is
/// -1 for every pending assignment. Ends with the accepted moves written to rb.final_ids (the
/// assignments that find no expert stay -1).
template <int kThreads>
__device__ void reroute_rounds(RoutingParams const& rp, RoutingBuffers const& rb,
                               typename cub::BlockScan<int, kThreads>::TempStorage& tmp) {
  using Scan = cub::BlockScan<int, kThreads>;
  using reroute_detail::block_compact;
  using reroute_detail::token_uses;
  int const tid = threadIdx.x;
  int const E = rp.num_experts;
  int const k = rp.top_k;
  int const n_assign = rp.num_tokens * k;
  int const cap = static_cast<int>(rp.capacity);

  for (int e = tid; e < E; e += kThreads) rb.rr_load[e] = min(__ldcg(rb.expert_counts + e), cap);
  int32_t* list = rb.rr_list;
  int32_t* next = rb.rr_list_next;
  int n = block_compact<kThreads>(
      n_assign, [&](int a) { return __ldcg(rb.pending + a) != 0; }, [](int a) { return a; },
      list, tmp);

  for (int round = 0; n > 0 && round <= n_assign; ++round) {
    // a. Proposals (loads are those at the start of the round until phase b updates them).
    for (int i = tid; i < n; i += kThreads) {
      int64_t const t = list[i] / k;
      if (i > 0 && list[i - 1] / k == t) continue;  // not the first pending slot of its token
      TokenStats const stats =
          static_cast<Scoring>(rp.scoring) == Scoring::kSoftmax
              ? TokenStats{__ldcg(&rb.token_stats[t].zmax), __ldcg(&rb.token_stats[t].sum)}
              : TokenStats{0.0, 0.0};
      for (int g = i; g < n && list[g] / k == t; ++g) {
        int best = -1;
        double best_q = 0.0;
        for (int e = 0; e < E; ++e) {
          if (rb.rr_load[e] >= cap) continue;
          double const p = score_prob(rp, load_score(rp, t * E + e), stats);
          double const q = selection_score(rp, p, e);
          // Strict: ties keep the lower expert index. Whether the token may use e only matters
          // when e would win, so the 2k id loads of that test run only then (a few times per
          // scan instead of E times).
          if (best >= 0 && !(q > best_q)) continue;
          if (token_uses(rb, t, k, e)) continue;
          bool claimed = false;
          for (int h = i; h < g; ++h) claimed = claimed || rb.rr_target[h] == e;
          if (claimed) continue;
          best = e;
          best_q = q;
        }
        rb.rr_target[g] = best;
        rb.rr_prio[g] =
            best >= 0 ? score_prob(rp, load_score(rp, t * E + best), stats) : 0.0;
      }
    }
    for (int e = tid; e < E; e += kThreads) {
      rb.rr_bucket_count[e] = 0;
      rb.rr_bucket_fill[e] = 0;
    }
    __syncthreads();

    // b. Acceptance: bucket the proposals by target, rank inside overflowing buckets.
    for (int i = tid; i < n; i += kThreads) {
      if (rb.rr_target[i] >= 0) atomicAdd(&rb.rr_bucket_count[rb.rr_target[i]], 1);
    }
    __syncthreads();
    int carry = 0;
    for (int base = 0; base < E; base += kThreads) {
      int const e = base + tid;
      int const c = e < E ? rb.rr_bucket_count[e] : 0;
      int off = 0;
      int total = 0;
      Scan(tmp).ExclusiveSum(c, off, total);
      if (e < E) rb.rr_bucket_start[e] = carry + off;
      carry += total;
      __syncthreads();
    }
    for (int i = tid; i < n; i += kThreads) {
      int const e = rb.rr_target[i];
      if (e >= 0) {
        rb.rr_bucket_items[rb.rr_bucket_start[e] + atomicAdd(&rb.rr_bucket_fill[e], 1)] = i;
      }
    }
    __syncthreads();
    for (int i = tid; i < n; i += kThreads) {
      int const e = rb.rr_target[i];
      int accepted = 0;
      if (e >= 0) {
        int const room = cap - rb.rr_load[e];
        int const count = rb.rr_bucket_count[e];
        if (count <= room) {
          accepted = 1;
        } else {
          double const mine = rb.rr_prio[i];
          int32_t const my_a = list[i];
          int rank = 0;
          int const start = rb.rr_bucket_start[e];
          for (int b = start; b < start + count && rank < room; ++b) {
            int const h = rb.rr_bucket_items[b];
            double const other = rb.rr_prio[h];
            rank += (other > mine || (other == mine && list[h] < my_a)) ? 1 : 0;
          }
          accepted = rank < room ? 1 : 0;
        }
      }
      rb.rr_accepted[i] = accepted;
    }
    __syncthreads();
    for (int i = tid; i < n; i += kThreads) {
      if (rb.rr_accepted[i]) {
        int const e = rb.rr_target[i];
        rb.final_ids[list[i]] = e;  // the slot keeps its combine weight; only its expert moves
        atomicAdd(&rb.rr_load[e], 1);
      }
    }
    __syncthreads();

    // c. Rejected proposals stay pending, in order; dropped ones (no target) leave.
    n = block_compact<kThreads>(
        n, [&](int i) { return rb.rr_target[i] >= 0 && !rb.rr_accepted[i]; },
        [&](int i) { return list[i]; }, next, tmp);
    int32_t* const swap = list;
    list = next;
    next = swap;
  }
}


}  // namespace flashmoe::routing
