"""MoeStats: the final routing and the load balance of one fused_moe call (return_stats=True)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MoeStats:
    """Routing outcome of one call. Arrays are of the input's library and device.

    topk_ids:            [T, k] int32, the final global expert of each slot, -1 where dropped
                         (or where a pre-routed slot was -1).
    topk_weights:        [T, k] float32, the slot's combine weight, 0 where dropped.
    expert_load:         [E] int32, assignments each expert finally holds.
    load_max_mean_ratio: max(expert_load) / mean(expert_load); 0.0 when nothing was assigned.
    dropped:             assignments dropped by the capacity limit.
    rerouted:            assignments that ended on an expert other than their original one.
    kernel_path:         what computed the output: "reference-cpu", a GPU path's name
                         (e.g. "multikernel-sm80"), or "none" when there were no tokens.
    """

    topk_ids: Any
    topk_weights: Any
    expert_load: Any
    load_max_mean_ratio: float
    dropped: int
    rerouted: int
    kernel_path: str


def load_ratio(load: Any) -> float:
    """max(load) / mean(load) of a host array of per-expert counts; 0.0 when all are zero."""
    total = int(load.sum())
    if total == 0:
        return 0.0
    return float(load.max()) * int(load.shape[0]) / total
