#!/usr/bin/env bash
# Round 259: the final code (v0.56's kernels) -- all gtests, memcheck on the split-K GEMM and FFN
# suites, racecheck on the slot finisher's test.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done; chmod +x /tmp/b/*
timeout 240 /tmp/b/flashmoe_tests --gtest_brief=1 > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -8
timeout 150 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8.*SplitK*:GpuSmallFp8Fwd.FfnSlotFinish:GpuSmallFp8Fwd.FfnSiluAndGelu' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
timeout 150 compute-sanitizer --tool racecheck --racecheck-report hazard /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SplitKDecode' > $OUT/racecheck.log 2>&1; echo "racecheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $OUT/racecheck.log | head -4
echo "total $((SECONDS-T0)) s"
