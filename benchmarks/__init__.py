"""flashmoe benchmark harness: `python3 -m benchmarks.bench_moe --config seed` (see README.md).

Modules, one concept each: configs (named shapes and the FLOP/byte arithmetic, pure), report
(the JSON record, the printed table and the README markdown, pure), timing (CUDA-event timing and
kernel counts), ceilings (copy and GEMM rates of this GPU), baselines (the timed MoE forwards and
the float64 reference), plot (tokens/s vs T), bench_moe (the command).
"""
