#!/usr/bin/env bash
# Round 229: v0.48 (solo gated FFN: the down weights prefetched into L2): the solo tests first,
# tests first (a hang shows here), every gtest, memcheck on the solo suites, timelines (v0.47 /
# new), then alternating 100-rep runs of the two at decode-1 and dsv3-tp8 (+ decode-16, seed as
# controls: not solo).
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/p
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench; chmod +x /tmp/b/* /tmp/p/*
SOLO='GpuSmallFp8Fwd.SingleToken:GpuSmallFp8Fwd.OnePassQueueRunsEachItemOnce:GpuSmallFp8Fwd.TwoAndThreeTokens:GpuSmallFp8Fwd.Solo*:GpuSmallFp8Fwd.SplitKDecode:GpuSmallFp8Fwd.GraphCaptureReplaysBitwise:GpuSmallFp8Fwd.ZeroedWorkspaceServesEveryRun:GpuSmallFp8Fwd.ExpertMap*:GpuSmallFp8Fwd.FfnDownLongerThanRing:GpuSmallFp8Fwd.FfnSiluAndGelu'
timeout 90 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter="$SOLO" > $OUT/gtest_solo.log 2>&1; echo "solo gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure|Expected|Which is" $OUT/gtest_solo.log | head -12
timeout 160 /tmp/b/flashmoe_tests --gtest_brief=1 > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED" $OUT/gtest.log | head -8
timeout 120 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SingleToken:GpuSmallFp8Fwd.TwoAndThreeTokens:GpuSmallFp8Fwd.SplitKDecode:GpuSmallFp8Fwd.FfnDownLongerThanRing' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -4
timeout 60 compute-sanitizer --tool synccheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SingleToken' > $OUT/synccheck.log 2>&1; echo "synccheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/synccheck.log | head -4
export FLASHMOE_FUSED_TIMELINE=1
for v in p b; do
  for c in decode-1 dsv3-tp8; do
    timeout 60 /tmp/$v/flashmoe_bench --fp8 channel --reps 10 --warmup 3 --config $c > $OUT/tl_${v}_$c.log 2>&1
    echo "$v $c: $(grep -oE 'median [0-9.]+ ms|tk:selected [0-9./]+|dispatched [0-9./]+|barrier2 [0-9./]+|item:rows [0-9./]+|item:1st-TMA [0-9./]+|item:1st-full [0-9./]+|item:last-TMA [0-9./]+|gemm done [0-9./]+|combined [0-9./]+' $OUT/tl_${v}_$c.log | tr '\n' ' ')"
  done
done
unset FLASHMOE_FUSED_TIMELINE
echo "timeline done at $((SECONDS-T0)) s"
for rep in 1 2 3 4; do
  for v in p b; do
    timeout 90 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 --config seed > $OUT/b_${v}_r$rep.log 2>&1
    echo "$v $rep: $(grep -E '^(seed|dsv3|decode)' $OUT/b_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
  done
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log && tar czf timeline_logs.tgz tl_*.log && rm -f tl_*.log)
echo "total $((SECONDS-T0)) s"
