"""FusedMoE: an nn.Module (router + stacked experts) around fused_moe, loadable from Hugging
Face-style per-expert state dicts (Mixtral, Qwen3-MoE, DeepSeek).

Expert weights are stored in nn.Linear's [out, in] convention and passed with layout="out_in",
so a checkpoint's matrices are copied in as they are, without a transpose:
    gated FFN: w_gate_up [E, 2I, H] (rows 0..I-1 gate, I..2I-1 up), w_down [E, H, I]
    linear:    weight    [E, D, H]
The router (`router.weight` [E, H]) is kept in the module's dtype and evaluated in float32 (or
float64 for a float64 module). Shared experts (DeepSeek, Qwen2-MoE) are not part of this module.

FP8 checkpoints (DeepSeek-V3: float8_e4m3fn expert weights with a `weight_scale_inv` beside each,
128 x 128 blocks or one per output channel) are dequantized (q * s) into the module's dtype on
load. To run the layer in FP8, construct it with precision="fp8" (fused_moe quantizes the
parameters once and caches them); to run a checkpoint's own E4M3 bytes and scales without a
dequantized copy, call prepare_experts(..., weight_scales=...) and fused_moe directly.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import fused_moe

# style -> (block prefix, router key, expert projections (gate, up, down), correction-bias key)
_GUD = ("gate_proj", "up_proj", "down_proj")
_STYLES: Dict[str, tuple] = {
    "mixtral": ("block_sparse_moe.", "gate.weight", ("w1", "w3", "w2"), None),
    "qwen3": ("mlp.", "gate.weight", _GUD, None),
    "deepseek": ("mlp.", "gate.weight", _GUD, "gate.e_score_correction_bias"),
}


def _style(style: str) -> tuple:
    if style not in _STYLES:
        raise ValueError(f"style must be one of {', '.join(map(repr, _STYLES))}; got {style!r}")
    return _STYLES[style]


def _blocks(n: int) -> int:
    return (n + 127) // 128


def _expert_matrix(state_dict: Mapping[str, Tensor], key: str, shape: tuple) -> Tensor:
    """Expert matrix `key` ([out, in]): as stored, or -- an FP8 checkpoint's float8_e4m3fn weight --
    dequantized as q * s with the `weight_scale_inv` stored beside it (128 x 128 blocks
    [ceil(out/128), ceil(in/128)], or one per output channel [out] / [out, 1]). The product is
    formed in float64, where it is exact (4 significant bits times 24), so the only rounding is
    the copy into the module's dtype."""
    w = _get(state_dict, key, shape)
    if not w.dtype.is_floating_point or w.dtype.itemsize != 1:
        return w
    if w.dtype != torch.float8_e4m3fn:
        raise TypeError(f"{key!r} has dtype {w.dtype}; FP8 checkpoints are loaded from float8_e4m3fn")
    skey = key[: -len("weight")] + "weight_scale_inv"
    if skey not in state_dict:
        raise ValueError(
            f"{key!r} is float8_e4m3fn (an FP8 checkpoint) but the state dict has no {skey!r} "
            "to dequantize it with"
        )
    s = state_dict[skey].to(device=w.device, dtype=torch.float64)
    out, inp = shape
    if tuple(s.shape) == (_blocks(out), _blocks(inp)):
        s = s.repeat_interleave(128, 0).repeat_interleave(128, 1)[:out, :inp]
    elif tuple(s.shape) in ((out,), (out, 1)):
        s = s.reshape(out, 1)
    else:
        raise ValueError(
            f"{skey!r} must have shape {[_blocks(out), _blocks(inp)]} (128 x 128 blocks) or "
            f"{[out]} (one per output channel), got {list(s.shape)}"
        )
    return w.to(torch.float64) * s


def _get(state_dict: Mapping[str, Tensor], key: str, shape: Optional[tuple] = None) -> Tensor:
    if key not in state_dict:
        raise KeyError(f"state dict has no key {key!r}")
    t = state_dict[key]
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{key!r} must have shape {list(shape)}, got {list(t.shape)}")
    return t


class FusedMoE(nn.Module):
    """y = sum_j w[t, j] * expert_{e[t, j]}(x[t]), routed by `router` (see fused_moe).

    Gated-FFN experts (SwiGLU by default) when `intermediate_size` is given, else linear experts
    x -> x @ W_e^T with `out_features` outputs (default hidden_size). The routing keywords are
    fused_moe's; `use_correction_bias` adds the DeepSeek-V3 buffer `e_score_correction_bias` [E]
    (float32; note that module.to(dtype) casts buffers too).
    """

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        intermediate_size: Optional[int] = None,
        *,
        out_features: Optional[int] = None,
        activation: str = "silu",
        scoring: str = "softmax",
        renormalize: bool = True,
        n_group: Optional[int] = None,
        topk_group: Optional[int] = None,
        use_correction_bias: bool = False,
        routed_scaling_factor: float = 1.0,
        capacity_factor: Optional[float] = None,
        overflow: str = "drop",
        deterministic: bool = True,
        precision: str = "auto",
        fp8_scale: str = "channel",
        dtype: Optional[torch.dtype] = None,
        device: Optional[torch.device] = None,
    ):
        super().__init__()
        if intermediate_size is not None and out_features is not None:
            raise ValueError("out_features is for linear experts; gated experts output hidden_size")
        kw = dict(dtype=dtype, device=device)
        self.hidden_size, self.num_experts, self.top_k = hidden_size, num_experts, top_k
        self.intermediate_size = intermediate_size
        self.router = nn.Linear(hidden_size, num_experts, bias=False, **kw)
        E, H, I = num_experts, hidden_size, intermediate_size
        if I is not None:
            self.w_gate_up = nn.Parameter(torch.empty(E, 2 * I, H, **kw))
            self.w_down = nn.Parameter(torch.empty(E, H, I, **kw))
        else:
            self.weight = nn.Parameter(torch.empty(E, out_features or H, H, **kw))
        bias = torch.zeros(E, dtype=torch.float32, device=device) if use_correction_bias else None
        self.register_buffer("e_score_correction_bias", bias)
        self.options = dict(
            scoring=scoring,
            renormalize=renormalize,
            n_group=n_group,
            topk_group=topk_group,
            routed_scaling_factor=routed_scaling_factor,
            capacity_factor=capacity_factor,
            overflow=overflow,
            deterministic=deterministic,
            precision=precision,
            fp8_scale=fp8_scale,
        )
        if I is not None:
            self.options["activation"] = activation
        elif activation != "silu":
            raise ValueError("activation applies to gated experts (give intermediate_size)")
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal weights with std 1/sqrt(fan_in), so outputs are O(1) for O(1) inputs."""
        self.router.reset_parameters()
        experts = self._experts()
        for w in experts if isinstance(experts, tuple) else (experts,):
            w.normal_(0.0, w.shape[2] ** -0.5)  # [E, out, in]

    def _experts(self):
        return (self.w_gate_up, self.w_down) if self.intermediate_size is not None else self.weight

    def forward(self, hidden_states: Tensor) -> Tensor:
        """hidden_states [..., H] -> [..., H] (gated) or [..., D] (linear)."""
        x = hidden_states.reshape(-1, self.hidden_size)
        score_dtype = torch.promote_types(x.dtype, torch.float32)
        logits = F.linear(x.to(score_dtype), self.router.weight.to(score_dtype))
        y = fused_moe(
            x,
            self._experts(),
            logits,
            self.top_k,
            correction_bias=self.e_score_correction_bias,
            layout="out_in",
            **self.options,
        )
        return y.reshape(*hidden_states.shape[:-1], y.shape[-1])

    @torch.no_grad()
    def load_experts_from_state_dict(
        self, state_dict: Mapping[str, Tensor], prefix: str = "", style: str = "mixtral"
    ) -> "FusedMoE":
        """Copies a Hugging Face MoE block's router, experts (and DeepSeek's correction bias)
        from `state_dict` keys `prefix + "block_sparse_moe."...` (mixtral: gate.weight,
        experts.{e}.w1/w3/w2.weight) or `prefix + "mlp."...` (qwen3/deepseek: gate.weight,
        experts.{e}.gate_proj/up_proj/down_proj.weight, deepseek: gate.e_score_correction_bias).
        float8_e4m3fn expert weights are dequantized with their `weight_scale_inv` (see the
        module's docstring). Raises KeyError / ValueError naming a missing or misshaped key.
        Returns self."""
        block, router_key, (g, u, d), bias_key = _style(style)
        if self.intermediate_size is None:
            raise ValueError(f"style={style!r} holds gated experts; this module's are linear")
        p = prefix + block
        E, H, I = self.num_experts, self.hidden_size, self.intermediate_size
        self.router.weight.copy_(_get(state_dict, p + router_key, (E, H)))
        for e in range(E):
            key = f"{p}experts.{e}.{{}}.weight"
            self.w_gate_up[e, :I].copy_(_expert_matrix(state_dict, key.format(g), (I, H)))
            self.w_gate_up[e, I:].copy_(_expert_matrix(state_dict, key.format(u), (I, H)))
            self.w_down[e].copy_(_expert_matrix(state_dict, key.format(d), (H, I)))
        if self.e_score_correction_bias is not None:
            if bias_key is None:
                raise ValueError(f"style={style!r} has no correction bias; use style='deepseek'")
            self.e_score_correction_bias.copy_(_get(state_dict, p + bias_key, (E,)))
        elif bias_key is not None and p + bias_key in state_dict:
            raise ValueError(
                f"state dict has {p + bias_key!r} but this module has no correction bias "
                "(construct it with use_correction_bias=True)"
            )
        return self

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, Tensor],
        prefix: str = "",
        style: str = "mixtral",
        *,
        top_k: int,
        **kwargs,
    ) -> "FusedMoE":
        """A FusedMoE sized from the checkpoint (E, H from the router, I from expert 0) and
        loaded with load_experts_from_state_dict. Routing options (scoring, n_group, ...) come
        from the model's config: pass them as keywords. dtype and device default to the
        router's; use_correction_bias to whether the checkpoint has one."""
        block, router_key, (g, _, _), bias_key = _style(style)
        p = prefix + block
        router = _get(state_dict, p + router_key)
        if router.dim() != 2:
            raise ValueError(f"{p + router_key!r} must be [E, H], got shape {list(router.shape)}")
        E, H = router.shape
        I = _get(state_dict, f"{p}experts.0.{g}.weight").shape[0]
        kwargs.setdefault("dtype", router.dtype)
        kwargs.setdefault("device", router.device)
        has_bias = bias_key is not None and p + bias_key in state_dict
        kwargs.setdefault("use_correction_bias", has_bias)
        module = cls(H, E, top_k, I, **kwargs)
        return module.load_experts_from_state_dict(state_dict, prefix, style)

    def extra_repr(self) -> str:
        sizes = (self.hidden_size, self.num_experts, self.top_k, self.intermediate_size)
        names = ("hidden_size", "num_experts", "top_k", "intermediate_size")
        return ", ".join(f"{k}={v!r}" for k, v in [*zip(names, sizes), *self.options.items()])
