#!/usr/bin/env bash
# Round 190: at 48a4d9e's kernels, prefill (one kernel) with the dense rows under the other
# variants and promotion settings: default m128 / m128h / m64 / promote 1, alternating twice.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench
for run in def:1 h:1 m64:1 kb1:1 def:2 h:2 m64:2 kb1:2; do
  m=${run%%:*}; rep=${run##*:}
  LEFT=$((200-(SECONDS-T0))); [ $LEFT -lt 20 ] && break
  unset FLASHMOE_SM90_VARIANT FLASHMOE_FP8_PROMOTE_KB
  [ $m = h ] && export FLASHMOE_SM90_VARIANT=m128h
  [ $m = m64 ] && export FLASHMOE_SM90_VARIANT=m64
  [ $m = kb1 ] && export FLASHMOE_FP8_PROMOTE_KB=1
  timeout $LEFT $B --fp8 channel --reps 50 --warmup 5 --config prefill --json $OUT/bench_${m}_r$rep.json > $OUT/bench_${m}_r$rep.log 2>&1
  echo "$m rep $rep rc=$? at $((SECONDS-T0)) s: $(grep -A2 'median/min/max' $OUT/bench_${m}_r$rep.log | tail -1 | cut -c1-60)"
done
(cd $OUT && cat bench_*_r*.log > bench_all.log && tar czf bench.tgz bench_*.json 2>/dev/null && rm -f bench_*.json bench_*_r*.log)
echo "total $((SECONDS-T0)) s"
