#!/usr/bin/env bash
# Round 174: EXPERIMENT v0.37b FLASHMOE_FP8_PRODUCER_FENCE=1 (the producer fences its cp.async
# rows; the math warps do not): forward + GEMM gtests with the switch, memcheck, then prefill and
# seed (one kernel and multi-kernel) with and without it, and m64d with it.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench; G=/tmp/b/flashmoe_tests
FLASHMOE_FP8_PRODUCER_FENCE=1 timeout 200 $G --gtest_brief=1 --gtest_filter='GpuSmallFp8*:GpuFp8*:Sm90Fp8Check.*' > $OUT/gtest_pf.log 2>&1; echo "gtest pf rc=$? at $((SECONDS-T0)) s"; tail -2 $OUT/gtest_pf.log; grep -E "^\[  FAILED" $OUT/gtest_pf.log | head -20
FLASHMOE_FP8_PRODUCER_FENCE=1 timeout 90 compute-sanitizer --tool memcheck $G --gtest_brief=1 --gtest_filter='GpuSmallFp8.PlainN512K512E8Channel:GpuSmallFp8Fwd.*Ffn*' > $OUT/memcheck_pf.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep "ERROR SUMMARY" $OUT/memcheck_pf.log
for run in def:1 pf:1 mdef:1 mpf:1 m64dpf:1 def:2 pf:2 mdef:2 mpf:2 m64dpf:2 def:3 pf:3; do
  m=${run%%:*}; rep=${run##*:}
  LEFT=$((480-(SECONDS-T0))); [ $LEFT -lt 30 ] && break
  unset FLASHMOE_FP8_PRODUCER_FENCE FLASHMOE_SM90_VARIANT FLASHMOE_FUSED
  case $m in pf|mpf|m64dpf) export FLASHMOE_FP8_PRODUCER_FENCE=1;; esac
  case $m in mdef|mpf|m64dpf) export FLASHMOE_FUSED=0;; esac
  [ $m = m64dpf ] && export FLASHMOE_SM90_VARIANT=m64d
  timeout $LEFT $B --fp8 channel --reps 20 --warmup 3 --config prefill --config seed --json $OUT/bench_${m}_r$rep.json > $OUT/bench_${m}_r$rep.log 2>&1
  echo "$m rep $rep rc=$? at $((SECONDS-T0)) s:"; grep -A3 'median/min/max' $OUT/bench_${m}_r$rep.log | tail -2
done
unset FLASHMOE_FP8_PRODUCER_FENCE FLASHMOE_SM90_VARIANT FLASHMOE_FUSED
(cd $OUT && cat bench_*_r*.log > bench_all.log && tar czf bench.tgz bench_*.json 2>/dev/null && rm -f bench_*.json bench_*_r*.log)
echo "total $((SECONDS-T0)) s"
