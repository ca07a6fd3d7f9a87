"""Router temperature annealing (the seed's "temperature annealing for routing weights").

A cosine schedule from t_start at step 0 to t_end at step >= total_steps, computed by the C++
library (flashmoe/routing.h: annealed_temperature):

    temperature(step) = t_end + (t_start - t_end) * 0.5 * (1 + cos(pi * min(step, total) / total))

Typical use: start hot (t_start > 1 flattens the router's softmax, so early training spreads
tokens over more experts and fewer straggle), end at 1.0:

    schedule = TemperatureSchedule(t_start=2.0, t_end=1.0, total_steps=10_000)
    out = fused_moe(x, w, logits, top_k=8, temperature=schedule(step))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import _C


def annealed_temperature(step: int, total_steps: int, t_start: float, t_end: float) -> float:
    """The temperature at `step` of a cosine schedule over `total_steps` (t_end if total <= 0)."""
    return float(_C.annealed_temperature(int(step), int(total_steps), float(t_start), float(t_end)))


@dataclass(frozen=True)
class TemperatureSchedule:
    """Callable schedule: TemperatureSchedule(t_start, t_end, total_steps)(step) -> temperature."""

    t_start: float
    t_end: float
    total_steps: int

    def __post_init__(self) -> None:
        for name in ("t_start", "t_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite temperature > 0, got {value}")
        if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int):
            raise TypeError(f"total_steps must be an int, got {type(self.total_steps).__name__}")
        if self.total_steps < 0:
            raise ValueError(f"total_steps must be >= 0, got {self.total_steps}")

    def __call__(self, step: int) -> float:
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return annealed_temperature(step, self.total_steps, self.t_start, self.t_end)
