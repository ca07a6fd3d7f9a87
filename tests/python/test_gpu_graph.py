"""The GPU path inside CUDA graphs and torch.compile, and the FusedMoE module on CUDA.

(a) fused_moe captured in a torch.cuda.CUDAGraph (static inputs, out=, a workspace of
    fused_moe_workspace_size bytes) and replayed on fresh inputs equals eager calls bitwise; the
    captured call neither synchronizes with the host (sync debug mode "error"; the capture itself
    fails on a sync) nor allocates.
(b) torch.compile(fullgraph=True) of a LayerNorm -> FusedMoE -> residual block in bf16 equals
    eager bitwise.
(c) FusedMoE on CUDA (bf16) against its float32 CPU copy (the C++ reference).
(d) The one-kernel FP8 forward (fused-sm90-fp8: linear experts, prepared weights, sm_90) in a
    CUDA graph replayed on fresh inputs, and under torch.compile(fullgraph=True), bitwise equal
    to eager calls.
Small shapes (E=16, H=256, I=128, T=64), so the file runs in seconds.
"""

import copy

import pytest

import numpy_moe
from conftest import torch
from flashmoe_science import FusedMoE, fused_moe, fused_moe_workspace_size, prepare_experts

pytestmark = pytest.mark.skipif(
    torch is None or not torch.cuda.is_available(), reason="no CUDA GPU: GPU tests not run"
)

E, H, I, T, TOP_K = 16, 256, 128, 64, 4
BF16 = torch.bfloat16 if torch else None

# Routing options of the graph and module tests; "deepseek" exercises every routing kernel
# (sigmoid, correction bias, grouped top-k, scaling, capacity with reroute).
ROUTINGS = {
    "softmax": {},
    "deepseek": dict(
        scoring="sigmoid",
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        capacity_factor=1.25,
        overflow="reroute",
    ),
}


def randn(g, *shape, scale=1.0, dtype=BF16):
    return (torch.randn(*shape, generator=g) * scale).to(dtype).cuda()


def capture(step):
    """step() warmed up off the default stream (as torch.cuda.graph expects), then captured in
    global mode (a host sync invalidates the capture) with torch's sync debug mode "error" (its
    own syncs, .item() and the like, raise). Returns (graph, bytes allocated inside the capture),
    counted from inside it: torch.cuda.graph's capture_begin itself allocates (two 8-byte
    tensors, 1 KB of blocks, traced with torch's memory history on an H100), and that is not the
    op's."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        allocated = torch.cuda.memory_stats()["allocated_bytes.all.allocated"]
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        allocated_in_capture = torch.cuda.memory_stats()["allocated_bytes.all.allocated"] - allocated
    return graph, allocated_in_capture


@pytest.mark.parametrize("routing", ["softmax", "deepseek"])
def test_gpu_cuda_graph_replay_matches_eager(routing):
    g = torch.Generator().manual_seed(100 + len(routing))
    weights = (randn(g, E, H, 2 * I, scale=H**-0.5), randn(g, E, I, H, scale=I**-0.5))
    opts = dict(ROUTINGS[routing])
    if routing == "deepseek":
        opts["correction_bias"] = randn(g, E, scale=0.1, dtype=torch.float32)
    static_x, static_logits = randn(g, T, H), randn(g, T, E, dtype=torch.float32)
    static_out = torch.empty(T, H, dtype=BF16, device="cuda")
    n = fused_moe_workspace_size(static_x, weights, static_logits, TOP_K, **opts)
    workspace = torch.empty(max(n, 1), dtype=torch.uint8, device="cuda")

    def step():
        fused_moe(
            static_x, weights, static_logits, TOP_K, out=static_out, workspace=workspace, **opts
        )

    capture(step)  # a first capture, so that one-time work of a capture is not counted below
    graph, allocated_in_capture = capture(step)

    for i in range(3):
        x, logits = randn(g, T, H), randn(g, T, E, dtype=torch.float32)
        static_x.copy_(x)
        static_logits.copy_(logits)
        static_out.fill_(float("nan"))
        graph.replay()
        want = fused_moe(x, weights, logits, TOP_K, **opts)  # its own output and workspace
        torch.cuda.synchronize()
        assert bool(torch.isfinite(static_out).all()), f"replay {i}: NaN left in out"
        assert torch.equal(static_out, want), f"replay {i} differs from the eager call"
    assert allocated_in_capture == 0, (
        f"fused_moe allocated {allocated_in_capture} bytes inside the captured region although "
        "out= and a workspace were given"
    )


def make_moe(routing, seed):
    """A FusedMoE (gated, E=16, H=256, I=128) on CUDA in bf16, initialized on the CPU."""
    torch.manual_seed(seed)
    use_bias = routing == "deepseek"
    moe = FusedMoE(H, E, TOP_K, I, use_correction_bias=use_bias, **ROUTINGS[routing])
    if use_bias:
        with torch.no_grad():
            moe.e_score_correction_bias.normal_(0.0, 0.1)
    return moe.to("cuda", BF16)


class Block(torch.nn.Module if torch else object):
    """A pre-norm MoE sub-layer: x + FusedMoE(LayerNorm(x))."""

    def __init__(self, moe):
        super().__init__()
        self.norm = torch.nn.LayerNorm(H, device="cuda", dtype=BF16)
        with torch.no_grad():
            self.norm.weight.normal_(1.0, 0.1)
            self.norm.bias.normal_(0.0, 0.1)
        self.moe = moe

    def forward(self, x):
        return x + self.moe(self.norm(x))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_gpu_compile_block_fullgraph(backend):
    """The block compiled with fullgraph=True. It also returns the normed tokens h, so the MoE
    and residual are checked bitwise on the tokens the compiled graph actually fed them: inductor
    computes LayerNorm with its own kernel (its reduction order may move a bf16 result by one
    ulp) and, unless emulate_precision_casts is set, may fuse the bf16 -> float32 round trip
    away and feed the float32 router the unrounded norm output (seen with CPU inductor)."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    block = Block(make_moe("softmax", seed=30)).eval()
    x = randn(torch.Generator().manual_seed(31), 2, T // 2, H)

    def step(x):
        h = block.norm(x)
        return h, x + block.moe(h)

    with torch.no_grad(), inductor_config.patch(emulate_precision_casts=True):
        h, got = torch.compile(step, fullgraph=True, backend=backend)(x)
        want = x + block.moe(h)
        eager = block(x)
    torch.cuda.synchronize()
    assert got.dtype == BF16 and bool(torch.isfinite(got).all())
    assert torch.equal(got, want), f"{backend}: compiled MoE + residual differ from eager"
    if backend == "aot_eager":  # ATen's LayerNorm: the whole block is eager's, bit for bit
        assert torch.equal(got, eager)
    else:
        torch.testing.assert_close(h, block.norm(x))  # bf16 tolerance (rtol 1.6e-2)


@pytest.mark.parametrize("routing", list(ROUTINGS))
def test_gpu_module_matches_cpu_reference(routing):
    moe = make_moe(routing, seed=40 + len(routing))
    cpu = copy.deepcopy(moe).to("cpu", torch.float32)  # the same (bf16-rounded) values
    x = randn(torch.Generator().manual_seed(41), T, H)
    with torch.no_grad():
        got = moe(x)
        want = cpu(x.cpu().float())
    torch.cuda.synchronize()
    assert got.shape == (T, H) and got.dtype == BF16 and got.is_cuda
    assert bool(torch.isfinite(got).all())
    err = numpy_moe.rel_err(got.double().cpu().numpy(), want.double().numpy())
    assert err < 1e-2, f"relative Frobenius error {err:.3e} >= 1e-2"


def is_sm90():
    return torch is not None and torch.cuda.is_available() and (
        torch.cuda.get_device_capability() == (9, 0)
    )


needs_sm90 = pytest.mark.skipif(not is_sm90(), reason="needs an sm_90 GPU: FP8 test not run")


def fp8_linear_case(seed):
    g = torch.Generator().manual_seed(seed)
    prepared = prepare_experts(randn(g, E, H, H, scale=H**-0.5), precision="fp8")
    return g, prepared


@needs_sm90
@pytest.mark.parametrize("routing", ["softmax", "deepseek"])
def test_gpu_fp8_fused_kernel_cuda_graph_replay_matches_eager(routing):
    g, prepared = fp8_linear_case(200)
    static_x, static_logits = randn(g, T, H), randn(g, T, E, dtype=torch.float32)
    static_out = torch.empty(T, H, dtype=BF16, device="cuda")
    opts = dict(ROUTINGS[routing], precision="fp8")  # deepseek: capacity with reroute
    if routing == "deepseek":
        opts["correction_bias"] = randn(g, E, scale=0.1, dtype=torch.float32)
    n = fused_moe_workspace_size(static_x, prepared, static_logits, TOP_K, **opts)
    workspace = torch.empty(max(n, 1), dtype=torch.uint8, device="cuda")

    def step():
        fused_moe(static_x, prepared, static_logits, TOP_K, out=static_out, workspace=workspace,
                  **opts)

    graph, allocated_in_capture = capture(step)
    for i in range(3):
        x, logits = randn(g, T, H), randn(g, T, E, dtype=torch.float32)
        static_x.copy_(x)
        static_logits.copy_(logits)
        static_out.fill_(float("nan"))
        graph.replay()
        want, stats = fused_moe(x, prepared, logits, TOP_K, return_stats=True, **opts)
        torch.cuda.synchronize()
        assert stats.kernel_path == "fused-sm90-fp8"
        if routing == "deepseek":
            assert int(stats.dropped) + int(stats.rerouted) > 0, "capacity never acted"
        assert bool(torch.isfinite(static_out).all()), f"replay {i}: NaN left in out"
        assert torch.equal(static_out, want), f"replay {i} differs from the eager call"
    assert allocated_in_capture == 0


@needs_sm90
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_gpu_fp8_fused_kernel_compile_fullgraph(backend):
    torch._dynamo.reset()
    g, prepared = fp8_linear_case(210)
    x, logits = randn(g, T, H), randn(g, T, E, dtype=torch.float32)

    def step(x, logits):
        return x + fused_moe(x, prepared, logits, TOP_K, precision="fp8")

    with torch.no_grad():
        got = torch.compile(step, fullgraph=True, backend=backend)(x, logits)
        want = step(x, logits)
    torch.cuda.synchronize()
    assert got.dtype == BF16 and bool(torch.isfinite(got).all())
    assert torch.equal(got, want), f"{backend}: compiled one-kernel FP8 call differs from eager"


def device_ops(fn):
    """(kernel names, memset count) of one call of fn(), from torch.profiler's device events."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()
             if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    return [n for n in names if not n.startswith(("Memset", "Memcpy"))], sum(
        n.startswith("Memset") for n in names)


@needs_sm90
def test_gpu_zeroed_workspace_serves_every_call_without_memset():
    """workspace_zeroed=True: one torch.zeros workspace, sized for the largest call, serves calls
    of different shapes, precisions and routings (solo and general dispatch, capacity, bf16 FFN),
    twice over, each equal to the same call on its own workspace; the one-kernel forward then
    launches one kernel and no memset (without the promise: one memset too), and a graph captured
    with it replays bitwise."""
    g, prepared = fp8_linear_case(300)
    w_ffn = (randn(g, E, H, 2 * I, scale=H**-0.5), randn(g, E, I, H, scale=I**-0.5))
    bias = randn(g, E, scale=0.1, dtype=torch.float32)
    calls = []  # (expert weights, T, options)
    for tokens in (1, T):
        calls.append((prepared, tokens, dict(precision="fp8")))
        calls.append((prepared, tokens, dict(ROUTINGS["deepseek"], precision="fp8",
                                             correction_bias=bias)))
        calls.append((w_ffn, tokens, {}))
    inputs = [(randn(g, t, H), randn(g, t, E, dtype=torch.float32)) for _, t, _ in calls]
    size = max(fused_moe_workspace_size(x, w, lg, TOP_K, **o)
               for (w, _, o), (x, lg) in zip(calls, inputs))
    workspace = torch.zeros(size, dtype=torch.uint8, device="cuda")
    for _ in range(2):
        for (w, _, o), (x, lg) in zip(calls, inputs):
            got = fused_moe(x, w, lg, TOP_K, workspace=workspace, workspace_zeroed=True, **o)
            want = fused_moe(x, w, lg, TOP_K, **o)
            assert torch.equal(got, want), f"{o} T={x.shape[0]}: differs on the shared workspace"
    x, lg = inputs[0]
    # check_finite=False: the finiteness check of the scores is torch's kernels and a sync
    fp8 = dict(precision="fp8", check_finite=False, workspace=workspace)
    kernels, memsets = device_ops(
        lambda: fused_moe(x, prepared, lg, TOP_K, workspace_zeroed=True, **fp8))
    assert memsets == 0 and len(kernels) == 1 and "fused_sm90_fp8_kernel" in kernels[0], kernels
    kernels, memsets = device_ops(lambda: fused_moe(x, prepared, lg, TOP_K, **fp8))
    assert memsets == 1 and len(kernels) == 1, (kernels, memsets)

    static_out = torch.empty(1, H, dtype=BF16, device="cuda")
    static_x, static_lg = x.clone(), lg.clone()

    def step():
        fused_moe(static_x, prepared, static_lg, TOP_K, precision="fp8", out=static_out,
                  workspace=workspace, workspace_zeroed=True)

    graph, allocated_in_capture = capture(step)
    for i in range(3):
        x, lg = randn(g, 1, H), randn(g, 1, E, dtype=torch.float32)
        static_x.copy_(x)
        static_lg.copy_(lg)
        static_out.fill_(float("nan"))
        graph.replay()
        want = fused_moe(x, prepared, lg, TOP_K, precision="fp8")
        torch.cuda.synchronize()
        assert torch.equal(static_out, want), f"replay {i} differs from the eager call"
    assert allocated_in_capture == 0

