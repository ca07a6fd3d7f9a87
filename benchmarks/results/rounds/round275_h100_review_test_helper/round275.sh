#!/usr/bin/env bash
# Round 275 (H100): review of check_fp8 (one helper for its switch-off runs, the mirror's own-h
# branch folded) -- the FP8 forward gtests. -> $OUT.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b; gunzip -c $D/bin/flashmoe_tests.gz > /tmp/b/flashmoe_tests; chmod +x /tmp/b/*
timeout 200 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.*:GpuFp8Fwd.*:Fp8FwdHost.*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -8
echo "per-GEMM lines: $(grep -cE 'h rows vs mirror' $OUT/gtest.log), GEMV lines: $(grep -cE 'down GEMV vs' $OUT/gtest.log)"
