#!/usr/bin/env bash
# Round 243 (no change; v0.51's test binary): is racecheck's producer report (rounds 236-237)
# specific to solo mode (thread 0's flag wait before the first tile)? racecheck on a solo test
# (SingleToken), a non-solo one-kernel test (LinearSeedLike, T = 200) and the pre-routed T = 3 one.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L
mkdir -p /tmp/b; gunzip -c $D/bin/flashmoe_tests.gz > /tmp/b/flashmoe_tests; chmod +x /tmp/b/*
for t in GpuSmallFp8Fwd.SingleToken GpuSmallFp8Fwd.LinearSeedLike GpuSmallFp8Fwd.TwoAndThreeTokens; do
  timeout 150 compute-sanitizer --tool racecheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter=$t > $OUT/racecheck_$t.log 2>&1
  echo "$t rc=$? at $((SECONDS-T0)) s: $(grep -E 'RACECHECK SUMMARY' $OUT/racecheck_$t.log) | lines: $(grep -oE 'cuh:[0-9]+' $OUT/racecheck_$t.log | sort | uniq -c | tr '\n' ' ')"
done
echo "total $((SECONDS-T0)) s"
