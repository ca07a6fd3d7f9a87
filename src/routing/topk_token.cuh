// flashmoe (internal): the top-k routing of one token (routing.h steps 1-5) by a group of 128
// threads, written once for the top-k kernel (one block per token, topk_kernel.cu) and the fused
// kernel (three warpgroups of a CTA, each on its own token). Scores in float64 (routing_device.cuh
// says why); the selection takes, k times, the group's minimum of (descending-q key, expert
// index) over the experts not yet taken: larger q first, the lower expert index among equal q --
// the reference's tie rule.
#pragma once

#include <cstdint>

#include "common/globaltimer.cuh"
#include "routing/routing_device.cuh"
#include "routing/routing_params.h"

namespace flashmoe::routing {

/// Threads of the top-k kernel's block (one token per block).
inline constexpr int kTopkThreads = 128;

/// Shared memory of one token's top-k by kThreads threads (a multiple of 32), kItems experts per
/// thread: E <= kThreads * kItems.
template <int kThreads, int kItems>
struct TopkSmem {
  static_assert(kThreads % 32 == 0, "whole warps");
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kMaxE = kThreads * kItems;
  double p[kMaxE];                   // p[e]; softmax: first the numerators
  double aux[kMaxE];                 // q[e] (grouped top-k), then the selected weights
  double group[kMaxE];               // group scores
  uint64_t warp_key[2][kWarps];    // per-warp minima of a selection round
  int32_t warp_expert[2][kWarps];  // (two buffers: one barrier per round)
  int32_t selected[kMaxE];           // expert of slot r
  double warp_max[kWarps];
  double warp_sum[kWarps];
  double sum;
  unsigned char group_ok[kMaxE];
};

/// A barrier of the whole block (the top-k kernel: one 128-thread block per token).
struct BlockSync {
  __device__ __forceinline__ void operator()() const { __syncthreads(); }
};
/// A barrier of one warp (a token per warp).
struct WarpSync {
  __device__ __forceinline__ void operator()() const { __syncwarp(); }
};
/// A barrier of the 128 threads of one warpgroup (hardware named barrier `id`).
struct WarpgroupSync {
  int id;
  __device__ __forceinline__ void operator()() const {
    asm volatile("bar.sync %0, 128;" ::"r"(id) : "memory");
  }
};
/// A barrier of `threads` threads on hardware named barrier `id`, both chosen at run time (the
/// fused kernel's one-token top-k: its warpgroup, or one warp running it dry).
struct NamedSync {
  int id;
  int threads;
  __device__ __forceinline__ void operator()() const {
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
  }
};

/// topk_select's steps, for a run that starts at a later one (from_step): such a run computes
/// nothing it can use -- it only brings the later steps' instructions into the SM's caches ahead
/// of a real run (the fused kernel's one token; perf-log v0.64). The values of the skipped steps
/// read as 0 (the selection keys as the largest: no candidate).
inline constexpr int kTopkStepExp = 1;        // the softmax's numerators, their sum, p
inline constexpr int kTopkStepQ = 2;          // q, the groups, the selection keys
inline constexpr int kTopkStepSelection = 3;  // the k selection rounds

/// v[0] + ... + v[N-1] as a perfect binary tree (N a power of two; each node: left + right), the
/// order of routing.h step 1's softmax sum. Overwrites v.
template <int N>
__device__ __forceinline__ double tree_sum(double (&v)[N]) {
  static_assert(N > 0 && (N & (N - 1)) == 0, "a perfect binary tree over the leaves");
#pragma unroll
  for (int w = 1; w < N; w *= 2) {
#pragma unroll
    for (int i = 0; i + w < N; i += 2 * w) v[i] = v[i] + v[i + w];
  }
  return v[0];
}

// (key, expert) pairs in selection order: the smaller key, then the smaller expert index.
__device__ __forceinline__ bool topk_before(uint64_t key, int32_t e, uint64_t best_key,
                                            int32_t best_e) {
  return key < best_key || (key == best_key && e < best_e);
}

/// Profiling (the fused kernel's timeline): thread 0 of the group stamps stamps[i] at the steps
/// of topk_token; nothing when stamps is null.
inline constexpr int kTopkStamps = 4;  // scores and their max, softmax sum, q ready, selected
__device__ __forceinline__ void topk_stamp(uint64_t* stamps, int tid, int i) {
  if (stamps != nullptr && tid == 0) stamp_globaltimer(stamps + i);
}

/// Softmax p of the group's token t from its scaled logits (thread tid's kItems experts, replaced
/// by p in zp): the max and the sum over the group, then numerator / sum per item (score_prob's
/// value, bit for bit).
/// The sum is pairwise as routing.h step 1 defines it (the reference's order, so p is bit for
/// bit the same): kThreads * kItems leaves (a power of two; 0 past E), each thread's kItems
/// consecutive experts as a perfect binary tree, then the lanes' sums by a butterfly (at offset o
/// a lane adds the neighbouring block of o lanes: left + right, or right + left, the same sum),
/// then the warps' sums pairwise. log2 depth instead of E dependent adds.
/// from_step: topk_select's.
template <int kThreads, int kItems, class Sync>
__device__ __forceinline__ void softmax_probs(RoutingParams const& rp, RoutingBuffers const& rb,
                                              int t, int tid, TopkSmem<kThreads, kItems>& sm,
                                              Sync const& sync, uint64_t* stamps,
                                              double (&zp)[kItems], int from_step) {
  constexpr int kWarps = kThreads / 32;
  double zmax = 0.0;
  if (from_step < kTopkStepExp) {
    zmax = -INFINITY;
#pragma unroll
    for (int i = 0; i < kItems; ++i) zmax = fmax(zmax, zp[i]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      zmax = fmax(zmax, __shfl_xor_sync(0xffffffffu, zmax, off));
    }
    if constexpr (kWarps > 1) {
      if (tid % 32 == 0) sm.warp_max[tid / 32] = zmax;
      sync();
#pragma unroll
      for (int w = 0; w < kWarps; ++w) zmax = fmax(zmax, sm.warp_max[w]);
    }
  }
  topk_stamp(stamps, tid, 0);
  double v[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    zp[i] = softmax_numerator(zp[i], zmax);  // 0 past E (z = -inf); kept for p (no second exp)
    v[i] = zp[i];
  }
  double sum = tree_sum(v);
#pragma unroll
  for (int off = 1; off < 32; off *= 2) sum = sum + __shfl_xor_sync(0xffffffffu, sum, off);
  if constexpr (kWarps > 1) {
    if (tid % 32 == 0) sm.warp_sum[tid / 32] = sum;
    sync();
    double ws[kWarps];
#pragma unroll
    for (int w = 0; w < kWarps; ++w) ws[w] = sm.warp_sum[w];
    sum = tree_sum(ws);
  }
  if (rp.reroute && tid == 0) rb.token_stats[t] = TokenStats{zmax, sum};
  topk_stamp(stamps, tid, 1);
#pragma unroll
  for (int i = 0; i < kItems; ++i) zp[i] = softmax_prob(zp[i], sum);
}

/// Token t's top-k, steps 1-4 (topk_token's first part): sm.selected[r] = the expert of slot r
/// (>= E only if k exceeded the eligible experts), sm.p = the experts' p, visible to the group
/// on return (the softmax stats in rb.token_stats when rp.reroute; nothing else is written).
/// rp: a local copy (topk_token says why). from_step > 0: a run from a later step that only
/// fetches code (kTopkStepExp says why; such a run must have rp.reroute false).
template <int kThreads, int kItems, class Sync>
__device__ __forceinline__ void topk_select(RoutingParams const& rp, RoutingBuffers const& rb,
                                            int t, int tid, TopkSmem<kThreads, kItems>& sm,
                                            Sync const& sync, uint64_t* stamps,
                                            int from_step = 0) {
  constexpr int kWarps = kThreads / 32;
  int const E = rp.num_experts;
  int const k = rp.top_k;
  Scoring const scoring = static_cast<Scoring>(rp.scoring);
  int64_t const row = static_cast<int64_t>(t) * E;

  // 1. Scores, blocked: thread tid owns experts tid * kItems + i. Each scoring rule is a loop of
  // its own (perf-log v0.44: per-item switches made this unrolled code several times longer
  // than what runs).
  double p[kItems];  // the scores s, then (softmax, sigmoid) the logits z, then p
#pragma unroll
  for (int i = 0; i < kItems; ++i) p[i] = 0.0;
  if (from_step < kTopkStepQ) {
    if (from_step < kTopkStepExp) {
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        int const e = tid * kItems + i;
        p[i] = e < E ? load_score(rp, row + e) : -INFINITY;
      }
    }
    if (scoring != Scoring::kNone) {
      if (from_step < kTopkStepExp) scaled_logits(rp, p);
      if (scoring == Scoring::kSigmoid) {
#pragma unroll
        for (int i = 0; i < kItems; ++i) p[i] = sigmoid_prob(p[i]);
      } else {
        softmax_probs<kThreads, kItems>(rp, rb, t, tid, sm, sync, stamps, p, from_step);
      }
    }
  }
  uint64_t keys[kItems];  // step 4's
#pragma unroll
  for (int i = 0; i < kItems; ++i) keys[i] = ~uint64_t{0};
  if (from_step < kTopkStepSelection) {
    sync();  // sm.p is rewritten below
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      int const e = tid * kItems + i;
      if (e < E) sm.p[e] = p[i];
    }

    // 2. Selection scores; 3. grouped top-k eligibility.
    double q[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      int const e = tid * kItems + i;
      q[i] = e < E ? selection_score(rp, p[i], e) : -INFINITY;
    }
    bool eligible[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) eligible[i] = tid * kItems + i < E;
    if (rp.n_group > 0) {
      int const G = E / rp.n_group;
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        int const e = tid * kItems + i;
        if (e < E) sm.aux[e] = q[i];
      }
      sync();
      for (int g = tid; g < rp.n_group; g += kThreads) {
        double top1 = -INFINITY;
        double top2 = -INFINITY;
        for (int e = g * G; e < (g + 1) * G; ++e) {
          double const v = sm.aux[e];
          if (v > top1) {
            top2 = top1;
            top1 = v;
          } else if (v > top2) {
            top2 = v;
          }
        }
        sm.group[g] = (rp.has_bias && G > 1) ? top1 + top2 : top1;
      }
      sync();
      for (int g = tid; g < rp.n_group; g += kThreads) {
        double const mine = sm.group[g];
        int rank = 0;
        for (int h = 0; h < rp.n_group; ++h) {
          double const other = sm.group[h];
          rank += (other > mine || (other == mine && h < g)) ? 1 : 0;
        }
        sm.group_ok[g] = rank < rp.topk_group ? 1 : 0;
      }
      sync();
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        int const e = tid * kItems + i;
        eligible[i] = e < E && sm.group_ok[e / G] != 0;
      }
    }

    // 4. Top-k: slot r takes the minimum (key, expert) of the experts not taken by slots < r,
    // where key = descending_key(q) and ineligible experts (and the padding items e >= E) have the
    // largest key: exactly the first k of a stable ascending sort of the keys in expert order (what
    // this kernel did with a CUB block radix sort before: 16 4-bit passes of a block scan for
    // 64-bit keys, against k rounds of 5 shuffles and one barrier here).
#pragma unroll
    for (int i = 0; i < kItems; ++i) keys[i] = eligible[i] ? descending_key(q[i]) : ~uint64_t{0};
  }
  topk_stamp(stamps, tid, 2);
  // A taken item's key becomes the largest (a real key never is: descending_key of a non-NaN).
  // The thread's items are in expert order, so a strict key compare keeps the lower expert
  // among equal keys without comparing experts (the hottest loop of the top-k; perf-log v0.44).
  // A thread with no candidate left offers (largest key, INT32_MAX); k <= the eligible experts
  // (validation), so such an offer never wins a round.
  int const lane = tid % 32;
  int const warp = tid / 32;
  for (int r = 0; r < k; ++r) {
    uint64_t best_key = ~uint64_t{0};
    int32_t best_e = INT32_MAX;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (keys[i] < best_key) {
        best_key = keys[i];
        best_e = tid * kItems + i;
      }
    }
    // The warp's minimum (key, expert), lexicographic: three redux.sync steps -- the key's high
    // word, its low word among the lanes holding that, the expert among the lanes holding both.
    {
      uint32_t const hi = static_cast<uint32_t>(best_key >> 32);
      uint32_t const min_hi = __reduce_min_sync(0xffffffffu, hi);
      uint32_t const lo = hi == min_hi ? static_cast<uint32_t>(best_key) : 0xffffffffu;
      uint32_t const min_lo = __reduce_min_sync(0xffffffffu, lo);
      uint32_t const ex = hi == min_hi && lo == min_lo ? static_cast<uint32_t>(best_e)
                                                       : 0xffffffffu;
      best_e = static_cast<int32_t>(__reduce_min_sync(0xffffffffu, ex));
      best_key = (static_cast<uint64_t>(min_hi) << 32) | min_lo;
    }
    // Several warps: their minima meet in shared memory. (One warp: every lane holds it already.)
    if constexpr (kWarps > 1) {
      if (lane == 0) {
        sm.warp_key[r & 1][warp] = best_key;
        sm.warp_expert[r & 1][warp] = best_e;
      }
      // The buffer written in round r is next written in round r + 2, after every thread has
      // passed round r + 1's barrier, i.e. finished reading it here.
      sync();
      best_key = sm.warp_key[r & 1][0];
      best_e = sm.warp_expert[r & 1][0];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) {
        if (topk_before(sm.warp_key[r & 1][w], sm.warp_expert[r & 1][w], best_key, best_e)) {
          best_key = sm.warp_key[r & 1][w];
          best_e = sm.warp_expert[r & 1][w];
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (best_e == tid * kItems + i) keys[i] = ~uint64_t{0};
    }
    if (tid == 0) sm.selected[r] = best_e;
  }
  sync();  // sm.selected; sm.aux (q) is reused by topk_write
  topk_stamp(stamps, tid, 3);
}

/// Token t's top-k, step 5 (topk_token's second part, after topk_select on the same group and
/// sm): rb.orig_ids / final_ids / weights of its k slots (and the capacity keys when
/// rp.capacity > 0).
template <int kThreads, int kItems, class Sync>
__device__ __forceinline__ void topk_write(RoutingParams const& rp, RoutingBuffers const& rb,
                                           int t, int tid, TopkSmem<kThreads, kItems>& sm,
                                           Sync const& sync) {
  int const E = rp.num_experts;
  int const k = rp.top_k;
  // 5. Combine weights from p of the k selected experts (slot r = rank r).
  // (An expert >= E only if k exceeded the eligible experts, which validation excludes.)
  for (int r = tid; r < k; r += kThreads) {
    int32_t const e = sm.selected[r];
    sm.aux[r] = e < E ? weight_of(sm.p[e]) : 0.0;
  }
  sync();
  if (tid == 0) {
    double sum = 0.0;
    for (int j = 0; j < k; ++j) sum += sm.aux[j];  // slot order, as the reference
    sm.sum = sum;
  }
  sync();
  double const wsum = sm.sum;
  for (int r = tid; r < k; r += kThreads) {
    int const e = sm.selected[r] < E ? sm.selected[r] : -1;
    double w = sm.aux[r];
    if (rp.renormalize && wsum > 0.0) w /= wsum;
    w *= rp.routed_scaling_factor;
    int64_t const a = static_cast<int64_t>(t) * k + r;
    rb.orig_ids[a] = e;
    rb.final_ids[a] = e;
    rb.weights[a] = static_cast<float>(w);
    if (rp.capacity > 0) {
      // Capacity priority of (t, r) at e: p[t][e] (never the renormalized weight).
      double const prio = e >= 0 && isfinite(sm.p[e]) ? sm.p[e] : -INFINITY;
      rb.prio_keys[a] = descending_key(prio);
      rb.iota[a] = static_cast<int32_t>(a);
    }
  }
}

/// Token t's top-k: rb.orig_ids / final_ids / weights of its k slots (and the capacity keys when
/// rp.capacity > 0, the softmax stats when rp.reroute). tid: 0..kThreads-1 within the group;
/// sync(): a barrier of exactly those threads (and a memory fence among them). sm is the group's.
/// stamps: null, or kTopkStamps profiling slots (topk_stamp).
template <int kThreads, int kItems, class Sync>
__device__ __forceinline__ void topk_token(RoutingParams const& rp_in, RoutingBuffers const& rb,
                                           int t, int tid, TopkSmem<kThreads, kItems>& sm,
                                           Sync const& sync, uint64_t* stamps = nullptr) {
  // The fields used, read once at the start: the fused kernel's routing phases reach the
  // parameters through a pointer, and each field read where it is used (after the group's
  // shared and global stores) waited on its own memory round trip (perf-log v0.44).
  RoutingParams const rp = rp_in;
  topk_select<kThreads, kItems>(rp, rb, t, tid, sm, sync, stamps);
  topk_write<kThreads, kItems>(rp, rb, t, tid, sm, sync);
}

}  // namespace flashmoe::routing
