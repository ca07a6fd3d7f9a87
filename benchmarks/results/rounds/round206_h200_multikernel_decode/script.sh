#!/usr/bin/env bash
# Round 206: the multi-kernel path at decode-16 / decode-128 (graph replay in round 205: 13-16%
# slower than at 9a7aafd): C++ bench at 7d69aa9, FLASHMOE_FUSED=0, with and without
# FLASHMOE_FP8_ROW_SCALES=0, three alternations; and the one kernel for reference.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b && for f in $D/bin/flashmoe_bench.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench
for run in m:1 moff:1 f:1 moff:2 m:2 f:2 m:3 moff:3; do
  k=${run%%:*}; rep=${run##*:}
  unset FLASHMOE_FUSED FLASHMOE_FP8_ROW_SCALES
  case $k in m) export FLASHMOE_FUSED=0;; moff) export FLASHMOE_FUSED=0 FLASHMOE_FP8_ROW_SCALES=0;; esac
  timeout 60 $B --fp8 channel --reps 100 --warmup 10 --config decode-16 --config decode-128 > $OUT/b_${k}_r$rep.log 2>&1
  echo "$k $rep: $(grep -E '^decode' $OUT/b_${k}_r$rep.log | awk '{printf "%s %s | ", $1, $3}') $(grep -E 'stages' $OUT/b_${k}_r$rep.log | head -2 | cut -c1-200 | tr '\n' ' ')"
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log)
echo "total $((SECONDS-T0)) s"
