#!/usr/bin/env bash
# The main-job command (README): the same setup as scripts/test.sh, a build of the Python
# extension, then the seed benchmark when a GPU is present, else a small CPU example.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/test.sh
source "$ROOT/scripts/test.sh"

setup_system no
setup_python numpy nanobind cutlass_library
build "$ROOT/build/run" -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_BUILD_PYTHON=ON
export PYTHONPATH="$ROOT/build/run/python${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"

if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  nvidia-smi -L
  log "benchmark: python -m benchmarks.bench_moe --config seed"
  exec "$PY" -m benchmarks.bench_moe --config seed
fi

log "CPU example (the seed's call)"
"$PY" - <<'PY'
import numpy as np
from flashmoe_science import fused_moe

rng = np.random.default_rng(0)
tokens = rng.standard_normal((2, 16, 64)).astype(np.float32)          # [batch, seq, H]
expert_weights = (rng.standard_normal((12, 64, 48)) / 8).astype(np.float32)  # [E, H, D]
routing_weights = rng.standard_normal((32, 12)).astype(np.float32)    # [batch*seq, E]
output = fused_moe(tokens, expert_weights, routing_weights, top_k=8)
_, stats = fused_moe(tokens, expert_weights, routing_weights, top_k=8, return_stats=True)
print(f"output shape: {tuple(output.shape)}")
print(f"kernel path: {stats.kernel_path}")
print(f"expert load: {stats.expert_load.tolist()} (max/mean {stats.load_max_mean_ratio:.3f})")
print("no GPU found: ran the CPU reference")
PY
