"""torch glue: the custom op `flashmoe::fused_moe`, its fake (meta) implementation, and the
CPU/CUDA runner behind it. Imported only when torch imports.

The op takes tensors plus the options as plain values, writes the output into `out` (a mutated
argument, so `out=` and CUDA-graph capture need no extra copy) and returns the stats tensors.
torch.compile sees it as one opaque node whose output shapes the fake implementation gives.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import _C
from ._checks import dtype_name
from .stats import MoeStats, load_ratio

# Kernel-path names by index: the op reports the path it ran in the stats tensor `counts[2]`
# (an op can only return tensors). New names are appended as paths report them.
_PATH_NAMES: List[str] = ["none", "reference-cpu", "multikernel-sm80", "multikernel-sm90-fp8",
                          "multikernel-sm90", "multikernel-sm80-w8a16", "fused-sm90-fp8",
                          "fused-sm90"]


def path_name(index: int) -> str:
    return _PATH_NAMES[index]


def _path_index(name: str) -> int:
    if name not in _PATH_NAMES:
        _PATH_NAMES.append(name)
    return _PATH_NAMES.index(name)


def _dense(t: Tensor, on_cuda: bool) -> Tensor:
    """Detached, C-contiguous, and on CUDA 16-byte aligned (the GPU path loads rows with 16-byte
    copies; a view at an odd storage offset is copied once rather than rejected)."""
    t = t.detach().contiguous()
    if on_cuda and t.data_ptr() % 16 != 0:
        t = t.clone()
    return t


def _stats_buffers(tokens: Tensor, top_k: int, num_experts: int, wanted: bool):
    T = tokens.shape[0] if wanted else 0
    dev = tokens.device
    return (
        torch.full((T, top_k if wanted else 0), -1, dtype=torch.int32, device=dev),
        torch.zeros((T, top_k if wanted else 0), dtype=torch.float32, device=dev),
        torch.zeros((num_experts if wanted else 0,), dtype=torch.int32, device=dev),
        torch.zeros((3 if wanted else 0,), dtype=torch.int64, device=dev),
    )


@torch.library.custom_op("flashmoe::fused_moe", mutates_args=("out", "workspace"))
def fused_moe_op(
    tokens: Tensor,
    w1: Tensor,
    w2: Optional[Tensor],
    routing_weights: Optional[Tensor],
    correction_bias: Optional[Tensor],
    topk_ids: Optional[Tensor],
    topk_weights: Optional[Tensor],
    expert_map: Optional[Tensor],
    out: Tensor,
    workspace: Optional[Tensor],
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
    return_stats: bool,
    w1_scale: Optional[Tensor] = None,
    w2_scale: Optional[Tensor] = None,
    weight_scale: str = "none",
    check_finite: bool = True,
    deterministic: bool = True,
    workspace_zeroed: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """tokens [T, H] -> out [T, D or H] (written in place). Returns (topk_ids [T, k] int32,
    topk_weights [T, k] float32, expert_load [E] int32, counts [3] int64 = dropped, rerouted,
    kernel-path index) when return_stats, else four empty tensors.

    weight_scale != "none": w1/w2 are prepared FP8 weights (prepare.py; float8_e4m3fn or uint8
    [E, rows, K]) with their float32 scales w1_scale/w2_scale. check_finite=False skips the CUDA
    non-finite check of routing_weights (a host sync). workspace_zeroed: fused_moe's promise
    about `workspace` (the one-kernel forwards then skip their memset)."""
    from .ops import build_problem, check_index_range

    dev = tokens.device
    on_cuda = dev.type == "cuda"
    # On CUDA, everything below (capture query, allocations, stream) is on the tokens' device.
    with torch.cuda.device(dev) if on_cuda else contextlib.nullcontext():
        stats = _stats_buffers(tokens, top_k, num_experts, return_stats)
        # Data checks need the values on the host: free on the CPU, a sync on CUDA (skipped
        # while a CUDA graph is being captured, where a sync is not allowed).
        check_data = not on_cuda or not torch.cuda.is_current_stream_capturing()
        if check_data:
            if on_cuda and check_finite and routing_weights is not None:
                if not bool(torch.isfinite(routing_weights).all()):
                    raise ValueError("routing_weights has non-finite values (NaN or inf)")
            if topk_ids is not None:
                check_index_range("topk_ids", topk_ids, num_experts)
            if expert_map is not None:
                check_index_range("expert_map", expert_map, w1.shape[0])

        run_out = out  # where the kernels write; `out` itself when possible
        if on_cuda and precision == "bf16":
            # Documented: the GPU path computes in bf16; other float inputs are cast for the call.
            bf16 = torch.bfloat16
            tokens, w1 = tokens.to(bf16), w1.to(bf16)
            w2 = None if w2 is None else w2.to(bf16)
            if out.dtype != bf16:
                run_out = torch.empty(out.shape, dtype=bf16, device=dev)
        tokens, w1 = _dense(tokens, on_cuda), _dense(w1, on_cuda)
        w2 = None if w2 is None else _dense(w2, on_cuda)
        prepared = weight_scale != "none"
        if prepared:  # E4M3 bytes go to the core as uint8 (DLPack float8 support varies)
            w1 = w1.view(torch.uint8)
            w2 = None if w2 is None else w2.view(torch.uint8)
            w1_scale = w1_scale.detach().contiguous()
            w2_scale = None if w2_scale is None else w2_scale.detach().contiguous()
        if on_cuda and run_out.data_ptr() % 16 != 0:  # e.g. out= a view at an odd offset
            run_out = torch.empty(out.shape, dtype=run_out.dtype, device=dev)
        if routing_weights is not None:
            routing_weights = routing_weights.detach().contiguous()
            if on_cuda:  # exact for bf16/fp16 router logits; the GPU routing reads float32
                routing_weights = routing_weights.float()
        if correction_bias is not None:
            correction_bias = correction_bias.detach().to(torch.float32).contiguous()
        if topk_ids is not None:
            topk_ids = topk_ids.detach().to(torch.int32).contiguous()
            topk_weights = topk_weights.detach().to(torch.float32).contiguous()
        if expert_map is not None:
            expert_map = expert_map.detach().to(torch.int32).contiguous()

        problem = build_problem(
            tuple(tokens.shape),
            tuple(w1.shape),
            w2 is not None,
            dtypes=(
                dtype_name(tokens),
                "float8_e4m3fn" if prepared else dtype_name(w1),
                "float32" if routing_weights is None else dtype_name(routing_weights),
            ),
            prerouted=topk_ids is not None,
            has_correction_bias=correction_bias is not None,
            has_expert_map=expert_map is not None,
            num_experts=num_experts,
            top_k=top_k,
            scoring=scoring,
            renormalize=renormalize,
            temperature=temperature,
            n_group=n_group,
            topk_group=topk_group,
            routed_scaling_factor=routed_scaling_factor,
            capacity_factor=capacity_factor,
            overflow=overflow,
            activation=activation,
            layout=layout,
            precision=precision,
            weight_scale=weight_scale,
            w2_shape=None if w2 is None else tuple(w2.shape),
            deterministic=deterministic,
        )
        s_ids, s_w, s_load, counts = stats if return_stats else (None,) * 4
        ws, stream = None, 0
        if on_cuda:
            ws = workspace
            if ws is None:
                ws = torch.empty(_C.workspace_size(problem), dtype=torch.uint8, device=dev)
            stream = torch.cuda.current_stream(dev).cuda_stream
        path = _C.forward(
            problem,
            tokens,
            w1,
            w2,
            routing_weights,
            correction_bias,
            topk_ids,
            topk_weights,
            expert_map,
            run_out.detach(),
            s_ids,
            s_w,
            s_load,
            None if counts is None else counts[:2],
            ws,
            stream,
            w1_scale if prepared else None,
            w2_scale if prepared else None,
            workspace_zeroed=on_cuda and workspace is not None and workspace_zeroed,
        )
        if run_out is not out:
            out.copy_(run_out)
        if return_stats:
            counts[2:].fill_(_path_index(path))
        return stats


@fused_moe_op.register_fake
def _fused_moe_fake(
    tokens,
    w1,
    w2,
    routing_weights,
    correction_bias,
    topk_ids,
    topk_weights,
    expert_map,
    out,
    workspace,
    num_experts,
    top_k,
    scoring,
    renormalize,
    temperature,
    n_group,
    topk_group,
    routed_scaling_factor,
    capacity_factor,
    overflow,
    activation,
    layout,
    precision,
    return_stats,
    w1_scale=None,
    w2_scale=None,
    weight_scale="none",
    check_finite=True,
    deterministic=True,
    workspace_zeroed=False,
):
    T = tokens.shape[0] if return_stats else 0
    k = top_k if return_stats else 0
    E = num_experts if return_stats else 0
    return (
        tokens.new_empty((T, k), dtype=torch.int32),
        tokens.new_empty((T, k), dtype=torch.float32),
        tokens.new_empty((E,), dtype=torch.int32),
        tokens.new_empty((3 if return_stats else 0,), dtype=torch.int64),
    )


def run(
    plan,
    options,
    arrays,
    out: Optional[Tensor],
    workspace: Optional[Tensor],
    return_stats: bool,
    scales: Tuple[Optional[Tensor], Optional[Tensor], str] = (None, None, "none"),
    check_finite: bool = True,
    workspace_zeroed: bool = False,
) -> Any:
    """fused_moe for torch inputs (already validated by _checks): allocate, call the op.
    `scales` = (w1_scale, w2_scale, weight_scale) when w1/w2 are prepared FP8 weights."""
    tokens, w1, w2, rw, cb, ids, tw, em = arrays
    if torch.is_grad_enabled() and any(
        a is not None and a.requires_grad for a in (tokens, w1, w2, rw, cb, tw)
    ):
        warnings.warn(
            "fused_moe has no backward yet: its output does not require grad, so no gradient "
            "flows to tokens, expert_weights or routing_weights through it (forward/inference "
            "only; wrap the call in torch.no_grad() to silence this)",
            stacklevel=3,
        )
    if out is None:
        out = torch.empty(plan.out_shape, dtype=tokens.dtype, device=tokens.device)
    if plan.T == 0:
        if not return_stats:
            return out
        ids_out, w_out, load, _ = _stats_buffers(
            tokens.reshape(0, plan.H), plan.top_k, plan.E, True
        )
        return out, MoeStats(ids_out, w_out, load, 0.0, 0, 0, "none")
    op = _eager_impl() if eager_call_ok(tokens) else torch.ops.flashmoe.fused_moe
    stats = op(
        tokens.reshape(plan.T, plan.H),
        w1,
        w2,
        rw,
        cb,
        ids,
        tw,
        em,
        out.view(plan.T, plan.out_dim),
        workspace,
        return_stats=return_stats,
        w1_scale=scales[0],
        w2_scale=scales[1],
        weight_scale=scales[2],
        check_finite=check_finite,
        workspace_zeroed=workspace_zeroed,
        **options,
    )
    if not return_stats:
        return out
    ids_out, w_out, load, counts = stats
    if no_sync_context(tokens):
        # torch.compile tracing or CUDA-graph capture: no host sync; everything stays a tensor.
        ratio = load.max().to(torch.float32) * plan.E / load.sum().clamp(min=1).to(torch.float32)
        return out, MoeStats(ids_out, w_out, load, ratio, counts[0], counts[1], counts)
    dropped, rerouted, path = counts.tolist()  # one host sync, only when stats are asked for
    return out, MoeStats(
        ids_out, w_out, load, load_ratio(load.cpu()), dropped, rerouted, _PATH_NAMES[path]
    )


def eager_call_ok(tokens: Tensor) -> bool:
    """Whether `run` may call the op's Python body directly: eager (not torch.compile tracing),
    no dispatch mode active, plain tensors. Through torch.library's dispatch an eager call costs
    ~0.4 ms of host time (measured on an H100/H200 host at decode-1), more than the decode
    forward's kernel; tracing, fake tensors and dispatch modes still see the op."""
    if torch.compiler.is_compiling() or type(tokens) is not torch.Tensor:
        return False
    return _get_current_dispatch_mode() is None and _eager_impl() is not None


def _eager_impl():
    """The op's Python body (torch.library keeps it as the CustomOpDef's _init_fn)."""
    return getattr(fused_moe_op, "_init_fn", None)


def no_sync_context(tokens: Tensor) -> bool:
    """Whether a host sync is not allowed now: torch.compile tracing or CUDA-graph capture."""
    if torch.compiler.is_compiling():
        return True
    return tokens.is_cuda and torch.cuda.is_current_stream_capturing()
