# Rounds 128b (H200) and 130 (H100): python3 benchmarks/probes/zeroed_workspace_graph.py from the
# repository root, with the extension and the root on PYTHONPATH.
# Probe: CUDA-graph replay of the FP8 one-kernel forward at decode with a workspace passed as
# torch.empty (the forward's graph: memset node + kernel) against torch.zeros with
# workspace_zeroed=True (kernel only), and the multi-kernel path, in one process, alternating.
# Each variant: one graph per input set (16 sets of tokens and router logits, so the experts
# differ), every replay timed with its own event pair, the median over all replays.
import os
import statistics

import torch

import flashmoe_science as fm
from benchmarks import timing

SETS, REPLAYS, ROUNDS = 16, 160, 3


def time_replays(gs):
    """Median ms of REPLAYS graph replays (round-robin over gs, one event pair each), after one
    untimed replay of every graph."""
    for g in gs:
        g.replay()
    torch.cuda.synchronize()
    return statistics.median(timing.time_calls(lambda g: g.replay(), [(g,) for g in gs], REPLAYS))


def case(name, experts, H, E, k):
    g = torch.Generator(device="cuda").manual_seed(1)
    sets = [(torch.randn(1, H, device="cuda", generator=g).to(torch.bfloat16),
             torch.randn(1, E, device="cuda", generator=g)) for _ in range(SETS)]
    opts = dict(top_k=k, precision="fp8", check_finite=False)
    n = fm.fused_moe_workspace_size(sets[0][0], experts, sets[0][1], **opts)
    out = torch.empty(1, H, dtype=torch.bfloat16, device="cuda")
    ws_empty = torch.empty(n, dtype=torch.uint8, device="cuda")
    ws_zero = torch.zeros(n, dtype=torch.uint8, device="cuda")

    def call(zeroed, fused):
        def run(x, lg):
            os.environ["FLASHMOE_FUSED"] = fused
            ws = ws_zero if zeroed else ws_empty
            fm.fused_moe(x, experts, lg, out=out, workspace=ws, workspace_zeroed=zeroed, **opts)
        return run

    variants = {
        "one kernel, workspace torch.empty (memset node)": call(False, "1"),
        "one kernel, torch.zeros + workspace_zeroed=True": call(True, "1"),
        "multi-kernel, workspace torch.empty": call(False, "0"),
    }
    variants = {v: timing.capture_graphs(fn, sets) for v, fn in variants.items()}
    os.environ.pop("FLASHMOE_FUSED", None)
    res = {v: [] for v in variants}
    for _ in range(ROUNDS):
        for v, gs in variants.items():
            res[v].append(time_replays(gs))
    for v, ms in res.items():
        print(f"{name:10s} {v:50s} median ms per replay: " + " / ".join(f"{m:.4f}" for m in ms),
              flush=True)


print(torch.cuda.get_device_name(), flush=True)
torch.manual_seed(0)
w = (torch.randn(256, 4096, 4096, device="cuda") * 4096**-0.5).to(torch.bfloat16)
case("decode-1", fm.prepare_experts(w, precision="fp8", scale="channel"), 4096, 256, 8)
del w
wgu = (torch.randn(256, 7168, 512, device="cuda") * 7168**-0.5).to(torch.bfloat16)
wd = (torch.randn(256, 256, 7168, device="cuda") * 256**-0.5).to(torch.bfloat16)
case("dsv3-tp8", fm.prepare_experts((wgu, wd), precision="fp8", scale="block128"), 7168, 256, 8)
