#!/usr/bin/env bash
# Round 187: EXPERIMENT v0.38d (dense A rows for the gated FFN): forward gtests, sanitizers on an
# FFN forward, dsv3 A/B on both paths.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench; G=/tmp/b/flashmoe_tests
timeout 200 $G --gtest_brief=1 --gtest_filter='GpuFp8Fwd*:GpuSmallFp8Fwd*:GpuSmallFp8.*:Fp8FwdHost.*' > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; tail -2 $OUT/gtest.log; grep -E "^\[  FAILED" $OUT/gtest.log | head
for tool in memcheck synccheck; do
  timeout 100 compute-sanitizer --tool $tool --print-limit 8 $G --gtest_brief=1 --gtest_filter='GpuFp8Fwd.FfnDownPairs' > $OUT/$tool.log 2>&1; echo "$tool rc=$? at $((SECONDS-T0)) s: $(grep 'ERROR SUMMARY' $OUT/$tool.log)"
done
for run in d0:1 def:1 m0:1 mdef:1 d0:2 def:2 m0:2 mdef:2 d0:3 def:3; do
  m=${run%%:*}; rep=${run##*:}
  LEFT=$((400-(SECONDS-T0))); [ $LEFT -lt 30 ] && break
  unset FLASHMOE_FP8_A_DENSE FLASHMOE_FUSED
  case $m in d0|m0) export FLASHMOE_FP8_A_DENSE=0;; esac
  case $m in m0|mdef) export FLASHMOE_FUSED=0;; esac
  timeout $LEFT $B --fp8 channel --reps 20 --warmup 3 --config dsv3 --json $OUT/bench_${m}_r$rep.json > $OUT/bench_${m}_r$rep.log 2>&1
  echo "$m rep $rep rc=$? at $((SECONDS-T0)) s: $(grep -A2 'median/min/max' $OUT/bench_${m}_r$rep.log | tail -1 | cut -c1-60)"
done
(cd $OUT && cat bench_*_r*.log > bench_all.log && tar czf bench.tgz bench_*.json 2>/dev/null && rm -f bench_*.json bench_*_r*.log)
echo "total $((SECONDS-T0)) s"
