"""Named MoE shapes for the benchmark and the arithmetic that follows from a shape alone.

Pure Python (no torch), so the formulas are unit-tested on machines without a GPU.

Two expert kinds (DESIGN.md section 1):
  linear: y_e(x) = x @ W_e,                          W_e [H, D]
  ffn:    y_e(x) = (silu(x @ Wg_e) * (x @ Wu_e)) @ Wd_e, Wg_e, Wu_e [H, I], Wd_e [I, H] (SwiGLU)
"""

from __future__ import annotations

import dataclasses
import math

LINEAR = "linear"
FFN = "ffn"

# Bytes per weight element for each precision the harness times (fp8 scales are excluded:
# one fp32 per output channel, under 0.5% of the weight bytes for every named shape).
BYTES_PER_WEIGHT = {"bf16": 2, "fp8": 1}

# The batch sweep: T = 1, 2, 4, ..., 4096.
SWEEP_TOKENS = tuple(2**i for i in range(13))

# Bytes of one input set: tokens bf16 [T, H] plus router logits fp32 [T, E] (per token).
TOKEN_BYTES = 2
LOGIT_BYTES = 4


@dataclasses.dataclass(frozen=True)
class MoeConfig:
    """One MoE forward: T tokens of width H routed top_k-of-E to linear or gated-FFN experts."""

    name: str
    kind: str  # LINEAR or FFN
    T: int
    E: int
    H: int
    top_k: int
    D: int = 0  # linear experts: output width
    I: int = 0  # FFN experts: intermediate width  # noqa: E741

    def __post_init__(self):
        if self.kind not in (LINEAR, FFN):
            raise ValueError(f"kind must be {LINEAR!r} or {FFN!r}, got {self.kind!r}")
        for field in ("T", "E", "H", "top_k"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.top_k > self.E:
            raise ValueError(f"top_k must be <= E, got top_k={self.top_k} E={self.E}")
        if self.kind == LINEAR and (self.D < 1 or self.I != 0):
            raise ValueError("linear experts take D >= 1 and no I")
        if self.kind == FFN and (self.I < 1 or self.D != 0):
            raise ValueError("FFN experts take I >= 1 and no D")

    @property
    def out_dim(self) -> int:
        """Columns of the output: D for linear experts, H for FFN experts."""
        return self.D if self.kind == LINEAR else self.H

    def with_tokens(self, tokens: int) -> "MoeConfig":
        return dataclasses.replace(self, T=tokens)

    def weight_elems_per_expert(self) -> int:
        """linear: H*D; FFN: H*2I (gate and up) + I*H (down) = 3*H*I."""
        if self.kind == LINEAR:
            return self.H * self.D
        return self.H * 2 * self.I + self.I * self.H

    def flops(self) -> int:
        """Multiply-adds times two over the T*top_k routed rows: linear 2*T*k*H*D,
        FFN 2*T*k*(H*2I + I*H). Routing, activation and combine are not counted."""
        return 2 * self.T * self.top_k * self.weight_elems_per_expert()

    def weight_bytes(self, experts_touched: float, precision: str) -> float:
        """Bytes of the weights of the experts the routing actually touched, read once."""
        return experts_touched * self.weight_elems_per_expert() * BYTES_PER_WEIGHT[precision]

    def input_set_bytes(self) -> int:
        """Bytes of one input set: tokens bf16 [T, H] and logits fp32 [T, E]."""
        return self.T * (self.H * TOKEN_BYTES + self.E * LOGIT_BYTES)

    def as_json(self) -> dict:
        """The `config` object of the benchmark JSON (DESIGN.md section 6)."""
        out = {"name": self.name, "T": self.T, "E": self.E, "H": self.H}
        if self.kind == LINEAR:
            out["D"] = self.D
        else:
            out["I"] = self.I
            out["activation"] = "silu"
        out["top_k"] = self.top_k
        out["kind"] = self.kind
        return out


_SEED = MoeConfig("seed", LINEAR, T=2048, E=256, H=4096, top_k=8, D=4096)
_DSV3 = MoeConfig("dsv3", FFN, T=2048, E=256, H=7168, top_k=8, I=2048)

CONFIGS = {
    c.name: c
    for c in (
        _SEED,  # the seed's shape: 256 linear experts, top-8, H = D = 4096
        dataclasses.replace(_SEED, name="decode-1", T=1),
        dataclasses.replace(_SEED, name="decode-16", T=16),
        dataclasses.replace(_SEED, name="decode-128", T=128),
        dataclasses.replace(_SEED, name="prefill", T=16384),
        _DSV3,  # DeepSeek-V3 routed experts
        dataclasses.replace(_DSV3, name="dsv3-tp8", I=256),  # one GPU of eight
        MoeConfig("qwen3", FFN, T=2048, E=128, H=2048, top_k=8, I=768),
        MoeConfig("mixtral", FFN, T=2048, E=8, H=4096, top_k=2, I=14336),
    )
}


def get_config(name: str, tokens: int | None = None) -> MoeConfig:
    """The named configuration, at `tokens` tokens when given."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; known: {', '.join(CONFIGS)}")
    cfg = CONFIGS[name]
    return cfg.with_tokens(tokens) if tokens is not None else cfg


def small_config(cfg: MoeConfig) -> MoeConfig:
    """The small shape of the same kind on which each implementation's rel_err is measured:
    T=64, E<=16, H=256, D=256 or I=128, top_k<=4."""
    experts = min(cfg.E, 16)
    top_k = min(cfg.top_k, 4, experts)
    if cfg.kind == LINEAR:
        return MoeConfig(cfg.name + "-small", LINEAR, T=64, E=experts, H=256, top_k=top_k, D=256)
    return MoeConfig(cfg.name + "-small", FFN, T=64, E=experts, H=256, top_k=top_k, I=128)


def rotation_count(set_bytes: int, l2_bytes: int) -> int:
    """Input sets to rotate through so that together they exceed twice the L2 size (at least
    two), so no timed call finds its tokens left in L2 by the previous one."""
    return max(2, math.ceil(2 * l2_bytes / max(set_bytes, 1)))
