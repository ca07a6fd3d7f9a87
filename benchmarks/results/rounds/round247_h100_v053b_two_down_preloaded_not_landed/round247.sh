#!/usr/bin/env bash
# Round 247: v0.53b (solo mode: each CTA preloads the weight boxes of its first two down items;
# mode 1: the first only, round 246). FP8 forward gtests + memcheck on the FFN suites, then
# alternating runs of a84c13f (p), v0.53b (b), its modes 0 (o) and 1 (c); dsv3-tp8 timelines.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/p
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench; chmod +x /tmp/b/* /tmp/p/*
timeout 150 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.*:GpuFp8Fwd.*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -8
timeout 200 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.FfnDownLongerThanRing:GpuSmallFp8Fwd.FfnDownPreload:GpuSmallFp8Fwd.SingleToken' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
run() {  # tag binary-dir env
  env $3 timeout 120 /tmp/$2/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 --config decode-16 --config dsv3-16 > $OUT/b_$1_r$rep.log 2>&1
  echo "$1 $rep: $(grep -E '^(seed|dsv3|decode)' $OUT/b_$1_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
}
for rep in 1 2 3 4; do
  run p p X=1; run b b X=1; run o b FLASHMOE_DOWN_PRELOAD=0; run c b FLASHMOE_DOWN_PRELOAD=1
done
export FLASHMOE_FUSED_TIMELINE=1
for v in b o p; do
  d=$v; e=X=1; [ $v = o ] && { d=b; e=FLASHMOE_DOWN_PRELOAD=0; }
  env $e FLASHMOE_TIMELINE_PER_CTA=1 timeout 60 /tmp/$d/flashmoe_bench --fp8 channel --reps 10 --warmup 3 --config dsv3-tp8 > $OUT/tl_$v.log 2>&1
  echo "tl $v: $(grep -oE 'median [0-9.]+ ms|first:K-done [0-9./]+|first:split-done [0-9./]+|slot-released [0-9./]+|item:1st-TMA [0-9./]+|item:1st-full [0-9./]+|item:K-done [0-9./]+|item:epi-done [0-9./]+|combined [0-9./]+' $OUT/tl_$v.log | head -9 | tr '\n' ' ')"
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log && tar czf tl.tgz tl_*.log && rm -f tl_*.log)
echo "total $((SECONDS-T0)) s"
