"""Expert kinds, weight layout, precision, shapes, dtypes, out= and return_stats on the CPU."""

import numpy as np
import pytest

import numpy_moe
from conftest import ffn_case, linear_case
from flashmoe_science import MoeStats, fused_moe

TOL = 1e-6


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_ffn_activation_matches_model(rng, activation):
    tokens, ws, logits = ffn_case(rng)
    out = fused_moe(tokens, ws, logits, 2, activation=activation)
    assert out.shape == tokens.shape and out.dtype == np.float32
    want, _ = numpy_moe.fused_moe(tokens, ws, logits, 2, activation=activation)
    assert numpy_moe.rel_err(out, want) < TOL


def test_ffn_activations_differ(rng):
    tokens, ws, logits = ffn_case(rng)
    silu = fused_moe(tokens, ws, logits, 2, activation="silu")
    gelu = fused_moe(tokens, ws, logits, 2, activation="gelu")
    assert numpy_moe.rel_err(silu, gelu) > 1e-3


def test_ffn_gate_and_up_halves_are_ordered(rng):
    # Swapping the gate and up halves changes the result: gate columns come first.
    tokens, (wgu, wd), logits = ffn_case(rng)
    inter = wd.shape[1]
    swapped = np.concatenate([wgu[:, :, inter:], wgu[:, :, :inter]], axis=2)
    a = fused_moe(tokens, (wgu, wd), logits, 2)
    b = fused_moe(tokens, (swapped, wd), logits, 2)
    assert numpy_moe.rel_err(a, b) > 1e-3


def test_layout_out_in_linear(rng):
    tokens, w, logits = linear_case(rng)
    w_t = np.ascontiguousarray(w.transpose(0, 2, 1))  # [E, D, H], nn.Linear's convention
    a = fused_moe(tokens, w, logits, 4, layout="in_out")
    b = fused_moe(tokens, w_t, logits, 4, layout="out_in")
    assert numpy_moe.rel_err(b, a) < TOL
    want, _ = numpy_moe.fused_moe(tokens, w_t, logits, 4, layout="out_in")
    assert numpy_moe.rel_err(b, want) < TOL


def test_layout_out_in_ffn(rng):
    tokens, (wgu, wd), logits = ffn_case(rng)
    t = (np.ascontiguousarray(wgu.transpose(0, 2, 1)), np.ascontiguousarray(wd.transpose(0, 2, 1)))
    a = fused_moe(tokens, (wgu, wd), logits, 2)
    b = fused_moe(tokens, t, logits, 2, layout="out_in")
    assert numpy_moe.rel_err(b, a) < TOL


def test_layout_changes_the_result_for_square_weights(rng):
    tokens, w, logits = linear_case(rng, H=32, D=32)
    a = fused_moe(tokens, w, logits, 4, layout="in_out")
    b = fused_moe(tokens, w, logits, 4, layout="out_in")
    assert numpy_moe.rel_err(a, b) > 1e-2


@pytest.mark.parametrize("kind", ["linear", "ffn"])
@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_precision_matches_quantized_model(rng, kind, precision):
    tokens, ws, logits = linear_case(rng) if kind == "linear" else ffn_case(rng)
    auto = fused_moe(tokens, ws, logits, 4, precision="auto")
    got = fused_moe(tokens, ws, logits, 4, precision=precision)
    want, _ = numpy_moe.fused_moe(tokens, ws, logits, 4, precision=precision)
    assert numpy_moe.rel_err(got, want) < TOL
    # The rounding shows: bf16 costs ~2^-9 relative, fp8 ~2^-5.
    assert numpy_moe.rel_err(got, auto) > (1e-4 if precision == "bf16" else 5e-3)
    assert numpy_moe.rel_err(got, auto) < (1e-2 if precision == "bf16" else 1e-1)


def test_out_argument(rng):
    tokens, w, logits = linear_case(rng, lead=(2, 16))
    out = np.full((2, 16, 48), np.nan, np.float32)  # poisoned: every element must be written
    got = fused_moe(tokens, w, logits, 8, out=out)
    assert got is out
    np.testing.assert_array_equal(out, fused_moe(tokens, w, logits, 8))


def test_out_argument_ffn_with_stats(rng):
    tokens, ws, logits = ffn_case(rng)
    out = np.full(tokens.shape, np.nan, np.float32)
    got, stats = fused_moe(tokens, ws, logits, 2, out=out, return_stats=True)
    assert got is out and isinstance(stats, MoeStats)
    assert np.all(np.isfinite(out))


def test_return_stats_fields(rng):
    T, E, k = 32, 12, 4
    tokens, w, logits = linear_case(rng, T=T, E=E)
    out, stats = fused_moe(tokens, w, logits, k, return_stats=True)
    assert isinstance(stats, MoeStats)
    assert stats.topk_ids.shape == (T, k) and stats.topk_ids.dtype == np.int32
    assert stats.topk_weights.shape == (T, k) and stats.topk_weights.dtype == np.float32
    assert stats.expert_load.shape == (E,) and stats.expert_load.dtype == np.int32
    assert stats.expert_load.sum() == T * k
    np.testing.assert_array_equal(
        np.bincount(stats.topk_ids.ravel(), minlength=E), stats.expert_load
    )
    want_ratio = stats.expert_load.max() / stats.expert_load.mean()
    assert stats.load_max_mean_ratio == pytest.approx(want_ratio)
    assert isinstance(stats.load_max_mean_ratio, float)
    assert stats.dropped == 0 and stats.rerouted == 0
    assert isinstance(stats.dropped, int) and isinstance(stats.rerouted, int)
    assert stats.kernel_path == "reference-cpu"
    np.testing.assert_array_equal(out, fused_moe(tokens, w, logits, k))


def test_flat_and_batched_tokens_agree(rng):
    tokens, w, logits = linear_case(rng, lead=(4, 8))
    batched = fused_moe(tokens, w, logits, 4)
    flat = fused_moe(tokens.reshape(32, 64), w, logits, 4)
    assert batched.shape == (4, 8, 48) and flat.shape == (32, 48)
    np.testing.assert_array_equal(batched.reshape(32, 48), flat)


def test_noncontiguous_inputs_are_accepted(rng):
    tokens, w, logits = linear_case(rng)
    tokens_f = np.asfortranarray(tokens)
    w_view = np.ascontiguousarray(w.transpose(0, 2, 1)).transpose(0, 2, 1)  # same values, strided
    logits_f = np.asfortranarray(logits)
    np.testing.assert_array_equal(
        fused_moe(tokens_f, w_view, logits_f, 4), fused_moe(tokens, w, logits, 4)
    )


@pytest.mark.parametrize("lead", [(0,), (2, 0), (0, 5)])
def test_zero_tokens(rng, lead):
    H, E, D = 16, 6, 8
    tokens = np.empty(lead + (H,), np.float32)
    w = rng.standard_normal((E, H, D)).astype(np.float32)
    logits = np.empty((0, E), np.float32)
    out = fused_moe(tokens, w, logits, 2)
    assert out.shape == lead + (D,) and out.dtype == np.float32
    out, stats = fused_moe(tokens, w, logits, 2, return_stats=True)
    assert stats.topk_ids.shape == (0, 2) and stats.expert_load.shape == (E,)
    assert stats.expert_load.sum() == 0 and stats.load_max_mean_ratio == 0.0
    assert (stats.dropped, stats.rerouted, stats.kernel_path) == (0, 0, "none")


def test_zero_tokens_ffn(rng):
    _, ws, _ = ffn_case(rng)
    out = fused_moe(np.empty((0, 32), np.float32), ws, np.empty((0, 6), np.float32), 2)
    assert out.shape == (0, 32)


@pytest.mark.parametrize("dtype,tol", [(np.float16, 1e-3), (np.float64, 1e-12)])
def test_token_dtypes(rng, dtype, tol):
    tokens, w, logits = linear_case(rng, dtype=dtype)
    out = fused_moe(tokens, w, logits, 4)
    assert out.dtype == dtype
    want, _ = numpy_moe.fused_moe(tokens, w, logits, 4)
    assert numpy_moe.rel_err(out, want) < tol


def test_float64_ffn(rng):
    tokens, ws, logits = ffn_case(rng, dtype=np.float64)
    out = fused_moe(tokens, ws, logits.astype(np.float64), 3, activation="gelu")
    want, _ = numpy_moe.fused_moe(tokens, ws, logits, 3, activation="gelu")
    assert out.dtype == np.float64 and numpy_moe.rel_err(out, want) < 1e-12


def test_workspace_size_query(rng):
    from flashmoe_science import fused_moe_workspace_size

    tokens, ws, logits = ffn_case(rng)
    n = fused_moe_workspace_size(tokens, ws, logits, 2, capacity_factor=1.25, overflow="reroute")
    assert isinstance(n, int) and n >= 0
    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['capacity'\]"):
        fused_moe_workspace_size(tokens, ws, logits, 2, capacity=1.25)
    with pytest.raises(ValueError, match="top_k must be in 1..E=6"):
        fused_moe_workspace_size(tokens, ws, logits, 9)
