# Round 130 (H200): python3 benchmarks/probes/zeroed_workspace_graph.py with the extension on PYTHONPATH.
# Probe: CUDA-graph replay of the FP8 one-kernel forward at decode with a workspace passed as
# torch.empty (the forward's graph: memset node + kernel) against torch.zeros with
# workspace_zeroed=True (kernel only), and the multi-kernel path, in one process, alternating.
# Each variant: one graph per input set (16 sets of tokens and router logits, so the experts
# differ), every replay timed with its own event pair, the median over all replays.
import os
import statistics

import torch

import flashmoe_science as fm

SETS, REPLAYS, ROUNDS = 16, 160, 3


def graphs(fn_args, make_call):
    out = []
    side = torch.cuda.Stream()
    for args in fn_args:
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            make_call(*args)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            make_call(*args)
        out.append(g)
    torch.cuda.synchronize()
    return out


def time_replays(gs):
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
          for _ in range(REPLAYS)]
    for g in gs:
        g.replay()
    torch.cuda.synchronize()
    for i, (a, b) in enumerate(ev):
        a.record()
        gs[i % len(gs)].replay()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)


def case(name, experts, H, E, k):
    g = torch.Generator(device="cuda").manual_seed(1)
    sets = [(torch.randn(1, H, device="cuda", generator=g).to(torch.bfloat16),
             torch.randn(1, E, device="cuda", generator=g)) for _ in range(SETS)]
    opts = dict(top_k=k, precision="fp8", check_finite=False)
    n = fm.fused_moe_workspace_size(sets[0][0], experts, sets[0][1], **opts)
    outs = [torch.empty(1, H, dtype=torch.bfloat16, device="cuda") for _ in range(SETS)]
    ws_empty = torch.empty(n, dtype=torch.uint8, device="cuda")
    ws_zero = torch.zeros(n, dtype=torch.uint8, device="cuda")

    def call(zeroed, fused):
        def run(x, lg):
            os.environ["FLASHMOE_FUSED"] = fused
            ws = ws_zero if zeroed else ws_empty
            fm.fused_moe(x, experts, lg, out=outs[0], workspace=ws, workspace_zeroed=zeroed, **opts)
        return run

    variants = {
        "one kernel, workspace torch.empty (memset node)": graphs(sets, call(False, "1")),
        "one kernel, torch.zeros + workspace_zeroed=True": graphs(sets, call(True, "1")),
        "multi-kernel, workspace torch.empty": graphs(sets, call(False, "0")),
    }
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
