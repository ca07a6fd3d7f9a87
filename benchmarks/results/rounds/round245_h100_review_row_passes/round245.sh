#!/usr/bin/env bash
# Round 245: review -- the row quantization's passes as shared pieces (token_quantize.cuh). Only
# the scales-only pre-pass kernel's SASS changed; the FP8 token, scale and forward gtests (every
# forward test runs FLASHMOE_FP8_ACT=gather, whose scales that kernel writes), memcheck on two.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b; gunzip -c $D/bin/flashmoe_tests.gz > /tmp/b/flashmoe_tests; chmod +x /tmp/b/*
timeout 150 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8.*:GpuSmallFp8Fwd.*:GpuFp8Fwd.*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -8
timeout 60 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8.TokenScales:GpuSmallFp8Fwd.LinearSeedLike' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
echo "total $((SECONDS-T0)) s"
