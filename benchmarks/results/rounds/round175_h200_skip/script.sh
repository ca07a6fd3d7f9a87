#!/usr/bin/env bash
# Round 175: EXPERIMENT, timing only: FLASHMOE_FP8_EXPERIMENT_SKIP (bit 0 token-row copies, bit 1
# weight TMA) on the multi-kernel prefill GEMM (m128, m64, m64d), and the one kernel.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench; G=/tmp/b/flashmoe_tests
for run in m128s0:1 m128s1:1 m128s2:1 m128s3:1 m64s3:1 m64ds3:1 m64s0:1 m64ds0:1 fuseds3:1 m128s0:2 m128s1:2 m128s2:2 m128s3:2 m64s3:2 m64ds3:2 fuseds0:2 fuseds3:2; do
  m=${run%%:*}; rep=${run##*:}
  LEFT=$((400-(SECONDS-T0))); [ $LEFT -lt 30 ] && break
  unset FLASHMOE_SM90_VARIANT FLASHMOE_FUSED FLASHMOE_FP8_EXPERIMENT_SKIP
  export FLASHMOE_FP8_EXPERIMENT_SKIP=${m##*s}
  case $m in fused*) ;; *) export FLASHMOE_FUSED=0;; esac
  case $m in m64s*) export FLASHMOE_SM90_VARIANT=m64;; m64ds*) export FLASHMOE_SM90_VARIANT=m64d;; esac
  timeout $LEFT $B --fp8 channel --reps 20 --warmup 3 --config prefill --json $OUT/bench_${m}_r$rep.json > $OUT/bench_${m}_r$rep.log 2>&1
  echo "$m rep $rep rc=$? at $((SECONDS-T0)) s: $(grep -A2 'median/min/max' $OUT/bench_${m}_r$rep.log | tail -1 | cut -c1-60) | $(grep -o 'sm90_fp8_pipelined_kernel [0-9.]*\|fused_sm90_fp8_kernel [0-9.]*' $OUT/bench_${m}_r$rep.log)"
done
(cd $OUT && cat bench_*_r*.log > bench_all.log && tar czf bench.tgz bench_*.json 2>/dev/null && rm -f bench_*.json bench_*_r*.log)
echo "total $((SECONDS-T0)) s"
