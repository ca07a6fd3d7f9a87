"""Bad input raises a clear Python error naming the argument (never a crash)."""

import numpy as np
import pytest

from conftest import ffn_case, linear_case, requires_torch, torch
from flashmoe_science import fused_moe


@pytest.fixture
def case(rng):
    return linear_case(rng, T=8, H=16, E=6, D=8)


def test_tokens_rank(case):
    tokens, w, logits = case
    with pytest.raises(ValueError, match=r"tokens must have shape \[batch, seq, H\] or \[T, H\]"):
        fused_moe(tokens.ravel(), w, logits, 2)
    with pytest.raises(ValueError, match="tokens"):
        fused_moe(tokens.reshape(2, 2, 2, 16), w, logits, 2)


def test_expert_weights_rank(case):
    tokens, w, logits = case
    with pytest.raises(ValueError, match=r"expert_weights must have shape \[E, H, D\]"):
        fused_moe(tokens, w[0], logits, 2)
    with pytest.raises(ValueError, match="expert_weights must be one array"):
        fused_moe(tokens, (w, w, w), logits, 2)


def test_routing_weights_rank(case):
    tokens, w, logits = case
    with pytest.raises(ValueError, match=r"routing_weights must have shape \[T, E\]"):
        fused_moe(tokens, w, logits.ravel(), 2)


def test_hidden_mismatch(case, rng):
    tokens, w, logits = case
    with pytest.raises(ValueError, match="expert_weights has H=16 .* tokens has H=12"):
        fused_moe(tokens[:, :12], w, logits, 2)
    tokens, (wgu, wd), logits = ffn_case(rng)
    with pytest.raises(ValueError, match=r"expert_weights\[1\] \(w_down\) has H=31"):
        fused_moe(tokens, (wgu, wd[:, :, :31]), logits, 2)


def test_expert_count_mismatch(case, rng):
    tokens, w, logits = case
    with pytest.raises(
        ValueError, match="routing_weights has E=5 columns but expert_weights has 6"
    ):
        fused_moe(tokens, w, logits[:, :5], 2)
    tokens, (wgu, wd), logits = ffn_case(rng)
    with pytest.raises(ValueError, match=r"expert_weights\[1\] \(w_down\) has 5 experts"):
        fused_moe(tokens, (wgu, wd[:5]), logits, 2)


def test_ffn_intermediate_mismatch(rng):
    tokens, (wgu, wd), logits = ffn_case(rng)
    with pytest.raises(ValueError, match=r"w_gate_up\) must have 2I=30"):
        fused_moe(tokens, (wgu, wd[:, :15]), logits, 2)


def test_token_count_mismatch(case):
    tokens, w, logits = case
    with pytest.raises(ValueError, match="routing_weights has 7 rows but tokens has T=8"):
        fused_moe(tokens, w, logits[:7], 2)
    with pytest.raises(ValueError, match="routing_weights has 8 rows but tokens has T=16"):
        fused_moe(np.concatenate([tokens, tokens]).reshape(2, 8, 16), w, logits, 2)


@pytest.mark.parametrize("top_k", [0, -1, 7])
def test_top_k_range(case, top_k):
    tokens, w, logits = case
    with pytest.raises(ValueError, match=rf"top_k must be in 1..E=6, got {top_k}"):
        fused_moe(tokens, w, logits, top_k)


def test_top_k_default_needs_8_experts(case):
    tokens, w, logits = case  # E = 6 < the default top_k of 8
    with pytest.raises(ValueError, match="top_k must be in 1..E=6, got 8"):
        fused_moe(tokens, w, logits)


def test_top_k_type(case):
    tokens, w, logits = case
    with pytest.raises(TypeError, match="top_k must be an int, got float"):
        fused_moe(tokens, w, logits, 2.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores(case, bad):
    tokens, w, logits = case
    logits[3, 2] = bad
    with pytest.raises(ValueError, match="routing_weights"):
        fused_moe(tokens, w, logits, 2)


def test_unsupported_dtypes(case):
    tokens, w, logits = case
    with pytest.raises(TypeError, match="tokens must be a float array .* got dtype int32"):
        fused_moe(tokens.astype(np.int32), w, logits, 2)
    with pytest.raises(TypeError, match="expert_weights must be a float array .* got dtype int64"):
        fused_moe(tokens, w.astype(np.int64), logits, 2)
    with pytest.raises(TypeError, match="routing_weights must be a float array .* complex64"):
        fused_moe(tokens, w, logits.astype(np.complex64), 2)
    with pytest.raises(TypeError, match="tokens must be a NumPy array or a torch tensor, got list"):
        fused_moe(tokens.tolist(), w, logits, 2)


@pytest.mark.parametrize("cf", [0.5, 0.0, -1.0])
def test_capacity_factor_below_one(case, cf):
    tokens, w, logits = case
    with pytest.raises(ValueError, match=rf"capacity_factor must be >= 1 .*got {cf}"):
        fused_moe(tokens, w, logits, 2, capacity_factor=cf)


@pytest.mark.parametrize(
    "option,value,accepted",
    [
        ("scoring", "softmx", "'softmax', 'sigmoid', 'none'"),
        ("overflow", "spill", "'drop', 'reroute'"),
        ("activation", "relu", "'silu', 'gelu'"),
        ("layout", "oi", "'in_out', 'out_in'"),
        ("precision", "fp16", "'auto', 'bf16', 'fp8'"),
    ],
)
def test_unknown_option_strings(rng, option, value, accepted):
    tokens, ws, logits = ffn_case(rng)
    with pytest.raises(ValueError, match=f"{option} must be one of {accepted}; got '{value}'"):
        fused_moe(tokens, ws, logits, 2, **{option: value})


def test_activation_with_linear_experts(case):
    tokens, w, logits = case
    with pytest.raises(ValueError, match="activation='gelu' applies to gated-FFN experts only"):
        fused_moe(tokens, w, logits, 2, activation="gelu")


def test_temperature(case):
    tokens, w, logits = case
    with pytest.raises(ValueError, match="temperature must be > 0"):
        fused_moe(tokens, w, logits, 2, temperature=0.0)
    with pytest.raises(ValueError, match="temperature must be 1.0 with scoring='none'"):
        fused_moe(tokens, w, logits, 2, scoring="none", temperature=2.0)


@pytest.mark.parametrize("given", ["n_group", "topk_group"])
def test_group_options_alone(case, given):
    tokens, w, logits = case
    with pytest.raises(ValueError, match=f"{given} was given without"):
        fused_moe(tokens, w, logits, 2, **{given: 2})


def test_group_options_values(case):
    tokens, w, logits = case
    with pytest.raises(ValueError, match="n_group must be >= 1 and divide E=6, got 4"):
        fused_moe(tokens, w, logits, 2, n_group=4, topk_group=1)
    with pytest.raises(ValueError, match="topk_group must be in 1..n_group=3, got 4"):
        fused_moe(tokens, w, logits, 2, n_group=3, topk_group=4)
    with pytest.raises(ValueError, match="top_k=3 exceeds the 2 experts"):
        fused_moe(tokens, w, logits, 3, n_group=3, topk_group=1)


def test_correction_bias_shape(case):
    tokens, w, logits = case
    with pytest.raises(ValueError, match=r"correction_bias must have shape \[E\]=\[6\]"):
        fused_moe(tokens, w, logits, 2, correction_bias=np.zeros(5, np.float32))


def test_prerouted_errors(case):
    tokens, w, logits = case
    ids = np.zeros((8, 2), np.int32)
    tw = np.ones((8, 2), np.float32)
    with pytest.raises(ValueError, match="topk_ids was given without topk_weights"):
        fused_moe(tokens, w, topk_ids=ids)
    with pytest.raises(ValueError, match="give either routing_weights"):
        fused_moe(tokens, w, logits, topk_ids=ids, topk_weights=tw)
    with pytest.raises(ValueError, match=r"top_k=3 does not match topk_ids.shape\[1\]=2"):
        fused_moe(tokens, w, top_k=3, topk_ids=ids, topk_weights=tw)
    with pytest.raises(ValueError, match="topk_ids has 7 rows but tokens has T=8"):
        fused_moe(tokens, w, topk_ids=ids[:7], topk_weights=tw[:7])
    with pytest.raises(ValueError, match="topk_weights must have the shape of topk_ids"):
        fused_moe(tokens, w, topk_ids=ids, topk_weights=tw[:, :1])
    with pytest.raises(ValueError, match="overflow='reroute' .* pre-routed"):
        fused_moe(tokens, w, topk_ids=ids, topk_weights=tw, capacity_factor=1.0, overflow="reroute")
    with pytest.raises(ValueError, match="correction_bias applies when routing"):
        fused_moe(tokens, w, topk_ids=ids, topk_weights=tw, correction_bias=np.zeros(6))
    with pytest.raises(ValueError, match="routing_weights is required"):
        fused_moe(tokens, w)
    bad = ids.copy()
    bad[4, 1] = 6
    with pytest.raises(ValueError, match=r"topk_ids values must be in -1..5, got values in 0..6"):
        fused_moe(tokens, w, topk_ids=bad, topk_weights=tw)
    bad[4, 1] = -2
    with pytest.raises(ValueError, match="topk_ids values must be in -1..5"):
        fused_moe(tokens, w, topk_ids=bad, topk_weights=tw)
    with pytest.raises(TypeError, match="topk_ids must be an integer array"):
        fused_moe(tokens, w, topk_ids=ids.astype(np.float32), topk_weights=tw)


def test_expert_map_errors(case):
    tokens, w, logits = case
    with pytest.raises(ValueError, match="expert_map must have one entry per routed expert"):
        fused_moe(tokens, w, logits, 2, expert_map=np.arange(5))
    with pytest.raises(ValueError, match=r"expert_map values must be in -1..5, got values in 0..6"):
        fused_moe(tokens, w, logits, 2, expert_map=np.array([0, 1, 2, 3, 4, 6]))
    with pytest.raises(TypeError, match="expert_map must be an integer array"):
        fused_moe(tokens, w, logits, 2, expert_map=np.arange(6, dtype=np.float32))


def test_out_errors(case):
    tokens, w, logits = case
    with pytest.raises(ValueError, match=r"out must have shape \[8, 8\], got \[8, 9\]"):
        fused_moe(tokens, w, logits, 2, out=np.empty((8, 9), np.float32))
    with pytest.raises(TypeError, match="out must have the tokens' dtype float32, got float64"):
        fused_moe(tokens, w, logits, 2, out=np.empty((8, 8), np.float64))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        fused_moe(tokens, w, logits, 2, out=np.empty((8, 8), np.float32, order="F"))
    ro = np.empty((8, 8), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        fused_moe(tokens, w, logits, 2, out=ro)


def test_workspace_on_cpu(case):
    tokens, w, logits = case
    with pytest.raises(ValueError, match="workspace is only used with CUDA inputs"):
        fused_moe(tokens, w, logits, 2, workspace=np.empty(16, np.uint8))


@requires_torch
def test_mixed_numpy_and_torch(case):
    tokens, w, logits = case
    with pytest.raises(
        TypeError,
        match="mixed NumPy and torch inputs: tokens is a torch tensor "
        "but expert_weights, routing_weights are NumPy arrays",
    ):
        fused_moe(torch.from_numpy(tokens), w, logits, 2)


@requires_torch
def test_mixed_devices(case):
    tokens, w, logits = case
    meta_logits = torch.empty(logits.shape, device="meta")
    with pytest.raises(
        ValueError,
        match="all arrays must be on one device: tokens, expert_weights "
        "on cpu; routing_weights on meta",
    ):
        fused_moe(torch.from_numpy(tokens), torch.from_numpy(w), meta_logits, 2)


@requires_torch
def test_torch_non_finite_scores(case):
    tokens, w, logits = case
    logits[0, 0] = np.nan
    with pytest.raises(ValueError, match="routing_weights"):
        fused_moe(torch.from_numpy(tokens), torch.from_numpy(w), torch.from_numpy(logits), 2)
