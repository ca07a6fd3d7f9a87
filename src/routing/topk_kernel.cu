// flashmoe: per-token top-k routing on the GPU (routing.h steps 1-5), one 128-thread block per
// token. Scores in float64 (routing_device.cuh says why); the selection takes, k times, the block
// minimum of (descending-q key, expert index) over the experts not yet taken: larger q first,
// the lower expert index among equal q -- the reference's tie rule.
#include <cub/block/block_reduce.cuh>
#include <cuda/functional>

#include "fused/cuda_check.h"
#include "routing/routing_device.cuh"
#include "routing/routing_kernels.h"

namespace flashmoe::routing {
namespace {

constexpr int kTopkThreads = 128;
constexpr int kTopkWarps = kTopkThreads / 32;

// (key, expert) pairs in selection order: the smaller key, then the smaller expert index.
__device__ __forceinline__ bool before(uint64_t key, int32_t e, uint64_t best_key, int32_t best_e) {
  return key < best_key || (key == best_key && e < best_e);
}

template <int kItems>
__global__ void __launch_bounds__(kTopkThreads)
    moe_topk_kernel(RoutingParams const rp, RoutingBuffers const rb) {
  constexpr int kMaxE = kTopkThreads * kItems;
  using Reduce = cub::BlockReduce<double, kTopkThreads>;
  __shared__ struct {
    typename Reduce::TempStorage reduce;
  } tmp;
  __shared__ uint64_t s_warp_key[2][kTopkWarps];  // per-warp minima of a selection round
  __shared__ int32_t s_warp_expert[2][kTopkWarps];  // (two buffers: one barrier per round)
  __shared__ int32_t s_selected[kMaxE];             // expert of slot r
  __shared__ double s_p[kMaxE];      // p[e]; softmax: first the numerators
  __shared__ double s_aux[kMaxE];    // q[e] (grouped top-k), then the selected weights
  __shared__ double s_group[kMaxE];  // group scores
  __shared__ unsigned char s_group_ok[kMaxE];
  __shared__ double s_zmax;
  __shared__ double s_sum;

  int const t = blockIdx.x;
  int const tid = threadIdx.x;
  int const E = rp.num_experts;
  int const k = rp.top_k;
  Scoring const scoring = static_cast<Scoring>(rp.scoring);
  int64_t const row = static_cast<int64_t>(t) * E;

  // 1. Scores, blocked: thread tid owns experts tid * kItems + i.
  double p[kItems];
  double z[kItems];
  double zmax_local = -INFINITY;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    int const e = tid * kItems + i;
    double const s = e < E ? load_score(rp, row + e) : -INFINITY;
    p[i] = s;
    z[i] = scaled_logit(rp, s);
    zmax_local = fmax(zmax_local, z[i]);
  }
  TokenStats stats{0.0, 0.0};
  if (scoring == Scoring::kSoftmax) {
    double const zmax = Reduce(tmp.reduce).Reduce(zmax_local, ::cuda::maximum<double>{});
    if (tid == 0) s_zmax = zmax;
    __syncthreads();
    stats.zmax = s_zmax;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      int const e = tid * kItems + i;
      if (e < E) s_p[e] = softmax_numerator(z[i], stats.zmax);
    }
    __syncthreads();
    if (tid == 0) {
      // Sequential, in expert order: the reference's summation order, so p is bit-identical.
      double sum = 0.0;
      for (int e = 0; e < E; ++e) sum += s_p[e];
      s_sum = sum;
      if (rp.reroute) rb.token_stats[t] = TokenStats{stats.zmax, sum};
    }
    __syncthreads();
    stats.sum = s_sum;
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) p[i] = score_prob(rp, p[i], stats);  // p[i] held s
  __syncthreads();  // s_p is rewritten below
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    int const e = tid * kItems + i;
    if (e < E) s_p[e] = p[i];
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
      if (e < E) s_aux[e] = q[i];
    }
    __syncthreads();
    for (int g = tid; g < rp.n_group; g += kTopkThreads) {
      double top1 = -INFINITY;
      double top2 = -INFINITY;
      for (int e = g * G; e < (g + 1) * G; ++e) {
        double const v = s_aux[e];
        if (v > top1) {
          top2 = top1;
          top1 = v;
        } else if (v > top2) {
          top2 = v;
        }
      }
      s_group[g] = (rp.has_bias && G > 1) ? top1 + top2 : top1;
    }
    __syncthreads();
    for (int g = tid; g < rp.n_group; g += kTopkThreads) {
      double const mine = s_group[g];
      int rank = 0;
      for (int h = 0; h < rp.n_group; ++h) {
        double const other = s_group[h];
        rank += (other > mine || (other == mine && h < g)) ? 1 : 0;
      }
      s_group_ok[g] = rank < rp.topk_group ? 1 : 0;
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      int const e = tid * kItems + i;
      eligible[i] = e < E && s_group_ok[e / G] != 0;
    }
  }

  // 4. Top-k: slot r takes the minimum (key, expert) of the experts not taken by slots < r,
  // where key = descending_key(q) and ineligible experts (and the padding items e >= E) have the
  // largest key: exactly the first k of a stable ascending sort of the keys in expert order (what
  // this kernel did with a CUB block radix sort before: 16 4-bit passes of a block scan for
  // 64-bit keys, against k rounds of 5 shuffles and one barrier here).
  uint64_t keys[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) keys[i] = eligible[i] ? descending_key(q[i]) : ~uint64_t{0};
  unsigned taken = 0;  // bit i: item i went to an earlier slot
  int const lane = tid % 32;
  int const warp = tid / 32;
  for (int r = 0; r < k; ++r) {
    uint64_t best_key = ~uint64_t{0};
    int32_t best_e = INT32_MAX;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      int32_t const e = tid * kItems + i;
      if (!((taken >> i) & 1u) && before(keys[i], e, best_key, best_e)) {
        best_key = keys[i];
        best_e = e;
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      uint64_t const other_key = __shfl_xor_sync(0xffffffffu, best_key, off);
      int32_t const other_e = __shfl_xor_sync(0xffffffffu, best_e, off);
      if (before(other_key, other_e, best_key, best_e)) {
        best_key = other_key;
        best_e = other_e;
      }
    }
    if (lane == 0) {
      s_warp_key[r & 1][warp] = best_key;
      s_warp_expert[r & 1][warp] = best_e;
    }
    // The buffer written in round r is next written in round r + 2, after every thread has
    // passed round r + 1's barrier, i.e. finished reading it here.
    __syncthreads();
    best_key = s_warp_key[r & 1][0];
    best_e = s_warp_expert[r & 1][0];
#pragma unroll
    for (int w = 1; w < kTopkWarps; ++w) {
      if (before(s_warp_key[r & 1][w], s_warp_expert[r & 1][w], best_key, best_e)) {
        best_key = s_warp_key[r & 1][w];
        best_e = s_warp_expert[r & 1][w];
      }
    }
    if (best_e / kItems == tid) taken |= 1u << (best_e % kItems);
    if (tid == 0) s_selected[r] = best_e;
  }
  __syncthreads();  // s_selected; s_aux (q) is reused below

  // 5. Combine weights from p of the k selected experts (slot r = rank r).
  // (An expert >= E only if k exceeded the eligible experts, which validation excludes.)
  for (int r = tid; r < k; r += kTopkThreads) {
    int32_t const e = s_selected[r];
    s_aux[r] = e < E ? weight_of(s_p[e]) : 0.0;
  }
  __syncthreads();
  if (tid == 0) {
    double sum = 0.0;
    for (int j = 0; j < k; ++j) sum += s_aux[j];  // slot order, as the reference
    s_sum = sum;
  }
  __syncthreads();
  double const wsum = s_sum;
  for (int r = tid; r < k; r += kTopkThreads) {
    int const e = s_selected[r] < E ? s_selected[r] : -1;
    double w = s_aux[r];
    if (rp.renormalize && wsum > 0.0) w /= wsum;
    w *= rp.routed_scaling_factor;
    int64_t const a = static_cast<int64_t>(t) * k + r;
    rb.orig_ids[a] = e;
    rb.final_ids[a] = e;
    rb.weights[a] = static_cast<float>(w);
    if (rp.capacity > 0) {
      // Capacity priority of (t, r) at e: p[t][e] (never the renormalized weight).
      double const prio = e >= 0 && isfinite(s_p[e]) ? s_p[e] : -INFINITY;
      rb.prio_keys[a] = descending_key(prio);
      rb.iota[a] = static_cast<int32_t>(a);
    }
  }
}

}  // namespace

int topk_items_per_thread(int64_t num_experts) {
  if (num_experts <= 128) return 1;
  if (num_experts <= 256) return 2;
  if (num_experts <= kMaxRoutingExperts) return 8;
  return 0;
}

Status launch_topk(RoutingParams const& rp, RoutingBuffers const& rb, cudaStream_t stream) {
  dim3 const grid(static_cast<unsigned>(rp.num_tokens));
  switch (topk_items_per_thread(rp.num_experts)) {
    case 1: moe_topk_kernel<1><<<grid, kTopkThreads, 0, stream>>>(rp, rb); break;
    case 2: moe_topk_kernel<2><<<grid, kTopkThreads, 0, stream>>>(rp, rb); break;
    case 8: moe_topk_kernel<8><<<grid, kTopkThreads, 0, stream>>>(rp, rb); break;
    default:
      return Status::Unsupported("the GPU routing takes at most " +
                                 std::to_string(kMaxRoutingExperts) + " experts");
  }
  FLASHMOE_LAUNCH_CHECK("moe_topk_kernel");
  return Status::Ok();
}

}  // namespace flashmoe::routing
