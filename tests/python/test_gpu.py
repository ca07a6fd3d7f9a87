"""The CUDA path against the C++ CPU reference (float64) on random and awkward shapes.

Protocol (DESIGN.md section 5): fresh random inputs per test, output poisoned with NaN before each
GPU run, NaN never passes, bf16/fp16 relative Frobenius error below 1e-2 against the float64
reference on the same (rounded) inputs, routing compared slot by slot, and bitwise-identical
output across 3 runs (the default combine is deterministic).
"""

import math
import zlib

import numpy as np
import pytest

import numpy_moe
from conftest import e4m3_checkpoint, torch
from flashmoe_science import (
    PreparedExperts,
    clear_prepare_cache,
    fused_moe,
    fused_moe_workspace_size,
    prepare_experts,
)

pytestmark = pytest.mark.skipif(
    torch is None or not torch.cuda.is_available(), reason="no CUDA GPU: GPU tests not run"
)

TOL = 1e-2

# (name, T, H, E, D or I, top_k): T=1, T not a multiple of any tile, E not a power of two,
# H and D not multiples of 128, and a seed-like shape.
SHAPES = [
    ("T1", 1, 64, 8, 48, 2),
    ("ragged", 37, 96, 12, 80, 4),
    ("odd", 130, 72, 6, 40, 1),
    ("E10", 67, 136, 10, 200, 3),
    ("wide", 200, 256, 16, 128, 8),
]


def case(seed, T, H, E, N, kind, dtype):
    """CUDA inputs of `dtype`: tokens [T, H], weights, float32 logits [T, E]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g)
    if kind == "linear":
        w = torch.randn(E, H, N, generator=g) * H**-0.5
        weights = w.to(dtype).cuda()
    else:
        wgu = torch.randn(E, H, 2 * N, generator=g) * H**-0.5
        wd = torch.randn(E, N, H, generator=g) * N**-0.5
        weights = (wgu.to(dtype).cuda(), wd.to(dtype).cuda())
    logits = torch.randn(T, E, generator=g)
    return x.to(dtype).cuda(), weights, logits.cuda()


def to_cpu64(a):
    if a is None:
        return None
    if isinstance(a, tuple):
        return tuple(to_cpu64(x) for x in a)
    return a.detach().cpu().double() if a.is_floating_point() else a.detach().cpu()


def reference(tokens, weights, logits, top_k, **opts):
    """The C++ CPU reference in float64 on exactly the GPU's (rounded) inputs."""
    cpu_opts = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}
    return fused_moe(
        to_cpu64(tokens),
        to_cpu64(weights),
        None if logits is None else logits.cpu(),
        top_k,
        return_stats=True,
        **cpu_opts,
    )


def run_gpu(tokens, weights, logits, top_k, out_shape, runs=3, **opts):
    """Runs the GPU path `runs` times into NaN-poisoned outputs; checks bitwise run-to-run
    equality and returns (out, stats) of the first run."""
    first = None
    for _ in range(runs):
        out = torch.full(out_shape, float("nan"), dtype=tokens.dtype, device="cuda")
        got, stats = fused_moe(tokens, weights, logits, top_k, out=out, return_stats=True, **opts)
        assert got is out
        torch.cuda.synchronize()
        if first is None:
            first = (out.clone(), stats)
        else:
            assert torch.equal(out, first[0]), "GPU output differs between runs"
    return first


def compare(tokens, weights, logits, top_k, compare_routing=True, **opts):
    out_dim = weights.shape[2] if not isinstance(weights, tuple) else tokens.shape[-1]
    if isinstance(weights, torch.Tensor) and opts.get("layout") == "out_in":
        out_dim = weights.shape[1]
    out_shape = tuple(tokens.shape[:-1]) + (out_dim,)
    got, stats = run_gpu(tokens, weights, logits, top_k, out_shape, **opts)
    want, ref_stats = reference(tokens, weights, logits, top_k, **opts)
    assert bool(torch.isfinite(got).all()), "NaN/inf in the GPU output (poisoned rows unwritten?)"
    err = numpy_moe.rel_err(got.double().cpu().numpy(), want.numpy())
    assert err < TOL, f"relative Frobenius error {err:.3e} >= {TOL}"
    assert stats.kernel_path not in ("reference-cpu", "none")
    assert stats.topk_ids.device.type == "cuda" and stats.expert_load.device.type == "cuda"
    if compare_routing:
        np.testing.assert_array_equal(stats.topk_ids.cpu().numpy(), ref_stats.topk_ids.numpy())
        np.testing.assert_array_equal(
            stats.expert_load.cpu().numpy(), ref_stats.expert_load.numpy()
        )
        np.testing.assert_allclose(
            stats.topk_weights.cpu().numpy(), ref_stats.topk_weights.numpy(), rtol=1e-5, atol=1e-6
        )
        assert (stats.dropped, stats.rerouted) == (ref_stats.dropped, ref_stats.rerouted)
    return got, stats


ROUTINGS = {
    "softmax": dict(),
    "sigmoid-no-renorm-temp": dict(scoring="sigmoid", renormalize=False, temperature=0.7),
    "none": dict(scoring="none"),
    "deepseek": dict(
        scoring="sigmoid", n_group=2, topk_group=1, routed_scaling_factor=2.5, correction_bias=True
    ),
    "capacity-drop": dict(capacity_factor=1.0, overflow="drop"),
    "capacity-reroute": dict(capacity_factor=1.25, overflow="reroute"),
    "prerouted": dict(prerouted=True),
    "expert-map": dict(expert_map=True),
}


def routing_opts(name, tokens, logits, top_k, seed):
    """Materializes a ROUTINGS entry for these inputs: (logits, top_k, opts)."""
    opts = dict(ROUTINGS[name])
    T, E = logits.shape
    g = torch.Generator().manual_seed(seed + 7)
    if opts.pop("correction_bias", False):
        opts["correction_bias"] = (torch.randn(E, generator=g) * 0.1).cuda()
        if top_k > E // 2:  # topk_group=1 of 2 groups leaves E/2 eligible experts
            top_k = max(1, E // 2)
    if name == "none":
        logits = torch.softmax(logits, dim=1)
    if opts.pop("prerouted", False):
        ids = torch.stack([torch.randperm(E, generator=g)[:top_k] for _ in range(T)])
        ids[::3, 0] = -1
        opts["topk_ids"] = ids.to(torch.int32).cuda()
        opts["topk_weights"] = torch.rand(T, top_k, generator=g).cuda()
        logits = None
    if opts.pop("expert_map", False):
        perm = torch.randperm(E, generator=g)
        emap = torch.full((E,), -1, dtype=torch.int32)
        emap[perm[: (E + 1) // 2]] = torch.arange((E + 1) // 2, dtype=torch.int32)
        opts["expert_map"] = emap.cuda()
    return logits, top_k, opts


def local_weights(weights, opts):
    """With an expert map, keep only the local experts' weights (in local order)."""
    emap = opts.get("expert_map")
    if emap is None:
        return weights
    order = torch.argsort(emap.cpu().long())[(emap.cpu() < 0).sum() :].cuda()
    if isinstance(weights, tuple):
        return tuple(w[order].contiguous() for w in weights)
    return weights[order].contiguous()


@pytest.mark.parametrize("routing", list(ROUTINGS))
@pytest.mark.parametrize("kind", ["linear", "ffn"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gpu_matches_reference(shape, kind, routing, dtype):
    name, T, H, E, N, k = shape
    seed = zlib.crc32(f"{name}/{kind}/{routing}/{dtype}".encode())
    tokens, weights, logits = case(seed, T, H, E, N, kind, getattr(torch, dtype))
    logits, k, opts = routing_opts(routing, tokens, logits, k, seed)
    weights = local_weights(weights, opts)
    compare(tokens, weights, logits, k, **opts)


@pytest.mark.parametrize("kind", ["linear", "ffn"])
def test_gpu_layout_out_in(kind):
    tokens, weights, logits = case(11, 45, 96, 6, 64, kind, torch.bfloat16)
    if kind == "linear":
        t_weights = weights.transpose(1, 2).contiguous()
    else:
        t_weights = tuple(w.transpose(1, 2).contiguous() for w in weights)
    a, _ = compare(tokens, weights, logits, 2)
    b, _ = compare(tokens, t_weights, logits, 2, layout="out_in")
    assert numpy_moe.rel_err(b.double().cpu().numpy(), a.double().cpu().numpy()) < TOL


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_gpu_activation(activation):
    tokens, weights, logits = case(12, 70, 64, 8, 48, "ffn", torch.bfloat16)
    compare(tokens, weights, logits, 2, activation=activation)


@pytest.mark.parametrize("kind", ["linear", "ffn"])
def test_gpu_experts_with_zero_tokens(kind):
    tokens, weights, logits = case(13, 50, 64, 12, 48, kind, torch.bfloat16)
    logits[:, 6:] -= 30.0  # experts 6..11 receive nothing
    _, stats = compare(tokens, weights, logits, 3)
    assert int(stats.expert_load[6:].sum()) == 0


@pytest.mark.parametrize("kind", ["linear", "ffn"])
def test_gpu_one_expert_takes_everything(kind):
    tokens, weights, logits = case(14, 300, 64, 12, 48, kind, torch.float16)
    logits[:, 5] += 30.0
    _, stats = compare(tokens, weights, logits, 1)
    assert int(stats.expert_load[5]) == 300


def test_gpu_batched_tokens_shape():
    tokens, w, logits = case(15, 2 * 33, 64, 12, 48, "linear", torch.bfloat16)
    out = fused_moe(tokens.reshape(2, 33, 64), w, logits, top_k=8)
    assert out.shape == (2, 33, 48) and out.dtype == torch.bfloat16 and out.is_cuda
    flat = fused_moe(tokens, w, logits, top_k=8)
    assert torch.equal(out.reshape(66, 48), flat)


def test_gpu_zero_tokens():
    tokens, w, logits = case(16, 4, 64, 6, 48, "linear", torch.bfloat16)
    out = fused_moe(tokens[:0], w, logits[:0], 2)
    assert out.shape == (0, 48) and out.is_cuda


def test_gpu_float32_needs_precision_bf16():
    tokens, w, logits = case(17, 40, 64, 8, 48, "linear", torch.float32)
    with pytest.raises(TypeError, match="precision='bf16'"):
        fused_moe(tokens, w, logits, 2)
    out, stats = fused_moe(tokens, w, logits, 2, precision="bf16", return_stats=True)
    assert out.dtype == torch.float32 and stats.kernel_path not in ("reference-cpu", "none")
    want, _ = reference(tokens, w, logits, 2, precision="bf16")
    assert numpy_moe.rel_err(out.double().cpu().numpy(), want.numpy()) < TOL


def is_sm90():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


needs_sm90 = pytest.mark.skipif(
    torch is None or not torch.cuda.is_available() or not is_sm90(),
    reason="needs an sm_90 GPU: FP8 test not run",
)


@pytest.mark.parametrize("kind", ["linear", "ffn"])
@pytest.mark.parametrize("scale", ["channel", "block128"])
def test_gpu_fp8_w8a16_on_the_sm80_path(kind, scale, monkeypatch):
    """precision='fp8' where the E4M3 wgmma path does not run (compute capability 8.x, or
    FLASHMOE_GEMM=sm80 on Hopper): W8A16, the weights dequantized inside the sm_80 GEMM."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("W8A16 needs compute capability >= 8.0")
    monkeypatch.setenv("FLASHMOE_GEMM", "sm80")
    tokens, weights, logits = case(18, 70, 128, 8, 64, kind, torch.bfloat16)
    out_dim = tokens.shape[-1] if kind == "ffn" else weights.shape[2]
    got, stats = run_gpu(tokens, weights, logits, 2, (70, out_dim), precision="fp8",
                         fp8_scale=scale)
    assert stats.kernel_path == "multikernel-sm80-w8a16"
    assert bool(torch.isfinite(got).all())
    exact, ref_stats = reference(tokens, weights, logits, 2)
    np.testing.assert_array_equal(stats.topk_ids.cpu().numpy(), ref_stats.topk_ids.numpy())
    err = numpy_moe.rel_err(got.double().cpu().numpy(), exact.numpy())
    print(f"w8a16 {kind} {scale}: rel err vs exact {err:.3e}")
    assert err < FP8_TOL_EXACT[kind]  # the E4M3 weights alone (activations stay bf16)


# (name, T, H, E, D or I, top_k): H, D, I multiples of 16 (the FP8 kernels' K/N rows);
# fp8-h144 has H and I not multiples of 64/128 (channel scales only for gated FFN).
FP8_SHAPES = [
    ("fp8-small", 37, 128, 8, 64, 2),
    ("fp8-ragged", 130, 256, 12, 192, 4),
    ("fp8-h144", 67, 144, 6, 80, 3),
]
# Same-quantization tolerance. Gated FFN rounds h twice (bf16, then E4M3), so accumulation-order
# differences that cross a rounding boundary move an element by a whole E4M3 step: the C++ FP8
# forward tests measured up to 6.3e-3 on an H200, above DESIGN.md's 5e-3 (said in the issue note).
FP8_TOL_SAME_QUANT = {"linear": 5e-3, "ffn": 1e-2}
FP8_TOL_EXACT = {"linear": 5e-2, "ffn": 8e-2}


def fp8_compare(tokens, weights, logits, k, scale, **opts):
    """GPU precision='fp8' (3 runs, bitwise equal, poisoned out) against the CPU reference with
    the same quantization (channel scales only: the reference's grouping) and the exact one."""
    raw = opts.pop("raw", None)  # the raw weights of a PreparedExperts, for the references
    ref_weights = raw if raw is not None else weights
    kind = "ffn" if isinstance(ref_weights, tuple) else "linear"
    if isinstance(weights, PreparedExperts):
        out_dim = weights.out_dim
    elif kind == "ffn":
        out_dim = tokens.shape[-1]
    else:
        out_dim = weights.shape[1] if opts.get("layout") == "out_in" else weights.shape[2]
    got, stats = run_gpu(
        tokens, weights, logits, k, tuple(tokens.shape[:-1]) + (out_dim,), precision="fp8",
        fp8_scale=scale, **opts
    )
    assert bool(torch.isfinite(got).all()), "NaN/inf in the GPU output (poisoned rows unwritten?)"
    # Every routing option (capacity included) with E <= 256 runs the fused kernel, linear or
    # gated-FFN experts.
    n_exp = logits.shape[-1] if logits is not None else None
    fused = n_exp is not None and n_exp <= 256
    assert stats.kernel_path == ("fused-sm90-fp8" if fused else "multikernel-sm90-fp8")
    exact, ref_stats = reference(tokens, ref_weights, logits, k, **opts)
    np.testing.assert_array_equal(stats.topk_ids.cpu().numpy(), ref_stats.topk_ids.numpy())
    g = got.double().cpu().numpy()
    err_exact = numpy_moe.rel_err(g, exact.numpy())
    err_same = None
    if scale == "channel":
        same, _ = reference(tokens, ref_weights, logits, k, precision="fp8", **opts)
        err_same = numpy_moe.rel_err(g, same.numpy())
    print(f"fp8 {kind} scale={scale}: rel err vs same-quant reference {err_same}, "
          f"vs exact {err_exact:.3e}")
    if err_same is not None:
        assert err_same < FP8_TOL_SAME_QUANT[kind], f"vs same-quant reference {err_same:.3e}"
    assert err_exact < FP8_TOL_EXACT[kind], f"vs exact reference {err_exact:.3e}"
    return got, stats


@needs_sm90
@pytest.mark.parametrize("scale", ["channel", "block128"])
@pytest.mark.parametrize("kind", ["linear", "ffn"])
@pytest.mark.parametrize("shape", FP8_SHAPES, ids=[s[0] for s in FP8_SHAPES])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gpu_fp8_matches_reference(shape, kind, scale, dtype):
    name, T, H, E, N, k = shape
    if kind == "ffn" and scale == "block128" and N % 64:
        pytest.skip("block128 gate/up scales need I % 64 == 0")
    seed = zlib.crc32(f"fp8/{name}/{kind}/{scale}/{dtype}".encode())
    tokens, weights, logits = case(seed, T, H, E, N, kind, getattr(torch, dtype))
    fp8_compare(tokens, weights, logits, k, scale)


@needs_sm90
@pytest.mark.parametrize("kind", ["linear", "ffn"])
def test_gpu_fp8_prepared_and_layouts(kind):
    tokens, weights, logits = case(31, 90, 128, 8, 64, kind, torch.bfloat16)
    prepared = prepare_experts(weights, precision="fp8")
    if kind == "linear":
        t_weights = weights.transpose(1, 2).contiguous()
    else:
        t_weights = tuple(w.transpose(1, 2).contiguous() for w in weights)
    prepared_oi = prepare_experts(t_weights, precision="fp8", layout="out_in")
    # Same groups (output channel over the inputs) in either raw layout: the same bytes.
    assert torch.equal(prepared.w1.view(torch.uint8), prepared_oi.w1.view(torch.uint8))
    assert torch.equal(prepared.w1_scale, prepared_oi.w1_scale)
    if kind == "ffn":
        assert torch.equal(prepared.w2.view(torch.uint8), prepared_oi.w2.view(torch.uint8))
        assert torch.equal(prepared.w2_scale, prepared_oi.w2_scale)
    a, _ = fp8_compare(tokens, prepared, logits, 2, "channel", raw=weights)
    b, _ = fp8_compare(tokens, weights, logits, 2, "channel")  # implicit prepare: same result
    c, _ = fp8_compare(tokens, t_weights, logits, 2, "channel", layout="out_in")
    assert torch.equal(a, b) and torch.equal(a, c)


def to_in_out(q):
    return q.view(torch.uint8).transpose(1, 2).contiguous().view(torch.float8_e4m3fn)


@needs_sm90
@pytest.mark.parametrize("layout", ["out_in", "in_out"])
@pytest.mark.parametrize("scale", ["channel", "block128"])
@pytest.mark.parametrize("kind", ["linear", "ffn"])
def test_gpu_fp8_quantized_checkpoint_is_packed_not_requantized(kind, scale, layout):
    """A checkpoint's E4M3 bytes and scales, packed by prepare_experts(weight_scales=...), give
    exactly what quantizing the raw weights gives (same rule, so the same bytes), and the
    forward runs them. Gated FFN: gate and up quantized apart and concatenated, as DeepSeek-V3
    ships them (I % 128 == 0)."""
    tokens, weights, logits = case(47, 90, 256, 8, 128, kind, torch.bfloat16)
    oi = lambda w: w.transpose(1, 2)  # raw in_out [E, K, N] -> out_in [E, N, K]
    if kind == "linear":
        mats = [e4m3_checkpoint(oi(weights), scale)[:2]]
    else:
        wgu, wd = weights
        I = wd.shape[1]
        (qg, sg, _), (qu, su, _) = (e4m3_checkpoint(oi(wgu)[:, sl], scale)
                                    for sl in (slice(0, I), slice(I, 2 * I)))
        mats = [(torch.cat([qg, qu], 1), torch.cat([sg, su], 1)), e4m3_checkpoint(oi(wd), scale)[:2]]
    if layout == "in_out":  # the same checkpoint stored [E, K, N], its scales to match
        mats = [(to_in_out(q), s[:, None, :] if scale == "channel" else s.transpose(1, 2))
                for q, s in mats]
    ckpt = tuple(q.cuda() for q, _ in mats)
    scales = tuple(s.cuda() for _, s in mats)
    packed = prepare_experts(
        ckpt if kind == "ffn" else ckpt[0], scale=scale, layout=layout,
        weight_scales=scales if kind == "ffn" else scales[0],
    )
    assert packed.source_dtype == "float8_e4m3fn" and packed.scale == scale
    quantized = prepare_experts(weights, scale=scale)
    assert torch.equal(packed.w1.view(torch.uint8), quantized.w1.view(torch.uint8))
    assert torch.equal(packed.w1_scale, quantized.w1_scale)
    if kind == "ffn":
        assert torch.equal(packed.w2.view(torch.uint8), quantized.w2.view(torch.uint8))
        assert torch.equal(packed.w2_scale, quantized.w2_scale)
    a, _ = fp8_compare(tokens, packed, logits, 2, scale, raw=weights)
    b, _ = fp8_compare(tokens, quantized, logits, 2, scale, raw=weights)
    assert torch.equal(a, b)


@needs_sm90
def test_gpu_fp8_cache_quantizes_once_and_after_in_place_changes():
    from flashmoe_science import prepare

    clear_prepare_cache()
    tokens, w, logits = case(32, 64, 128, 8, 64, "linear", torch.bfloat16)
    n0 = prepare.quantize_calls
    first = fused_moe(tokens, w, logits, 2, precision="fp8")
    assert prepare.quantize_calls == n0 + 1
    again = fused_moe(tokens, w, logits, 2, precision="fp8")
    assert prepare.quantize_calls == n0 + 1, "the same raw weights were quantized again"
    assert torch.equal(first, again)
    fused_moe(tokens, w, logits, 2, precision="fp8", fp8_scale="block128")  # another key
    assert prepare.quantize_calls == n0 + 2
    w.add_(1)  # in place: bumps w._version -> re-quantized on the next call
    changed = fused_moe(tokens, w, logits, 2, precision="fp8")
    assert prepare.quantize_calls == n0 + 3
    assert not torch.equal(changed, first)
    explicit = prepare_experts(w, precision="fp8")
    assert prepare.quantize_calls == n0 + 4
    for _ in range(3):  # a PreparedExperts is used as is
        assert torch.equal(fused_moe(tokens, explicit, logits, 2, precision="fp8"), changed)
    assert prepare.quantize_calls == n0 + 4
    del w  # the cache entries go with the raw tensor
    assert len(prepare._cache) == 0


@needs_sm90
def test_gpu_fp8_graph_capture_with_prepared_weights():
    tokens, w, logits = case(33, 96, 128, 8, 64, "ffn", torch.bfloat16)
    prepared = prepare_experts(w, precision="fp8", scale="block128")
    n = fused_moe_workspace_size(tokens, prepared, logits, 2, precision="fp8")
    assert n == fused_moe_workspace_size(
        tokens, w, logits, 2, precision="fp8", fp8_scale="block128"
    )
    workspace = torch.empty(max(n, 1), dtype=torch.uint8, device="cuda")
    out = torch.empty(96, 128, dtype=torch.bfloat16, device="cuda")
    eager = fused_moe(tokens, prepared, logits, 2, out=out, workspace=workspace, precision="fp8")
    eager = eager.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _, stats = fused_moe(
            tokens, prepared, logits, 2, out=out, workspace=workspace, precision="fp8",
            return_stats=True,
        )
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
    assert stats.kernel_path == "fused-sm90-fp8"  # gated-FFN experts, dropless: one kernel
    assert int(stats.dropped) == 0 and stats.dropped.is_cuda


@needs_sm90
@pytest.mark.parametrize("kind", ["linear", "ffn"])
def test_gpu_fp8_fused_kernel_matches_the_multikernel_path(monkeypatch, kind):
    tokens, w, logits = case(41, 6, 256, 32, 128, kind, torch.bfloat16)
    prepared = prepare_experts(w, precision="fp8")
    fused, s1 = fused_moe(tokens, prepared, logits, 4, precision="fp8", return_stats=True)
    assert s1.kernel_path == "fused-sm90-fp8"
    monkeypatch.setenv("FLASHMOE_FUSED", "0")
    multi, s2 = fused_moe(tokens, prepared, logits, 4, precision="fp8", return_stats=True)
    assert s2.kernel_path == "multikernel-sm90-fp8"
    assert torch.equal(fused, multi)
    assert torch.equal(s1.topk_ids, s2.topk_ids)
    assert torch.equal(s1.expert_load, s2.expert_load)


@needs_sm90
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kind", ["linear", "ffn"])
def test_gpu_fused_kernel_matches_the_multikernel_path(monkeypatch, kind, dtype):
    """The one-kernel bf16/fp16 forward equals the multi-kernel sm_90a path bit for bit, with
    capacity and reroute in the routing."""
    tokens, w, logits = case(43, 200, 256, 16, 128, kind, getattr(torch, dtype))
    opts = dict(capacity_factor=1.0, overflow="reroute")
    fused, s1 = fused_moe(tokens, w, logits, 4, return_stats=True, **opts)
    assert s1.kernel_path == "fused-sm90"
    monkeypatch.setenv("FLASHMOE_FUSED", "0")
    multi, s2 = fused_moe(tokens, w, logits, 4, return_stats=True, **opts)
    assert s2.kernel_path == "multikernel-sm90"
    assert torch.equal(fused, multi)
    assert torch.equal(s1.topk_ids, s2.topk_ids)
    assert torch.equal(s1.expert_load, s2.expert_load)
    assert s1.dropped == s2.dropped and s1.rerouted == s2.rerouted


@needs_sm90
@pytest.mark.parametrize("precision", ["auto", "fp8"])
@pytest.mark.parametrize("kind", ["linear", "ffn"])
def test_gpu_nondeterministic_combine_is_close(kind, precision):
    """deterministic=False: the bf16 one-kernel forward adds each expert row into `out` with
    atomics (out poisoned with NaN first: the kernel zeroes every row), close to the default
    output; the FP8 one runs its deterministic path (kAtomicCombineMaxTokensFp8 = 0): equal."""
    tokens, w, logits = case(44, 96, 256, 16, 128, kind, torch.bfloat16)
    if precision == "fp8":
        w = prepare_experts(w, precision="fp8")
    want, s1 = fused_moe(tokens, w, logits, 4, precision=precision, return_stats=True)
    out = torch.full_like(want, float("nan"))
    got, s2 = fused_moe(
        tokens, w, logits, 4, precision=precision, deterministic=False, out=out,
        return_stats=True,
    )
    assert s1.kernel_path == s2.kernel_path
    assert s2.kernel_path == ("fused-sm90-fp8" if precision == "fp8" else "fused-sm90")
    assert bool(torch.isfinite(got).all())
    err = float((got.double() - want.double()).norm() / want.double().norm())
    assert err < TOL, f"deterministic=False vs the default combine: {err:.3e}"
    if precision == "fp8":
        assert torch.equal(got, want)
    assert torch.equal(s1.topk_ids, s2.topk_ids)


def test_gpu_return_stats_under_capture_does_not_sync():
    tokens, w, logits = case(34, 96, 64, 8, 48, "linear", torch.bfloat16)
    n = fused_moe_workspace_size(tokens, w, logits, 2)
    workspace = torch.empty(max(n, 1), dtype=torch.uint8, device="cuda")
    out = torch.empty(96, 48, dtype=torch.bfloat16, device="cuda")
    _, eager = fused_moe(tokens, w, logits, 2, out=out, workspace=workspace, return_stats=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _, stats = fused_moe(
            tokens, w, logits, 2, out=out, workspace=workspace, return_stats=True
        )
    graph.replay()
    torch.cuda.synchronize()
    assert stats.kernel_path == eager.kernel_path
    assert torch.is_tensor(stats.dropped) and torch.is_tensor(stats.load_max_mean_ratio)
    load = stats.expert_load.cpu()
    want = float(load.max()) * 8 / max(int(load.sum()), 1)
    assert abs(float(stats.load_max_mean_ratio) - want) < 1e-5
    assert int(stats.dropped) == 0 and int(stats.rerouted) == 0 and int(load.sum()) == 96 * 2
    assert torch.equal(stats.topk_ids, eager.topk_ids)


def test_gpu_check_finite_false_skips_the_check():
    tokens, w, logits = case(35, 16, 64, 8, 48, "linear", torch.bfloat16)
    bad = logits.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="routing_weights has non-finite values"):
        fused_moe(tokens, w, bad, 2)
    out, stats = fused_moe(tokens, w, bad, 2, check_finite=False, return_stats=True)
    assert 1 not in stats.topk_ids[3].tolist()  # a non-finite score is never chosen
    assert bool(torch.isfinite(out).all())


def test_gpu_input_errors():
    tokens, w, logits = case(19, 8, 64, 8, 48, "linear", torch.bfloat16)
    with pytest.raises(
        ValueError, match="all arrays must be on one device: .*routing_weights on cpu"
    ):
        fused_moe(tokens, w, logits.cpu(), 2)
    bad = logits.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="routing_weights has non-finite values"):
        fused_moe(tokens, w, bad, 2)
    with pytest.raises(TypeError, match="must have the tokens' dtype bfloat16 on CUDA"):
        fused_moe(tokens, w.half(), logits, 2)
    ids = torch.full((8, 2), 8, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="topk_ids values must be in -1..7"):
        fused_moe(tokens, w, topk_ids=ids, topk_weights=torch.ones(8, 2, device="cuda"))


def test_gpu_cuda_graph_capture_with_workspace():
    tokens, w, logits = case(20, 96, 64, 8, 48, "ffn", torch.bfloat16)
    n = fused_moe_workspace_size(tokens, w, logits, 2)
    workspace = torch.empty(max(n, 1), dtype=torch.uint8, device="cuda")
    out = torch.empty(96, 64, dtype=torch.bfloat16, device="cuda")
    eager = fused_moe(tokens, w, logits, 2, out=out, workspace=workspace).clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fused_moe(tokens, w, logits, 2, out=out, workspace=workspace)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)


def test_gpu_small_workspace_is_an_error():
    tokens, w, logits = case(21, 96, 64, 8, 48, "linear", torch.bfloat16)
    n = fused_moe_workspace_size(tokens, w, logits, 2)
    if n == 0:
        pytest.skip("this path needs no workspace")
    small = torch.empty(n - 1, dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError, match=f"workspace must hold at least {n} bytes"):
        fused_moe(tokens, w, logits, 2, workspace=small)


def test_gpu_on_other_stream():
    tokens, w, logits = case(22, 64, 64, 8, 48, "linear", torch.bfloat16)
    want = fused_moe(tokens, w, logits, 2)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = fused_moe(tokens, w, logits, 2)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert torch.equal(got, want)
    assert math.isfinite(float(got.float().abs().sum()))


def test_gpu_unaligned_views():
    # Views at an odd element offset (2-byte aligned) work and give the aligned result.
    tokens, w, logits = case(23, 40, 64, 8, 48, "linear", torch.bfloat16)
    want = fused_moe(tokens, w, logits, 2)
    flat = torch.empty(tokens.numel() + 1, dtype=tokens.dtype, device="cuda")
    shifted = flat[1:].view(tokens.shape)
    shifted.copy_(tokens)
    out_flat = torch.full((want.numel() + 1,), float("nan"), dtype=want.dtype, device="cuda")
    out = out_flat[1:].view(want.shape)
    got = fused_moe(shifted, w, logits, 2, out=out)
    assert got is out and torch.equal(out, want)
