#!/usr/bin/env bash
# Round 231: v0.48b (the down-weight prefetch from wait_rest): the solo/FFN gtests and memcheck,
# timelines, then 08b60e5's bench (p), v0.48b (n) and v0.48b with FLASHMOE_DOWN_PREFETCH=0 (o),
# four alternations of 100 reps at dsv3-tp8, decode-1 and decode-16.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/p /tmp/n
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/n/$(basename $f .gz); done
gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench; chmod +x /tmp/n/* /tmp/p/*
F='GpuSmallFp8Fwd.SingleToken:GpuSmallFp8Fwd.TwoAndThreeTokens:GpuSmallFp8Fwd.SplitKDecode:GpuSmallFp8Fwd.FfnDownLongerThanRing:GpuSmallFp8Fwd.FfnSiluAndGelu:GpuSmallFp8Fwd.Solo*:GpuSmallFp8Fwd.GraphCaptureReplaysBitwise'
timeout 90 /tmp/n/flashmoe_tests --gtest_brief=1 --gtest_filter="$F" > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED" $OUT/gtest.log | head -5
timeout 120 compute-sanitizer --tool memcheck /tmp/n/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SingleToken:GpuSmallFp8Fwd.TwoAndThreeTokens:GpuSmallFp8Fwd.SplitKDecode:GpuSmallFp8Fwd.FfnDownLongerThanRing' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
export FLASHMOE_FUSED_TIMELINE=1
for v in p n o; do
  bin=/tmp/n/flashmoe_bench; [ $v = p ] && bin=/tmp/p/flashmoe_bench; env=""; [ $v = o ] && env="FLASHMOE_DOWN_PREFETCH=0"
  env $env timeout 60 $bin --fp8 channel --reps 10 --warmup 3 --config dsv3-tp8 > $OUT/tl_$v.log 2>&1
  echo "$v: $(grep -oE 'median [0-9.]+ ms|first:K-done [0-9./]+|slot-released [0-9./]+|item:rows [0-9./]+|item:1st-TMA [0-9./]+|item:1st-full [0-9./]+|item:K-done [0-9./]+|combined [0-9./]+' $OUT/tl_$v.log | tr '\n' ' ')"
done
unset FLASHMOE_FUSED_TIMELINE
for rep in 1 2 3 4; do
  for v in p n o; do
    bin=/tmp/n/flashmoe_bench; [ $v = p ] && bin=/tmp/p/flashmoe_bench; env=""; [ $v = o ] && env="FLASHMOE_DOWN_PREFETCH=0"
    env $env timeout 90 $bin --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 --config decode-16 > $OUT/b_${v}_r$rep.log 2>&1
    echo "$v $rep: $(grep -E '^(dsv3|decode)' $OUT/b_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
  done
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log && tar czf timeline_logs.tgz tl_*.log && rm -f tl_*.log)
echo "total $((SECONDS-T0)) s"
