"""The seed's call, verbatim, on CPU arrays, against the independent NumPy float64 model."""

import numpy as np

import numpy_moe
from conftest import linear_case
from flashmoe_science import fused_moe


def test_seed_call_matches_float64_model(rng):
    tokens, expert_weights, routing_weights = linear_case(rng, H=64, E=12, D=48, lead=(2, 16))
    assert tokens.shape == (2, 16, 64)
    assert expert_weights.shape == (12, 64, 48)
    assert routing_weights.shape == (32, 12)

    output = fused_moe(tokens, expert_weights, routing_weights, top_k=8)

    assert output.shape == (2, 16, 48)
    assert output.dtype == np.float32
    want, _ = numpy_moe.fused_moe(tokens, expert_weights, routing_weights, top_k=8)
    assert numpy_moe.rel_err(output, want) < 1e-6


def test_seed_call_default_top_k_is_8(rng):
    tokens, w, logits = linear_case(rng, lead=(2, 16))
    np.testing.assert_array_equal(fused_moe(tokens, w, logits), fused_moe(tokens, w, logits, 8))


def test_seed_call_is_deterministic(rng):
    tokens, w, logits = linear_case(rng, lead=(2, 16))
    a = fused_moe(tokens, w, logits, top_k=8)
    b = fused_moe(tokens, w, logits, top_k=8)
    np.testing.assert_array_equal(a, b)
