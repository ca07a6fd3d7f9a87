"""Shared fixtures and input builders. Every test draws fresh random inputs from its own seed
(derived from the test's id), never zeros."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

try:
    import torch
except ImportError:
    torch = None

requires_torch = pytest.mark.skipif(
    torch is None, reason="torch not installed: torch tests not run"
)


@pytest.fixture
def rng(request):
    """A generator seeded per test, so every test has its own reproducible random inputs."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def randn(rng, *shape, dtype=np.float32, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def linear_case(rng, T=32, H=64, E=12, D=48, lead=None, dtype=np.float32):
    """(tokens, W [E, H, D], logits [T, E]) with weights scaled so outputs are O(1)."""
    shape = (T, H) if lead is None else tuple(lead) + (H,)
    tokens = randn(rng, *shape, dtype=dtype)
    w = randn(rng, E, H, D, dtype=dtype, scale=H**-0.5)
    logits = randn(rng, int(np.prod(shape[:-1])), E, dtype=np.float32)
    return tokens, w, logits


def ffn_case(rng, T=24, H=32, E=6, I=16, dtype=np.float32):
    """(tokens [T, H], (w_gate_up [E, H, 2I], w_down [E, I, H]), logits [T, E])."""
    tokens = randn(rng, T, H, dtype=dtype)
    wgu = randn(rng, E, H, 2 * I, dtype=dtype, scale=H**-0.5)
    wd = randn(rng, E, I, H, dtype=dtype, scale=I**-0.5)
    logits = randn(rng, T, E, dtype=np.float32)
    return tokens, (wgu, wd), logits


def e4m3_checkpoint(w, scale):
    """An FP8 checkpoint of out_in weights [..., N, K] as DeepSeek-V3 ships one, quantized here on
    the CPU in float32 (not by flashmoe): scale = amax / 448 (1 for an all-zero group) per output
    channel or per 128 x 128 block, q = e4m3(w / scale). Returns (q [..., N, K] float8_e4m3fn,
    scales [..., N] or [..., ceil(N/128), ceil(K/128)], q * scale in float64, where it is exact)."""
    w = w.float().cpu()
    N, K = w.shape[-2:]
    lead = w.shape[:-2]
    if scale == "channel":
        amax = w.abs().amax(dim=-1)
        s = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
        full = s[..., None]
    else:
        nb, kb = -(-N // 128), -(-K // 128)
        pad = torch.nn.functional.pad(w, (0, kb * 128 - K, 0, nb * 128 - N))
        amax = pad.view(*lead, nb, 128, kb, 128).abs().amax(dim=(-3, -1))
        s = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
        full = s.repeat_interleave(128, -2).repeat_interleave(128, -1)[..., :N, :K]
    q = (w / full).to(torch.float8_e4m3fn)
    return q, s, q.double() * full.double()
