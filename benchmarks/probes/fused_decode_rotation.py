# Round 32 (H100): python3 benchmarks/probes/fused_decode_rotation.py with the extension on PYTHONPATH.
# Probe 2: decode-16 with rotated inputs (400 sets, as the harness), fused vs multi-kernel,
# per-call events; then the same with one input set.
import os, time, torch
import flashmoe_science as fm
torch.manual_seed(0)
E, H, D, k, T = 256, 4096, 4096, 8, 16
w = (torch.randn(E, H, D, device="cuda") * H**-0.5).to(torch.bfloat16)
prep = fm.prepare_experts(w, precision="fp8", scale="channel")
del w
S = 400
X = torch.randn(S * T, H, device="cuda").to(torch.bfloat16)
L = torch.randn(S * T, E, device="cuda")
sets = [(X[i*T:(i+1)*T], L[i*T:(i+1)*T]) for i in range(S)]
for rot in (True, False):
    for fused in ("1", "0", "1"):
        os.environ["FLASHMOE_FUSED"] = fused
        fn = lambda a: fm.fused_moe(a[0], prep, a[1], top_k=k, precision="fp8", check_finite=False)
        for i in range(5): fn(sets[i])
        torch.cuda.synchronize()
        n = 60
        ev = []
        for i in range(n):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); fn(sets[i % S] if rot else sets[0]); b.record(); ev.append((a, b))
        torch.cuda.synchronize()
        per = sorted(a.elapsed_time(b) for a, b in ev)
        print(f"rotate={rot} FUSED={fused}: per-call median {per[n//2]:.3f} ms (min {per[0]:.3f}, p90 {per[int(n*0.9)]:.3f}, max {per[-1]:.3f})", flush=True)
