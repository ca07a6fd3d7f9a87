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
                         ("multikernel-sm90", "multikernel-sm80", "multikernel-sm90-fp8",
                         "multikernel-sm80-w8a16", and the one-kernel "fused-sm90-fp8" and
                         "fused-sm90"), or
                         "none" when there were no tokens.

    Eager calls give Python numbers (one host sync, only when stats are asked for). Under
    torch.compile or while a CUDA graph is being captured nothing syncs: dropped and rerouted are
    0-d int64 tensors, load_max_mean_ratio a 0-d float32 tensor (all on the tokens' device, filled
    when the graph runs), and kernel_path is decoded from a device tensor on first access (which
    syncs: read it after the graph ran).
    """

    topk_ids: Any
    topk_weights: Any
    expert_load: Any
    load_max_mean_ratio: Any
    dropped: Any
    rerouted: Any
    path_: Any  # the kernel path's name, or the op's counts tensor (counts[2] = path index)

    @property
    def kernel_path(self) -> str:
        if isinstance(self.path_, str):
            return self.path_
        from .torch_library import path_name

        return path_name(int(self.path_[2]))

    def __repr__(self) -> str:
        path = self.path_ if isinstance(self.path_, str) else "<on device>"
        return (
            f"MoeStats(topk_ids={self.topk_ids!r}, topk_weights={self.topk_weights!r}, "
            f"expert_load={self.expert_load!r}, load_max_mean_ratio={self.load_max_mean_ratio!r}, "
            f"dropped={self.dropped!r}, rerouted={self.rerouted!r}, kernel_path={path!r})"
        )


def load_ratio(load: Any) -> float:
    """max(load) / mean(load) of a host array of per-expert counts; 0.0 when all are zero."""
    total = int(load.sum())
    if total == 0:
        return 0.0
    return float(load.max()) * int(load.shape[0]) / total
