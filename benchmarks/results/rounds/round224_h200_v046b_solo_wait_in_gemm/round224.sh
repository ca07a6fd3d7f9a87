#!/usr/bin/env bash
# Round 224: v0.46b (solo: the waiting CTAs set up the GEMM before the flag): the solo tests first (a hang shows here), every gtest,
# memcheck on the solo suites, timelines (old 0b3d2e6 / new),
# then alternating 100-rep runs of the three at decode-1 and dsv3-tp8 (+ decode-16, seed as
# controls: not solo).
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/o
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_old/flashmoe_bench.gz > /tmp/o/flashmoe_bench; chmod +x /tmp/b/* /tmp/o/*
SOLO='GpuSmallFp8Fwd.SingleToken:GpuSmallFp8Fwd.OnePassQueueRunsEachItemOnce:GpuSmallFp8Fwd.TwoAndThreeTokens:GpuSmallFp8Fwd.Solo*:GpuSmallFp8Fwd.SplitKDecode:GpuSmallFp8Fwd.GraphCaptureReplaysBitwise:GpuSmallFp8Fwd.ZeroedWorkspaceServesEveryRun'
timeout 90 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter="$SOLO" > $OUT/gtest_solo.log 2>&1; echo "solo gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure|Expected|Which is" $OUT/gtest_solo.log | head -12
timeout 160 /tmp/b/flashmoe_tests --gtest_brief=1 > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED" $OUT/gtest.log | head -8
timeout 120 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SingleToken:GpuSmallFp8Fwd.TwoAndThreeTokens:GpuSmallFp8Fwd.Solo*:GpuSmallFp8Fwd.SplitKDecode' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -4
export FLASHMOE_FUSED_TIMELINE=1
for v in o b; do
  bin=/tmp/b/flashmoe_bench; [ $v = o ] && bin=/tmp/o/flashmoe_bench
  for c in decode-1 dsv3-tp8; do
    if [ $v = e ]; then FLASHMOE_SOLO_EARLY=0 timeout 60 $bin --fp8 channel --reps 10 --warmup 3 --config $c > $OUT/tl_${v}_$c.log 2>&1
    else timeout 60 $bin --fp8 channel --reps 10 --warmup 3 --config $c > $OUT/tl_${v}_$c.log 2>&1; fi
    echo "$v $c: $(grep -oE 'median [0-9.]+ ms|tk:selected [0-9./]+|barrier2 [0-9./]+|item:rows [0-9./]+|item:1st-TMA [0-9./]+|item:1st-full [0-9./]+|item:last-TMA [0-9./]+|gemm done [0-9./]+|combined [0-9./]+' $OUT/tl_${v}_$c.log | tr '\n' ' ')"
  done
done
unset FLASHMOE_FUSED_TIMELINE
echo "timeline done at $((SECONDS-T0)) s"
for rep in 1 2 3 4; do
  for v in o b; do
    bin=/tmp/b/flashmoe_bench; [ $v = o ] && bin=/tmp/o/flashmoe_bench
    args="--fp8 channel --reps 100 --warmup 10 --config decode-1 --config dsv3-tp8 --config decode-16 --config seed"
    if [ $v = e ]; then FLASHMOE_SOLO_EARLY=0 timeout 90 $bin $args > $OUT/b_${v}_r$rep.log 2>&1
    else timeout 90 $bin $args > $OUT/b_${v}_r$rep.log 2>&1; fi
    echo "$v $rep: $(grep -E '^(seed|dsv3|decode)' $OUT/b_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
  done
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log && tar czf timeline_logs.tgz tl_*.log && rm -f tl_*.log)
echo "total $((SECONDS-T0)) s"
