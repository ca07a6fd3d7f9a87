"""Every routing option changes the result as include/flashmoe/routing.h says (CPU reference vs
the independent NumPy model, plus crafted cases whose outcome is worked out by hand)."""

import numpy as np
import pytest

import numpy_moe
from conftest import ffn_case, linear_case, randn
from flashmoe_science import fused_moe

TOL = 1e-6  # float32 output of a float64 computation


def check(tokens, weights, logits, top_k, **options):
    """Runs the op (with stats) and the NumPy model, checks they agree; (out, stats, model)."""
    out, stats = fused_moe(tokens, weights, logits, top_k, return_stats=True, **options)
    model_opts = dict(options)
    cap = model_opts.pop("capacity_factor", None)
    model_opts["capacity_factor"] = 0.0 if cap is None else cap
    for key in ("n_group", "topk_group"):
        if model_opts.get(key) is None:
            model_opts[key] = 0
    want, r = numpy_moe.fused_moe(tokens, weights, logits, top_k, **model_opts)
    assert numpy_moe.rel_err(out, want) < TOL
    np.testing.assert_array_equal(stats.topk_ids, r.ids)
    np.testing.assert_allclose(stats.topk_weights, r.weights, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(stats.expert_load, r.load)
    assert (stats.dropped, stats.rerouted) == (r.dropped, r.rerouted)
    return out, stats, r


def differs(a, b, at_least=1e-3):
    return numpy_moe.rel_err(a, b) > at_least


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid", "none"])
def test_scoring_matches_model(rng, scoring):
    tokens, w, logits = linear_case(rng)
    if scoring == "none":  # probabilities, used as given
        logits = rng.dirichlet(np.ones(logits.shape[1]), size=logits.shape[0]).astype(np.float32)
    check(tokens, w, logits, 4, scoring=scoring)


def test_scorings_differ(rng):
    tokens, w, logits = linear_case(rng)
    outs = [
        fused_moe(tokens, w, logits, 4, scoring=s, renormalize=False)
        for s in ("softmax", "sigmoid", "none")
    ]
    assert differs(outs[0], outs[1]) and differs(outs[0], outs[2]) and differs(outs[1], outs[2])


def test_renormalize(rng):
    tokens, w, logits = linear_case(rng)
    on, s_on, _ = check(tokens, w, logits, 4, renormalize=True)
    off, s_off, _ = check(tokens, w, logits, 4, renormalize=False)
    np.testing.assert_allclose(s_on.topk_weights.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(s_off.topk_weights.sum(axis=1) < 1.0)  # top-4 of a softmax over 12
    np.testing.assert_array_equal(s_on.topk_ids, s_off.topk_ids)
    assert differs(on, off)


def test_temperature(rng):
    tokens, w, logits = linear_case(rng)
    base, s1, _ = check(tokens, w, logits, 4, temperature=1.0)
    hot, s2, _ = check(tokens, w, logits, 4, temperature=2.5)
    cold, _, _ = check(tokens, w, logits, 4, temperature=0.5)
    assert differs(base, hot) and differs(base, cold)
    # Softmax is monotone: the selection is unchanged, the weights flatten when hotter.
    np.testing.assert_array_equal(s1.topk_ids, s2.topk_ids)
    assert np.all(s2.topk_weights.max(axis=1) <= s1.topk_weights.max(axis=1) + 1e-7)


def test_temperature_equals_scaled_logits(rng):
    tokens, w, logits = linear_case(rng)
    a = fused_moe(tokens, w, logits, 4, temperature=2.0)
    b = fused_moe(tokens, w, logits / 2.0, 4)
    assert numpy_moe.rel_err(a, b) < TOL


@pytest.mark.parametrize("with_bias", [False, True])
def test_grouped_topk(rng, with_bias):
    tokens, w, logits = linear_case(rng, E=16)
    bias = randn(rng, 16, scale=0.1) if with_bias else None
    out, stats, _ = check(
        tokens, w, logits, 4, scoring="sigmoid", n_group=4, topk_group=2, correction_bias=bias
    )
    groups = stats.topk_ids // 4
    assert all(len(set(row)) <= 2 for row in groups.tolist())
    flat = fused_moe(tokens, w, logits, 4, scoring="sigmoid", correction_bias=bias)
    assert differs(out, flat, at_least=1e-6)


def test_grouped_topk_group_score_rule(rng):
    # 2 groups of 3. Group 0 holds the single best expert; group 1 holds the 2nd and 3rd best.
    # Without a bias the group score is the best member (group 0 wins); with a bias it is the sum
    # of the two best members (group 1 wins). scoring="none" keeps the numbers readable.
    T = 4
    probs = np.tile(np.array([0.9, 0.0, 0.0, 0.6, 0.5, 0.0], np.float32), (T, 1))
    tokens, w, _ = linear_case(rng, T=T, E=6)
    _, s, _ = check(tokens, w, probs, 1, scoring="none", n_group=2, topk_group=1)
    assert np.all(s.topk_ids[:, 0] == 0)
    zero_bias = np.zeros(6, np.float32)
    _, s, _ = check(
        tokens, w, probs, 1, scoring="none", n_group=2, topk_group=1, correction_bias=zero_bias
    )
    assert np.all(s.topk_ids[:, 0] == 3)


def test_correction_bias_steers_selection_not_weights(rng):
    tokens, w, logits = linear_case(rng)
    bias = np.zeros(12, np.float32)
    bias[7] = 10.0  # every token selects expert 7 first
    out, stats, _ = check(tokens, w, logits, 3, scoring="sigmoid", correction_bias=bias)
    assert np.all(stats.topk_ids[:, 0] == 7)
    # Combine weights come from the scores p, renormalized over the selected experts, no bias.
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    sel = np.take_along_axis(p, stats.topk_ids.astype(np.int64), axis=1)
    np.testing.assert_allclose(stats.topk_weights, sel / sel.sum(axis=1, keepdims=True), rtol=1e-6)
    plain = fused_moe(tokens, w, logits, 3, scoring="sigmoid")
    assert differs(out, plain)


def test_routed_scaling_factor(rng):
    tokens, w, logits = linear_case(rng)
    one, s1, _ = check(tokens, w, logits, 4)
    scaled, s2, _ = check(tokens, w, logits, 4, routed_scaling_factor=2.5)
    assert numpy_moe.rel_err(scaled, 2.5 * one.astype(np.float64)) < TOL
    np.testing.assert_allclose(s2.topk_weights, 2.5 * s1.topk_weights, rtol=1e-6)


def test_prerouted_matches_model(rng):
    T, E, k = 32, 12, 3
    tokens, w, _ = linear_case(rng, T=T, E=E)
    ids = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int64)
    ids[::5, 1] = -1  # no expert in some slots
    weights = rng.random((T, k)).astype(np.float32)
    out, stats = fused_moe(tokens, w, topk_ids=ids, topk_weights=weights, return_stats=True)
    want, r = numpy_moe.fused_moe(tokens, w, top_k=k, topk_ids=ids, topk_weights=weights)
    assert numpy_moe.rel_err(out, want) < TOL
    np.testing.assert_array_equal(stats.topk_ids, ids)
    np.testing.assert_array_equal(stats.expert_load, r.load)


def test_prerouted_reproduces_scored_routing(rng):
    tokens, w, logits = linear_case(rng)
    scored, stats = fused_moe(tokens, w, logits, 4, return_stats=True)
    again = fused_moe(tokens, w, topk_ids=stats.topk_ids, topk_weights=stats.topk_weights)
    assert numpy_moe.rel_err(again, scored) < TOL


def test_expert_map(rng):
    E, E_local = 12, 5
    tokens, _, logits = linear_case(rng, E=E)
    w_local = randn(rng, E_local, 64, 48, scale=0.125)
    emap = np.full(E, -1, np.int32)
    emap[[1, 4, 6, 9, 11]] = np.arange(E_local)
    _, stats, _ = check(tokens, w_local, logits, 4, expert_map=emap)
    # Routing lives in the global space: the load covers all 12 experts.
    assert stats.expert_load.shape == (E,) and stats.expert_load.sum() == 32 * 4
    # Identity map == no map.
    _, w, _ = linear_case(rng, E=E)
    ident = fused_moe(tokens, w, logits, 4, expert_map=np.arange(E, dtype=np.int64))
    np.testing.assert_array_equal(ident, fused_moe(tokens, w, logits, 4))


def test_expert_map_nonlocal_tokens_get_zero_rows(rng):
    tokens, _, logits = linear_case(rng, T=6, E=4)
    logits[:, 0] += 20.0  # top-1 is expert 0 for every token
    emap = np.array([-1, 0, 1, 2], np.int32)
    w_local = randn(rng, 3, 64, 48)
    out = fused_moe(tokens, w_local, logits, 1, expert_map=emap)
    np.testing.assert_array_equal(out, 0.0)


# ---- capacity: crafted cases ----------------------------------------------------------------


def _crafted_logits(T, E):
    """Every token ranks experts 0 > 1 > ... ; expert 0's score grows with the token index, so
    later tokens win at expert 0 while earlier tokens rank higher at the other experts."""
    logits = np.zeros((T, E), np.float32)
    logits[:] = -np.arange(E, dtype=np.float32)  # 0, -1, -2, ...
    logits[:, 0] = 5.0 + 0.1 * np.arange(T)
    return logits


def test_capacity_drop(rng):
    T, E = 8, 4
    tokens, w, _ = linear_case(rng, T=T, H=8, E=E, D=4)
    logits = _crafted_logits(T, E)
    out, stats, _ = check(tokens, w, logits, 1, capacity_factor=1.0, overflow="drop")
    # cap = ceil(1.0 * 8 * 1 / 4) = 2: expert 0 keeps its two best tokens (7 and 6).
    np.testing.assert_array_equal(stats.topk_ids[:, 0], [-1] * 6 + [0, 0])
    np.testing.assert_array_equal(stats.topk_weights[:6], 0.0)
    np.testing.assert_array_equal(stats.expert_load, [2, 0, 0, 0])
    assert (stats.dropped, stats.rerouted) == (6, 0)
    assert stats.load_max_mean_ratio == pytest.approx(4.0)
    np.testing.assert_array_equal(out[:6], 0.0)  # dropped tokens contribute nothing
    assert np.all(out[6:] != 0.0)


def test_capacity_drop_ties_go_to_lower_token(rng):
    T, E = 6, 3
    tokens, w, _ = linear_case(rng, T=T, H=8, E=E, D=4)
    logits = np.tile(np.array([3.0, 0.0, -1.0], np.float32), (T, 1))  # identical rows
    _, stats, _ = check(tokens, w, logits, 1, capacity_factor=1.0)
    np.testing.assert_array_equal(stats.topk_ids[:, 0], [0, 0, -1, -1, -1, -1])


def test_capacity_drop_keeps_other_weights_unscaled(rng):
    tokens, w, logits = linear_case(rng, T=16, E=4)
    logits[:, 0] += 4.0  # expert 0 is everyone's first choice
    free, s_free, _ = check(tokens, w, logits, 2)
    capped, s_cap, _ = check(tokens, w, logits, 2, capacity_factor=1.0)
    kept = s_cap.topk_ids >= 0
    np.testing.assert_array_equal(s_cap.topk_weights[kept], s_free.topk_weights[kept])
    assert s_cap.dropped > 0 and differs(free, capped)


def test_capacity_reroute(rng):
    T, E = 8, 4
    tokens, w, _ = linear_case(rng, T=T, H=8, E=E, D=4)
    logits = _crafted_logits(T, E)
    out, stats, _ = check(tokens, w, logits, 1, capacity_factor=1.0, overflow="reroute")
    # Expert 0 keeps tokens 6, 7. Round 1: tokens 0..5 propose to expert 1, which takes the two
    # with the best p[t][1] (tokens 0, 1); round 2: expert 2 takes 2, 3; round 3: expert 3 takes
    # 4, 5. Weights move with the assignment unchanged.
    np.testing.assert_array_equal(stats.topk_ids[:, 0], [1, 1, 2, 2, 3, 3, 0, 0])
    np.testing.assert_array_equal(stats.expert_load, [2, 2, 2, 2])
    assert (stats.dropped, stats.rerouted) == (0, 6)
    assert stats.load_max_mean_ratio == pytest.approx(1.0)
    drop = fused_moe(tokens, w, logits, 1, capacity_factor=1.0, overflow="drop")
    assert differs(out, drop)


def test_capacity_reroute_drops_when_no_expert_is_free(rng):
    # E=3, k=2, T=3: cap = ceil(6/3) = 2. All tokens pick experts 0 and 1; token 0 has the lowest
    # score at both, so it loses both slots. Its slot 0 proposes to expert 2 (accepted); its
    # slot 1 has no expert left that the token does not use or propose to, so it is dropped.
    T, E = 3, 3
    tokens, w, _ = linear_case(rng, T=T, H=8, E=E, D=4)
    logits = np.array([[2.0, 1.9, -3.0], [2.5, 2.4, -3.0], [3.0, 2.9, -3.0]], np.float32)
    _, stats, _ = check(tokens, w, logits, 2, capacity_factor=1.0, overflow="reroute")
    np.testing.assert_array_equal(stats.topk_ids, [[2, -1], [0, 1], [0, 1]])
    assert (stats.dropped, stats.rerouted) == (1, 1)
    np.testing.assert_array_equal(stats.expert_load, [2, 2, 1])


@pytest.mark.parametrize("overflow", ["drop", "reroute"])
@pytest.mark.parametrize("capacity_factor", [1.0, 1.25, 2.0])
def test_capacity_random_matches_model(rng, overflow, capacity_factor):
    tokens, w, logits = linear_case(rng, T=40, E=8)
    logits[:, :3] += 1.5  # skewed load, so capacity binds
    check(
        tokens,
        w,
        logits,
        2,
        capacity_factor=capacity_factor,
        overflow=overflow,
        scoring="sigmoid",
        correction_bias=randn(rng, 8, scale=0.2),
    )


def test_capacity_prerouted_priority_is_the_weight(rng):
    T, E = 6, 3
    tokens, w, _ = linear_case(rng, T=T, H=8, E=E, D=4)
    ids = np.zeros((T, 1), np.int32)
    weights = np.array([[0.1], [0.6], [0.3], [0.9], [0.2], [0.5]], np.float32)
    out, stats = fused_moe(
        tokens, w, topk_ids=ids, topk_weights=weights, capacity_factor=1.0, return_stats=True
    )
    # cap = ceil(6/3) = 2: expert 0 keeps the two largest weights (tokens 3 and 1).
    np.testing.assert_array_equal(stats.topk_ids[:, 0], [-1, 0, -1, 0, -1, -1])
    assert stats.dropped == 4
    want, _ = numpy_moe.fused_moe(
        tokens, w, top_k=1, topk_ids=ids, topk_weights=weights, capacity_factor=1.0
    )
    assert numpy_moe.rel_err(out, want) < TOL


def test_capacity_ffn(rng):
    tokens, ws, logits = ffn_case(rng)
    logits[:, 0] += 2.0
    check(tokens, ws, logits, 2, capacity_factor=1.0, overflow="reroute")
