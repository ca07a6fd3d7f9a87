#!/usr/bin/env bash
# Round 200: v0.41 (side combine) vs v0.40 (65c009b) and v0.41 with FLASHMOE_FUSED_SIDE_COMBINE=0:
# every gtest, memcheck, C++ bench A/B (prefill 100 reps; seed, decode-1), new timeline.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/o && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_old/flashmoe_bench.gz > /tmp/o/flashmoe_bench; chmod +x /tmp/o/flashmoe_bench
G=/tmp/b/flashmoe_tests
timeout 200 $G --gtest_brief=1 > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; tail -2 $OUT/gtest.log; grep -E "^\[  FAILED|Failure|rror" $OUT/gtest.log | head -8
timeout 150 compute-sanitizer --tool memcheck --print-limit 8 $G --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.DenseRowsManySlots:GpuSmallFp8Fwd.FusedCapacityManyCtas:GpuFp8Fwd.LinearSeedK' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s: $(grep 'ERROR SUMMARY' $OUT/memcheck.log)"
for run in old:1 new:1 off:1 off:2 new:2 old:2 old:3 off:3 new:3; do
  m=${run%%:*}; rep=${run##*:}
  LEFT=$((480-(SECONDS-T0))); [ $LEFT -lt 30 ] && break
  B=/tmp/b/flashmoe_bench; [ $m = old ] && B=/tmp/o/flashmoe_bench
  unset FLASHMOE_FUSED_SIDE_COMBINE; [ $m = off ] && export FLASHMOE_FUSED_SIDE_COMBINE=0
  timeout $LEFT $B --fp8 channel --reps 100 --warmup 10 --config prefill --config seed --config decode-1 > $OUT/b_${m}_r$rep.log 2>&1
  echo "$m $rep rc=$?: $(grep -E '^(decode|prefill|seed)' $OUT/b_${m}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
done
unset FLASHMOE_FUSED_SIDE_COMBINE
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log)
LEFT=$((560-(SECONDS-T0)))
[ $LEFT -gt 20 ] && FLASHMOE_FUSED_TIMELINE=1 timeout $LEFT /tmp/b/flashmoe_bench --fp8 channel --reps 10 --warmup 3 --config prefill > $OUT/tl_new.log 2>&1; grep timeline $OUT/tl_new.log | cut -c1-1500
echo "total $((SECONDS-T0)) s"
