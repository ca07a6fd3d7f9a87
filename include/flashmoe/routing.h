// flashmoe: routing -- which experts each token goes to, with which combine weight.
//
// THE ROUTING RULES (the GPU routing implements the same function; ties are decided exactly
// as written here, so the GPU's routing can be compared to this one slot by slot).
//
// Notation: T tokens, E experts (the routing space), k = top_k; s[t][e] = routing_weights.
//
// 1. Scores.  z = s / temperature.
//      softmax: p[e] = exp(z[e] - max z) / sum_e' exp(z[e'] - max z), the sum taken pairwise:
//               the E terms in expert order, padded with zeros to a power of two, added as a
//               perfect binary tree (each node: its left half's sum + its right half's)
//      sigmoid: p[e] = 1 / (1 + exp(-z[e]))
//      none:    p[e] = s[e]           (temperature must be 1.0)
//    Every s[t][e] must be finite (else kInvalidArgument, "routing_weights ... non-finite").
// 2. Selection score  q[e] = p[e] + correction_bias[e]  (bias absent: q = p).
//    The bias only steers the selection; it never enters a combine weight.
// 3. Grouped top-k (n_group > 0): experts are split into n_group contiguous groups of E/n_group.
//    Group score = sum of the two largest q in the group when correction_bias is given (the
//    group's single q when the group has one expert), else the largest q in the group.
//    The topk_group best groups are kept (ties to the lower group index); experts of the other
//    groups are not eligible.
// 4. Top-k: the k eligible experts with the largest q, ordered by q descending, ties to the lower
//    expert index. Slot j of token t holds the j-th of them.
// 5. Combine weights: w[j] = p[e_j]; if renormalize and sum_j w[j] > 0: w[j] /= sum_j w[j];
//    then w[j] *= routed_scaling_factor.
//    Pre-routed entry (topk_ids/topk_weights given): steps 1-5 are skipped; slot j has expert
//    topk_ids[t][j] (-1 = no expert) and weight topk_weights[t][j], used as given.
// 6. Capacity (capacity_factor c > 0): cap = ceil(c * (T*k) / E). Combine weights are those of
//    step 5 and never rescaled. The priority of assignment (t, j) at expert e is p[t][e] (the
//    token's score for that expert; pre-routed: topk_weights[t][j]); ties go to the lower token
//    index, then the lower slot.
//    overflow = drop: each expert keeps its cap highest-priority assignments; the others are
//      dropped (they contribute nothing).
//    overflow = reroute (not available pre-routed): first every expert keeps its cap best
//      assignments, as for drop; the rest are pending. Then rounds run until nothing is pending:
//        a. each pending assignment, visiting a token's pending slots in slot order, proposes to
//           the first expert in the token's preference order (all E experts by q descending, ties
//           to the lower index; the group restriction of step 3 does not apply) that is not full
//           (load < cap at the start of the round) and that the token does not use: not one of
//           its k originally selected experts, not a target it has been accepted by, and not an
//           expert an earlier pending slot of the same token proposes to in this round. With no
//           such expert, the assignment is dropped.
//        b. each expert with room r = cap - load accepts the r best proposals by p[t][e]
//           (ties to the lower token index, then the lower slot); accepted assignments move there
//           with their original combine weight; rejected ones stay pending.
//      Each round every proposed-to expert accepts at least one proposal, so rounds end.
// 7. Expert map (expert_map given): routing, capacity and stats live in the global space of E
//    experts; an assignment to expert e is computed here only if expert_map[e] >= 0, with the
//    weights of local expert expert_map[e]; the others contribute nothing to this output.
//
// Outputs: topk_ids [T, k] (final global expert per slot, -1 where dropped or pre-routed -1),
// topk_weights [T, k] (the slot's combine weight, 0 where dropped), expert_load [E] (assignments
// each expert finally holds), dropped (assignments dropped by capacity) and rerouted (assignments
// that ended on an expert other than their original one).
#pragma once

#include <cstdint>
#include <vector>

#include "flashmoe/options.h"
#include "flashmoe/types.h"

namespace flashmoe {

/// The routing of one forward, on the host, in float64.
struct RoutingResult {
  int64_t num_tokens = 0;
  int top_k = 0;
  std::vector<int32_t> topk_ids;      // [T * k], -1 = dropped / none
  std::vector<double> topk_weights;   // [T * k], 0 where dropped
  std::vector<int32_t> expert_load;   // [E]
  int64_t dropped = 0;
  int64_t rerouted = 0;
};

/// Computes the routing of `problem` by the rules above from host arrays in `args`
/// (routing_weights, correction_bias, topk_ids_in/topk_weights_in). Returns kInvalidArgument for
/// non-finite scores or out-of-range pre-routed ids.
Status route_tokens_reference(MoeProblem const& problem, MoeArgs const& args, RoutingResult* out);

/// Temperature annealing for the router (the seed's "temperature annealing for routing
/// weights"): a cosine schedule from t_start at step 0 to t_end at step >= total_steps,
///   temperature(step) = t_end + (t_start - t_end) * 0.5 * (1 + cos(pi * min(step, total)/total)).
/// total_steps <= 0 returns t_end.
double annealed_temperature(int64_t step, int64_t total_steps, double t_start, double t_end);

}  // namespace flashmoe
