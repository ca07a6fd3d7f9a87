"""FusedMoE (the nn.Module) on the CPU: loading Hugging Face-style state dicts, forward against an
explicit per-expert PyTorch loop in float64, load errors, torch.compile of a model block."""

import pytest

from conftest import e4m3_checkpoint, requires_torch, torch

pytestmark = requires_torch

if torch is not None:
    import torch.nn.functional as F

    from flashmoe_science import FusedMoE, fused_moe

PREFIX = "model.layers.3."
# style -> (block prefix, names of the gate, up and down projections)
HF_NAMES = {
    "mixtral": ("block_sparse_moe.", "w1", "w3", "w2"),
    "qwen3": ("mlp.", "gate_proj", "up_proj", "down_proj"),
    "deepseek": ("mlp.", "gate_proj", "up_proj", "down_proj"),
}


def hf_state_dict(style, E=8, H=32, I=24, seed=0, bias=False):
    """A decoder layer's state dict in Hugging Face naming (float64, nn.Linear [out, in])."""
    g = torch.Generator().manual_seed(seed)
    block, gate, up, down = HF_NAMES[style]
    p = PREFIX + block
    sd = {
        PREFIX + "input_layernorm.weight": torch.ones(H, dtype=torch.float64),  # not ours
        p + "gate.weight": torch.randn(E, H, generator=g, dtype=torch.float64) * H**-0.5,
    }
    for e in range(E):
        for name, shape, fan_in in ((gate, (I, H), H), (up, (I, H), H), (down, (H, I), I)):
            w = torch.randn(*shape, generator=g, dtype=torch.float64) * fan_in**-0.5
            sd[f"{p}experts.{e}.{name}.weight"] = w
    if bias:
        sd[p + "gate.e_score_correction_bias"] = torch.randn(E, generator=g, dtype=torch.float64)
    return sd


def per_expert_loop(x, sd, style, top_k, scoring="softmax", n_group=None, topk_group=None, rsf=1,
                    logits=None):
    """The MoE block written out in float64, one expert at a time, from the per-expert weights:
    scores, (biased, grouped) top-k selection, renormalized combine weights, SwiGLU experts.
    `logits`: the router's output if given (else x @ gate.weight^T in float64)."""
    block, gate, up, down = HF_NAMES[style]
    p = PREFIX + block
    x = x.double().reshape(-1, x.shape[-1])
    logits = x @ sd[p + "gate.weight"].double().T if logits is None else logits.double().cpu()
    scores = logits.softmax(-1) if scoring == "softmax" else logits.sigmoid()
    bias = sd.get(p + "gate.e_score_correction_bias")
    q = scores if bias is None else scores + bias.double()
    T, E = q.shape
    if n_group is not None:  # group score: best q (sum of the two best with a bias)
        grouped = q.view(T, n_group, E // n_group)
        gscore = grouped.max(-1).values if bias is None else grouped.topk(2, -1).values.sum(-1)
        keep = torch.zeros(T, n_group, dtype=torch.bool)
        keep.scatter_(1, gscore.topk(topk_group, -1).indices, True)
        q = q.masked_fill(~keep.repeat_interleave(E // n_group, 1), float("-inf"))
    ids = q.topk(top_k, -1).indices
    w = scores.gather(1, ids)
    w = w / w.sum(-1, keepdim=True) * rsf
    out = torch.zeros_like(x)
    for e in range(E):
        rows, slots = (ids == e).nonzero(as_tuple=True)
        key = f"{p}experts.{e}.{{}}.weight"
        xe = x[rows]
        h = F.silu(xe @ sd[key.format(gate)].double().T) * (xe @ sd[key.format(up)].double().T)
        out.index_add_(0, rows, w[rows, slots, None] * (h @ sd[key.format(down)].double().T))
    return out


def rel_err(a, b):
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)] if torch else []
)
@pytest.mark.parametrize("style", ["mixtral", "qwen3"])
def test_forward_matches_per_expert_loop(style, dtype, tol):
    sd = {k: v.to(dtype) for k, v in hf_state_dict(style, seed=len(style)).items()}
    moe = FusedMoE.from_state_dict(sd, PREFIX, style, top_k=2)
    assert moe.w_gate_up.dtype == dtype and moe.w_gate_up.shape == (8, 48, 32)
    assert moe.w_down.shape == (8, 32, 24) and moe.e_score_correction_bias is None
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1), dtype=dtype)
    with torch.no_grad():
        got = moe(x)
    assert got.shape == x.shape and got.dtype == dtype
    want = per_expert_loop(x, sd, style, 2).reshape(got.shape)
    assert rel_err(got, want) < tol


def test_deepseek_routing_and_bias():
    sd = hf_state_dict("deepseek", E=8, seed=3, bias=True)
    opts = dict(scoring="sigmoid", n_group=4, topk_group=2, routed_scaling_factor=2.5)
    moe = FusedMoE.from_state_dict(sd, PREFIX, "deepseek", top_k=3, **opts)
    bias = sd[PREFIX + "mlp.gate.e_score_correction_bias"]
    assert moe.e_score_correction_bias.dtype == torch.float32
    assert torch.equal(moe.e_score_correction_bias, bias.float())
    sd[PREFIX + "mlp.gate.e_score_correction_bias"] = bias.float()  # what the module holds
    x = torch.randn(11, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        got = moe(x)
    want = per_expert_loop(x, sd, "deepseek", 3, "sigmoid", 4, 2, rsf=2.5)
    assert rel_err(got, want) < 1e-12


def test_load_into_existing_module_and_state_dict_round_trip():
    sd = hf_state_dict("qwen3", E=6, H=16, I=8)
    moe = FusedMoE(16, 6, 2, 8, dtype=torch.float64)
    assert moe.load_experts_from_state_dict(sd, PREFIX, style="qwen3") is moe
    gate, up = (sd[PREFIX + f"mlp.experts.4.{n}.weight"] for n in ("gate_proj", "up_proj"))
    assert torch.equal(moe.w_gate_up[4], torch.cat([gate, up]))  # [2I, H]: gate rows, then up
    assert torch.equal(moe.w_down[4], sd[PREFIX + "mlp.experts.4.down_proj.weight"])
    copy = FusedMoE(16, 6, 2, 8, dtype=torch.float64)
    copy.load_state_dict(moe.state_dict())
    x = torch.randn(5, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(copy(x), moe(x))


def test_linear_experts():
    moe = FusedMoE(16, 6, 2, out_features=10, dtype=torch.float64)
    assert moe.weight.shape == (6, 10, 16)
    x = torch.randn(3, 4, 16, dtype=torch.float64)
    with torch.no_grad():
        got = moe(x)
        logits = x.reshape(12, 16) @ moe.router.weight.T
        want = fused_moe(x, moe.weight.transpose(1, 2), logits, 2)
    assert got.shape == (3, 4, 10)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_router_cast_is_kept_while_the_weight_is_unchanged():
    """A bf16 router's float32 copy is made once for inference calls and made again after an
    in-place update; the outputs equal the uncached computation either way."""
    moe = FusedMoE(16, 6, 2, out_features=10, dtype=torch.bfloat16)
    x = torch.randn(12, 16, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)

    def want():
        logits = F.linear(x.float(), moe.router.weight.float())
        return fused_moe(x, moe.weight.transpose(1, 2), logits, 2)

    with torch.no_grad():
        y1 = moe(x)
        first = moe.__dict__["_router_cast"][1]
        assert first.dtype == torch.float32
        y2 = moe(x)
        assert moe.__dict__["_router_cast"][1] is first  # kept, not cast again
        assert torch.equal(y1, y2) and torch.equal(y1, want())
        moe.router.weight.mul_(-1.0)  # in place: a new version
        y3 = moe(x)
        assert moe.__dict__["_router_cast"][1] is not first
        assert torch.equal(y3, want()) and not torch.equal(y3, y1)
    with torch.inference_mode():
        moe.router.weight.data = moe.router.weight.data.flip(0)  # new storage
        y4 = moe(x)
    assert not moe.__dict__["_router_cast"][1].is_inference()
    with torch.no_grad():
        assert torch.equal(y4, want())


@pytest.mark.parametrize(
    "edit,error,match",
    [
        ("drop:block_sparse_moe.experts.5.w3.weight", KeyError, "experts.5.w3.weight"),
        ("drop:block_sparse_moe.gate.weight", KeyError, "block_sparse_moe.gate.weight"),
        (
            "shape:block_sparse_moe.experts.2.w2.weight",
            ValueError,
            r"experts.2.w2.weight.*\[32, 24\]",
        ),
        (
            "shape:block_sparse_moe.experts.7.w1.weight",
            ValueError,
            r"experts.7.w1.weight.*\[24, 32\]",
        ),
    ],
)
def test_load_errors_name_the_key(edit, error, match):
    sd = hf_state_dict("mixtral")
    what, key = edit.split(":")
    if what == "drop":
        del sd[PREFIX + key]
    else:
        sd[PREFIX + key] = sd[PREFIX + key][:, :-1]
    with pytest.raises(error, match=match):
        FusedMoE(32, 8, 2, 24).load_experts_from_state_dict(sd, PREFIX, "mixtral")
    with pytest.raises(error, match=match):
        FusedMoE.from_state_dict(sd, PREFIX, "mixtral", top_k=2)


def test_load_errors_style_and_bias():
    sd = hf_state_dict("deepseek", bias=True)
    with pytest.raises(ValueError, match="style must be one of 'mixtral', 'qwen3', 'deepseek'"):
        FusedMoE(32, 8, 2, 24).load_experts_from_state_dict(sd, PREFIX, "llama")
    with pytest.raises(ValueError, match="e_score_correction_bias.*use_correction_bias=True"):
        FusedMoE(32, 8, 2, 24).load_experts_from_state_dict(sd, PREFIX, "deepseek")
    with pytest.raises(KeyError, match="block_sparse_moe.gate.weight"):  # wrong style
        FusedMoE.from_state_dict(sd, PREFIX, "mixtral", top_k=2)


class Block(torch.nn.Module if torch else object):
    """A pre-norm MoE sub-layer: x + FusedMoE(LayerNorm(x))."""

    def __init__(self, moe):
        super().__init__()
        self.norm = torch.nn.LayerNorm(moe.hidden_size, dtype=moe.router.weight.dtype)
        self.moe = moe

    def forward(self, x):
        return x + self.moe(self.norm(x))


def test_compile_block_fullgraph_matches_eager():
    torch._dynamo.reset()
    sd = {k: v.float() for k, v in hf_state_dict("qwen3", seed=5).items()}
    block = Block(FusedMoE.from_state_dict(sd, PREFIX, "qwen3", top_k=2)).eval()
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        eager = block(x)
        compiled = torch.compile(block, fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def fp8_checkpoint(sd, scale="block128"):
    """`sd` with every expert weight quantized as DeepSeek-V3 ships it (conftest.e4m3_checkpoint):
    float8_e4m3fn weight and a float32 `weight_scale_inv` beside it; returns (the FP8 state dict,
    the dequantized float64 weights q * s under the same keys)."""
    fp8, deq = dict(sd), dict(sd)
    for key, w in sd.items():
        if ".experts." in key:
            fp8[key], fp8[key[: -len("weight")] + "weight_scale_inv"], deq[key] = e4m3_checkpoint(
                w, scale
            )
    return fp8, deq


@pytest.mark.parametrize("scale", ["block128", "channel"])
def test_fp8_checkpoint_is_dequantized_on_load(scale):
    # I = 136: the block scales' last row of blocks is partial.
    sd = hf_state_dict("deepseek", E=4, H=32, I=136, seed=5)
    fp8, deq = fp8_checkpoint(sd, scale=scale)
    moe = FusedMoE.from_state_dict(fp8, PREFIX, "deepseek", top_k=2, dtype=torch.float64)
    ref = FusedMoE.from_state_dict(deq, PREFIX, "deepseek", top_k=2, dtype=torch.float64)
    assert torch.equal(moe.w_gate_up, ref.w_gate_up) and torch.equal(moe.w_down, ref.w_down)
    # the dequantized weights are close to, not equal to, the original ones (E4M3 rounding)
    assert 0 < rel_err(moe.w_down[1].detach(), sd[PREFIX + "mlp.experts.1.down_proj.weight"]) < 5e-2


def test_fp8_checkpoint_errors_name_the_key():
    sd = hf_state_dict("deepseek", E=4, H=32, I=24, seed=6)
    fp8, _ = fp8_checkpoint(sd)
    key = PREFIX + "mlp.experts.2.up_proj.weight_scale_inv"
    missing = {k: v for k, v in fp8.items() if k != key}
    with pytest.raises(ValueError, match=r"experts.2.up_proj.weight' is float8_e4m3fn.*weight_scale_inv"):
        FusedMoE.from_state_dict(missing, PREFIX, "deepseek", top_k=2)
    bad = dict(fp8)
    bad[key] = torch.ones(3, 3)
    with pytest.raises(ValueError, match=r"up_proj.weight_scale_inv' must have shape \[1, 1\].*\[24\]"):
        FusedMoE.from_state_dict(bad, PREFIX, "deepseek", top_k=2)
    e5 = dict(fp8)
    w = PREFIX + "mlp.experts.0.gate_proj.weight"
    e5[w] = fp8[w].float().to(torch.float8_e5m2)
    with pytest.raises(TypeError, match="float8_e5m2; FP8 checkpoints are loaded from float8_e4m3fn"):
        FusedMoE.from_state_dict(e5, PREFIX, "deepseek", top_k=2)


def test_precision_option_reaches_fused_moe():
    # precision="fp8" on the CPU runs the reference's fake quantization of the parameters.
    sd = hf_state_dict("qwen3", E=8, H=32, I=24, seed=7)
    x = torch.randn(5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    moe8 = FusedMoE.from_state_dict(sd, PREFIX, "qwen3", top_k=2, precision="fp8")
    moe = FusedMoE.from_state_dict(sd, PREFIX, "qwen3", top_k=2)
    with torch.no_grad():
        logits = F.linear(x, moe.router.weight)
        want = fused_moe(x, moe._experts(), logits, 2, layout="out_in", precision="fp8")
        got, exact = moe8(x), moe(x)
    assert torch.equal(got, want)
    assert 0 < rel_err(got, exact) < 8e-2


@pytest.mark.skipif(
    torch is None or not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
    reason="needs an sm_90 GPU: FP8 module test not run",
)
@pytest.mark.parametrize("fp8_scale", ["block128", "channel"])
def test_gpu_fp8_checkpoint_module_runs_fp8(fp8_scale):
    """An FP8 checkpoint loaded into a bf16 FusedMoE on the GPU and run with precision='fp8':
    close to the float64 per-expert loop on the dequantized weights (the FP8 format's error;
    the routing compared through the same router output and the float32 bias the module holds)."""
    sd = hf_state_dict("deepseek", E=16, H=256, I=128, seed=8, bias=True)
    fp8, deq = fp8_checkpoint(sd)
    opts = dict(scoring="sigmoid", n_group=4, topk_group=2, routed_scaling_factor=2.5)
    moe = FusedMoE.from_state_dict(fp8, PREFIX, "deepseek", top_k=4, dtype=torch.bfloat16,
                                   device="cuda", precision="fp8", fp8_scale=fp8_scale, **opts)
    x = torch.randn(40, 256, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    with torch.no_grad():
        got = moe(x.cuda()).double().cpu()
        # the module's own router output (float32 on the GPU), so both sides route alike
        logits = F.linear(x.cuda().float(), moe.router.weight.float())
    bias = PREFIX + "mlp.gate.e_score_correction_bias"
    deq[bias] = deq[bias].float().double()  # the module keeps it in float32
    want = per_expert_loop(x, deq, "deepseek", 4, scoring="sigmoid", n_group=4, topk_group=2,
                           rsf=2.5, logits=logits)
    assert bool(torch.isfinite(got).all())
    err = rel_err(got, want)
    print(f"fp8 module ({fp8_scale}) vs float64 loop on the dequantized weights: {err:.3e}")
    assert err < 8e-2


# ----------------------------------------------------------------- packed FP8 experts (keep_fp8)


def test_keep_fp8_errors_before_anything_is_copied():
    """keep_fp8=True: the checkpoint is checked whole first (dtype, one scale kind, I % 128 for
    block scales), then the device; a CPU module cannot pack (prepare_experts is GPU-only)."""
    sd = hf_state_dict("deepseek", E=4, H=32, I=24, seed=9)
    fp8, _ = fp8_checkpoint(sd, scale="channel")
    with pytest.raises(ValueError, match="keep_fp8=True packs the experts on the GPU.*device='cuda'"):
        FusedMoE.from_state_dict(fp8, PREFIX, "deepseek", top_k=2, keep_fp8=True)
    with pytest.raises(TypeError, match="keep_fp8=True needs float8_e4m3fn.*experts.0.gate_proj"):
        FusedMoE.from_state_dict(sd, PREFIX, "deepseek", top_k=2, keep_fp8=True)
    mixed = dict(fp8)
    block, _ = fp8_checkpoint(sd, scale="block128")
    for n in ("gate_proj", "up_proj", "down_proj"):
        for suffix in ("weight", "weight_scale_inv"):
            key = PREFIX + f"mlp.experts.3.{n}.{suffix}"
            mixed[key] = block[key]
    with pytest.raises(ValueError, match="experts.3.gate_proj.weight_scale_inv' holds block128 "
                                         "scales but earlier experts hold channel"):
        FusedMoE.from_state_dict(mixed, PREFIX, "deepseek", top_k=2, keep_fp8=True)
    with pytest.raises(ValueError, match=r"intermediate_size % 128 == 0.*got 24"):
        FusedMoE.from_state_dict(block, PREFIX, "deepseek", top_k=2, keep_fp8=True)
    moe = FusedMoE(32, 4, 2, 24)
    with pytest.raises(ValueError, match="quantize_experts_ runs on the GPU.*cpu"):
        moe.quantize_experts_()
    with pytest.raises(ValueError, match="scale must be one of 'channel', 'block128'"):
        moe.quantize_experts_("tensor")
    assert not moe.fp8_packed and moe.w_gate_up is not None  # nothing changed


def test_packed_experts_keep_their_bytes_under_dtype_casts():
    """module.to(dtype) / .half() convert floating buffers as numbers; the packed E4M3 bytes and
    float32 scales must only follow the device. (A PreparedExperts of CPU tensors built here by
    hand: packing itself needs the GPU.)"""
    from flashmoe_science import PreparedExperts

    g = torch.Generator().manual_seed(10)
    w1 = torch.randn(4, 128, 32, generator=g).to(torch.float8_e4m3fn)
    w2 = torch.randn(4, 32, 24, generator=g).to(torch.float8_e4m3fn)
    s1, s2 = torch.rand(4, 48, generator=g) + 0.5, torch.rand(4, 32, generator=g) + 0.5
    prepared = PreparedExperts(w1, s1, w2, s2, "gated_ffn", 4, 32, 0, 24, "channel", "out_in",
                               "float8_e4m3fn", ())
    moe = FusedMoE(32, 4, 2, 24, dtype=torch.float32)
    moe._set_packed(prepared)
    assert moe.fp8_packed and moe.w_gate_up is None and moe.w_down is None
    assert [n for n, _ in moe.named_parameters()] == ["router.weight"]
    keys = set(moe.state_dict())
    assert {"fp8_w1", "fp8_w1_scale", "fp8_w2", "fp8_w2_scale", "router.weight"} <= keys
    assert "w_gate_up" not in keys and "experts=" in repr(moe)
    for cast in (lambda m: m.to(torch.float64), lambda m: m.half(), lambda m: m.bfloat16()):
        cast(moe)
        assert moe.router.weight.dtype != torch.float32  # the router did follow
        assert moe.fp8_w1.dtype == torch.float8_e4m3fn and moe.fp8_w1_scale.dtype == torch.float32
        assert torch.equal(moe.fp8_w1.view(torch.uint8), w1.view(torch.uint8))
        assert torch.equal(moe.fp8_w2_scale, s2)
        assert moe._experts().w1 is moe.fp8_w1 and moe._experts().w2_scale is moe.fp8_w2_scale
    # load_state_dict(assign=True) replaces the buffers: the forward's experts follow them
    sd = moe.state_dict()
    sd["fp8_w2_scale"] = s2 * 2
    moe.load_state_dict(sd, assign=True)
    assert moe._experts().w2_scale is moe.fp8_w2_scale and torch.equal(moe.fp8_w2_scale, s2 * 2)
    with pytest.raises(ValueError, match="already packed"):
        moe.quantize_experts_()
    with pytest.raises(ValueError, match="already packed"):  # either way of loading
        moe.load_experts_from_state_dict({}, PREFIX, "deepseek")
    with pytest.raises(ValueError, match="no parameters to reset"):
        moe.reset_parameters()


requires_sm90 = pytest.mark.skipif(
    torch is None or not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
    reason="needs an sm_90 GPU: packed FP8 module test not run",
)


@requires_sm90
@pytest.mark.parametrize("scale,I", [("block128", 128), ("channel", 96)])
def test_gpu_keep_fp8_packs_the_checkpoint(scale, I):
    """keep_fp8=True: no expert parameters; the buffers are what prepare_experts packs from the
    concatenated checkpoint bit for bit (E = 20: two packing chunks); the forward equals fused_moe
    on that PreparedExperts bit for bit and is close to the float64 loop on the dequantized
    weights; a state-dict round trip into a module packed by quantize_experts_ (same shapes)
    and a move to the CPU and back reproduce it; torch.compile(fullgraph) equals eager."""
    from flashmoe_science import prepare_experts

    E, H = 20, 256
    sd = hf_state_dict("deepseek", E=E, H=H, I=I, seed=11, bias=True)
    fp8, deq = fp8_checkpoint(sd, scale=scale)
    opts = dict(scoring="sigmoid", n_group=4, topk_group=2, routed_scaling_factor=2.5)
    moe = FusedMoE.from_state_dict(fp8, PREFIX, "deepseek", top_k=4, dtype=torch.bfloat16,
                                   device="cuda", keep_fp8=True, **opts)
    assert moe.fp8_packed and [n for n, _ in moe.named_parameters()] == ["router.weight"]
    p = PREFIX + "mlp.experts.{}.{}.weight"
    ps = PREFIX + "mlp.experts.{}.{}.weight_scale_inv"

    def stack(fn):
        return torch.stack([fn(e) for e in range(E)])

    gate_up = ("gate_proj", "up_proj")
    gu = stack(lambda e: torch.cat([fp8[p.format(e, n)].view(torch.uint8) for n in gate_up]))
    dn = stack(lambda e: fp8[p.format(e, "down_proj")].view(torch.uint8))
    s1 = stack(lambda e: torch.cat([fp8[ps.format(e, n)] for n in gate_up]))
    s2 = stack(lambda e: fp8[ps.format(e, "down_proj")])
    want_p = prepare_experts(
        (gu.view(torch.float8_e4m3fn).cuda(), dn.view(torch.float8_e4m3fn).cuda()),
        scale=scale, layout="out_in", weight_scales=(s1.float().cuda(), s2.float().cuda()))
    for got_t, want_t in zip((moe.fp8_w1, moe.fp8_w1_scale, moe.fp8_w2, moe.fp8_w2_scale),
                             (want_p.w1, want_p.w1_scale, want_p.w2, want_p.w2_scale)):
        assert got_t.dtype == want_t.dtype and got_t.shape == want_t.shape
        assert torch.equal(got_t.view(torch.uint8), want_t.view(torch.uint8))
    x = torch.randn(40, H, generator=torch.Generator().manual_seed(12)).to(torch.bfloat16).cuda()
    with torch.no_grad():
        got = moe(x)
        logits = F.linear(x.float(), moe.router.weight.float())
        want = fused_moe(x, want_p, logits, 4, correction_bias=moe.e_score_correction_bias,
                         layout="out_in", precision="fp8", **opts)
    assert torch.equal(got, want)
    bias = PREFIX + "mlp.gate.e_score_correction_bias"
    deq[bias] = deq[bias].float().double()  # the module keeps it in float32
    ref = per_expert_loop(x.cpu(), deq, "deepseek", 4, scoring="sigmoid", n_group=4,
                          topk_group=2, rsf=2.5, logits=logits)
    err = rel_err(got.double().cpu(), ref)
    print(f"keep_fp8 ({scale}) vs float64 loop on the dequantized weights: {err:.3e}")
    assert err < 8e-2
    # state dict -> a module of the same shapes packed by quantize_experts_
    copy = FusedMoE(H, E, 4, I, dtype=torch.bfloat16, device="cuda", use_correction_bias=True,
                    **opts).quantize_experts_(scale)
    copy.load_state_dict(moe.state_dict())
    moe.cpu().cuda()  # the packed experts move with the module (their PreparedExperts too)
    with torch.no_grad():
        assert torch.equal(copy(x), got) and torch.equal(moe(x), got)
        torch._dynamo.reset()
        compiled = torch.compile(moe, fullgraph=True)(x)
    assert torch.equal(compiled, got)


@requires_sm90
@pytest.mark.parametrize("scale", ["channel", "block128"])
def test_gpu_quantize_experts_matches_precision_fp8(scale):
    """quantize_experts_() packs what fused_moe(precision='fp8') quantizes on its first call:
    the packed module's output equals the unpacked one's with precision='fp8', bit for bit, and
    its expert memory is one byte per weight."""
    sd = {k: v.to(torch.bfloat16) for k, v in hf_state_dict("qwen3", E=16, H=256, I=128,
                                                             seed=13).items()}
    kw = dict(top_k=2, device="cuda", precision="fp8", fp8_scale=scale)
    moe = FusedMoE.from_state_dict(sd, PREFIX, "qwen3", **kw)
    packed = FusedMoE.from_state_dict(sd, PREFIX, "qwen3", **kw).quantize_experts_(scale)
    assert packed.fp8_packed and packed.fp8_w1.element_size() == 1
    assert packed.fp8_w1.numel() + packed.fp8_w2.numel() >= 16 * 3 * 128 * 256
    x = torch.randn(33, 256, generator=torch.Generator().manual_seed(14)).to(torch.bfloat16).cuda()
    with torch.no_grad():
        assert torch.equal(packed(x), moe(x))
