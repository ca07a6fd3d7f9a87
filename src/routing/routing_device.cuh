// flashmoe (internal): device helpers shared by the routing kernels. The score arithmetic is
// written once here so that the top-k kernel and the reroute kernel compute p[t][e] and q[t][e]
// bit for bit alike, and in float64 with the CPU reference's exact formulas (routing.h), so that
// every discrete decision (selection, ties, capacity ranks) matches the reference slot by slot.
// float32 would create ties and flips at ~1e-7 relative that the reference does not have; the
// extra cost is a few double exps per (token, expert), small next to the expert GEMMs.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "flashmoe/options.h"
#include "flashmoe/types.h"
#include "routing/routing_params.h"

namespace flashmoe::routing {

/// routing_weights[i] as double; non-finite scores read as -inf (fused_moe.h: the GPU cannot
/// report data errors without a host sync, so such experts are simply never preferred).
__device__ __forceinline__ double load_score(RoutingParams const& rp, int64_t i) {
  double v;
  switch (static_cast<DType>(rp.score_dtype)) {
    case DType::kFloat64: v = static_cast<double const*>(rp.routing_weights)[i]; break;
    case DType::kFloat16:
      v = static_cast<double>(__half2float(static_cast<__half const*>(rp.routing_weights)[i]));
      break;
    case DType::kBFloat16:
      v = static_cast<double>(
          __bfloat162float(static_cast<__nv_bfloat16 const*>(rp.routing_weights)[i]));
      break;
    default: v = static_cast<double>(static_cast<float const*>(rp.routing_weights)[i]); break;
  }
  return isfinite(v) ? v : -INFINITY;
}

/// z = s / temperature (softmax, sigmoid); a non-finite z (overflow) counts as -inf.
__device__ __forceinline__ double scaled_logit(RoutingParams const& rp, double s) {
  double const z = s / rp.temperature;
  return isfinite(z) ? z : -INFINITY;
}

/// Each score s (load_score's) replaced by scaled_logit(rp, s); at temperature 1 nothing to do:
/// s / 1.0 is s, and s is finite or -inf already (the same bits without the divisions).
template <int kItems>
__device__ __forceinline__ void scaled_logits(RoutingParams const& rp, double (&sz)[kItems]) {
  if (rp.temperature != 1.0) {
#pragma unroll
    for (int i = 0; i < kItems; ++i) sz[i] = scaled_logit(rp, sz[i]);
  }
}

/// Softmax numerator exp(z - zmax) (0 for z = -inf, also when every z is -inf).
__device__ __forceinline__ double softmax_numerator(double z, double zmax) {
  return z == -INFINITY ? 0.0 : exp(z - zmax);
}

/// Softmax p from its numerator (softmax_numerator) and the sum of all numerators.
__device__ __forceinline__ double softmax_prob(double numerator, double sum) {
  return sum > 0.0 ? numerator / sum : 0.0;
}

/// Sigmoid p from the scaled logit z.
__device__ __forceinline__ double sigmoid_prob(double z) { return 1.0 / (1.0 + exp(-z)); }

/// p[t][e] (routing.h step 1) from the raw score s; `stats` only for softmax.
__device__ __forceinline__ double score_prob(RoutingParams const& rp, double s,
                                             TokenStats const& stats) {
  switch (static_cast<Scoring>(rp.scoring)) {
    case Scoring::kSigmoid: return sigmoid_prob(scaled_logit(rp, s));
    case Scoring::kNone: return s;
    default: return softmax_prob(softmax_numerator(scaled_logit(rp, s), stats.zmax), stats.sum);
  }
}

/// q = p + bias (step 2); NaN -> -inf, -0 -> +0 (the reference's == treats them as equal).
__device__ __forceinline__ double selection_score(RoutingParams const& rp, double p, int e) {
  double q = rp.has_bias ? p + static_cast<double>(rp.correction_bias[e]) : p;
  if (q != q) q = -INFINITY;
  return q == 0.0 ? 0.0 : q;
}

/// A key whose ascending order is the descending order of v (v not NaN; -0 == +0).
__device__ __forceinline__ uint64_t descending_key(double v) {
  if (v == 0.0) v = 0.0;
  uint64_t const bits = static_cast<uint64_t>(__double_as_longlong(v));
  uint64_t const ascending = (bits >> 63) ? ~bits : (bits | 0x8000000000000000ull);
  return ~ascending;
}

/// Combine weight of a selected expert: p itself, 0 when p is not finite (scoring "none" with a
/// non-finite input), so a bad score can never turn an output row into NaN.
__device__ __forceinline__ double weight_of(double p) { return isfinite(p) ? p : 0.0; }

/// Pre-routed slot a (routing.h step 5, second paragraph): expert topk_ids_in[a] and weight
/// topk_weights_in[a] as given; an id outside -1..E-1 (the reference rejects it; the GPU cannot
/// report it without a host sync) reads as -1 and a non-finite weight as 0, so bad data never
/// reaches an out-of-bounds row. With capacity, the priority is the given weight.
__device__ __forceinline__ void prerouted_assignment(RoutingParams const& rp,
                                                     RoutingBuffers const& rb, int64_t a) {
  int32_t e = rp.topk_ids_in[a];
  if (e < 0 || e >= rp.num_experts) e = -1;
  float const w_in = rp.topk_weights_in[a];
  float const w = isfinite(w_in) ? w_in : 0.0f;
  rb.orig_ids[a] = e;
  rb.final_ids[a] = e;
  rb.weights[a] = e >= 0 ? w : 0.0f;
  if (rp.capacity > 0) {
    rb.prio_keys[a] = descending_key(static_cast<double>(w));
    rb.iota[a] = static_cast<int32_t>(a);
  }
}

}  // namespace flashmoe::routing
