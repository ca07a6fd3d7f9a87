"""torch inputs on the CPU: same results as NumPy, torch dtypes, the custom op, torch.compile."""

import numpy as np
import pytest

import numpy_moe
from conftest import ffn_case, linear_case, requires_torch, torch
from flashmoe_science import MoeStats, fused_moe

pytestmark = requires_torch


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def test_torch_cpu_matches_numpy(rng):
    tokens, w, logits = linear_case(rng, lead=(2, 16))
    want = fused_moe(tokens, w, logits, top_k=8)
    got = fused_moe(t(tokens), t(w), t(logits), top_k=8)
    assert isinstance(got, torch.Tensor) and got.shape == (2, 16, 48)
    np.testing.assert_array_equal(got.numpy(), want)


def test_torch_ffn_options_match_numpy(rng):
    tokens, (wgu, wd), logits = ffn_case(rng, E=8)
    opts = dict(
        scoring="sigmoid",
        n_group=4,
        topk_group=2,
        routed_scaling_factor=1.5,
        capacity_factor=1.0,
        overflow="reroute",
        activation="gelu",
    )
    bias = rng.standard_normal(8).astype(np.float32) * 0.1
    want, s_np = fused_moe(
        tokens, (wgu, wd), logits, 2, correction_bias=bias, return_stats=True, **opts
    )
    got, s_t = fused_moe(
        t(tokens), (t(wgu), t(wd)), t(logits), 2, correction_bias=t(bias), return_stats=True, **opts
    )
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(s_t.topk_ids.numpy(), s_np.topk_ids)
    np.testing.assert_array_equal(s_t.expert_load.numpy(), s_np.expert_load)
    assert (s_t.dropped, s_t.rerouted) == (s_np.dropped, s_np.rerouted)


@pytest.mark.parametrize(
    "dtype,tol",
    [(torch.bfloat16, 5e-3), (torch.float16, 1e-3), (torch.float64, 1e-12)] if torch else [],
)
def test_torch_token_dtypes(rng, dtype, tol):
    tokens, w, logits = linear_case(rng)
    tt, wt = t(tokens).to(dtype), t(w).to(dtype)
    out = fused_moe(tt, wt, t(logits), 4)
    assert out.dtype == dtype
    want, _ = numpy_moe.fused_moe(tt.double().numpy(), wt.double().numpy(), logits, 4)
    assert numpy_moe.rel_err(out.double().numpy(), want) < tol


def test_torch_bf16_ffn(rng):
    tokens, (wgu, wd), logits = ffn_case(rng)
    bf = torch.bfloat16
    args = (t(tokens).to(bf), (t(wgu).to(bf), t(wd).to(bf)), t(logits).to(bf))
    out = fused_moe(*args, 2)
    want, _ = numpy_moe.fused_moe(
        args[0].double().numpy(),
        tuple(a.double().numpy() for a in args[1]),
        args[2].double().numpy(),
        2,
    )
    assert out.dtype == bf and numpy_moe.rel_err(out.double().numpy(), want) < 5e-3


def test_torch_stats_and_out(rng):
    tokens, w, logits = linear_case(rng)
    out = torch.full((32, 48), float("nan"))
    got, stats = fused_moe(t(tokens), t(w), t(logits), 4, out=out, return_stats=True)
    assert got is out and bool(torch.isfinite(out).all())
    assert isinstance(stats, MoeStats)
    for name in ("topk_ids", "topk_weights", "expert_load"):
        value = getattr(stats, name)
        assert isinstance(value, torch.Tensor) and value.device.type == "cpu"
    assert stats.topk_ids.dtype == torch.int32 and stats.expert_load.sum().item() == 32 * 4
    assert stats.kernel_path == "reference-cpu"
    _, s_np = fused_moe(tokens, w, logits, 4, return_stats=True)
    assert stats.load_max_mean_ratio == pytest.approx(s_np.load_max_mean_ratio)


def test_torch_prerouted_int64_and_expert_map(rng):
    tokens, _, _ = linear_case(rng, E=12)
    w_local = t(rng.standard_normal((4, 64, 48)).astype(np.float32))
    emap = torch.tensor([-1, 0, -1, 1, -1, -1, 2, -1, 3, -1, -1, -1])  # int64
    ids = torch.stack([torch.randperm(12)[:3] for _ in range(32)])  # int64
    weights = torch.rand(32, 3)
    got = fused_moe(t(tokens), w_local, topk_ids=ids, topk_weights=weights, expert_map=emap)
    want, _ = numpy_moe.fused_moe(
        tokens,
        w_local.numpy(),
        top_k=3,
        topk_ids=ids.numpy(),
        topk_weights=weights.numpy(),
        expert_map=emap.numpy(),
    )
    assert numpy_moe.rel_err(got.numpy(), want) < 1e-6


def test_torch_noncontiguous_and_requires_grad(rng):
    tokens, w, logits = linear_case(rng)
    want = fused_moe(tokens, w, logits, 4)
    w_view = t(w.transpose(0, 2, 1)).transpose(1, 2)  # strided view with the same values
    assert not w_view.is_contiguous()
    x = t(tokens).requires_grad_(True)
    with pytest.warns(UserWarning, match="no backward yet"):
        got = fused_moe(x, w_view, t(logits).T.contiguous().T, 4)
    np.testing.assert_array_equal(got.detach().numpy(), want)


def test_torch_zero_tokens(rng):
    _, w, _ = linear_case(rng, E=6, D=8, H=16)
    out, stats = fused_moe(torch.empty(3, 0, 16), t(w), torch.empty(0, 6), 2, return_stats=True)
    assert out.shape == (3, 0, 8) and stats.kernel_path == "none"
    assert stats.expert_load.shape == (6,) and stats.load_max_mean_ratio == 0.0


def test_custom_op_registered_and_opcheck(rng):
    assert hasattr(torch.ops.flashmoe, "fused_moe")
    tokens, w, logits = linear_case(rng, T=8, H=16, E=6, D=8)
    out = torch.empty(8, 8)
    args = (t(tokens), t(w), None, t(logits), None, None, None, None, out, None)
    kwargs = dict(
        num_experts=6,
        top_k=2,
        scoring="softmax",
        renormalize=True,
        temperature=1.0,
        n_group=0,
        topk_group=0,
        routed_scaling_factor=1.0,
        capacity_factor=0.0,
        overflow="drop",
        activation="silu",
        layout="in_out",
        precision="auto",
    )
    for return_stats in (False, True):
        torch.library.opcheck(
            torch.ops.flashmoe.fused_moe.default, args, dict(kwargs, return_stats=return_stats)
        )


class TinyMoE(torch.nn.Module if torch else object):
    """A router plus gated experts calling fused_moe: what a model block swap looks like."""

    def __init__(self, H=32, E=6, I=16, top_k=2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.router = torch.nn.Linear(H, E, bias=False)
        self.w_gate_up = torch.nn.Parameter(torch.randn(E, H, 2 * I, generator=g) * H**-0.5)
        self.w_down = torch.nn.Parameter(torch.randn(E, I, H, generator=g) * I**-0.5)
        self.top_k = top_k

    def forward(self, x):
        logits = self.router(x).reshape(-1, self.w_gate_up.shape[0])
        y = fused_moe(x, (self.w_gate_up, self.w_down), logits, self.top_k)
        return x + y


@pytest.mark.parametrize("fullgraph", [False, True])
def test_torch_compile_matches_eager(fullgraph):
    torch._dynamo.reset()
    model = TinyMoE().eval()
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, fullgraph=fullgraph)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_grad_mode_warns_that_there_is_no_backward(rng):
    tokens, w, logits = linear_case(rng)
    with pytest.warns(UserWarning, match="fused_moe has no backward yet"):
        out = fused_moe(t(tokens), t(w).requires_grad_(True), t(logits), 4)
    assert not out.requires_grad


def test_torch_compile_dynamic_numbers_and_stats(rng):
    """Options that torch.compile(dynamic=True) traces as symbolic numbers pass the checks, and
    return_stats under compile gives device tensors instead of syncing."""
    torch._dynamo.reset()
    tokens, w, logits = linear_case(rng, T=12, H=16, E=6, D=8)

    def f(x, w, g, temperature):
        return fused_moe(x, w, g, 2, temperature=temperature, return_stats=True)

    compiled = torch.compile(f, dynamic=True)
    for temperature in (0.7, 1.3):
        want, want_stats = f(t(tokens), t(w), t(logits), temperature)
        got, stats = compiled(t(tokens), t(w), t(logits), temperature)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        assert torch.equal(stats.topk_ids, want_stats.topk_ids)
        assert int(stats.dropped) == want_stats.dropped == 0
        assert abs(float(stats.load_max_mean_ratio) - want_stats.load_max_mean_ratio) < 1e-6
        assert stats.kernel_path == "reference-cpu"


def test_non_finite_number_options_are_refused(rng):
    tokens, w, logits = linear_case(rng, T=4, H=16, E=6, D=8)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="temperature must be finite"):
            fused_moe(t(tokens), t(w), t(logits), 2, temperature=bad)


def test_eager_calls_skip_the_dispatcher_and_dispatch_modes_still_see_the_op(rng):
    from torch.utils._python_dispatch import TorchDispatchMode

    from flashmoe_science import torch_library

    tokens, w, logits = linear_case(rng)
    args = (t(tokens), t(w), t(logits), 4)
    assert torch_library.eager_call_ok(args[0])
    eager = fused_moe(*args)

    seen = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Log():
        assert not torch_library.eager_call_ok(args[0])
        logged = fused_moe(*args)
    assert any("flashmoe.fused_moe" in name for name in seen)
    assert torch.equal(logged, eager)
