#!/usr/bin/env bash
# Round 173: EXPERIMENT v0.37 m64d (two accumulators per math warpgroup): GEMM gtests (every
# variant bit for bit), memcheck, then prefill multi-kernel m128 / m128 promote 1 / m64 / m64d.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench; G=/tmp/b/flashmoe_tests
timeout 150 $G --gtest_brief=1 --gtest_filter='GpuSmallFp8.*:GpuFp8.*:Sm90Fp8Check.*' > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; tail -2 $OUT/gtest.log; grep -E "^\[  FAILED|m64d" $OUT/gtest.log | head -20
timeout 90 compute-sanitizer --tool memcheck $G --gtest_brief=1 --gtest_filter='GpuSmallFp8.PlainN512K512E8Channel:GpuSmallFp8.GateUpSiluI192K256E8Block128OutInFewCtas' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep "ERROR SUMMARY" $OUT/memcheck.log
for run in m128:1 m128k1:1 m64:1 m64d:1 m128:2 m128k1:2 m64:2 m64d:2 m64d:3 m128:3; do
  m=${run%%:*}; rep=${run##*:}
  LEFT=$((440-(SECONDS-T0))); [ $LEFT -lt 30 ] && break
  unset FLASHMOE_FP8_PROMOTE_KB FLASHMOE_SM90_VARIANT
  export FLASHMOE_FUSED=0
  [ $m = m128k1 ] && export FLASHMOE_FP8_PROMOTE_KB=1
  [ $m = m64 ] && export FLASHMOE_SM90_VARIANT=m64
  [ $m = m64d ] && export FLASHMOE_SM90_VARIANT=m64d
  timeout $LEFT $B --fp8 channel --reps 20 --warmup 3 --config prefill --json $OUT/bench_${m}_r$rep.json > $OUT/bench_${m}_r$rep.log 2>&1
  echo "$m rep $rep rc=$? at $((SECONDS-T0)) s: $(grep -A2 'median/min/max' $OUT/bench_${m}_r$rep.log | tail -1)"
done
unset FLASHMOE_FP8_PROMOTE_KB FLASHMOE_SM90_VARIANT FLASHMOE_FUSED
(cd $OUT && cat bench_*_r*.log > bench_all.log && tar czf bench.tgz bench_*.json 2>/dev/null && rm -f bench_*.json bench_*_r*.log)
echo "total $((SECONDS-T0)) s"
