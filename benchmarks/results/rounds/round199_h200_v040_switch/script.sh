#!/usr/bin/env bash
# Round 199: v0.40 with FLASHMOE_FP8_ROW_SCALES=0 (same binary, the epilogue's own loads) vs its
# default vs v0.39 (1f0f658): decode-1 (200 reps) and prefill (100 reps), three alternations.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/o && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_old/flashmoe_bench.gz > /tmp/o/flashmoe_bench; chmod +x /tmp/o/flashmoe_bench
for run in old:1 new:1 off:1 off:2 new:2 old:2 old:3 off:3 new:3; do
  m=${run%%:*}; rep=${run##*:}
  LEFT=$((300-(SECONDS-T0))); [ $LEFT -lt 20 ] && break
  B=/tmp/b/flashmoe_bench; [ $m = old ] && B=/tmp/o/flashmoe_bench
  unset FLASHMOE_FP8_ROW_SCALES; [ $m = off ] && export FLASHMOE_FP8_ROW_SCALES=0
  timeout $LEFT $B --fp8 channel --reps 200 --warmup 20 --config decode-1 > $OUT/b_${m}_r$rep.log 2>&1
  timeout $LEFT $B --fp8 channel --reps 100 --warmup 10 --config prefill >> $OUT/b_${m}_r$rep.log 2>&1
  echo "$m $rep: $(grep -E '^(decode|prefill)' $OUT/b_${m}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log)
echo "total $((SECONDS-T0)) s"
