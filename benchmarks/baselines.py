"""The MoE forwards the benchmark times (ours and the baselines) and the float64 reference that
each one's rel_err is measured against.

Weights: linear experts are one tensor W [E, H, D] (expert e computes x @ W[e]); gated-FFN experts
a pair (w_gate_up [E, H, 2I], w_down [E, I, H]) computing (silu(x @ Wg) * (x @ Wu)) @ Wd, gate
columns first. Routing everywhere (the seed's default): softmax over the E logits, top-k,
renormalize the k weights to sum to 1.

IMPLS maps each implementation's name (DESIGN.md section 6) to its precision and a builder.
`build(cfg, weights)` does everything that belongs outside the timed region (weight conversion,
module construction, process groups) and returns a Built whose fn(tokens, logits) is the timed
forward; it raises Unavailable, with the reason, when the implementation cannot run here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from benchmarks.configs import FFN, LINEAR, MoeConfig

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


class Unavailable(Exception):
    """The implementation cannot run here; the message says why (recorded as `skipped`)."""


@dataclasses.dataclass
class Built:
    fn: Callable  # fn(tokens [T, H] bf16, logits [T, E] fp32) -> out [T, out_dim]
    path: Optional[Callable] = None  # path(tokens, logits) -> the kernel path it reports
    router: Optional[Callable] = None  # router(tokens) -> logits, for layers with their own gate
    note: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Impl:
    precision: str  # "bf16" or "fp8": selects the weight bytes and the TFLOP/s ceiling
    build: Callable  # build(cfg, weights) -> Built


def _as_tuple(weights) -> tuple:
    return tuple(weights) if isinstance(weights, (tuple, list)) else (weights,)


# ------------------------------------------------------------------ routing and reference


def route(logits, top_k: int):
    """(weights [T, k], ids [T, k]): softmax over all experts (fp32 or wider), top-k,
    renormalized."""
    probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), ids


def reference_moe(tokens, logits, weights, top_k: int):
    """The float64 CPU reference, slot by slot: out[t] = sum_j w[t, j] * y_{ids[t, j]}(x[t]).

    Written independently of the timed loops below (it gathers each token's expert weights
    instead of grouping tokens by expert), so a shared routing or combine bug cannot hide.
    """
    x = tokens.detach().cpu().double()
    w, ids = route(logits.detach().cpu().double(), top_k)
    mats = [m.detach().cpu().double() for m in _as_tuple(weights)]
    out = 0
    for j in range(top_k):
        e = ids[:, j]
        y = torch.bmm(x.unsqueeze(1), mats[0][e]).squeeze(1)  # [T, D] or [T, 2I]
        if len(mats) == 2:
            inter = mats[1].shape[1]
            act = F.silu(y[:, :inter]) * y[:, inter:]
            y = torch.bmm(act.unsqueeze(1), mats[1][e]).squeeze(1)  # [T, H]
        out = out + w[:, j : j + 1] * y
    return out


def rel_err(out, ref) -> float:
    """||out - ref||_F / ||ref||_F in float64 (NaN if out has a non-finite element)."""
    diff = out.detach().cpu().double() - ref
    return float(diff.norm() / ref.norm())


# ------------------------------------------------------------------ torch eager / compile


def _expert_linear(xs, w):
    return xs @ w


def _expert_ffn(xs, w_gate_up, w_down):
    h = xs @ w_gate_up
    inter = w_down.shape[0]
    return (F.silu(h[:, :inter]) * h[:, inter:]) @ w_down


def moe_loop(tokens, logits, weights, top_k: int):
    """The plain PyTorch MoE everyone writes: route, then for each expert index_select its
    tokens, run the expert, and index_add the weighted rows into an fp32 output."""
    mats = _as_tuple(weights)
    expert = _expert_linear if len(mats) == 1 else _expert_ffn
    topk_w, topk_ids = route(logits, top_k)
    out = torch.zeros(tokens.shape[0], mats[-1].shape[-1], dtype=torch.float32,
                      device=tokens.device)
    for e in range(mats[0].shape[0]):
        token_idx, slot = torch.where(topk_ids == e)
        if token_idx.numel() == 0:
            continue
        y = expert(tokens.index_select(0, token_idx), *[m[e] for m in mats])
        out.index_add_(0, token_idx, y.float() * topk_w[token_idx, slot].unsqueeze(1))
    return out.to(tokens.dtype)


def build_torch_eager(cfg: MoeConfig, weights) -> Built:
    return Built(fn=lambda x, logits: moe_loop(x, logits, weights, cfg.top_k))


def build_torch_compile(cfg: MoeConfig, weights) -> Built:
    # Dynamo cannot trace the data-dependent loop (torch.where): it runs that frame eagerly and
    # compiles route() and the expert function; reset so earlier configs' graphs don't count
    # against its recompile limit.
    torch._dynamo.reset()
    compiled = torch.compile(moe_loop)
    return Built(fn=lambda x, logits: compiled(x, logits, weights, cfg.top_k))


# ------------------------------------------------------------------ grouped-GEMM pipelines


def _sort_by_expert(topk_ids, num_experts: int):
    """The T*k assignments ordered by expert: (order, token of each, offs = int32 cumulative
    per-expert counts, the group ends torch._grouped_mm takes)."""
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(num_experts, dtype=torch.int32, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))  # no host sync
    return order, order // topk_ids.shape[1], torch.cumsum(counts, 0, dtype=torch.int32)


def moe_grouped(tokens, logits, mats, num_experts: int, top_k: int, grouped_mm):
    """Sort by expert, gather, grouped GEMM(s), weighted scatter-add combine in fp32."""
    topk_w, topk_ids = route(logits, top_k)
    order, token_idx, offs = _sort_by_expert(topk_ids, num_experts)
    y = grouped_mm(tokens.index_select(0, token_idx), mats[0], offs)
    if len(mats) == 2:
        inter = y.shape[1] // 2
        y = grouped_mm(F.silu(y[:, :inter]) * y[:, inter:], mats[1], offs)
    scaled = y.float() * topk_w.reshape(-1)[order].unsqueeze(1)
    out = torch.zeros(tokens.shape[0], y.shape[1], dtype=torch.float32, device=tokens.device)
    return out.index_add_(0, token_idx, scaled).to(tokens.dtype)


def _bf16_grouped_mm(a, w, offs):
    return torch._grouped_mm(a, w, offs=offs)


def build_grouped_mm(cfg: MoeConfig, weights) -> Built:
    if not hasattr(torch, "_grouped_mm"):
        raise Unavailable(f"torch {torch.__version__} has no torch._grouped_mm")
    mats = _as_tuple(weights)
    return Built(fn=lambda x, logits: moe_grouped(x, logits, mats, cfg.E, cfg.top_k,
                                                  _bf16_grouped_mm))


def quantize_rows(a):
    """Per-row fp8: (q [M, K] float8_e4m3fn, scale [M] fp32) with a ~= q * scale."""
    scale = a.abs().amax(dim=1).float().clamp(min=1e-12) / FP8_MAX
    q = (a.float() / scale.unsqueeze(1)).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def quantize_experts(w):
    """Per-expert, per-output-channel fp8 of w [E, K, N]: (q [E, K, N] column-major, as
    torch._scaled_grouped_mm requires, scale [E, N] fp32) with w[e][:, n] ~= q[e][:, n] * s[e, n].
    One expert at a time, so no fp32 copy of the whole tensor is made."""
    num, k, n = w.shape
    q_t = torch.empty(num, n, k, dtype=FP8, device=w.device)
    scale = torch.empty(num, n, dtype=torch.float32, device=w.device)
    for e in range(num):
        q_t[e], scale[e] = quantize_rows(w[e].t())
    return q_t.transpose(1, 2), scale


def _fp8_grouped_mm(a, qw, offs):
    aq, a_scale = quantize_rows(a)  # activations: quantized per row inside the timed call
    q, w_scale = qw
    return torch._scaled_grouped_mm(aq, q, a_scale, w_scale, offs=offs, out_dtype=torch.bfloat16)


def build_scaled_grouped_mm(cfg: MoeConfig, weights) -> Built:
    if not hasattr(torch, "_scaled_grouped_mm"):
        raise Unavailable(f"torch {torch.__version__} has no torch._scaled_grouped_mm")
    device = _as_tuple(weights)[0].device
    try:  # a tiny probe, so a torch/GPU that rejects the op is recorded as skipped
        probe = quantize_experts(torch.randn(2, 64, 32, device=device, dtype=torch.bfloat16))
        offs = torch.tensor([16, 32], dtype=torch.int32, device=device)
        _fp8_grouped_mm(torch.randn(32, 64, device=device, dtype=torch.bfloat16), probe, offs)
    except (RuntimeError, ValueError, TypeError) as e:
        raise Unavailable(f"torch._scaled_grouped_mm rejected here: {e}") from e
    mats = [quantize_experts(m) for m in _as_tuple(weights)]  # outside the timed region
    return Built(fn=lambda x, logits: moe_grouped(x, logits, mats, cfg.E, cfg.top_k,
                                                  _fp8_grouped_mm))


# ------------------------------------------------------------------ flashmoe


def _reported_path(result) -> Optional[str]:
    """The kernel path fused_moe(..., return_stats=True) reports: its result is (out, stats),
    stats a dict or an object with `path` (or `kernel_path`)."""
    stats = result[1] if isinstance(result, tuple) and len(result) > 1 else None
    for key in ("path", "kernel_path"):
        if isinstance(stats, dict) and key in stats:
            return str(stats[key])
        if stats is not None and hasattr(stats, key):
            return str(getattr(stats, key))
    return None


@contextlib.contextmanager
def _environ(name: str, value: Optional[str]):
    """os.environ[name] = value inside the block (None: leave it alone)."""
    if value is None:
        yield
        return
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def build_flashmoe(cfg: MoeConfig, weights, precision: str = "bf16",
                   gemm: Optional[str] = None, fused: Optional[str] = None) -> Built:
    """gemm="sm80": FLASHMOE_GEMM=sm80 around each call, so a Hopper GPU runs the sm_80 GEMMs
    (path multikernel-sm80) instead of the sm_90a ones -- the previous bf16 path, for comparison.
    fused="0": FLASHMOE_FUSED=0 around each call (the multi-kernel path where the one-kernel path
    would run)."""
    try:
        import flashmoe_science as fm
    except Exception as e:  # noqa: BLE001 -- any import failure means "not available"
        raise Unavailable(f"flashmoe_science is not importable: {type(e).__name__}: {e}") from e
    # check_finite=False: no host sync per call, as a serving stack runs it (the baselines check
    # nothing either); the non-finite check is a debugging aid that costs a sync on CUDA.
    kwargs = dict(top_k=cfg.top_k, precision=precision, check_finite=False)
    if cfg.kind == FFN:
        kwargs["activation"] = "silu"
    experts = weights
    if precision == "fp8":
        if not hasattr(fm, "prepare_experts"):
            raise Unavailable("flashmoe_science has no prepare_experts")
        # Quantized once (E4M3, per-channel scales) here, outside the timed region; the timed
        # fn and the small-shape rel_err both run fused_moe(x, prepared, ..., precision="fp8").
        experts = fm.prepare_experts(weights, precision="fp8", scale="channel")
        torch.cuda.synchronize()
    # One zero-filled workspace per token count, made on the first (warm-up) call and passed
    # with workspace_zeroed=True, as a serving stack that preallocates it would: the one-kernel
    # forward then launches no memset before its kernel (the multi-kernel path clears it anyway).
    workspaces = {}

    def fn(x, logits):
        with _environ("FLASHMOE_GEMM", gemm), _environ("FLASHMOE_FUSED", fused):
            ws = workspaces.get(x.shape[0])
            if ws is None:
                n = fm.fused_moe_workspace_size(x, experts, logits, **kwargs)
                ws = workspaces[x.shape[0]] = torch.zeros(n, dtype=torch.uint8, device=x.device)
            return fm.fused_moe(x, experts, logits, workspace=ws, workspace_zeroed=True, **kwargs)

    def path(x, logits):
        with _environ("FLASHMOE_GEMM", gemm), _environ("FLASHMOE_FUSED", fused):
            return _reported_path(fm.fused_moe(x, experts, logits, return_stats=True, **kwargs))

    return Built(
        fn=fn,
        path=path,
        note="check_finite=False; weights prepared once with prepare_experts (channel scales), "
        "not timed; a zero-filled workspace per T, workspace_zeroed=True" if precision == "fp8"
        else "check_finite=False (no host sync per call); a zero-filled workspace per T, "
        "workspace_zeroed=True",
    )


# ------------------------------------------------------------------ DeepSpeed


class _SwiGLU(torch.nn.Module):
    """An FFN expert as nn.Linear layers, for DeepSpeed's MoE layer."""

    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_up = torch.nn.Linear(hidden, 2 * inter, bias=False)
        self.down = torch.nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def _init_single_process_group(deepspeed) -> None:
    """A one-process group on a free localhost port, as deepspeed.moe needs one."""
    if torch.distributed.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # never NVLink multicast (KINDS.md)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def build_deepspeed(cfg: MoeConfig, weights) -> Built:
    if cfg.kind == LINEAR and cfg.D != cfg.H:
        raise Unavailable("DeepSpeed's MoE layer maps H to H; these linear experts have D != H")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    try:
        import deepspeed
        from deepspeed.moe.layer import MoE
    except Exception as e:  # noqa: BLE001
        raise Unavailable(f"deepspeed is not importable: {type(e).__name__}: {e}") from e
    _init_single_process_group(deepspeed)
    mats = _as_tuple(weights)
    device = mats[0].device
    with torch.device("meta"):  # no host copy of E experts; real storage comes next
        expert = (torch.nn.Linear(cfg.H, cfg.D, bias=False) if cfg.kind == LINEAR
                  else _SwiGLU(cfg.H, cfg.I))
        layer = MoE(hidden_size=cfg.H, expert=expert, num_experts=cfg.E, ep_size=1,
                    k=cfg.top_k, drop_tokens=False)
    layer = layer.to_empty(device=device).to(torch.bfloat16).eval().requires_grad_(False)
    layer.set_deepspeed_parallelism()  # creates the ep_size=1 expert group
    gate = layer.deepspeed_moe.gate.wg.weight  # [E, H]
    gen = torch.Generator(device=device).manual_seed(2)
    with torch.no_grad():
        for e, ex in enumerate(layer.deepspeed_moe.experts.deepspeed_experts):
            if cfg.kind == LINEAR:
                ex.weight.copy_(mats[0][e].t())  # nn.Linear holds [out, in]
            else:
                ex.gate_up.weight.copy_(mats[0][e].t())
                ex.down.weight.copy_(mats[1][e].t())
        # N(0, 1/H) so its logits x @ Wg^T are O(1), like the harness's
        gate.copy_(torch.randn(gate.shape, generator=gen, device=device) * cfg.H**-0.5)
    return Built(
        fn=lambda x, logits: layer(x)[0],
        router=lambda x: F.linear(x.float(), gate.float()),
        note="routes with its own gate (fp32 x @ Wg^T), not the harness's logits",
    )


# ------------------------------------------------------------------ peer libraries


def _out_in(weights):
    """nn.Linear-layout copies [E, out, in] of the FFN weights, as vLLM and SGLang take them."""
    w_gate_up, w_down = weights
    return w_gate_up.transpose(1, 2).contiguous(), w_down.transpose(1, 2).contiguous()


def build_vllm(cfg: MoeConfig, weights) -> Built:
    if cfg.kind != FFN:
        raise Unavailable("vllm's fused_moe computes gated-FFN experts only")
    try:
        from vllm.model_executor.layers.fused_moe import fused_moe
    except Exception as e:  # noqa: BLE001
        raise Unavailable(f"vllm is not importable: {type(e).__name__}: {e}") from e
    w1, w2 = _out_in(weights)
    return Built(fn=lambda x, logits: fused_moe(x, w1, w2, logits, cfg.top_k, renormalize=True))


def build_sglang(cfg: MoeConfig, weights) -> Built:
    if cfg.kind != FFN:
        raise Unavailable("sglang's fused_moe computes gated-FFN experts only")
    try:
        from sglang.srt.layers.moe.fused_moe_triton import fused_moe
    except Exception as e:  # noqa: BLE001
        raise Unavailable(f"sglang is not importable: {type(e).__name__}: {e}") from e
    w1, w2 = _out_in(weights)
    return Built(fn=lambda x, logits: fused_moe(x, w1, w2, logits, cfg.top_k, renormalize=True))


IMPLS = {
    "flashmoe": Impl("bf16", build_flashmoe),
    "flashmoe-fp8": Impl("fp8", lambda cfg, w: build_flashmoe(cfg, w, precision="fp8")),
    "flashmoe-sm80": Impl("bf16", lambda cfg, w: build_flashmoe(cfg, w, gemm="sm80")),
    # The multi-kernel paths where the forward would take the one-kernel ones (E <= 256).
    "flashmoe-multikernel": Impl("bf16", lambda cfg, w: build_flashmoe(cfg, w, fused="0")),
    "flashmoe-fp8-multikernel": Impl("fp8", lambda cfg, w: build_flashmoe(cfg, w, precision="fp8",
                                                                           fused="0")),
    # FP8 weights on the sm_80 GEMM (W8A16, what an Ampere GPU runs), on Hopper via
    # FLASHMOE_GEMM=sm80: weight bytes as fp8, activations bf16.
    "flashmoe-w8a16": Impl("fp8", lambda cfg, w: build_flashmoe(cfg, w, precision="fp8",
                                                                 gemm="sm80")),
    "torch-grouped-mm": Impl("bf16", build_grouped_mm),
    "torch-scaled-grouped-mm": Impl("fp8", build_scaled_grouped_mm),
    "torch-eager": Impl("bf16", build_torch_eager),
    "torch-compile": Impl("bf16", build_torch_compile),
    "deepspeed": Impl("bf16", build_deepspeed),
    "vllm": Impl("bf16", build_vllm),
    "sglang": Impl("bf16", build_sglang),
}
