#!/usr/bin/env bash
# Round 236: v0.50 (T = 1: the row by seven warps; warp 0's release routine warmed by a dry run):
# the T = 1 tests first (a hang shows here), every gtest, sanitizers on the T = 1 suites,
# timelines, then alternating 100-rep runs of 38a00fb (p), rows-only (r) and v0.50 (b).
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/p /tmp/r
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench
gunzip -c $D/bin_rows/flashmoe_bench.gz > /tmp/r/flashmoe_bench; chmod +x /tmp/b/* /tmp/p/* /tmp/r/*
SOLO='GpuSmallFp8Fwd.SingleToken*:GpuSmallFp8Fwd.TwoAndThreeTokens:GpuSmallFp8Fwd.Solo*:GpuSmallFp8Fwd.SplitKDecode:GpuSmallFp8Fwd.GraphCaptureReplaysBitwise:GpuSmallFp8Fwd.ZeroedWorkspaceServesEveryRun:GpuSmallFp8Fwd.ExpertMap*'
timeout 90 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter="$SOLO" > $OUT/gtest_solo.log 2>&1; echo "solo gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure|Expected|Which is|single|1, 8, 2" $OUT/gtest_solo.log | head -16
timeout 170 /tmp/b/flashmoe_tests --gtest_brief=1 > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED" $OUT/gtest.log | head -8
F1='GpuSmallFp8Fwd.SingleToken*:GpuSmallFp8Fwd.Solo*'
timeout 120 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter="$F1" > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -4
timeout 90 compute-sanitizer --tool synccheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SingleToken*' > $OUT/synccheck.log 2>&1; echo "synccheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/synccheck.log | head -4
timeout 120 compute-sanitizer --tool racecheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SingleToken*' > $OUT/racecheck.log 2>&1; echo "racecheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $OUT/racecheck.log | head -4
export FLASHMOE_FUSED_TIMELINE=1
for v in p r b; do
  for c in decode-1 dsv3-tp8; do
    timeout 60 /tmp/$v/flashmoe_bench --fp8 channel --reps 10 --warmup 3 --config $c > $OUT/tl_${v}_$c.log 2>&1
    echo "$v $c: $(grep -oE 'median [0-9.]+ ms|tk:selected [0-9./]+|fast:written [0-9./]+|row:e4m3\(t0\) [0-9./]+|dispatched [0-9./]+|barrier2 [0-9./]+|item:1st-TMA [0-9./]+|item:last-TMA [0-9./]+|combined [0-9./]+' $OUT/tl_${v}_$c.log | head -12 | tr '\n' ' ')"
  done
done
unset FLASHMOE_FUSED_TIMELINE
echo "timeline done at $((SECONDS-T0)) s"
for rep in 1 2 3 4; do
  for v in p r b; do
    timeout 90 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config decode-1 --config dsv3-tp8 --config decode-16 > $OUT/b_${v}_r$rep.log 2>&1
    echo "$v $rep: $(grep -E '^(seed|dsv3|decode)' $OUT/b_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
  done
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log && tar czf timeline_logs.tgz tl_*.log && rm -f tl_*.log)
echo "total $((SECONDS-T0)) s"
