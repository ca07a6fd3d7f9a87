// flashmoe: the description of one MoE forward (problem + options) and the arrays it reads/writes.
//
// The host API follows the cuBLASLt / CUTLASS contract: describe the problem (MoeProblem),
// validate it (validate_problem), ask the workspace size, run on a caller's stream with the
// caller's workspace and arrays (MoeArgs). Every array is dense and row-major.
#pragma once

#include <cstdint>

#include "flashmoe/types.h"

namespace flashmoe {

enum class Scoring : int {
  kSoftmax = 0,  // inputs are logits; score = softmax(logits / temperature) over all E experts
  kSigmoid = 1,  // inputs are logits; score = sigmoid(logits / temperature) (DeepSeek-V3)
  kNone = 2,     // inputs are already probabilities; score = input (temperature must be 1)
};

enum class Activation : int {
  kSilu = 0,  // silu(g) = g / (1 + exp(-g))          (SwiGLU)
  kGelu = 1,  // gelu(g) = g * 0.5 * (1 + erf(g/sqrt2)) (exact, torch's default)
};

enum class Overflow : int {
  kDrop = 0,     // assignments over capacity are dropped
  kReroute = 1,  // ... moved to the token's next-best expert with room (see reference.h)
};

/// Raw-weight layout. kInOut is the seed's `[E, in, out]`; kOutIn is nn.Linear's `[E, out, in]`
/// (Hugging Face / vLLM checkpoints), accepted without a copy.
enum class WeightLayout : int { kInOut = 0, kOutIn = 1 };

enum class Precision : int {
  kAuto = 0,  // the inputs' own types (CPU: exact float64 math on them; GPU: bf16/fp16 path)
  kBF16 = 1,  // tokens and weights rounded to bf16, fp32 (GPU) / fp64 (CPU) accumulation
  kFP8 = 2,   // E4M3 weights (per output channel scales) and activations (per token scales)
};

/// Scales of prepared FP8 expert weights (MoeProblem::weights_prepared; see MoeArgs::w1_scale).
enum class WeightScale : int {
  kNone = 0,      // raw (unprepared) weights: no scales
  kChannel = 1,   // one float32 scale per (expert, output channel), over the input dimension
  kBlock128 = 2,  // one float32 scale per (expert, 128 output channels x 128 inputs) block
                  // (the DeepSeek-V3 checkpoint layout)
};

enum class ExpertKind : int {
  kLinear = 0,    // y_e(x) = x @ W_e, W_e: [H, D]
  kGatedFFN = 1,  // y_e(x) = (act(x @ Wg_e) * (x @ Wu_e)) @ Wd_e, Wg/Wu: [H, I], Wd: [I, H]
};

/// Router options. Defaults are the seed's behaviour (softmax over logits, renormalized top-k).
struct RoutingOptions {
  int top_k = 8;                        // experts per token, 1..num_experts
  Scoring scoring = Scoring::kSoftmax;
  bool renormalize = true;              // the k combine weights are rescaled to sum to 1
  double temperature = 1.0;             // scores come from logits / temperature; > 0
  int n_group = 0;                      // grouped top-k (DeepSeek): 0 = off
  int topk_group = 0;                   // groups kept when n_group > 0
  double routed_scaling_factor = 1.0;   // multiplies the final combine weights
  double capacity_factor = 0.0;         // 0 = dropless; else >= 1, cap = ceil(c * T * k / E)
  Overflow overflow = Overflow::kDrop;
};

/// Shapes, types and options of one forward. Shapes are derived from the arrays by the caller.
struct MoeProblem {
  int64_t num_tokens = 0;         // T
  int64_t hidden = 0;             // H
  int64_t num_experts = 0;        // E: the routing space (columns of routing_weights)
  int64_t num_local_experts = 0;  // experts whose weights are passed (== E without expert_map)
  ExpertKind kind = ExpertKind::kLinear;
  int64_t out_dim = 0;            // linear experts: D (the output has D columns)
  int64_t inter_dim = 0;          // gated-FFN experts: I (the output has H columns)
  Activation activation = Activation::kSilu;
  WeightLayout layout = WeightLayout::kInOut;
  Precision precision = Precision::kAuto;
  RoutingOptions routing;

  DType token_dtype = DType::kFloat32;   // also the output's type
  DType weight_dtype = DType::kFloat32;  // w1 and w2
  DType score_dtype = DType::kFloat32;   // routing_weights

  // Prepared FP8 weights (precision kFP8 on the GPU): w1/w2 are E4M3 arrays in the prepared
  // layout (see MoeArgs), made once by prepare_experts_fp8() (flashmoe/quantization.h), with
  // weight_dtype = kFloat8E4M3 and weight_scale naming their scales. `layout` is then ignored
  // for w1/w2 (the prepared layout is fixed); the raw layout only matters to the preparation.
  bool weights_prepared = false;
  WeightScale weight_scale = WeightScale::kNone;  // kChannel or kBlock128 when prepared

  bool prerouted = false;          // topk_ids/topk_weights given instead of routing_weights
  bool has_correction_bias = false;
  bool has_expert_map = false;

  // true: the output is bitwise identical run to run (the combine adds each token's slots in
  // slot order). false: the one-kernel forwards (KernelPath kFusedSm90, kFusedSm90Fp8) with at
  // most 256 tokens add each expert row's weighted output into `out` with atomics in the last
  // GEMM's epilogue (no combine phase, no grid barrier before it; the order of the adds, and so
  // the last bits, vary run to run) -- where it was measured faster. Every other case is
  // deterministic either way.
  bool deterministic = true;

  /// Columns of the output: D for linear experts, H for gated-FFN experts.
  int64_t output_dim() const { return kind == ExpertKind::kLinear ? out_dim : hidden; }
};

/// The arrays of one forward. Input pointers may be host or device memory, matching the entry
/// point (reference_* takes host pointers, fused_moe_run device pointers).
struct MoeArgs {
  void const* tokens = nullptr;           // [T, H] token_dtype
  // Linear: w1 = W [E_local, H, D] (kInOut) or [E_local, D, H] (kOutIn); w2 unused.
  // Gated FFN: w1 = W_gate_up [E_local, H, 2I] (gate columns first, then up) or [E_local, 2I, H];
  //            w2 = W_down [E_local, I, H] or [E_local, H, I].
  //
  // Prepared FP8 weights (MoeProblem::weights_prepared, made by prepare_experts_fp8()):
  // E_local experts, each a matrix of N_raw output channels over K inputs, stored as
  //   w1 / w2   [E_local, Np, K] E4M3 (OCP e4m3fn) bytes, K contiguous (row p = one output
  //             channel: the K-major operand that the sm_90a GEMM loads with TMA); 16-byte
  //             aligned; K % 16 == 0.
  //   w1_scale / w2_scale   float32, in the raw channel order (whatever the row order):
  //             kChannel  [E_local, N_raw]                                 amax / 448 per channel
  //             kBlock128 [E_local, ceil(N_raw / 128), ceil(K / 128)]      amax / 448 per block
  //   dequantized weight of (channel c, input k) = e4m3 value * its scale.
  // with, per matrix:
  //   linear w1:     K = H, N_raw = D,  Np = D,  row p = output channel p.
  //   FFN w2 (down): K = I, N_raw = H,  Np = H,  row p = output channel p.
  //   FFN w1 (gate/up): K = H, N_raw = 2I (raw channels: gate 0..I-1, then up I..2I-1),
  //       Np = 128 * ceil(I / 64): rows come in chunks of 128; chunk j holds
  //         rows 128j      .. 128j + 63   gate channels 64j .. 64j + 63
  //         rows 128j + 64 .. 128j + 127  up channels   64j .. 64j + 63  (raw I + 64j ..)
  //       and rows whose channel 64j + i >= I are zero padding (only when I % 64 != 0).
  //       With kBlock128 scales the gate/up FFN needs I % 64 == 0.
  // prepared_weight_bytes() / prepared_scale_bytes() / prepared_layout() give the sizes.
  void const* w1 = nullptr;
  void const* w2 = nullptr;
  float const* w1_scale = nullptr;        // prepared weights only (see above); else null
  float const* w2_scale = nullptr;        // prepared gated-FFN weights only; else null
  void const* routing_weights = nullptr;  // [T, E] score_dtype; null when prerouted
  float const* correction_bias = nullptr; // [E] float32, selection only; null if absent
  int32_t const* topk_ids_in = nullptr;   // [T, k] prerouted expert ids (global, -1 = none)
  float const* topk_weights_in = nullptr; // [T, k] prerouted combine weights
  int32_t const* expert_map = nullptr;    // [E] global -> local expert index, -1 = not local

  void* out = nullptr;                    // [T, output_dim()] token_dtype

  // Optional outputs (null = not wanted).
  int32_t* topk_ids_out = nullptr;        // [T, k] final expert per slot (global), -1 = dropped
  float* topk_weights_out = nullptr;      // [T, k] combine weight per slot, 0 where dropped
  int32_t* expert_load = nullptr;         // [E] assignments each expert finally received
  int64_t* drop_reroute_counts = nullptr; // [2] {dropped assignments, rerouted assignments}

  // The caller's promise about fused_moe_run's `workspace`: it was zero-filled once (all of it,
  // e.g. cudaMemset) and has been passed only to fused_moe_run since, at the same address (any
  // problems, one run at a time). Every run leaves the workspace's first 256 bytes (work queues, grid barrier,
  // counters) as a following run needs them, so the one-kernel forwards then skip their memset
  // and a forward is exactly one kernel (one node in a CUDA graph). False (the default): the run
  // clears them itself. A buffer other code wrote into, passed with true, can hang the kernel.
  bool workspace_zeroed = false;
};

/// Checks shapes, option ranges and type support that do not need the data itself.
/// Messages name the argument as the Python API spells it (e.g. "top_k must be in 1..64, got 0").
Status validate_problem(MoeProblem const& problem);

/// The expert capacity for a problem with capacity_factor > 0:
/// ceil(capacity_factor * (T * top_k) / E), computed in double in that order.
int64_t expert_capacity(MoeProblem const& problem);

}  // namespace flashmoe
