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
