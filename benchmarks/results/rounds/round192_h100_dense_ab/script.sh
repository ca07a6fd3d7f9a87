#!/usr/bin/env bash
# Round 192 (H100): v0.38d at 48a4d9e, dsv3 and prefill A/B with long runs (100 reps: the power-capped state),
# both paths, three alternations; nvidia-smi at 100 ms.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv -lms 100 > $OUT/smi.csv 2>&1 &
SMI=$!
for run in d0:1 def:1 m0:1 mdef:1 def:2 d0:2 mdef:2 m0:2 d0:3 def:3 m0:3 mdef:3; do
  m=${run%%:*}; rep=${run##*:}
  LEFT=$((150-(SECONDS-T0))); [ $LEFT -lt 20 ] && break
  unset FLASHMOE_FP8_A_DENSE FLASHMOE_FUSED
  case $m in d0|m0) export FLASHMOE_FP8_A_DENSE=0;; esac
  case $m in m0|mdef) export FLASHMOE_FUSED=0;; esac
  echo "$m $rep $(date +%H:%M:%S.%N)" >> $OUT/marks.txt
  timeout $LEFT $B --fp8 channel --reps 100 --warmup 10 --config dsv3 --config prefill --json $OUT/bench_${m}_r$rep.json > $OUT/bench_${m}_r$rep.log 2>&1
  echo "$m rep $rep rc=$? at $((SECONDS-T0)) s:"; grep -A3 "median/min/max" $OUT/bench_${m}_r$rep.log | tail -2 | cut -c1-60
done
kill $SMI
(cd $OUT && cat bench_*_r*.log > bench_all.log && tar czf bench.tgz bench_*.json smi.csv marks.txt 2>/dev/null && rm -f bench_*.json bench_*_r*.log smi.csv marks.txt)
echo "total $((SECONDS-T0)) s"
