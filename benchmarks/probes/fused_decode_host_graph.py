# Round 31 (H100): python3 benchmarks/probes/fused_decode_host_graph.py with the extension on PYTHONPATH.
# Probe: host time per call, back-to-back device time, per-call event time, graph replay time,
# for the fused and the multi-kernel FP8 paths at decode.
import os, time, torch
import flashmoe_science as fm
torch.manual_seed(0)
E, H, D, k = 256, 4096, 4096, 8
w = (torch.randn(E, H, D, device="cuda") * H**-0.5).to(torch.bfloat16)
prep = fm.prepare_experts(w, precision="fp8", scale="channel")
del w
for T in (1, 16, 128):
    x = torch.randn(T, H, device="cuda").to(torch.bfloat16)
    lg = torch.randn(T, E, device="cuda")
    for fused in ("1", "0"):
        os.environ["FLASHMOE_FUSED"] = fused
        fn = lambda: fm.fused_moe(x, prep, lg, top_k=k, precision="fp8", check_finite=False)
        for _ in range(5): fn()
        torch.cuda.synchronize()
        n = 40
        t0 = time.perf_counter()
        for _ in range(n): fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        host_ms = (t1 - t0) * 1e3 / n
        wall_ms = (t2 - t0) * 1e3 / n
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(n): fn()
        e1.record(); torch.cuda.synchronize()
        b2b = e0.elapsed_time(e1) / n
        ev = []
        for _ in range(n):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); fn(); b.record(); ev.append((a, b))
        torch.cuda.synchronize()
        per = sorted(a.elapsed_time(b) for a, b in ev)
        out = torch.empty(T, D, dtype=torch.bfloat16, device="cuda")
        nws = fm.fused_moe_workspace_size(x, prep, lg, k, precision="fp8")
        ws = torch.empty(max(nws, 1), dtype=torch.uint8, device="cuda")
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fm.fused_moe(x, prep, lg, top_k=k, precision="fp8", check_finite=False, out=out, workspace=ws)
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            fm.fused_moe(x, prep, lg, top_k=k, precision="fp8", check_finite=False, out=out, workspace=ws)
        g.replay(); torch.cuda.synchronize()
        e0.record()
        for _ in range(n): g.replay()
        e1.record(); torch.cuda.synchronize()
        gr = e0.elapsed_time(e1) / n
        _, st = fm.fused_moe(x, prep, lg, top_k=k, precision="fp8", check_finite=False, return_stats=True)
        print(f"T={T:4d} FUSED={fused} path={st.kernel_path:22s} host/call {host_ms:.3f} ms, wall/call {wall_ms:.3f}, "
              f"back-to-back {b2b:.3f}, per-call events median {per[n//2]:.3f} (min {per[0]:.3f} max {per[-1]:.3f}), graph replay {gr:.3f}", flush=True)
