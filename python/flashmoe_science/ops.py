"""fused_moe: the op. Validates, converts, and hands the arrays to the C++ core.

NumPy arrays and CPU torch tensors run the C++ reference (float64 accumulation); CUDA tensors run
the GPU path on torch's current stream. Torch inputs go through the registered custom op
`torch.ops.flashmoe.fused_moe` (torch_library.py), so torch.compile can trace a model calling it.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _C, _checks
from .prepare import SCALES, PreparedExperts, cached_prepare
from .stats import MoeStats, load_ratio

if _checks.torch is not None:  # registers torch.ops.flashmoe.fused_moe
    from . import torch_library as _torch_library
else:
    _torch_library = None


def fused_moe(
    tokens: Any,
    expert_weights: Any,
    routing_weights: Any = None,
    top_k: Optional[int] = None,
    *,
    scoring: str = "softmax",
    renormalize: bool = True,
    temperature: float = 1.0,
    n_group: Optional[int] = None,
    topk_group: Optional[int] = None,
    correction_bias: Any = None,
    routed_scaling_factor: float = 1.0,
    topk_ids: Any = None,
    topk_weights: Any = None,
    expert_map: Any = None,
    capacity_factor: Optional[float] = None,
    overflow: str = "drop",
    activation: str = "silu",
    layout: str = "in_out",
    precision: str = "auto",
    fp8_scale: str = "channel",
    check_finite: bool = True,
    deterministic: bool = True,
    out: Any = None,
    return_stats: bool = False,
    workspace: Any = None,
    workspace_zeroed: bool = False,
):
    """Mixture-of-Experts forward: route each token to top_k experts and combine their outputs.

        out[t] = sum_j w[t, j] * y_{e[t, j]}(tokens[t])

    with the routing rules of include/flashmoe/routing.h and
        linear experts    (expert_weights = W [E, H, D]):            y_e(x) = x @ W[e]
        gated-FFN experts (expert_weights = (W_gu [E, H, 2I], W_d [E, I, H])):
            y_e(x) = (act(x @ W_gu[e][:, :I]) * (x @ W_gu[e][:, I:])) @ W_d[e]
    layout="out_in" takes every matrix transposed ([E, D, H]; [E, 2I, H] and [E, H, I]).

    Args:
        tokens: [batch, seq, H] or [T, H]; float16/bfloat16/float32/float64. NumPy or CPU torch
            runs the C++ reference; a CUDA tensor runs the GPU path (bf16/fp16; float32 needs
            precision="bf16", which casts tokens and weights to bf16 for the call).
        expert_weights: W [E, H, D], or the pair (w_gate_up, w_down) for gated-FFN experts.
        routing_weights: [T, E] router scores (logits for softmax/sigmoid, probabilities for
            scoring="none"). Not given when pre-routed.
        top_k: experts per token, 1..E. None: 8, or topk_ids.shape[1] when pre-routed.
        scoring: "softmax" | "sigmoid" | "none".
        renormalize: rescale the k combine weights to sum to 1.
        temperature: scores come from routing_weights / temperature (see TemperatureSchedule).
        n_group, topk_group: grouped top-k (DeepSeek): keep the topk_group best of n_group
            contiguous expert groups, then pick top_k inside them. Both or neither.
        correction_bias: [E], added to the scores for the selection only.
        routed_scaling_factor: multiplies the combine weights.
        topk_ids, topk_weights: [T, k] pre-routed experts (-1 = none) and combine weights.
        expert_map: [E] global -> local expert index (-1 = not held here); expert_weights then
            holds the local experts only.
        capacity_factor: None (dropless) or c >= 1: no expert takes more than
            ceil(c * T * k / E) assignments.
        overflow: "drop" or "reroute" (to the token's next-best expert with room).
        activation: "silu" (SwiGLU) or "gelu" (exact), gated-FFN experts only.
        layout: "in_out" ([E, in, out], the seed's) or "out_in" (nn.Linear's [E, out, in]).
        precision: "auto" (the inputs' types), "bf16" (inputs rounded to bf16), "fp8" (E4M3
            weights with float32 scales, activations quantized per token, fp32 accumulation,
            output in the tokens' dtype). On CUDA (compute capability 9.0, bf16/fp16 tokens)
            expert_weights is either a PreparedExperts from prepare_experts(...) (used as is) or
            raw weights, which are then prepared once and cached: the cache is keyed by each raw
            tensor's (id, data_ptr, shape, dtype, device, torch _version) plus fp8_scale and
            layout, holds only weak references to the raw tensors (an entry goes with them), and
            re-quantizes only when one of those key parts changes -- e.g. an in-place update
            (w.add_(...), an optimizer step) bumps _version. Writes that bypass _version (.data,
            DLPack) are not seen: pass a PreparedExperts (or call clear_prepare_cache()). The
            first call of a set of raw weights must not be inside CUDA-graph capture, and under
            torch.compile the cache lookup runs eagerly (a graph break): pass a PreparedExperts
            there. On the CPU, precision="fp8" runs the reference's fake quantization of the
            raw weights (per output channel) and tokens (per row).
        fp8_scale: "channel" or "block128": the weight scales of the implicit prepare of raw
            weights with precision="fp8" on CUDA (a PreparedExperts keeps its own).
        check_finite: CUDA only: check routing_weights for NaN/inf (a host sync) and raise
            ValueError. False skips the check (no sync); non-finite scores are then treated as
            -inf, i.e. never chosen. The CPU reference always checks (free there).
        deterministic: True (default): the output is bitwise identical run to run. False: the
            bf16/fp16 one-kernel GPU forward ("fused-sm90") with at most 256 tokens adds each
            expert's weighted output into `out` with atomics instead of a combine phase after a
            grid barrier (measured ~4% faster at T = 1 on an H200, slower at T = 2048, where the
            deterministic combine runs anyway); the order of the adds, and so the last bits of
            `out`, then vary run to run. The FP8 forward ("fused-sm90-fp8") runs its
            deterministic path either way (measured the faster one since its epilogue's 8-byte
            stores). Every other case is deterministic either way.
        out: preallocated output of the result's shape and the tokens' dtype, on their device.
        return_stats: also return a MoeStats (final routing, per-expert load, drops, path).
            Eager calls sync once to return Python numbers; under torch.compile or CUDA-graph
            capture nothing syncs and the numbers are device tensors (see MoeStats).
        workspace: CUDA only: a preallocated uint8 device buffer (e.g. for CUDA-graph capture);
            by default one is allocated per call.
        workspace_zeroed: your promise that `workspace` was created zero-filled (torch.zeros)
            and has been passed only to fused_moe since, whole (not a slice of it at another
            offset; any shapes and options, one call at a time). Every call leaves the workspace's first 256 bytes (work queues, grid barrier,
            counters) as the next call needs them, so the one-kernel GPU forwards then skip
            their memset: one kernel, one node in a CUDA graph (~1.3 us less per graph-replayed
            decode forward, measured on an H200 and an H100). A buffer that other code wrote into, passed with True, can
            hang the kernel. False (default): the call clears those bytes itself.

    Returns:
        out of shape tokens.shape[:-1] + (D,) (linear) or (H,) (gated FFN), the tokens' dtype;
        (out, MoeStats) with return_stats=True.

    Raises:
        ValueError / TypeError naming the argument for bad shapes, dtypes, options and data
        (non-finite scores); NotImplementedError for what this build cannot run on the device
        (e.g. precision="fp8" on a GPU that is not compute capability 9.0).
    """
    if not isinstance(return_stats, bool):
        raise TypeError(f"return_stats must be a bool, got {type(return_stats).__name__}")
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be a bool, got {type(check_finite).__name__}")
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    if not isinstance(workspace_zeroed, bool):
        raise TypeError(f"workspace_zeroed must be a bool, got {type(workspace_zeroed).__name__}")
    if workspace_zeroed and workspace is None:
        raise ValueError(
            "workspace_zeroed=True describes the workspace= you pass (zero-filled once, used "
            "only by fused_moe since); no workspace was given"
        )
    _checks._choice("fp8_scale", fp8_scale, SCALES)
    given = dict(
        scoring=scoring,
        renormalize=renormalize,
        temperature=temperature,
        n_group=n_group,
        topk_group=topk_group,
        correction_bias=correction_bias,
        routed_scaling_factor=routed_scaling_factor,
        topk_ids=topk_ids,
        topk_weights=topk_weights,
        expert_map=expert_map,
        capacity_factor=capacity_factor,
        overflow=overflow,
        activation=activation,
        layout=layout,
        precision=precision,
    )
    plan, w1, w2 = _checks.check_call(
        tokens, expert_weights, routing_weights, top_k, out=out, workspace=workspace, **given
    )
    options = _op_options(plan, given)
    options["deterministic"] = deterministic
    scales = (None, None, "none")
    if plan.cuda_fp8:
        prepared = expert_weights
        if not isinstance(prepared, PreparedExperts):  # raw weights: prepared once, cached
            prepared = cached_prepare(expert_weights, fp8_scale, given["layout"])
        w1, w2 = prepared.w1, prepared.w2
        scales = (prepared.w1_scale, prepared.w2_scale, prepared.scale)
    arrays = (tokens, w1, w2, routing_weights, correction_bias, topk_ids, topk_weights, expert_map)
    if plan.lib == _checks.TORCH:
        return _torch_library.run(
            plan, options, arrays, out, workspace, return_stats, scales, check_finite,
            workspace_zeroed,
        )
    return _run_numpy(plan, options, arrays, out, return_stats)


def fused_moe_workspace_size(
    tokens: Any,
    expert_weights: Any,
    routing_weights: Any = None,
    top_k: Optional[int] = None,
    **options: Any,
) -> int:
    """Bytes of CUDA workspace fused_moe needs for these arguments (same signature, options as
    keywords): preallocate `workspace=torch.empty(n, dtype=torch.uint8, device="cuda")` once, e.g.
    to capture the call in a CUDA graph without an allocation inside it -- or torch.zeros, kept
    for fused_moe alone, and pass workspace_zeroed=True (no memset per call)."""
    unknown = set(options) - set(_OPTION_DEFAULTS)
    if unknown:
        raise TypeError(
            f"unexpected option(s) {sorted(unknown)}; accepted: {sorted(_OPTION_DEFAULTS)}"
        )
    given = {**_OPTION_DEFAULTS, **options}
    fp8_scale = _checks._choice("fp8_scale", given.pop("fp8_scale"), SCALES)
    given.pop("check_finite")
    given.pop("deterministic")  # the workspace is the same either way
    plan, w1, w2 = _checks.check_call(
        tokens, expert_weights, routing_weights, top_k, out=None, workspace=None, **given
    )
    # What the CUDA runner passes: bf16 after the precision="bf16" cast, prepared E4M3 weights
    # for precision="fp8", float32 scores.
    w1_shape, w2_shape, weight_scale = tuple(w1.shape), None, "none"
    if plan.cuda_fp8:
        weight_scale = (
            expert_weights.scale if isinstance(expert_weights, PreparedExperts) else fp8_scale
        )
        # Only these dims of the prepared shapes are read: [E, D, H] and [E, H, I].
        w1_shape = (plan.E_local, plan.D, plan.H)
        w2_shape = (plan.E_local, plan.H, plan.I) if plan.kind == "gated_ffn" else None
        dtypes = (_checks.dtype_name(tokens), "float8_e4m3fn", "float32")
    elif plan.cuda_cast_bf16:
        dtypes = ("bfloat16", "bfloat16", "float32")
    else:
        dtypes = (_checks.dtype_name(tokens), _checks.dtype_name(w1), "float32")
    problem = build_problem(
        (plan.T, plan.H),
        w1_shape,
        plan.kind == "gated_ffn",
        dtypes=dtypes,
        prerouted=plan.prerouted,
        has_correction_bias=given["correction_bias"] is not None,
        has_expert_map=given["expert_map"] is not None,
        weight_scale=weight_scale,
        w2_shape=w2_shape,
        **_op_options(plan, given),
    )
    return int(_C.workspace_size(problem))


# The keyword options of fused_moe (not out/return_stats/workspace), with their defaults.
_OPTION_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(fused_moe).parameters.items()
    if p.kind is p.KEYWORD_ONLY
    and name not in ("out", "return_stats", "workspace", "workspace_zeroed")
}


def _op_options(plan: _checks.Plan, given: Dict[str, Any]) -> Dict[str, Any]:
    """The plain-valued options the op and the problem dict take (None -> 0 for the C++ side)."""
    return dict(
        num_experts=plan.E,
        top_k=plan.top_k,
        scoring=given["scoring"],
        renormalize=given["renormalize"],
        temperature=_checks.as_float(given["temperature"]),
        n_group=0 if given["n_group"] is None else int(given["n_group"]),
        topk_group=0 if given["topk_group"] is None else int(given["topk_group"]),
        routed_scaling_factor=_checks.as_float(given["routed_scaling_factor"]),
        capacity_factor=plan.capacity_factor,
        overflow=given["overflow"],
        activation=given["activation"],
        layout=given["layout"],
        precision=given["precision"],
    )


def build_problem(
    tokens2d_shape: Tuple[int, int],
    w1_shape: Tuple[int, ...],
    gated: bool,
    *,
    dtypes: Tuple[str, str, str],
    prerouted: bool,
    has_correction_bias: bool,
    has_expert_map: bool,
    num_experts: int,
    top_k: int,
    scoring: str,
    renormalize: bool,
    temperature: float,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
    capacity_factor: float,
    overflow: str,
    activation: str,
    layout: str,
    precision: str,
    weight_scale: str = "none",
    w2_shape: Optional[Tuple[int, ...]] = None,
    deterministic: bool = True,
) -> Dict[str, Any]:
    """The problem dict of _C.forward / _C.workspace_size (MoeProblem's fields, by name).
    weight_scale != "none": w1 (and w2) are prepared FP8 weights ([E, rows, K], options.h): D is
    w1_shape[1] (linear), I is w2_shape[2] (gated FFN), and `layout` is not read by the core."""
    T, H = (int(s) for s in tokens2d_shape)
    if weight_scale != "none":
        out_cols = int(w1_shape[1]) if not gated else 2 * int(w2_shape[2])
    else:
        out_cols = int(w1_shape[1] if layout == "out_in" else w1_shape[2])
    return dict(
        num_tokens=T,
        hidden=H,
        num_experts=num_experts,
        num_local_experts=int(w1_shape[0]),
        kind="gated_ffn" if gated else "linear",
        out_dim=0 if gated else out_cols,
        inter_dim=out_cols // 2 if gated else 0,
        activation=activation,
        layout=layout,
        precision=precision,
        top_k=top_k,
        scoring=scoring,
        renormalize=renormalize,
        temperature=temperature,
        n_group=n_group,
        topk_group=topk_group,
        routed_scaling_factor=routed_scaling_factor,
        capacity_factor=capacity_factor,
        overflow=overflow,
        token_dtype=dtypes[0],
        weight_dtype=dtypes[1],
        score_dtype=dtypes[2],
        prerouted=prerouted,
        has_correction_bias=has_correction_bias,
        has_expert_map=has_expert_map,
        weights_prepared=weight_scale != "none",
        weight_scale=weight_scale,
        deterministic=deterministic,
    )


def check_index_range(name: str, values: Any, hi: int) -> None:
    """Host check that integer `values` lie in -1..hi-1 (-1 = none / not local)."""
    if math.prod(values.shape) == 0:
        return
    lo_v, hi_v = int(values.min()), int(values.max())
    if lo_v < -1 or hi_v >= hi:
        raise ValueError(f"{name} values must be in -1..{hi - 1}, got values in {lo_v}..{hi_v}")


def _run_numpy(plan, options, arrays, out, return_stats):
    tokens, w1, w2, rw, cb, ids, tw, em = arrays
    if out is None:
        out = np.empty(plan.out_shape, dtype=tokens.dtype)
    T, k, E = plan.T, plan.top_k, plan.E
    stats = None
    if return_stats:
        stats = (
            np.full((T, k), -1, np.int32),
            np.zeros((T, k), np.float32),
            np.zeros(E, np.int32),
            np.zeros(2, np.int64),
        )
    path = "none"
    if T > 0:
        c = np.ascontiguousarray
        if ids is not None:
            check_index_range("topk_ids", ids, E)
            ids, tw = c(ids, dtype=np.int32), c(tw, dtype=np.float32)
        if em is not None:
            check_index_range("expert_map", em, plan.E_local)
            em = c(em, dtype=np.int32)
        if cb is not None:
            cb = c(cb, dtype=np.float32)
        tokens2d = c(tokens).reshape(plan.T, plan.H)
        w1, w2 = c(w1), None if w2 is None else c(w2)
        rw = None if rw is None else c(rw)
        problem = build_problem(
            tokens2d.shape,
            w1.shape,
            w2 is not None,
            dtypes=(tokens.dtype.name, w1.dtype.name, "float32" if rw is None else rw.dtype.name),
            prerouted=ids is not None,
            has_correction_bias=cb is not None,
            has_expert_map=em is not None,
            **options,
        )
        s = stats or (None,) * 4
        path = _C.forward(
            problem,
            tokens2d,
            w1,
            w2,
            rw,
            cb,
            ids,
            tw,
            em,
            out.reshape(plan.T, plan.out_dim),
            s[0],
            s[1],
            s[2],
            s[3],
            None,
            0,
        )
    if not return_stats:
        return out
    ids_out, w_out, load, counts = stats
    return out, MoeStats(
        ids_out, w_out, load, load_ratio(load), int(counts[0]), int(counts[1]), path
    )
