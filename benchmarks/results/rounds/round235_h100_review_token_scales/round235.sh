#!/usr/bin/env bash
# Round 235: review change (the scales-only pre-pass on row_inv_scale_warp; one vec16 predicate):
# every gtest, memcheck on the suites that run the scales pre-pass (FLASHMOE_FP8_ACT=gather).
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/n; for f in $D/bin/*.gz; do gunzip -c $f > /tmp/n/$(basename $f .gz); done; chmod +x /tmp/n/*
timeout 170 /tmp/n/flashmoe_tests --gtest_brief=1 > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED" $OUT/gtest.log | head -6
timeout 120 compute-sanitizer --tool memcheck /tmp/n/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.LinearSeedLike:GpuSmallFp8Fwd.SingleToken:GpuSmallW8a16.*' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
echo "total $((SECONDS-T0)) s"
