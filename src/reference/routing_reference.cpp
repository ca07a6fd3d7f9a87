// The routing rules of flashmoe/routing.h, written as plainly as possible: this is the definition
// the GPU routing is compared against slot by slot.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "flashmoe/routing.h"
#include "reference/float_bits.h"
#include "common/str_cat.h"

namespace flashmoe {
namespace {

using detail::cat;

// One assignment (token t, slot j) competing for an expert with priority `prio`.
struct Candidate {
  double prio;
  int64_t t;
  int j;
};

// Higher priority first; ties to the lower token index, then the lower slot.
bool better(Candidate const& a, Candidate const& b) {
  if (a.prio != b.prio) return a.prio > b.prio;
  if (a.t != b.t) return a.t < b.t;
  return a.j < b.j;
}

// Experts of one token ordered by q descending, ties to the lower expert index.
void sort_by_q(std::vector<int>* experts, double const* q) {
  std::stable_sort(experts->begin(), experts->end(), [q](int a, int b) {
    if (q[a] != q[b]) return q[a] > q[b];
    return a < b;
  });
}

// The softmax sum of routing.h step 1: the n values padded with zeros to a power of two, added as
// a perfect binary tree (leaf order; each node's left subtree + its right).
double pairwise_sum(double const* v, int64_t n) {
  int64_t leaves = 1;
  while (leaves < n) leaves *= 2;
  std::vector<double> t(static_cast<std::size_t>(leaves), 0.0);
  std::copy(v, v + n, t.begin());
  for (int64_t w = 1; w < leaves; w *= 2) {
    for (int64_t i = 0; i + w < leaves; i += 2 * w) t[i] = t[i] + t[i + w];
  }
  return t[0];
}

// Steps 1-5 for one token: scores p, selection scores q, the selected experts and their weights.
void route_one_token(MoeProblem const& problem, double const* s, double const* bias, double* p,
                     double* q, int32_t* ids, double* weights) {
  RoutingOptions const& r = problem.routing;
  int64_t const E = problem.num_experts;
  int const k = r.top_k;

  // 1. Scores.
  if (r.scoring == Scoring::kNone) {
    for (int64_t e = 0; e < E; ++e) p[e] = s[e];
  } else if (r.scoring == Scoring::kSigmoid) {
    for (int64_t e = 0; e < E; ++e) p[e] = 1.0 / (1.0 + std::exp(-(s[e] / r.temperature)));
  } else {
    double zmax = -std::numeric_limits<double>::infinity();
    for (int64_t e = 0; e < E; ++e) zmax = std::max(zmax, s[e] / r.temperature);
    for (int64_t e = 0; e < E; ++e) p[e] = std::exp(s[e] / r.temperature - zmax);
    double const sum = pairwise_sum(p, E);
    for (int64_t e = 0; e < E; ++e) p[e] /= sum;
  }
  // 2. Selection score.
  for (int64_t e = 0; e < E; ++e) q[e] = bias ? p[e] + bias[e] : p[e];

  // 3. Grouped top-k: the eligible experts.
  std::vector<int> eligible;
  if (r.n_group > 0) {
    int64_t const size = E / r.n_group;
    std::vector<double> group_score(r.n_group);
    for (int g = 0; g < r.n_group; ++g) {
      std::vector<int> members(size);
      std::iota(members.begin(), members.end(), static_cast<int>(g * size));
      sort_by_q(&members, q);
      group_score[g] = (bias && size > 1) ? q[members[0]] + q[members[1]] : q[members[0]];
    }
    std::vector<int> groups(r.n_group);
    std::iota(groups.begin(), groups.end(), 0);
    std::stable_sort(groups.begin(), groups.end(), [&](int a, int b) {
      if (group_score[a] != group_score[b]) return group_score[a] > group_score[b];
      return a < b;
    });
    for (int i = 0; i < r.topk_group; ++i) {
      for (int64_t e = groups[i] * size; e < (groups[i] + 1) * size; ++e) {
        eligible.push_back(static_cast<int>(e));
      }
    }
  } else {
    eligible.resize(E);
    std::iota(eligible.begin(), eligible.end(), 0);
  }

  // 4. Top-k among the eligible experts.
  sort_by_q(&eligible, q);

  // 5. Combine weights from p (never from q).
  double sum = 0.0;
  for (int j = 0; j < k; ++j) {
    ids[j] = eligible[j];
    weights[j] = p[eligible[j]];
    sum += weights[j];
  }
  for (int j = 0; j < k; ++j) {
    if (r.renormalize && sum > 0.0) weights[j] /= sum;
    weights[j] *= r.routed_scaling_factor;
  }
}

// Step 6, drop phase: every expert keeps its `cap` best assignments. The others are returned in
// (token, slot) order with their slot emptied; `load` receives what each expert kept.
std::vector<Candidate> enforce_capacity(RoutingResult* out, std::vector<double> const& prio,
                                        int64_t cap, int64_t E) {
  int64_t const T = out->num_tokens;
  int const k = out->top_k;
  std::vector<std::vector<Candidate>> at(E);
  for (int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < k; ++j) {
      int32_t const e = out->topk_ids[t * k + j];
      if (e >= 0) at[e].push_back({prio[t * k + j], t, j});
    }
  }
  std::vector<Candidate> over;
  for (int64_t e = 0; e < E; ++e) {
    std::vector<Candidate>& c = at[e];
    std::sort(c.begin(), c.end(), better);
    int64_t const kept = std::min<int64_t>(cap, static_cast<int64_t>(c.size()));
    out->expert_load[e] = static_cast<int32_t>(kept);
    over.insert(over.end(), c.begin() + kept, c.end());
  }
  std::sort(over.begin(), over.end(), [](Candidate const& a, Candidate const& b) {
    return a.t != b.t ? a.t < b.t : a.j < b.j;
  });
  for (Candidate const& c : over) out->topk_ids[c.t * k + c.j] = -1;
  return over;
}

// Step 6, reroute rounds. `pending` is in (token, slot) order; `original` holds the ids of step 5.
void reroute(RoutingResult* out, std::vector<Candidate> pending,
             std::vector<int32_t> const& original, std::vector<double> const& p,
             std::vector<double> const& q, int64_t cap, int64_t E) {
  int const k = out->top_k;
  // used[t * E + e]: token t may not move to e (an original expert or an accepted target).
  std::vector<char> used(static_cast<size_t>(out->num_tokens * E), 0);
  for (int64_t i = 0; i < out->num_tokens * k; ++i) {
    if (original[i] >= 0) used[(i / k) * E + original[i]] = 1;
  }
  // Preference orders of the tokens that need one (all E experts, no group restriction).
  std::vector<std::vector<int>> pref(out->num_tokens);
  for (Candidate const& c : pending) {
    if (!pref[c.t].empty()) continue;
    pref[c.t].resize(E);
    std::iota(pref[c.t].begin(), pref[c.t].end(), 0);
    sort_by_q(&pref[c.t], &q[c.t * E]);
  }

  while (!pending.empty()) {
    std::vector<int32_t> const load_start = out->expert_load;
    // a. Proposals, token by token, slots in slot order.
    std::vector<std::vector<Candidate>> proposals(E);
    std::vector<int> claimed;  // experts the current token's earlier pending slots propose to
    for (size_t i = 0; i < pending.size(); ++i) {
      Candidate const& c = pending[i];
      if (i == 0 || pending[i - 1].t != c.t) claimed.clear();
      int target = -1;
      for (int e : pref[c.t]) {
        if (load_start[e] >= cap || used[c.t * E + e]) continue;
        if (std::find(claimed.begin(), claimed.end(), e) != claimed.end()) continue;
        target = e;
        break;
      }
      if (target < 0) {
        out->topk_weights[c.t * k + c.j] = 0.0;
        ++out->dropped;
        continue;
      }
      claimed.push_back(target);
      proposals[target].push_back({p[c.t * E + target], c.t, c.j});
    }
    // b. Each expert accepts its r = cap - load best proposals; the rest stay pending.
    std::vector<Candidate> still;
    for (int64_t e = 0; e < E; ++e) {
      std::vector<Candidate>& props = proposals[e];
      if (props.empty()) continue;
      std::sort(props.begin(), props.end(), better);
      int64_t const room = cap - load_start[e];
      for (size_t i = 0; i < props.size(); ++i) {
        Candidate const& c = props[i];
        if (static_cast<int64_t>(i) < room) {
          // The slot keeps its combine weight: only its expert changes.
          out->topk_ids[c.t * k + c.j] = static_cast<int32_t>(e);
          used[c.t * E + e] = 1;
          ++out->expert_load[e];
          ++out->rerouted;
        } else {
          still.push_back(c);
        }
      }
    }
    std::sort(still.begin(), still.end(), [](Candidate const& a, Candidate const& b) {
      return a.t != b.t ? a.t < b.t : a.j < b.j;
    });
    pending.swap(still);
  }
}

}  // namespace

Status route_tokens_reference(MoeProblem const& problem, MoeArgs const& args, RoutingResult* out) {
  FLASHMOE_RETURN_IF_ERROR(validate_problem(problem));
  if (out == nullptr) return Status::Invalid("route_tokens_reference: out must not be null");
  RoutingOptions const& r = problem.routing;
  int64_t const T = problem.num_tokens;
  int64_t const E = problem.num_experts;
  int const k = r.top_k;

  out->num_tokens = T;
  out->top_k = k;
  out->topk_ids.assign(static_cast<size_t>(T * k), -1);
  out->topk_weights.assign(static_cast<size_t>(T * k), 0.0);
  out->expert_load.assign(static_cast<size_t>(E), 0);
  out->dropped = 0;
  out->rerouted = 0;

  std::vector<double> p;     // [T, E] scores (empty when pre-routed)
  std::vector<double> q;     // [T, E] selection scores
  std::vector<double> prio;  // [T, k] capacity priority of each assignment at its expert

  if (problem.prerouted) {
    if (T > 0 && (args.topk_ids_in == nullptr || args.topk_weights_in == nullptr)) {
      return Status::Invalid("topk_ids and topk_weights must both be given for pre-routed input");
    }
    prio.resize(static_cast<size_t>(T * k));
    for (int64_t t = 0; t < T; ++t) {
      for (int j = 0; j < k; ++j) {
        int32_t const e = args.topk_ids_in[t * k + j];
        double const w = static_cast<double>(args.topk_weights_in[t * k + j]);
        if (e < -1 || e >= E) {
          return Status::Invalid(cat("topk_ids must be in -1..", E - 1, " (-1 = no expert), got ",
                                     e, " at token ", t, ", slot ", j));
        }
        if (!std::isfinite(w)) {
          return Status::Invalid(
              cat("topk_weights has a non-finite value (", w, ") at token ", t, ", slot ", j));
        }
        for (int i = 0; i < j && e >= 0; ++i) {
          if (args.topk_ids_in[t * k + i] == e) {
            return Status::Invalid(cat("topk_ids lists expert ", e, " twice for token ", t,
                                       " (slots ", i, " and ", j, ")"));
          }
        }
        // A slot without an expert carries no weight (it contributes nothing).
        out->topk_ids[t * k + j] = e;
        out->topk_weights[t * k + j] = e >= 0 ? w : 0.0;
        prio[t * k + j] = w;
      }
    }
  } else {
    if (T > 0 && args.routing_weights == nullptr) {
      return Status::Invalid("routing_weights must be given (or topk_ids/topk_weights)");
    }
    if (problem.has_correction_bias && args.correction_bias == nullptr) {
      return Status::Invalid("correction_bias is marked present but its pointer is null");
    }
    std::vector<double> bias;
    if (problem.has_correction_bias) {
      bias.resize(E);
      for (int64_t e = 0; e < E; ++e) {
        bias[e] = static_cast<double>(args.correction_bias[e]);
        if (!std::isfinite(bias[e])) {
          return Status::Invalid(
              cat("correction_bias has a non-finite value (", bias[e], ") at expert ", e));
        }
      }
    }
    std::vector<double> s(static_cast<size_t>(T * E));
    for (int64_t i = 0; i < T * E; ++i) {
      s[i] = detail::load_as_double(args.routing_weights, problem.score_dtype, i);
      if (!std::isfinite(s[i])) {
        return Status::Invalid(cat("routing_weights has a non-finite value (", s[i], ") at token ",
                                   i / E, ", expert ", i % E));
      }
      // Finite logits can still overflow once divided by a tiny temperature.
      if (r.scoring != Scoring::kNone && !std::isfinite(s[i] / r.temperature)) {
        return Status::Invalid(cat("routing_weights / temperature is non-finite at token ", i / E,
                                   ", expert ", i % E, " (temperature ", r.temperature,
                                   " is too small)"));
      }
    }
    p.resize(static_cast<size_t>(T * E));
    q.resize(static_cast<size_t>(T * E));
    prio.resize(static_cast<size_t>(T * k));
    for (int64_t t = 0; t < T; ++t) {
      route_one_token(problem, &s[t * E], bias.empty() ? nullptr : bias.data(), &p[t * E],
                      &q[t * E], &out->topk_ids[t * k], &out->topk_weights[t * k]);
      for (int j = 0; j < k; ++j) prio[t * k + j] = p[t * E + out->topk_ids[t * k + j]];
    }
  }

  if (r.capacity_factor > 0.0) {
    int64_t const cap = expert_capacity(problem);
    std::vector<int32_t> const original = out->topk_ids;
    std::vector<Candidate> over = enforce_capacity(out, prio, cap, E);
    if (r.overflow == Overflow::kDrop) {
      for (Candidate const& c : over) out->topk_weights[c.t * k + c.j] = 0.0;
      out->dropped = static_cast<int64_t>(over.size());
    } else {
      reroute(out, std::move(over), original, p, q, cap, E);
    }
  } else {
    for (int32_t e : out->topk_ids) {
      if (e >= 0) ++out->expert_load[e];
    }
  }
  return Status::Ok();
}

double annealed_temperature(int64_t step, int64_t total_steps, double t_start, double t_end) {
  if (total_steps <= 0) return t_end;
  // Steps before 0 hold t_start (the cosine is even, so negative steps would otherwise rise).
  double const frac = static_cast<double>(std::clamp<int64_t>(step, 0, total_steps)) /
                      static_cast<double>(total_steps);
  double const pi = std::acos(-1.0);
  return t_end + (t_start - t_end) * 0.5 * (1.0 + std::cos(pi * frac));
}

}  // namespace flashmoe
