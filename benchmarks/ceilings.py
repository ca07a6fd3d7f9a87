"""The GPU's ceilings, measured once per run (METHOD.md "Two numbers first").

copy_gbps:   a large device-to-device copy, bytes read plus bytes written per second.
bf16_tflops: torch.matmul of two random bf16 8192x8192 matrices.
fp8_tflops:  torch._scaled_mm of two random float8_e4m3fn 8192x8192 matrices (tensor-wise
             scales, bf16 output, fast accumulation: the most the fp8 units give).
Each is the median of many CUDA-event-timed reps after warm-up, on random data (never zeros).
"""

from __future__ import annotations

import statistics

import torch

from benchmarks import timing

COPY_BYTES = 1 << 30  # 1 GiB each way: far beyond L2
GEMM_N = 8192


def _median_ms(fn, mode: str) -> float:
    return statistics.median(timing.bench(fn, [()], mode))


def copy_gbps(mode: str) -> float:
    src = torch.randn(COPY_BYTES // 4, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), mode)
    return 2 * COPY_BYTES / (ms / 1e3) / 1e9


def bf16_tflops(mode: str) -> float:
    a = torch.randn(GEMM_N, GEMM_N, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(GEMM_N, GEMM_N, device="cuda", dtype=torch.bfloat16)
    ms = _median_ms(lambda: torch.matmul(a, b), mode)
    return 2 * GEMM_N**3 / (ms / 1e3) / 1e12


def fp8_tflops(mode: str) -> float:
    fp8 = torch.float8_e4m3fn
    a = torch.randn(GEMM_N, GEMM_N, device="cuda").to(fp8)  # row-major
    b = torch.randn(GEMM_N, GEMM_N, device="cuda").to(fp8).t()  # column-major, as required
    one = torch.ones((), device="cuda", dtype=torch.float32)
    ms = _median_ms(lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16,
                                             use_fast_accum=True), mode)
    return 2 * GEMM_N**3 / (ms / 1e3) / 1e12


def measure(mode: str) -> tuple:
    """(ceilings dict, errors dict): a ceiling that fails is None, with its error recorded."""
    ceilings, errors = {}, {}
    for name, fn in (("copy_gbps", copy_gbps), ("bf16_tflops", bf16_tflops),
                     ("fp8_tflops", fp8_tflops)):
        try:
            ceilings[name] = fn(mode)
        except Exception as e:  # noqa: BLE001 -- recorded, the run goes on
            ceilings[name] = None
            errors[name] = f"{type(e).__name__}: {e}"
        torch.cuda.empty_cache()
    return ceilings, errors
