#!/usr/bin/env bash
# Round 222: the new dense-row cases of GpuSmallFp8Fwd.DenseRowsManySlots (capacity drop and
# reroute with an expert_map, both paths bit for bit) and its memcheck, plus the FP8 forward suites.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b && gunzip -c $D/bin/flashmoe_tests.gz > /tmp/b/flashmoe_tests && chmod +x /tmp/b/flashmoe_tests
timeout 150 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.*:GpuFp8Fwd.*:Fp8FwdHost.*' > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|SKIPPED" $OUT/gtest.log | head -8
timeout 120 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.DenseRowsManySlots' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -4
echo "total $((SECONDS-T0)) s"
