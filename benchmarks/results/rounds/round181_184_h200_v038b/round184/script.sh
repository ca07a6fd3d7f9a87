#!/usr/bin/env bash
# Round 184: EXPERIMENT v0.38b with the producer-wait fix: gtests, then multi-kernel A/B
# (FLASHMOE_FP8_A_DENSE=0/1) on prefill, seed, dsv3.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench; G=/tmp/b/flashmoe_tests
FLASHMOE_FP8_A_DENSE=1 timeout 200 $G --gtest_brief=1 --gtest_filter='GpuSmallFp8.IdentityGather*:GpuFp8Fwd*:GpuSmallFp8Fwd*' > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; tail -2 $OUT/gtest.log; grep -E "^\[  FAILED" $OUT/gtest.log | head
for run in m0:1 m1:1 m0:2 m1:2 m0:3 m1:3; do
  m=${run%%:*}; rep=${run##*:}
  LEFT=$((460-(SECONDS-T0))); [ $LEFT -lt 30 ] && break
  unset FLASHMOE_FP8_A_DENSE; export FLASHMOE_FUSED=0
  [ $m = m1 ] && export FLASHMOE_FP8_A_DENSE=1
  timeout $LEFT $B --fp8 channel --reps 20 --warmup 3 --config prefill --config seed --config dsv3 --json $OUT/bench_${m}_r$rep.json > $OUT/bench_${m}_r$rep.log 2>&1
  echo "$m rep $rep rc=$? at $((SECONDS-T0)) s:"; grep -A4 'median/min/max' $OUT/bench_${m}_r$rep.log | tail -3 | cut -c1-60; grep -o 'sm90_fp8_pipelined_kernel [0-9.]*\|gather_rows_fp8_kernel [0-9.]*' $OUT/bench_${m}_r$rep.log | tr '\n' ' '; echo
done
(cd $OUT && cat bench_*_r*.log > bench_all.log && tar czf bench.tgz bench_*.json 2>/dev/null && rm -f bench_*.json bench_*_r*.log)
echo "total $((SECONDS-T0)) s"
