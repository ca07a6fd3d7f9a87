#!/usr/bin/env bash
# Round 215: v0.44 (top-k: untaken scoring branches out of the straight-line code, the parameters
# read once per token, the per-thread scan by key alone): every gtest, memcheck on the routing
# suites, timeline old/new, then alternating 100-rep runs of 58fe261 (old) and the new build.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/o
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_old/flashmoe_bench.gz > /tmp/o/flashmoe_bench; chmod +x /tmp/b/* /tmp/o/*
timeout 150 /tmp/b/flashmoe_tests --gtest_brief=1 > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED" $OUT/gtest.log | head -8
timeout 120 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmall.SigmoidGroupedBiasScaling:GpuSmall.HalfPrecisionScoresWithTies:GpuSmall.NonFiniteScoresAreNeverChosen:GpuSmall.TemperatureAndNoRenormalize:GpuSmallFp8Fwd.*' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -4
export FLASHMOE_FUSED_TIMELINE=1
for v in o b; do
  for c in prefill seed decode-1 dsv3-tp8; do
    timeout 60 /tmp/$v/flashmoe_bench --fp8 channel --reps 10 --warmup 3 --config $c > $OUT/tl_${v}_$c.log 2>&1
    echo "$v $c: $(grep -oE 'tk:scores [0-9./]+|tk:sum [0-9./]+|tk:q [0-9./]+|tk:selected [0-9./]+|top-k\(t0\) [0-9./]+|barrier2 [0-9./]+' $OUT/tl_${v}_$c.log | tr '\n' ' ')"
  done
done
unset FLASHMOE_FUSED_TIMELINE
echo "timeline done at $((SECONDS-T0)) s"
for rep in 1 2 3; do
  for v in o b; do
    timeout 90 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config prefill --config seed --config dsv3 --config decode-1 --config dsv3-tp8 > $OUT/b_${v}_r$rep.log 2>&1
    echo "$v $rep: $(grep -E '^(prefill|seed|dsv3|decode)' $OUT/b_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
  done
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log && tar czf timeline_logs.tgz tl_*.log && rm -f tl_*.log)
echo "total $((SECONDS-T0)) s"
