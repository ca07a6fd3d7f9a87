"""prepare_experts and the FP8 weight cache: what runs without a GPU (errors, the cache rule with
a fake quantizer, the CPU fake-quantization path). The GPU numbers are in test_gpu.py."""

import numpy as np
import pytest

from conftest import ffn_case, linear_case, requires_torch, torch
from flashmoe_science import (
    PreparedExperts,
    clear_prepare_cache,
    fused_moe,
    fused_moe_workspace_size,
    prepare_experts,
)

pytestmark = requires_torch


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def test_cpu_weights_are_refused_with_the_reason(rng):
    _, w, _ = linear_case(rng)
    with pytest.raises(ValueError, match="GPU-only.*fake quantization"):
        prepare_experts(t(w))
    _, (wgu, wd), _ = ffn_case(rng)
    with pytest.raises(ValueError, match="GPU-only.*fake quantization"):
        prepare_experts((t(wgu), t(wd)), scale="block128")
    with pytest.raises(ValueError, match="CUDA torch tensors.*ndarray"):
        prepare_experts(w)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(scale="tensor"), "scale must be one of 'channel', 'block128'; got 'tensor'"),
        (dict(precision="bf16"), "precision must be one of 'fp8'; got 'bf16'"),
        (dict(layout="io"), "layout must be one of 'in_out', 'out_in'; got 'io'"),
    ],
)
def test_bad_options(rng, kwargs, match):
    _, w, _ = linear_case(rng)
    with pytest.raises(ValueError, match=match):
        prepare_experts(t(w), **kwargs)


def test_wrong_shapes(rng):
    _, (wgu, wd), _ = ffn_case(rng, E=4, H=32, I=16)
    with pytest.raises(ValueError, match=r"expert_weights must have shape \[E, H, D\] \(3 dims\)"):
        prepare_experts(t(wgu[0]))
    with pytest.raises(ValueError, match=r"must have 2I=32 gate\+up columns"):
        prepare_experts((t(wgu[:, :, :30]), t(wd)))
    with pytest.raises(ValueError, match="has 3 experts but"):
        prepare_experts((t(wgu), t(wd[:3])))
    with pytest.raises(ValueError, match=r"w_down\) has H=16"):
        prepare_experts((t(wgu), t(wd[:, :, :16])))
    with pytest.raises(ValueError, match="expert_weights must be one tensor"):
        prepare_experts((t(wgu), t(wd), t(wd)))


def fake_prepared(kind="linear", E=4, H=32, N=16, device="cpu"):
    """A PreparedExperts built by hand (only the metadata matters to the checks below)."""
    f8 = torch.float8_e4m3fn
    if kind == "linear":
        return PreparedExperts(
            torch.zeros(E, N, H, dtype=f8, device=device),
            torch.ones(E, N, device=device),
            None,
            None,
            "linear",
            E,
            H,
            N,
            0,
            "channel",
            "in_out",
            "bfloat16",
            (),
        )
    return PreparedExperts(
        torch.zeros(E, 128, H, dtype=f8, device=device),
        torch.ones(E, 2 * N, device=device),
        torch.zeros(E, H, N, dtype=f8, device=device),
        torch.ones(E, H, device=device),
        "gated_ffn",
        E,
        H,
        0,
        N,
        "channel",
        "in_out",
        "bfloat16",
        (),
    )


def test_prepared_experts_with_cpu_tokens_is_an_error(rng):
    tokens, _, logits = linear_case(rng, T=8, H=32, E=4, D=16)
    prepared = fake_prepared()
    with pytest.raises(ValueError, match="PreparedExperts, which is GPU-only, but tokens are on cpu"):
        fused_moe(t(tokens), prepared, t(logits), 2, precision="fp8")
    with pytest.raises(ValueError, match="pass precision='fp8', got precision='auto'"):
        fused_moe(t(tokens), prepared, t(logits), 2)
    assert "kind='linear', E=4, H=32, D=16" in repr(prepared)
    assert "I=16" in repr(fake_prepared("ffn"))


def test_new_keywords_are_checked(rng):
    tokens, w, logits = linear_case(rng, T=8, H=32, E=4, D=16)
    with pytest.raises(ValueError, match="fp8_scale must be one of 'channel', 'block128'"):
        fused_moe(t(tokens), t(w), t(logits), 2, precision="fp8", fp8_scale="row")
    with pytest.raises(TypeError, match="check_finite must be a bool"):
        fused_moe(t(tokens), t(w), t(logits), 2, check_finite=1)
    with pytest.raises(TypeError, match="deterministic must be a bool"):
        fused_moe(t(tokens), t(w), t(logits), 2, deterministic="no")
    with pytest.raises(TypeError, match="workspace_zeroed must be a bool"):
        fused_moe(t(tokens), t(w), t(logits), 2, workspace_zeroed=1)
    with pytest.raises(ValueError, match="workspace_zeroed=True describes the workspace= you pass"):
        fused_moe(t(tokens), t(w), t(logits), 2, workspace_zeroed=True)
    # The CPU reference is deterministic either way.
    assert torch.equal(fused_moe(t(tokens), t(w), t(logits), 2, deterministic=False),
                       fused_moe(t(tokens), t(w), t(logits), 2))
    # All are accepted by the workspace query too (CPU: a problem-only computation).
    fused_moe_workspace_size(
        t(tokens), t(w), t(logits), 2, fp8_scale="block128", check_finite=False,
        deterministic=False,
    )


def test_cpu_fp8_runs_the_reference_without_preparing(rng):
    from flashmoe_science import prepare

    tokens, w, logits = linear_case(rng, T=16, H=32, E=4, D=16)
    before = prepare.quantize_calls
    out, stats = fused_moe(
        t(tokens), t(w), t(logits), 2, precision="fp8", check_finite=False, return_stats=True
    )
    assert stats.kernel_path == "reference-cpu" and out.shape == (16, 16)
    assert prepare.quantize_calls == before
    exact = fused_moe(t(tokens), t(w), t(logits), 2)
    err = float((out.double() - exact.double()).norm() / exact.double().norm())
    assert 0 < err < 0.1  # E4M3 fake quantization changes the result, a little


class FakeQuantizer:
    """Stands in for prepare_experts: counts calls, returns a fresh object per call."""

    def __init__(self):
        self.calls = []

    def __call__(self, expert_weights, precision, scale, layout):
        self.calls.append((scale, layout))
        return object()


@pytest.fixture
def fake_quantizer(monkeypatch):
    from flashmoe_science import prepare

    clear_prepare_cache()
    fake = FakeQuantizer()
    monkeypatch.setattr(prepare, "prepare_experts", fake)
    yield fake
    clear_prepare_cache()


def test_cache_rule(fake_quantizer):
    from flashmoe_science import prepare

    w = torch.randn(4, 32, 16)
    a = prepare.cached_prepare(w, "channel", "in_out")
    assert prepare.cached_prepare(w, "channel", "in_out") is a  # same tensor: a hit
    assert len(fake_quantizer.calls) == 1
    b = prepare.cached_prepare(w, "block128", "in_out")  # the scale kind is part of the key
    c = prepare.cached_prepare(w, "channel", "out_in")  # so is the layout
    assert len({id(a), id(b), id(c)}) == 3 and len(fake_quantizer.calls) == 3
    w.add_(1)  # in place: _version changes -> re-quantize, replacing the entry
    d = prepare.cached_prepare(w, "channel", "in_out")
    assert d is not a and len(fake_quantizer.calls) == 4
    assert prepare.cached_prepare(w, "channel", "in_out") is d
    # An equal but different tensor is a different key.
    w2 = w.clone()
    assert prepare.cached_prepare(w2, "channel", "in_out") is not d
    # Entries go with their tensors (weak references).
    n = len(prepare._cache)
    del w2
    assert len(prepare._cache) == n - 1
    del w
    assert len(prepare._cache) == 0


def test_cache_rule_ffn_pair(fake_quantizer):
    from flashmoe_science import prepare

    wgu, wd = torch.randn(4, 32, 32), torch.randn(4, 16, 32)
    a = prepare.cached_prepare((wgu, wd), "channel", "in_out")
    assert prepare.cached_prepare([wgu, wd], "channel", "in_out") is a
    wd.mul_(2)  # either tensor's change re-quantizes
    assert prepare.cached_prepare((wgu, wd), "channel", "in_out") is not a
    assert len(fake_quantizer.calls) == 2
    del wd  # one of the pair freed: the entry goes
    assert len(prepare._cache) == 0


def test_source_key_parts():
    from flashmoe_science import prepare

    w = torch.randn(2, 16, 8)
    (key,) = prepare.source_key(w)
    assert key[0] == id(w) and key[1] == w.data_ptr() and key[2] == (2, 16, 8)
    assert key[3] == torch.float32 and key[4] == "cpu"
    v = key[5]
    w.add_(1)
    assert prepare.source_key(w)[0][5] != v


# ---------------------------------------------------------------- already-quantized checkpoints
# The checks that fire before anything runs on the GPU (the packing itself: test_gpu.py).


def e4m3(*shape):
    return torch.zeros(*shape, dtype=torch.float8_e4m3fn)


def test_quantized_weights_need_their_scales():
    with pytest.raises(ValueError, match=r"expert_weights is float8_e4m3fn \(already quantized\)"):
        prepare_experts(e4m3(4, 32, 16))
    with pytest.raises(TypeError, match="weight_scales is given, so expert_weights must hold"):
        prepare_experts(torch.zeros(4, 32, 16), weight_scales=torch.ones(4, 16))
    with pytest.raises(TypeError, match=r"w_down\) must hold already-quantized.*got float32"):
        prepare_experts(
            (e4m3(4, 32, 32), torch.zeros(4, 16, 32)),
            weight_scales=(torch.ones(4, 32), torch.ones(4, 32)),
        )
    with pytest.raises(ValueError, match="must be a pair.*got Tensor"):
        prepare_experts((e4m3(4, 32, 32), e4m3(4, 16, 32)), weight_scales=torch.ones(4, 32))
    with pytest.raises(ValueError, match="linear experts take one weight_scales tensor"):
        prepare_experts(e4m3(4, 32, 16), weight_scales=(torch.ones(4, 16),))


@pytest.mark.parametrize(
    "layout, scale, shape, match",
    [
        # linear in_out [E=4, H=256, D=200]: N = 200 channels over K = 256 inputs
        ("in_out", "channel", (4, 256), r"shape \[4, 200\] or \[4, 1, 200\].*got \[4, 256\]"),
        ("in_out", "block128", (4, 2, 2), "GPU-only"),  # the right shape: on to the device check
        ("in_out", "block128", (4, 200), r"shape \[4, 2, 2\] for scale='block128'"),
        ("out_in", "channel", (4, 1, 200), r"shape \[4, 200\] or \[4, 200, 1\]"),
    ],
)
def test_quantized_scale_shapes_are_checked(layout, scale, shape, match):
    w = e4m3(4, 256, 200) if layout == "in_out" else e4m3(4, 200, 256)
    with pytest.raises(ValueError, match=match):
        prepare_experts(w, scale=scale, layout=layout, weight_scales=torch.ones(*shape))


def test_quantized_gate_up_block_scales_explain_the_pair():
    # I = 64: a DeepSeek-style pair of gate and up block scales (1 + 1 blocks) is not the
    # ceil(2I / 128) = 1 block of the concatenated channels.
    wgu, wd = e4m3(2, 128, 64 * 2), e4m3(2, 64, 128)
    with pytest.raises(ValueError, match=r"\[2, 1, 1\].*got \[2, 1, 2\].*torch.cat\(\[gate, up\]\)"):
        prepare_experts(
            (wgu, wd),
            scale="block128",
            weight_scales=(torch.ones(2, 1, 2), torch.ones(2, 1, 1)),
        )
    with pytest.raises(TypeError, match="weight_scales\\[1\\] must be float scales"):
        prepare_experts(
            (wgu, wd),
            scale="block128",
            weight_scales=(torch.ones(2, 1, 1), torch.ones(2, 1, 1, dtype=torch.int32)),
        )
