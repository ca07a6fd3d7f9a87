"""prepare_experts: quantize raw expert weights once into the FP8 layout the Hopper path reads,
and the cache that lets `fused_moe(..., precision="fp8")` take raw weights without quantizing them
on every call.

The prepared layout (E4M3 bytes [E, rows, K], K contiguous, with float32 scales) is spelled out at
MoeArgs in include/flashmoe/options.h; the sizes come from the C++ core (_C.prepared_layout), the
bytes from its GPU quantizer (_C.prepare_experts_fp8, on torch's current stream).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from . import _C, _checks

torch = _checks.torch

SCALES = ("channel", "block128")

# Number of GPU quantizations run so far (prepare_experts calls and cache misses). Tests read it
# to check that the implicit cache does not re-quantize.
quantize_calls = 0


@dataclass(frozen=True, eq=False)
class PreparedExperts:
    """FP8 expert weights made once by prepare_experts(); pass it as fused_moe's expert_weights
    with precision="fp8". GPU-only (CUDA tensors).

    w1:        [E, rows, H] float8_e4m3fn: linear W (rows = D), or the FFN's gate/up matrix
               (rows = 128 * ceil(I / 64): 64 gate and 64 up channels per 128-row chunk).
    w1_scale:  float32 scales of w1 in the raw channel order: "channel" [E, D or 2I];
               "block128" [E, ceil(N / 128), ceil(H / 128)].
    w2, w2_scale: the FFN's down projection [E, H, I] and its scales (None for linear experts).
    kind:      "linear" or "gated_ffn".  E, H, D (linear) / I (gated FFN): the experts' sizes.
    scale:     "channel" or "block128".
    layout:    the raw weights' layout ("in_out" / "out_in"); the prepared layout is fixed.
    source_dtype: the raw weights' dtype name.
    source:    identity of the raw tensors at preparation time: per tensor (id, data_ptr, shape,
               dtype, device, _version) -- the cache key parts of fused_moe's implicit prepare.
    """

    w1: Any
    w1_scale: Any
    w2: Optional[Any]
    w2_scale: Optional[Any]
    kind: str
    E: int
    H: int
    D: int
    I: int
    scale: str
    layout: str
    source_dtype: str
    source: Tuple[Any, ...]

    @property
    def device(self):
        return self.w1.device

    @property
    def out_dim(self) -> int:
        return self.D if self.kind == "linear" else self.H

    def __repr__(self) -> str:
        dims = f"D={self.D}" if self.kind == "linear" else f"I={self.I}"
        return (
            f"PreparedExperts(kind={self.kind!r}, E={self.E}, H={self.H}, {dims}, "
            f"scale={self.scale!r}, layout={self.layout!r}, device={self.device})"
        )


def _split(expert_weights: Any):
    if isinstance(expert_weights, (tuple, list)):
        if len(expert_weights) != 2:
            raise ValueError(
                "expert_weights must be one tensor [E, H, D] (linear experts) or a tuple "
                f"(w_gate_up, w_down) (gated FFN), got a sequence of {len(expert_weights)}"
            )
        return "gated_ffn", expert_weights[0], expert_weights[1]
    return "linear", expert_weights, None


def _tensor_key(t: Any) -> Tuple[Any, ...]:
    return (
        id(t),
        t.data_ptr(),
        tuple(int(s) for s in t.shape),
        t.dtype,
        str(t.device),
        t._version,
    )


def source_key(expert_weights: Any) -> Tuple[Any, ...]:
    """The identity of raw weights that the cache compares: per tensor (id, data_ptr, shape,
    dtype, device, _version)."""
    _, w1, w2 = _split(expert_weights)
    return tuple(_tensor_key(t) for t in (w1, w2) if t is not None)


def _dims(kind: str, w1: Any, w2: Any, layout: str) -> Tuple[int, int, int, int]:
    """(E, H, D, I) of raw weights, with the checks fused_moe makes (errors name the argument)."""
    oi = layout == "out_in"
    names = ("expert_weights[0] (w_gate_up)", "expert_weights[1] (w_down)")
    if kind == "linear":
        form = "[E, D, H]" if oi else "[E, H, D]"
        if w1.dim() != 3:
            raise ValueError(
                f"expert_weights must have shape {form} (3 dims), got shape {list(w1.shape)}"
            )
        E, a, b = (int(s) for s in w1.shape)
        H, D = (b, a) if oi else (a, b)
        return E, H, D, 0
    f1, f2 = ("[E, 2I, H]", "[E, H, I]") if oi else ("[E, H, 2I]", "[E, I, H]")
    for name, w, form in ((names[0], w1, f1), (names[1], w2, f2)):
        if w.dim() != 3:
            raise ValueError(f"{name} must have shape {form} (3 dims), got shape {list(w.shape)}")
    E, a, b = (int(s) for s in w1.shape)
    H, I2 = (b, a) if oi else (a, b)
    E2, c, d = (int(s) for s in w2.shape)
    H2, I = (c, d) if oi else (d, c)
    if E2 != E:
        raise ValueError(f"{names[1]} has {E2} experts but {names[0]} has {E}")
    if H2 != H:
        raise ValueError(f"{names[1]} has H={H2} (layout={layout!r}: {f2}) but {names[0]} has H={H}")
    if I2 != 2 * I:
        raise ValueError(
            f"{names[0]} must have 2I={2 * I} gate+up columns to match {names[1]} (I={I}), got {I2}"
        )
    return E, H, 0, I


def raw_problem(kind: str, E: int, H: int, D: int, I: int, layout: str, dtype: str) -> Dict:
    """The problem dict describing raw weights (what _C.prepared_layout / prepare take)."""
    return dict(
        num_tokens=0,
        hidden=H,
        num_experts=E,
        num_local_experts=E,
        kind=kind,
        out_dim=D,
        inter_dim=I,
        layout=layout,
        weight_dtype=dtype,
    )


def prepare_experts(
    expert_weights: Any,
    precision: str = "fp8",
    scale: str = "channel",
    layout: str = "in_out",
    weight_scales: Any = None,
) -> PreparedExperts:
    """Quantizes raw expert weights once into the FP8 layout that fused_moe(precision="fp8") runs,
    or packs already-quantized FP8 weights (a checkpoint's E4M3 bytes and scales) into it.

    Args:
        expert_weights: W [E, H, D] (linear experts) or (w_gate_up [E, H, 2I], w_down [E, I, H])
            (gated FFN); with layout="out_in" every matrix transposed (nn.Linear's [E, out, in]).
            CUDA torch tensors of dtype bfloat16, float16 or float32.
        precision: "fp8" (E4M3, OCP e4m3fn) -- the only prepared format.
        scale: "channel" (one float32 scale per expert and output channel) or "block128" (one per
            128 x 128 block, the DeepSeek-V3 checkpoint grouping; gated FFN needs I % 64 == 0).
        layout: the raw weights' layout, "in_out" or "out_in".
        weight_scales: only for already-quantized weights (expert_weights of dtype
            torch.float8_e4m3fn): their scales (float32, bfloat16 or float16), the dequantized
            weight being q * s (what DeepSeek-V3 calls weight_scale_inv); one tensor for linear
            experts, a pair (gate_up scales, down scales) for gated FFN. Shapes follow the
            weights' layout:
              scale="channel":  [E, N] (also [E, N, 1] with out_in, [E, 1, N] with in_out);
              scale="block128": out_in [E, ceil(N / 128), ceil(K / 128)],
                                in_out [E, ceil(K / 128), ceil(N / 128)];
            N = output channels (D; 2I for gate/up, gate first; H for down), K = inputs.
            DeepSeek-V3 ships gate_proj and up_proj apart ([E, I, H] each, out_in): pass
            torch.cat([gate, up], 1) and torch.cat([gate_scale, up_scale], 1) (exact when
            I % 128 == 0, as in DeepSeek-V3; otherwise a 128-channel block would straddle gate
            and up, and the shape check refuses the pair).

    Returns a PreparedExperts holding the device tensors. The work runs on the GPU, on torch's
    current stream, and does not synchronize. Raw weights: scale = amax / 448 per group (1 for an
    all-zero group), q = e4m3(w / scale) rounded to nearest even (flashmoe/quantization.h).
    Already-quantized weights are not re-quantized: their bytes are moved into the prepared rows
    and their scales copied, so the result dequantizes to exactly the checkpoint's values.

    Raises:
        ValueError for CPU (or NumPy) weights -- prepared weights are GPU-only; on the CPU,
        fused_moe(..., precision="fp8") with raw weights runs the reference's fake quantization
        instead --, bad option strings or shapes; TypeError for other dtypes;
        NotImplementedError for sizes the FP8 kernels do not take (H % 16, I % 16, ...);
        for already-quantized weights also ValueError / TypeError for missing or misshapen
        weight_scales (checked before the device).
    """
    _checks._choice("precision", precision, ("fp8",))
    _checks._choice("scale", scale, SCALES)
    _checks._choice("layout", layout, _checks.LAYOUTS)
    kind, w1, w2 = _split(expert_weights)
    for name, w in (("expert_weights", w1), ("expert_weights[1] (w_down)", w2)):
        if w is not None and not _checks.is_torch(w):
            raise ValueError(
                f"prepare_experts takes CUDA torch tensors; {name} is a {type(w).__name__}. "
                "Prepared FP8 weights are GPU-only: on the CPU, pass the raw weights to "
                "fused_moe(..., precision='fp8'), which runs the reference's fake quantization"
            )
    E, H, D, I = _dims(kind, w1, w2, layout)
    if weight_scales is not None or _checks.dtype_name(w1) == "float8_e4m3fn":
        return _pack(kind, w1, w2, weight_scales, E, H, D, I, scale, layout)
    _require_cuda(w1, w2)
    dt = _checks._dtype("expert_weights", w1, ("bfloat16", "float16", "float32"), "raw float weights")
    if w2 is not None and _checks.dtype_name(w2) != dt:
        raise TypeError(
            f"expert_weights[0] (w_gate_up) and expert_weights[1] (w_down) must have one dtype, "
            f"got {dt} and {_checks.dtype_name(w2)}"
        )
    return _quantize(kind, w1, w2, E, H, D, I, scale, layout, dt)


def _require_cuda(w1, w2) -> None:
    for name, w in (("expert_weights", w1), ("expert_weights[1] (w_down)", w2)):
        if w is not None and w.device.type != "cuda":
            raise ValueError(
                f"prepare_experts runs on the GPU, but {name} is on {w.device}. Prepared "
                "FP8 weights are GPU-only: on the CPU, pass the raw weights to "
                "fused_moe(..., precision='fp8'), which runs the reference's fake quantization"
            )
    if w2 is not None and w2.device != w1.device:
        raise ValueError(
            f"expert weights must be on one device, got {w1.device} and {w2.device}"
        )


def _source_scale(name, s, lay, scale, layout, device):
    """One matrix's checkpoint scales as float32 in the prepared scale layout (see
    prepare_experts' weight_scales); errors name the argument and the shapes it takes."""
    if not _checks.is_torch(s):
        raise TypeError(f"{name} must be a torch tensor, got {type(s).__name__}")
    if s.device != device:
        raise ValueError(f"{name} is on {s.device} but the expert weights are on {device}")
    _checks._dtype(name, s, ("float32", "bfloat16", "float16"), "float scales")
    want = tuple(int(v) for v in lay["scale_shape"])
    got = tuple(int(v) for v in s.shape)
    E = want[0]
    if scale == "channel":
        N = want[1]
        forms = [(E, N), (E, N, 1) if layout == "out_in" else (E, 1, N)]
        if got in forms:
            return s.detach().reshape(E, N).to(torch.float32).contiguous()
    else:
        nb, kb = want[1], want[2]
        forms = [(E, nb, kb) if layout == "out_in" else (E, kb, nb)]
        if got == forms[0]:
            t = s.detach() if layout == "out_in" else s.detach().transpose(1, 2)
            return t.to(torch.float32).contiguous()
    hint = ""
    if lay["gate_up"] and scale == "block128":
        hint = (
            " (a gate/up pair: the scales of torch.cat([gate, up]) over its 2I channels, one "
            "per 128 of them)"
        )
    shapes = " or ".join(str(list(f)) for f in forms)
    raise ValueError(
        f"{name} must have shape {shapes} for scale={scale!r} with layout={layout!r}, got "
        f"{list(got)}{hint}"
    )


def _pack(kind, w1, w2, weight_scales, E, H, D, I, scale, layout) -> PreparedExperts:
    """prepare_experts for already-quantized E4M3 weights: bytes and scales packed, no rounding."""
    names = ("expert_weights", None)
    if kind == "gated_ffn":
        names = ("expert_weights[0] (w_gate_up)", "expert_weights[1] (w_down)")
    if weight_scales is None:  # here only when the weights are float8_e4m3fn
        raise ValueError(
            f"{names[0]} is float8_e4m3fn (already quantized): pass its scales as "
            "weight_scales=... (see prepare_experts' docstring for their shapes)"
        )
    for name, w in ((names[0], w1), (names[1], w2)):
        if w is not None and _checks.dtype_name(w) != "float8_e4m3fn":
            raise TypeError(
                f"weight_scales is given, so {name} must hold already-quantized weights of dtype "
                f"float8_e4m3fn, got {_checks.dtype_name(w)} (raw weights are quantized here: "
                "leave weight_scales out)"
            )
    pair = isinstance(weight_scales, (tuple, list))
    if kind == "gated_ffn" and not (pair and len(weight_scales) == 2):
        raise ValueError(
            "gated-FFN weight_scales must be a pair (gate_up scales, down scales), got "
            + (f"a sequence of {len(weight_scales)}" if pair else type(weight_scales).__name__)
        )
    if kind == "linear" and pair:
        raise ValueError("linear experts take one weight_scales tensor, not a sequence")
    raw_scales = tuple(weight_scales) if pair else (weight_scales,)
    problem = raw_problem(kind, E, H, D, I, layout, "bfloat16")  # sizes only
    lays = _layouts(kind, problem, scale)
    sources = tuple(
        _source_scale(
            "weight_scales" if kind == "linear" else f"weight_scales[{i}]",
            s,
            lay,
            scale,
            layout,
            w1.device,
        )
        for i, (s, lay) in enumerate(zip(raw_scales, lays))
    )
    _require_cuda(w1, w2)
    return _run(kind, w1, w2, E, H, D, I, scale, layout, problem, lays, "float8_e4m3fn", sources)


def _quantize(kind, w1, w2, E, H, D, I, scale, layout, dt) -> PreparedExperts:
    problem = raw_problem(kind, E, H, D, I, layout, dt)
    lays = _layouts(kind, problem, scale)
    return _run(kind, w1, w2, E, H, D, I, scale, layout, problem, lays, dt, ())


def _layouts(kind, problem, scale) -> Tuple[Dict, ...]:
    """_C.prepared_layout of each matrix: w1, and w2 for gated FFN."""
    return tuple(
        _C.prepared_layout(problem, which, scale)
        for which in ((1, 2) if kind == "gated_ffn" else (1,))
    )


def _run(kind, w1, w2, E, H, D, I, scale, layout, problem, lays, source_dtype, sources):
    """Allocates the prepared arrays of `lays`, fills them on the GPU (quantizes raw weights, or
    with `sources` -- the checkpoint's scales -- packs E4M3 ones) and wraps them."""
    global quantize_calls
    dev = w1.device
    outs = [
        (
            torch.empty(
                (lay["experts"], lay["rows"], lay["cols"]), dtype=torch.float8_e4m3fn, device=dev
            ),
            torch.empty(tuple(lay["scale_shape"]), dtype=torch.float32, device=dev),
        )
        for lay in lays
    ]
    (q1, s1), (q2, s2) = outs[0], (outs[1] if len(outs) > 1 else (None, None))
    packed = len(sources) > 0

    def raw(w):  # E4M3 sources travel as their bytes
        if w is None:
            return None
        w = w.detach().contiguous()
        return w.view(torch.uint8) if packed else w

    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
        _C.prepare_experts_fp8(
            problem,
            raw(w1),
            raw(w2),
            scale,
            q1.view(torch.uint8),
            s1,
            None if q2 is None else q2.view(torch.uint8),
            s2,
            stream,
            sources[0] if packed else None,
            sources[1] if len(sources) > 1 else None,
        )
    quantize_calls += 1
    return PreparedExperts(
        w1=q1,
        w1_scale=s1,
        w2=q2,
        w2_scale=s2,
        kind=kind,
        E=E,
        H=H,
        D=D,
        I=I,
        scale=scale,
        layout=layout,
        source_dtype=source_dtype,
        source=source_key((w1, w2) if w2 is not None else w1),
    )


# ------------------------------------------------------------------ the implicit cache
#
# fused_moe(..., precision="fp8") with raw CUDA weights prepares them through this cache. Entries
# are keyed by the raw tensors' identity (id of each tensor, scale, layout) and hold weak
# references to them, so an entry is dropped when its raw tensors are freed. A hit needs every
# key part to match the weights as they are now: same tensor objects, data_ptr, shape, dtype,
# device and torch's _version counter (bumped by every in-place change, e.g. w.add_(1) or
# w.copy_(...) or an optimizer step); anything else re-quantizes and replaces the entry.
# Changes that bypass _version (writes through .data, DLPack or raw pointers) are not seen: call
# clear_prepare_cache() or pass a PreparedExperts.

_cache: Dict[Tuple[Any, ...], Tuple[Tuple[Any, ...], Tuple[Any, ...], PreparedExperts]] = {}
_cache_lock = threading.Lock()


def clear_prepare_cache() -> None:
    """Drops every FP8 weight prepared implicitly by fused_moe(..., precision="fp8")."""
    with _cache_lock:
        _cache.clear()


def _drop(key):
    def callback(_ref):
        with _cache_lock:
            _cache.pop(key, None)

    return callback


def cached_prepare(expert_weights: Any, scale: str, layout: str) -> PreparedExperts:
    """prepare_experts(expert_weights, "fp8", scale, layout) through the cache (see above)."""
    kind, w1, w2 = _split(expert_weights)
    tensors = tuple(t for t in (w1, w2) if t is not None)
    ident = tuple(id(t) for t in tensors) + (scale, layout)
    state = source_key(expert_weights)
    with _cache_lock:
        entry = _cache.get(ident)
    if entry is not None:
        refs, old_state, prepared = entry
        if old_state == state and all(r() is t for r, t in zip(refs, tensors)):
            return prepared
    if w1.is_cuda and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "fused_moe(precision='fp8') would quantize the raw expert weights inside a CUDA graph "
            "capture (first call, or the weights changed since they were prepared): call "
            "prepare_experts(...) before the capture and pass its result, or run the call once "
            "eagerly first"
        )
    prepared = prepare_experts(expert_weights, "fp8", scale, layout)
    refs = tuple(weakref.ref(t, _drop(ident)) for t in tensors)
    with _cache_lock:
        _cache[ident] = (refs, state, prepared)
    return prepared


if torch is not None:  # dynamo cannot trace _version / weakrefs: run the lookup eagerly
    cached_prepare = torch.compiler.disable(cached_prepare)
