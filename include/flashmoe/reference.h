// flashmoe: the CPU reference -- the executable definition of the op.
//
//   out[t] = sum over slots j of token t with a final expert e = topk_ids[t][j] >= 0 that is
//            local (expert_map[e] >= 0, or no map) of  topk_weights[t][j] * y_{local(e)}(x_t)
//
// with the routing of flashmoe/routing.h and
//   linear experts:    y_e(x) = x @ W_e                               W_e: [H, D]
//   gated-FFN experts: y_e(x) = (act(x @ Wg_e) * (x @ Wu_e)) @ Wd_e   Wg_e = W_gate_up[e][:, :I],
//                                                                    Wu_e = W_gate_up[e][:, I:]
// (layout kOutIn stores every matrix transposed: [out, in]).
//
// Arithmetic: every input is converted to double, all sums accumulate in double, and the output
// is rounded once to the tokens' type. Precision modes change the inputs first:
//   kAuto: none.  kBF16: tokens and weights rounded to bf16.
//   kFP8: weights fake-quantized to E4M3 per (expert, output channel) and tokens per token row
//         (flashmoe/quantization.h); for gated FFN the intermediate act(g)*u is rounded to bf16
//         (the FP8 paths keep it as bf16 rows) and then quantized per row before the down
//         projection. This is the "same quantization" reference of FP8 paths.
// Prepared (E4M3) weights are GPU-only: the reference returns kNotSupported for them.
// A token with no computed slot gets a zero row. T = 0 is valid and writes nothing.
#pragma once

#include "flashmoe/options.h"
#include "flashmoe/routing.h"
#include "flashmoe/types.h"

namespace flashmoe {

/// Runs the whole op on the host. All pointers in `args` are host pointers. Validates the problem
/// (validate_problem) and the data (finite scores, pre-routed ids and expert_map in range) and
/// fills the optional outputs of `args` when they are non-null.
Status reference_fused_moe(MoeProblem const& problem, MoeArgs const& args);

}  // namespace flashmoe
