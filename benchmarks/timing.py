"""CUDA-event timing and kernel counting (METHOD.md "Time properly").

Every timed call gets its own pair of CUDA events, so each rep's device time is one sample; calls
rotate through input sets whose total exceeds the L2 size (configs.rotation_count), after a
warm-up that also absorbs module loading, handle creation and torch.compile's compilation.
"""

from __future__ import annotations

import time

import torch

# Repetitions: at least MIN, at most MAX, else as many as fit in BUDGET_S seconds of calls.
REPS = {"quick": dict(warmup=3, min=5, max=20, budget_s=2.0),
        "full": dict(warmup=10, min=50, max=200, budget_s=10.0)}


def l2_cache_bytes(device=None) -> int:
    """L2 size of the current CUDA device, from its properties."""
    return int(torch.cuda.get_device_properties(device).L2_cache_size)


def warm_up(fn, arg_sets, calls: int) -> float:
    """Runs `calls` untimed calls; returns the mean wall time of one call in ms (synchronized),
    used to choose the number of reps."""
    fn(*arg_sets[0])  # the first call may compile or load modules: keep it out of the estimate
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(calls):
        fn(*arg_sets[(i + 1) % len(arg_sets)])
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / max(calls, 1)


def choose_reps(est_ms: float, mode: str, override: int | None = None) -> int:
    """Reps for a call of about est_ms: as many as fit the budget, clamped to [min, max]."""
    if override:
        return override
    p = REPS[mode]
    fit = int(p["budget_s"] * 1e3 / max(est_ms, 1e-3))
    return max(p["min"], min(p["max"], fit))


def time_calls(fn, arg_sets, reps: int) -> list:
    """Device time in ms of each of `reps` calls fn(*arg_sets[i % n]), one event pair per call."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    torch.cuda.synchronize()
    for i in range(reps):
        args = arg_sets[i % len(arg_sets)]
        starts[i].record()
        fn(*args)
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def bench(fn, arg_sets, mode: str, reps: int | None = None) -> list:
    """Warm-up, then every raw sample (ms) of the timed reps."""
    est_ms = warm_up(fn, arg_sets, REPS[mode]["warmup"])
    return time_calls(fn, arg_sets, choose_reps(est_ms, mode, reps))


# Graph mode: input sets captured (one CUDA graph each). Decode input sets are tiny, so the
# rotation over L2 would ask for thousands; every call's weight stream exceeds the L2 anyway.
GRAPH_SETS = 16


def capture_graphs(fn, arg_sets) -> list:
    """One CUDA graph per input set (at most GRAPH_SETS), each holding one call fn(*args),
    captured after eager warm-up calls on a side stream (as torch.cuda.graph asks)."""
    arg_sets = arg_sets[:GRAPH_SETS]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for args in arg_sets[:3]:
            fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graphs = []
    for args in arg_sets:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn(*args)
        graphs.append(g)
    torch.cuda.synchronize()
    return graphs


def bench_graph(fn, arg_sets, mode: str, reps: int | None = None) -> list:
    """bench() of CUDA-graph replays: every raw sample (ms) is one replay of one call."""
    graphs = capture_graphs(fn, arg_sets)
    return bench(lambda g: g.replay(), [(g,) for g in graphs], mode, reps)


def count_kernels(fn):
    """CUDA kernels one call of fn() launches, counted with torch.profiler (kernel events on the
    device; memcpy/memset and user-annotation ranges are not kernels). None when the profiler
    saw no kernel at all: every forward launches one, so the profiler missed them."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    count = 0
    for evt in prof.events():
        if evt.device_type != DeviceType.CUDA or getattr(evt, "is_user_annotation", False):
            continue
        if evt.name.startswith(("Memcpy", "Memset")):
            continue
        count += 1
    return count or None
