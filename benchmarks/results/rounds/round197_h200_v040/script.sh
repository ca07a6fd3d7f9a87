#!/usr/bin/env bash
# Round 197: v0.40 (the row scales copied with the channel scales) against v0.39 (1f0f658):
# every gtest, memcheck, then old vs new
# C++ bench A/B (100 reps) on prefill / seed / dsv3 / decode-1, and the new build's timeline.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/o && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_old/flashmoe_bench.gz > /tmp/o/flashmoe_bench; chmod +x /tmp/o/flashmoe_bench
G=/tmp/b/flashmoe_tests
timeout 200 $G --gtest_brief=1 > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; tail -2 $OUT/gtest.log; grep -E "^\[  FAILED" $OUT/gtest.log | head
timeout 150 compute-sanitizer --tool memcheck --print-limit 8 $G --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.DenseRowsManySlots:GpuSmallFp8Fwd.FfnSiluAndGelu:GpuFp8Fwd.LinearSeedK' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s: $(grep 'ERROR SUMMARY' $OUT/memcheck.log)"
for run in old:1 new:1 new:2 old:2 old:3 new:3; do
  m=${run%%:*}; rep=${run##*:}
  LEFT=$((500-(SECONDS-T0))); [ $LEFT -lt 30 ] && break
  B=/tmp/b/flashmoe_bench; [ $m = old ] && B=/tmp/o/flashmoe_bench
  timeout $LEFT $B --fp8 channel --reps 100 --warmup 10 --config prefill --config seed --config dsv3 --config decode-1 > $OUT/bench_${m}_r$rep.log 2>&1
  echo "$m rep $rep rc=$? at $((SECONDS-T0)) s:"; grep -A6 "median/min/max" $OUT/bench_${m}_r$rep.log | grep -E "^(prefill|seed|dsv3|decode)" | cut -c1-60
done
LEFT=$((560-(SECONDS-T0)))
[ $LEFT -gt 20 ] && FLASHMOE_FUSED_TIMELINE=1 timeout $LEFT /tmp/b/flashmoe_bench --fp8 channel --reps 10 --warmup 3 --config prefill --config seed --config dsv3 > $OUT/tl_new.log 2>&1 && grep timeline $OUT/tl_new.log | cut -c1-900
echo "total $((SECONDS-T0)) s"
