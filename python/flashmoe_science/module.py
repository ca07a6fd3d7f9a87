"""FusedMoE: an nn.Module (router + stacked experts) around fused_moe, loadable from Hugging
Face-style per-expert state dicts (Mixtral, Qwen3-MoE, DeepSeek).

Expert weights are stored in nn.Linear's [out, in] convention and passed with layout="out_in",
so a checkpoint's matrices are copied in as they are, without a transpose:
    gated FFN: w_gate_up [E, 2I, H] (rows 0..I-1 gate, I..2I-1 up), w_down [E, H, I]
    linear:    weight    [E, D, H]
The router (`router.weight` [E, H]) is kept in the module's dtype and evaluated in float32 (or
float64 for a float64 module; the float32 copy of a bf16/fp16 router is kept between inference
calls, see _router_weight). Shared experts (DeepSeek, Qwen2-MoE) are not part of this module.

FP8 checkpoints (DeepSeek-V3: float8_e4m3fn expert weights with a `weight_scale_inv` beside each,
128 x 128 blocks or one per output channel) are either dequantized (q * s) into the module's
dtype on load (the default; precision="fp8" then re-quantizes the parameters once, cached), or,
with keep_fp8=True (CUDA), packed as they are: the module then holds the checkpoint's E4M3 bytes
and scales in the FP8 kernels' layout (buffers fp8_w1, fp8_w1_scale, fp8_w2, fp8_w2_scale; no
expert parameters, half the memory of bf16) and always runs precision="fp8" on exactly the
checkpoint's values. quantize_experts_() packs a module's own (bf16/fp16/fp32) experts the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _checks
from .ops import fused_moe
from .prepare import SCALES, PreparedExperts, prepare_experts

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


def _fp8_parts(state_dict: Mapping[str, Tensor], key: str, shape: tuple):
    """(q, s, scale kind) of an FP8 checkpoint's expert matrix `key` ([out, in] float8_e4m3fn)
    and the `weight_scale_inv` stored beside it: s as stored, reshaped to [ceil(out/128),
    ceil(in/128)] ("block128") or [out] ("channel"). None when the matrix is not 1-byte floats."""
    w = _get(state_dict, key, shape)
    if not w.dtype.is_floating_point or w.dtype.itemsize != 1:
        return None
    if w.dtype != torch.float8_e4m3fn:
        raise TypeError(f"{key!r} has dtype {w.dtype}; FP8 checkpoints are loaded from float8_e4m3fn")
    skey = key[: -len("weight")] + "weight_scale_inv"
    if skey not in state_dict:
        raise ValueError(
            f"{key!r} is float8_e4m3fn (an FP8 checkpoint) but the state dict has no {skey!r} "
            "to dequantize it with"
        )
    s = state_dict[skey]
    out, inp = shape
    if tuple(s.shape) == (_blocks(out), _blocks(inp)):
        return w, s, "block128"
    if tuple(s.shape) in ((out,), (out, 1)):
        return w, s.reshape(out), "channel"
    raise ValueError(
        f"{skey!r} must have shape {[_blocks(out), _blocks(inp)]} (128 x 128 blocks) or "
        f"{[out]} (one per output channel), got {list(s.shape)}"
    )


def _expert_matrix(state_dict: Mapping[str, Tensor], key: str, shape: tuple) -> Tensor:
    """Expert matrix `key` ([out, in]): as stored, or -- an FP8 checkpoint's float8_e4m3fn weight --
    dequantized as q * s with the `weight_scale_inv` stored beside it (128 x 128 blocks
    [ceil(out/128), ceil(in/128)], or one per output channel [out] / [out, 1]). The product is
    formed in float64, where it is exact (4 significant bits times 24), so the only rounding is
    the copy into the module's dtype."""
    parts = _fp8_parts(state_dict, key, shape)
    if parts is None:
        return state_dict[key]
    w, s, kind = parts
    s = s.to(device=w.device, dtype=torch.float64)
    out, inp = shape
    if kind == "block128":
        s = s.repeat_interleave(128, 0).repeat_interleave(128, 1)[:out, :inp]
    else:
        s = s.reshape(out, 1)
    return w.to(torch.float64) * s


def _cat_e4m3(parts, dim: int) -> Tensor:
    """torch.cat / torch.stack (dim None) of float8_e4m3fn tensors through their bytes."""
    raw = [t.view(torch.uint8) for t in parts]
    out = torch.stack(raw) if dim is None else torch.cat(raw, dim)
    return out.view(torch.float8_e4m3fn)


# The buffers of packed FP8 experts (keep_fp8 / quantize_experts_): prepared E4M3 rows and scales.
_FP8_BUFFERS = ("fp8_w1", "fp8_w1_scale", "fp8_w2", "fp8_w2_scale")


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
        self._prepared: Optional[PreparedExperts] = None  # packed FP8 experts (see fp8_packed)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal weights with std 1/sqrt(fan_in), so outputs are O(1) for O(1) inputs."""
        if self._prepared is not None:
            raise ValueError("packed FP8 experts (fp8_packed) have no parameters to reset")
        self.router.reset_parameters()
        experts = self._experts()
        for w in experts if isinstance(experts, tuple) else (experts,):
            w.normal_(0.0, w.shape[2] ** -0.5)  # [E, out, in]

    @property
    def fp8_packed(self) -> bool:
        """True when the experts are packed FP8 buffers (keep_fp8=True or quantize_experts_())."""
        return self._prepared is not None

    def _router_weight(self, dtype: torch.dtype) -> Tensor:
        """router.weight in `dtype`. A bf16/fp16 router's float32 copy is kept between calls
        while the weight is unchanged (same storage and version counter; an in-place update or
        .to() makes a new one), so an inference call does not cast E x H values every time --
        at decode that cast is a kernel of its own. Not kept when autograd needs the cast
        (training), under torch.compile (the compiled graph holds the cast) or while a CUDA graph
        is being captured: the graph keeps its cast node, so a replay after an in-place weight
        update (RL weight sync) reads the new weights, not a stale copy."""
        w = self.router.weight
        if w.dtype == dtype:
            return w
        if (
            (torch.is_grad_enabled() and w.requires_grad)
            or torch.compiler.is_compiling()
            or (w.is_cuda and torch.cuda.is_current_stream_capturing())
        ):
            return w.to(dtype)
        key = (w.data_ptr(), w._version, w.dtype, w.device, tuple(w.shape), dtype)
        cached = self.__dict__.get("_router_cast")
        if cached is None or cached[0] != key:
            with torch.inference_mode(False):  # a normal tensor, usable outside inference mode
                cached = (key, w.detach().to(dtype))
            self.__dict__["_router_cast"] = cached
        return cached[1]

    def _experts(self):
        if self._prepared is not None:
            return self._packed_experts()
        return (self.w_gate_up, self.w_down) if self.intermediate_size is not None else self.weight

    def forward(self, hidden_states: Tensor) -> Tensor:
        """hidden_states [..., H] -> [..., H] (gated) or [..., D] (linear)."""
        x = hidden_states.reshape(-1, self.hidden_size)
        score_dtype = torch.promote_types(x.dtype, torch.float32)
        logits = F.linear(x.to(score_dtype), self._router_weight(score_dtype))
        options = self.options
        if self._prepared is not None:  # packed experts run what they hold: FP8, their scales
            options = dict(options, precision="fp8", fp8_scale=self._prepared.scale)
        y = fused_moe(
            x,
            self._experts(),
            logits,
            self.top_k,
            correction_bias=self.e_score_correction_bias,
            layout="out_in",
            **options,
        )
        return y.reshape(*hidden_states.shape[:-1], y.shape[-1])

    @torch.no_grad()
    def load_experts_from_state_dict(
        self,
        state_dict: Mapping[str, Tensor],
        prefix: str = "",
        style: str = "mixtral",
        keep_fp8: bool = False,
    ) -> "FusedMoE":
        """Copies a Hugging Face MoE block's router, experts (and DeepSeek's correction bias)
        from `state_dict` keys `prefix + "block_sparse_moe."...` (mixtral: gate.weight,
        experts.{e}.w1/w3/w2.weight) or `prefix + "mlp."...` (qwen3/deepseek: gate.weight,
        experts.{e}.gate_proj/up_proj/down_proj.weight, deepseek: gate.e_score_correction_bias).
        float8_e4m3fn expert weights are dequantized with their `weight_scale_inv` (see the
        module's docstring), or with keep_fp8=True packed as they are (the module must be on a
        CUDA device; its expert parameters are replaced by the fp8_* buffers). Raises KeyError /
        ValueError naming a missing or misshaped key. Returns self."""
        block, router_key, (g, u, d), bias_key = _style(style)
        if self.intermediate_size is None:
            raise ValueError(f"style={style!r} holds gated experts; this module's are linear")
        p = prefix + block
        E, H, I = self.num_experts, self.hidden_size, self.intermediate_size
        if self._prepared is not None:
            raise ValueError("the experts are already packed FP8; load into a new module")
        router = _get(state_dict, p + router_key, (E, H))
        if keep_fp8:
            self._pack_fp8_checkpoint(state_dict, p, (g, u, d))
        else:
            for e in range(E):
                key = f"{p}experts.{e}.{{}}.weight"
                self.w_gate_up[e, :I].copy_(_expert_matrix(state_dict, key.format(g), (I, H)))
                self.w_gate_up[e, I:].copy_(_expert_matrix(state_dict, key.format(u), (I, H)))
                self.w_down[e].copy_(_expert_matrix(state_dict, key.format(d), (H, I)))
        self.router.weight.copy_(router)
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
        keep_fp8: bool = False,
        **kwargs,
    ) -> "FusedMoE":
        """A FusedMoE sized from the checkpoint (E, H from the router, I from expert 0) and
        loaded with load_experts_from_state_dict (keep_fp8: see there). Routing options
        (scoring, n_group, ...) come from the model's config: pass them as keywords. dtype and
        device default to the router's; use_correction_bias to whether the checkpoint has one.
        With keep_fp8=True the expert parameters are never allocated (meta tensors until the
        packed buffers replace them)."""
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
        if not keep_fp8:
            module = cls(H, E, top_k, I, **kwargs)
        else:  # no bf16 copy of the experts, even transiently: built on meta, router moved back
            device = kwargs.pop("device")
            with torch.device("meta"):
                module = cls(H, E, top_k, I, **kwargs)
            module.router.to_empty(device=device)
            bias = module.e_score_correction_bias
            if bias is not None:
                module.e_score_correction_bias = torch.zeros_like(bias, device=device)
        return module.load_experts_from_state_dict(state_dict, prefix, style, keep_fp8)

    # ------------------------------------------------------------ packed FP8 experts

    @torch.no_grad()
    def quantize_experts_(self, scale: str = "channel") -> "FusedMoE":
        """Packs the module's own expert parameters (CUDA, bf16/fp16/fp32) into FP8 E4M3 with
        `scale` ("channel" or "block128") scales -- prepare_experts(..., layout="out_in"), the
        quantization fused_moe(precision="fp8") applies to raw weights -- and replaces the
        parameters by the fp8_* buffers (half the memory of bf16). The forward then runs FP8 on
        exactly those bytes, whatever `precision` was. Returns self."""
        if self._prepared is not None:
            raise ValueError("the experts are already packed FP8 (fp8_packed is True)")
        _checks._choice("scale", scale, SCALES)
        experts = self._experts()
        first = experts[0] if isinstance(experts, tuple) else experts
        if first.device.type != "cuda":
            raise ValueError(
                f"quantize_experts_ runs on the GPU, but the experts are on {first.device}: move "
                "the module to a CUDA device first (on the CPU, precision='fp8' runs the "
                "reference's fake quantization of the parameters instead)"
            )
        self._set_packed(prepare_experts(experts, "fp8", scale, "out_in"))
        return self

    def _pack_fp8_checkpoint(self, state_dict, p: str, names: tuple) -> None:
        """keep_fp8: the checkpoint's E4M3 gate, up and down matrices of every expert, with their
        scales, packed by prepare_experts(..., weight_scales=...) into the prepared layout,
        16 experts at a time (so that the stacked E4M3 copy stays small). Every key is checked
        before anything is copied."""
        g, u, d = names
        E, H, I = self.num_experts, self.hidden_size, self.intermediate_size
        experts = []  # per expert: (gate, up, down) as (q, s, kind)
        kind = None
        for e in range(E):
            key = f"{p}experts.{e}.{{}}.weight"
            parts = []
            for n, shape in ((g, (I, H)), (u, (I, H)), (d, (H, I))):
                part = _fp8_parts(state_dict, key.format(n), shape)
                if part is None:
                    raise TypeError(
                        f"keep_fp8=True needs float8_e4m3fn expert weights, but "
                        f"{key.format(n)!r} is {state_dict[key.format(n)].dtype}: load it "
                        "with keep_fp8=False, or call quantize_experts_() after loading"
                    )
                kind = part[2] if kind is None else kind
                if part[2] != kind:
                    raise ValueError(
                        f"{key.format(n)[: -len('weight')] + 'weight_scale_inv'!r} holds "
                        f"{part[2]} scales but earlier experts hold {kind} scales (one kind per "
                        "layer)"
                    )
                parts.append(part)
            experts.append(parts)
        if kind == "block128" and I % 128 != 0:
            raise ValueError(
                "keep_fp8=True with 128 x 128 block scales needs intermediate_size % 128 == 0 "
                f"(gate and up rows share the packed gate/up matrix's blocks), got {I}: load "
                "with keep_fp8=False (dequantized)"
            )
        device = self.router.weight.device
        if device.type != "cuda":
            raise ValueError(
                f"keep_fp8=True packs the experts on the GPU, but the module is on {device}: "
                "pass device='cuda' (or load with keep_fp8=False, which dequantizes)"
            )
        chunk = 16
        outs = None
        for e0 in range(0, E, chunk):
            part = experts[e0 : e0 + chunk]
            w1 = _cat_e4m3([_cat_e4m3([gq, uq], 0) for (gq, _, _), (uq, _, _), _ in part], None)
            w2 = _cat_e4m3([dq for _, _, (dq, _, _) in part], None)
            s1 = torch.stack([torch.cat([gs, us], 0) for (_, gs, _), (_, us, _), _ in part])
            s2 = torch.stack([ds for _, _, (_, ds, _) in part])
            prepared = prepare_experts(
                (w1.to(device), w2.to(device)),
                "fp8",
                kind,
                "out_in",
                weight_scales=(s1.to(device, torch.float32), s2.to(device, torch.float32)),
            )
            arrays = (prepared.w1, prepared.w1_scale, prepared.w2, prepared.w2_scale)
            if outs is None:
                outs = [torch.empty((E, *t.shape[1:]), dtype=t.dtype, device=device) for t in arrays]
            for out, t in zip(outs, arrays):
                out[e0 : e0 + t.shape[0]].copy_(t)
        self._set_packed(
            PreparedExperts(
                w1=outs[0],
                w1_scale=outs[1],
                w2=outs[2],
                w2_scale=outs[3],
                kind="gated_ffn",
                E=E,
                H=H,
                D=0,
                I=I,
                scale=kind,
                layout="out_in",
                source_dtype="float8_e4m3fn",
                source=(),
            )
        )

    def _set_packed(self, prepared: PreparedExperts) -> None:
        """The experts become `prepared`'s arrays (buffers fp8_w1, ..., in the state dict); the
        expert parameters are dropped."""
        for name in ("w_gate_up", "w_down", "weight"):
            if name in self._parameters:
                self.register_parameter(name, None)
        tensors = (prepared.w1, prepared.w1_scale, prepared.w2, prepared.w2_scale)
        for name, t in zip(_FP8_BUFFERS, tensors):
            self.register_buffer(name, t)
        self._prepared = prepared

    def _apply(self, fn, recurse=True):
        # Packed experts follow the module's device only: module.to(dtype) / .half() must not
        # convert E4M3 bytes or float32 scales as numbers, so fn sees their integer views.
        views = {}
        for name in _FP8_BUFFERS:
            t = self._buffers.get(name)
            if t is not None:
                views[name] = t.dtype
                self._buffers[name] = t.view(torch.uint8 if t.element_size() == 1 else torch.int32)
        try:
            super()._apply(fn, recurse)
        finally:
            for name, dtype in views.items():
                self._buffers[name] = self._buffers[name].view(dtype)
        if self._prepared is not None:
            self._packed_experts()
        return self

    def _packed_experts(self) -> PreparedExperts:
        """The PreparedExperts over the fp8_* buffers as they are now: rebuilt when a buffer was
        replaced (a device move, load_state_dict(assign=True)), so a forward never runs stale
        tensors."""
        p, b = self._prepared, self._buffers
        arrays = (b["fp8_w1"], b["fp8_w1_scale"], b["fp8_w2"], b["fp8_w2_scale"])
        if any(a is not t for a, t in zip((p.w1, p.w1_scale, p.w2, p.w2_scale), arrays)):
            p = self._prepared = dataclasses.replace(
                p, w1=arrays[0], w1_scale=arrays[1], w2=arrays[2], w2_scale=arrays[3]
            )
        return p

    def extra_repr(self) -> str:
        sizes = (self.hidden_size, self.num_experts, self.top_k, self.intermediate_size)
        names = ("hidden_size", "num_experts", "top_k", "intermediate_size")
        items = [*zip(names, sizes), *self.options.items()]
        if self._prepared is not None:
            items.append(("experts", f"packed fp8 ({self._prepared.scale} scales)"))
        return ", ".join(f"{k}={v!r}" for k, v in items)
