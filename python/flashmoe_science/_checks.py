"""Input validation for fused_moe: metadata only (types, shapes, dtypes, devices, option values).

Every error names the argument as the user spelled it and says what was expected and what was
given. Nothing here reads array data, so it runs unchanged under torch.compile tracing; the few
data-dependent checks (non-finite scores, index ranges) run next to the computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

try:
    import torch
except ImportError:  # NumPy-only install
    torch = None

SCORINGS = ("softmax", "sigmoid", "none")
OVERFLOWS = ("drop", "reroute")
ACTIVATIONS = ("silu", "gelu")
LAYOUTS = ("in_out", "out_in")
PRECISIONS = ("auto", "bf16", "fp8")

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
WEIGHT_DTYPES = FLOAT_DTYPES + ("float8_e4m3fn",)
GPU_DTYPES = ("bfloat16", "float16")
DEFAULT_TOP_K = 8  # the seed's top-8

NUMPY = "numpy"
TORCH = "torch"

if torch is not None:
    _TORCH_DTYPE_NAMES = {
        torch.float16: "float16",
        torch.bfloat16: "bfloat16",
        torch.float32: "float32",
        torch.float64: "float64",
        torch.int8: "int8",
        torch.int16: "int16",
        torch.int32: "int32",
        torch.int64: "int64",
        torch.uint8: "uint8",
        torch.bool: "bool",
        torch.complex64: "complex64",
        torch.complex128: "complex128",
    }
    if hasattr(torch, "float8_e4m3fn"):
        _TORCH_DTYPE_NAMES[torch.float8_e4m3fn] = "float8_e4m3fn"
    if hasattr(torch, "float8_e5m2"):
        _TORCH_DTYPE_NAMES[torch.float8_e5m2] = "float8_e5m2"


@dataclass(frozen=True)
class Plan:
    """What the checks derived from the call: shapes, the library and device, the options."""

    lib: str  # NUMPY or TORCH
    device: str  # "cpu" or "cuda:N"
    kind: str  # "linear" or "gated_ffn"
    lead_shape: Tuple[int, ...]  # tokens' shape without H (the output keeps it)
    T: int
    H: int
    E: int  # routing space
    E_local: int  # experts whose weights are passed
    D: int  # linear output columns (0 for FFN)
    I: int  # FFN intermediate size (0 for linear)
    top_k: int
    prerouted: bool
    capacity_factor: float  # 0.0 = dropless
    cuda_cast_bf16: bool  # CUDA float32/float64 inputs computed in bf16 (precision="bf16")
    cuda_fp8: bool = False  # CUDA precision="fp8": the run reads prepared FP8 weights

    @property
    def out_dim(self) -> int:
        return self.D if self.kind == "linear" else self.H

    @property
    def out_shape(self) -> Tuple[int, ...]:
        return tuple(self.lead_shape) + (self.out_dim,)


def is_torch(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def dtype_name(x: Any) -> str:
    if is_torch(x):
        return _TORCH_DTYPE_NAMES.get(x.dtype, str(x.dtype).replace("torch.", ""))
    return x.dtype.name


def device_name(x: Any) -> str:
    if is_torch(x):
        d = x.device
        return d.type if d.index is None else f"{d.type}:{d.index}"
    return "cpu"


def _library(name: str, x: Any) -> str:
    if isinstance(x, np.ndarray):
        return NUMPY
    if is_torch(x):
        return TORCH
    raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(x).__name__}")


def _choice(name: str, value: Any, accepted: Tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in accepted:
        listed = ", ".join(repr(a) for a in accepted)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}")
    return value


# Numbers an option may be: Python/NumPy numbers, and torch's symbolic ints/floats, which
# torch.compile(dynamic=True) passes while tracing.
_SYM_TYPES = (torch.SymInt, torch.SymFloat) if torch is not None else ()
_NUMBER_TYPES = (int, float, np.integer, np.floating) + _SYM_TYPES


def _number(name: str, value: Any) -> Any:
    """A finite number option. Plain numbers come back as float; symbolic ones (traced under
    torch.compile) come back as they are, so tracing does not specialize on them."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, _NUMBER_TYPES):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not isinstance(value, _SYM_TYPES):
        value = float(value)
    # `not abs(v) < inf` rather than math.isfinite: it also holds for NaN and traces on SymFloat.
    if not abs(value) < math.inf:
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def as_float(value: Any) -> Any:
    """float(value), keeping torch's symbolic numbers symbolic (see _number)."""
    return value if isinstance(value, _SYM_TYPES) else float(value)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def _shape(x: Any) -> Tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _rank(name: str, x: Any, ndim: int, form: str) -> Tuple[int, ...]:
    shape = _shape(x)
    if len(shape) != ndim:
        raise ValueError(f"{name} must have shape {form} ({ndim} dims), got shape {list(shape)}")
    return shape


def _dtype(name: str, x: Any, accepted: Tuple[str, ...], what: str) -> str:
    dt = dtype_name(x)
    if dt not in accepted:
        raise TypeError(f"{name} must be {what} ({', '.join(accepted)}), got dtype {dt}")
    return dt


def check_call(
    tokens: Any,
    expert_weights: Any,
    routing_weights: Any,
    top_k: Any,
    *,
    scoring: Any,
    renormalize: Any,
    temperature: Any,
    n_group: Any,
    topk_group: Any,
    correction_bias: Any,
    routed_scaling_factor: Any,
    topk_ids: Any,
    topk_weights: Any,
    expert_map: Any,
    capacity_factor: Any,
    overflow: Any,
    activation: Any,
    layout: Any,
    precision: Any,
    out: Any,
    workspace: Any,
) -> Tuple[Plan, Any, Optional[Any]]:
    """Validates a fused_moe call. Returns (plan, w1, w2) with w2 None for linear experts
    (for a PreparedExperts: its prepared w1/w2)."""
    from .prepare import PreparedExperts

    prepared = expert_weights if isinstance(expert_weights, PreparedExperts) else None
    # --- expert weights: one array (linear) or a (w_gate_up, w_down) pair (gated FFN) -------
    if prepared is not None:
        if precision != "fp8":
            raise ValueError(
                f"expert_weights is a PreparedExperts (FP8 weights): pass precision='fp8', "
                f"got precision={precision!r}"
            )
        if not (is_torch(tokens) and tokens.device.type == "cuda"):
            raise ValueError(
                "expert_weights is a PreparedExperts, which is GPU-only, but tokens are "
                f"{'on ' + device_name(tokens) if is_torch(tokens) else 'a NumPy array'}; on "
                "the CPU pass the raw weights with precision='fp8' (the reference's fake "
                "quantization)"
            )
        kind = prepared.kind
        w1, w2 = prepared.w1, prepared.w2
        weight_names = (
            ("expert_weights (PreparedExperts.w1)", "expert_weights (PreparedExperts.w2)")
            if kind == "gated_ffn"
            else ("expert_weights (PreparedExperts.w1)", None)
        )
    elif isinstance(expert_weights, (tuple, list)):
        if len(expert_weights) != 2:
            raise ValueError(
                "expert_weights must be one array [E, H, D] (linear experts) or a tuple "
                f"(w_gate_up, w_down) (gated FFN), got a sequence of {len(expert_weights)}"
            )
        kind = "gated_ffn"
        w1, w2 = expert_weights
        weight_names = ("expert_weights[0] (w_gate_up)", "expert_weights[1] (w_down)")
    else:
        kind = "linear"
        w1, w2 = expert_weights, None
        weight_names = ("expert_weights", None)

    # --- one library, one device ----------------------------------------------------------
    named = [
        ("tokens", tokens),
        (weight_names[0], w1),
        (weight_names[1], w2),
        ("routing_weights", routing_weights),
        ("correction_bias", correction_bias),
        ("topk_ids", topk_ids),
        ("topk_weights", topk_weights),
        ("expert_map", expert_map),
        ("out", out),
        ("workspace", workspace),
    ]
    named = [(n, x) for n, x in named if x is not None]
    libs = [(n, _library(n, x)) for n, x in named]
    if any(lib != libs[0][1] for _, lib in libs):
        np_names = ", ".join(n for n, lib in libs if lib == NUMPY)
        th_names = ", ".join(n for n, lib in libs if lib == TORCH)
        raise TypeError(
            "mixed NumPy and torch inputs: "
            f"{th_names} {'is a torch tensor' if ',' not in th_names else 'are torch tensors'}"
            f" but {np_names} {'is a NumPy array' if ',' not in np_names else 'are NumPy arrays'};"
            " pass every array from one library"
        )
    lib = libs[0][1]
    devices = {}
    for n, x in named:
        devices.setdefault(device_name(x), []).append(n)
    if len(devices) > 1:
        where = "; ".join(f"{', '.join(ns)} on {d}" for d, ns in devices.items())
        raise ValueError(f"all arrays must be on one device: {where}")
    device = next(iter(devices))
    on_cuda = device.startswith("cuda")
    if not on_cuda and device != "cpu":
        raise ValueError(f"tokens are on {device}; only CPU and CUDA arrays are accepted")

    # --- option strings and numbers -------------------------------------------------------
    _choice("scoring", scoring, SCORINGS)
    _choice("overflow", overflow, OVERFLOWS)
    _choice("activation", activation, ACTIVATIONS)
    _choice("layout", layout, LAYOUTS)
    _choice("precision", precision, PRECISIONS)
    if not isinstance(renormalize, bool):
        raise TypeError(f"renormalize must be a bool, got {type(renormalize).__name__}")
    temperature = _number("temperature", temperature)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if scoring == "none" and temperature != 1.0:
        raise ValueError(
            f"temperature must be 1.0 with scoring='none' (scores are used as given), "
            f"got {temperature}"
        )
    routed_scaling_factor = _number("routed_scaling_factor", routed_scaling_factor)
    if capacity_factor is None:
        capacity = 0.0
    else:
        capacity = _number("capacity_factor", capacity_factor)
        if capacity < 1.0:
            raise ValueError(
                f"capacity_factor must be >= 1 (or None for dropless routing), got {capacity}"
            )
    if kind == "linear" and activation != "silu":
        raise ValueError(
            f"activation={activation!r} applies to gated-FFN experts only; expert_weights is one "
            "array (linear experts), pass a (w_gate_up, w_down) tuple for gated experts"
        )

    # --- tokens -----------------------------------------------------------------------------
    tshape = _shape(tokens)
    if len(tshape) not in (2, 3):
        raise ValueError(
            f"tokens must have shape [batch, seq, H] or [T, H], got shape {list(tshape)}"
        )
    tok_dt = _dtype("tokens", tokens, FLOAT_DTYPES, "a float array")
    lead_shape = tshape[:-1]
    H = tshape[-1]
    T = int(math.prod(lead_shape))

    # --- expert weights ----------------------------------------------------------------------
    oi = layout == "out_in"
    if prepared is not None:
        E_local, D, I = prepared.E, prepared.D, prepared.I
        w_dt = "float8_e4m3fn"
        if prepared.H != H:
            raise ValueError(f"expert_weights (PreparedExperts) has H={prepared.H} but tokens has H={H}")
    elif kind == "linear":
        form = "[E, D, H]" if oi else "[E, H, D]"
        ws = _rank(weight_names[0], w1, 3, form)
        E_local = ws[0]
        H_w, D = (ws[2], ws[1]) if oi else (ws[1], ws[2])
        I = 0
        if H_w != H:
            raise ValueError(
                f"expert_weights has H={H_w} (layout={layout!r}: {form}) but tokens has H={H}"
            )
        w_dt = _dtype(weight_names[0], w1, WEIGHT_DTYPES, "a float array")
    else:
        form1 = "[E, 2I, H]" if oi else "[E, H, 2I]"
        form2 = "[E, H, I]" if oi else "[E, I, H]"
        s1 = _rank(weight_names[0], w1, 3, form1)
        s2 = _rank(weight_names[1], w2, 3, form2)
        E_local = s1[0]
        H1, I2 = (s1[2], s1[1]) if oi else (s1[1], s1[2])
        H2, I = (s2[1], s2[2]) if oi else (s2[2], s2[1])
        D = 0
        if H1 != H:
            raise ValueError(
                f"{weight_names[0]} has H={H1} (layout={layout!r}: {form1}) but tokens has H={H}"
            )
        if H2 != H:
            raise ValueError(
                f"{weight_names[1]} has H={H2} (layout={layout!r}: {form2}) but tokens has H={H}"
            )
        if s2[0] != E_local:
            raise ValueError(
                f"{weight_names[1]} has {s2[0]} experts but {weight_names[0]} has {E_local}"
            )
        if I2 != 2 * I:
            raise ValueError(
                f"{weight_names[0]} must have 2I={2 * I} gate+up columns to match "
                f"{weight_names[1]} (I={I}), got {I2}"
            )
        w_dt = _dtype(weight_names[0], w1, WEIGHT_DTYPES, "a float array")
        w2_dt = _dtype(weight_names[1], w2, WEIGHT_DTYPES, "a float array")
        if w2_dt != w_dt:
            raise TypeError(
                f"{weight_names[0]} and {weight_names[1]} must have one dtype, got {w_dt} "
                f"and {w2_dt}"
            )

    # --- routing inputs ----------------------------------------------------------------------
    prerouted = topk_ids is not None or topk_weights is not None
    if prerouted:
        if topk_ids is None or topk_weights is None:
            given, missing = (
                ("topk_ids", "topk_weights")
                if topk_weights is None
                else ("topk_weights", "topk_ids")
            )
            raise ValueError(f"{given} was given without {missing}; pre-routing needs both")
        if routing_weights is not None:
            raise ValueError(
                "give either routing_weights (route here) or topk_ids/topk_weights (pre-routed), "
                "not both"
            )
        for name, bad in (
            ("correction_bias", correction_bias is not None),
            ("n_group", n_group is not None),
            ("topk_group", topk_group is not None),
            ("temperature", temperature != 1.0),
            ("routed_scaling_factor", routed_scaling_factor != 1.0),
            ("scoring", scoring != "softmax"),
        ):
            if bad:
                raise ValueError(
                    f"{name} applies when routing from routing_weights; with pre-routed "
                    "topk_ids/topk_weights the weights are used as given"
                )
        if overflow == "reroute":
            raise ValueError(
                "overflow='reroute' needs the router's scores and is not available with "
                "pre-routed topk_ids/topk_weights; use overflow='drop'"
            )
        ids_shape = _rank("topk_ids", topk_ids, 2, "[T, k]")
        tw_shape = _rank("topk_weights", topk_weights, 2, "[T, k]")
        if ids_shape != tw_shape:
            raise ValueError(
                f"topk_weights must have the shape of topk_ids {list(ids_shape)}, got "
                f"{list(tw_shape)}"
            )
        if ids_shape[0] != T:
            raise ValueError(
                f"topk_ids has {ids_shape[0]} rows but tokens has T={T} "
                f"(tokens shape {list(tshape)})"
            )
        if dtype_name(topk_ids) not in ("int32", "int64", "int16", "int8", "uint8"):
            raise TypeError(f"topk_ids must be an integer array, got dtype {dtype_name(topk_ids)}")
        _dtype("topk_weights", topk_weights, FLOAT_DTYPES, "a float array")
        k_given = ids_shape[1]
        if top_k is None:
            top_k = k_given
        elif _integer("top_k", top_k) != k_given:
            raise ValueError(f"top_k={top_k} does not match topk_ids.shape[1]={k_given}")
        if expert_map is not None:
            E = _rank("expert_map", expert_map, 1, "[E]")[0]
        else:
            E = E_local
    else:
        if routing_weights is None:
            raise ValueError("routing_weights is required (or pre-routed topk_ids/topk_weights)")
        rw_shape = _rank("routing_weights", routing_weights, 2, "[T, E]")
        _dtype("routing_weights", routing_weights, FLOAT_DTYPES, "a float array")
        if rw_shape[0] != T:
            raise ValueError(
                f"routing_weights has {rw_shape[0]} rows but tokens has T={T} tokens "
                f"(tokens shape {list(tshape)}; routing_weights must be [T, E])"
            )
        E = rw_shape[1]
        if top_k is None:
            top_k = DEFAULT_TOP_K
    top_k = _integer("top_k", top_k)

    if expert_map is not None:
        em_shape = _rank("expert_map", expert_map, 1, "[E]")
        if em_shape[0] != E:
            raise ValueError(
                f"expert_map must have one entry per routed expert: routing_weights has E={E} "
                f"columns, expert_map has {em_shape[0]}"
            )
        if not dtype_name(expert_map).startswith(("int", "uint")):
            raise TypeError(
                f"expert_map must be an integer array, got dtype {dtype_name(expert_map)}"
            )
    elif E != E_local:
        raise ValueError(
            f"routing_weights has E={E} columns but {weight_names[0]} has {E_local} experts "
            "(pass expert_map to route over more experts than are held here)"
        )
    if not 1 <= top_k <= E:
        raise ValueError(f"top_k must be in 1..E={E}, got {top_k}")

    if correction_bias is not None:
        cb_shape = _rank("correction_bias", correction_bias, 1, "[E]")
        if cb_shape[0] != E:
            raise ValueError(f"correction_bias must have shape [E]=[{E}], got {list(cb_shape)}")
        _dtype("correction_bias", correction_bias, FLOAT_DTYPES, "a float array")

    if (n_group is None) != (topk_group is None):
        given, missing = (
            ("n_group", "topk_group") if topk_group is None else ("topk_group", "n_group")
        )
        raise ValueError(f"{given} was given without {missing}; grouped top-k needs both")
    if n_group is not None:
        n_group = _integer("n_group", n_group)
        topk_group = _integer("topk_group", topk_group)
        if n_group < 1 or E % n_group != 0:
            raise ValueError(f"n_group must be >= 1 and divide E={E}, got {n_group}")
        if not 1 <= topk_group <= n_group:
            raise ValueError(f"topk_group must be in 1..n_group={n_group}, got {topk_group}")
        eligible = topk_group * (E // n_group)
        if top_k > eligible:
            raise ValueError(
                f"top_k={top_k} exceeds the {eligible} experts in topk_group={topk_group} "
                f"groups of {E // n_group}"
            )

    # --- device rules --------------------------------------------------------------------------
    cast_bf16 = False
    cuda_fp8 = False
    if on_cuda:
        if precision == "fp8":
            # Raw weights are prepared (quantized once, cached) by fused_moe; the run reads E4M3.
            cuda_fp8 = True
            if tok_dt not in GPU_DTYPES:
                raise TypeError(
                    f"tokens of dtype {tok_dt} on CUDA: precision='fp8' takes bfloat16 or float16 "
                    "tokens (the output has their dtype)"
                )
            if prepared is None and w_dt not in ("bfloat16", "float16", "float32"):
                raise TypeError(
                    f"precision='fp8' on CUDA quantizes raw bfloat16/float16/float32 weights; "
                    f"{weight_names[0]} has dtype {w_dt} (already-quantized FP8 weights: pass "
                    "prepare_experts(weights, weight_scales=...), a PreparedExperts)"
                )
        elif precision == "bf16":
            if w_dt not in FLOAT_DTYPES:
                raise TypeError(
                    f"precision='bf16' on CUDA needs float expert weights, {weight_names[0]} "
                    f"has dtype {w_dt}"
                )
            # Documented: non-bf16 CUDA inputs are cast to bf16 for the call; out keeps tok_dt.
            cast_bf16 = tok_dt != "bfloat16" or w_dt != "bfloat16"
        elif tok_dt not in GPU_DTYPES:
            raise TypeError(
                f"tokens of dtype {tok_dt} on CUDA: the GPU path computes in bfloat16/float16; "
                "pass precision='bf16' (tokens and weights are then cast to bfloat16 for the "
                f"call and the output is returned as {tok_dt}) or bfloat16/float16 tensors"
            )
        elif w_dt != tok_dt:
            raise TypeError(
                f"{weight_names[0]} must have the tokens' dtype {tok_dt} on CUDA, got {w_dt}"
            )

    # --- out and workspace -------------------------------------------------------------------
    plan = Plan(
        lib=lib,
        device=device,
        kind=kind,
        lead_shape=tuple(lead_shape),
        T=T,
        H=H,
        E=E,
        E_local=E_local,
        D=D,
        I=I,
        top_k=top_k,
        prerouted=prerouted,
        capacity_factor=capacity,
        cuda_cast_bf16=cast_bf16,
        cuda_fp8=cuda_fp8,
    )
    if out is not None:
        if _shape(out) != plan.out_shape:
            raise ValueError(f"out must have shape {list(plan.out_shape)}, got {list(_shape(out))}")
        if dtype_name(out) != tok_dt:
            raise TypeError(f"out must have the tokens' dtype {tok_dt}, got {dtype_name(out)}")
        if not _contiguous(out):
            raise ValueError("out must be C-contiguous")
        if lib == NUMPY and not out.flags.writeable:
            raise ValueError("out must be writeable")
    if workspace is not None:
        if not on_cuda:
            raise ValueError("workspace is only used with CUDA inputs; tokens are on the CPU")
        if not _contiguous(workspace):
            raise ValueError("workspace must be C-contiguous")
    return plan, w1, w2


def _contiguous(x: Any) -> bool:
    if is_torch(x):
        return x.is_contiguous()
    return bool(x.flags.c_contiguous)
