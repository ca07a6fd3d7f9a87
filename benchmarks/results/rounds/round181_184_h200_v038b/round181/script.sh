#!/usr/bin/env bash
# Round 181: EXPERIMENT v0.38b debug: GEMM-level dense-box mode (identity gather) with the sanitizers.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
G=/tmp/b/flashmoe_tests
F='GpuSmallFp8.IdentityGather*'
timeout 100 $G --gtest_brief=1 --gtest_filter="$F" > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; tail -2 $OUT/gtest.log; grep -E "FAILED|Failure|differs|dense" $OUT/gtest.log | head -20
for tool in memcheck synccheck racecheck; do
  timeout 150 compute-sanitizer --tool $tool --print-limit 8 $G --gtest_brief=1 --gtest_filter='GpuSmallFp8.IdentityGatherManyTilesFewCtas' > $OUT/$tool.log 2>&1; echo "$tool rc=$? at $((SECONDS-T0)) s: $(grep 'ERROR SUMMARY\|RACECHECK SUMMARY' $OUT/$tool.log)"
  grep -m2 -A8 "Error\|Invalid\|Race" $OUT/$tool.log | cut -c1-250 | head -20
done
echo "total $((SECONDS-T0)) s"
