#!/usr/bin/env bash
# Round 209: bisecting the multi-kernel decode regression: the C++ bench
# of the commit in bin_old (built here) and of 7d69aa9 on one card, FLASHMOE_FUSED=0 and the one kernel,
# decode-16 and decode-128, three alternations of 100 reps.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/o
gunzip -c $D/bin/flashmoe_bench.gz > /tmp/b/flashmoe_bench; gunzip -c $D/bin_old/flashmoe_bench.gz > /tmp/o/flashmoe_bench; chmod +x /tmp/b/flashmoe_bench /tmp/o/flashmoe_bench
for run in old:1 new:1 new:2 old:2 old:3 new:3; do
  v=${run%%:*}; rep=${run##*:}
  B=/tmp/b/flashmoe_bench; [ $v = old ] && B=/tmp/o/flashmoe_bench
  for m in multi fused; do
    unset FLASHMOE_FUSED; [ $m = multi ] && export FLASHMOE_FUSED=0
    timeout 60 $B --fp8 channel --reps 100 --warmup 10 --config decode-16 --config decode-128 > $OUT/b_${v}_${m}_r$rep.log 2>&1
    echo "$v $m $rep: $(grep -E '^decode' $OUT/b_${v}_${m}_r$rep.log | awk '{printf "%s %s | ", $1, $3}') $(grep -E 'stages' $OUT/b_${v}_${m}_r$rep.log | head -1 | cut -c1-120)"
  done
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log)
echo "total $((SECONDS-T0)) s"
