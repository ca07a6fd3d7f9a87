#!/usr/bin/env bash
# Round 198: v0.40 vs v0.39 at decode (round 197 saw decode-1 +3 us in two of three runs):
# decode-1, dsv3-tp8, decode-16, six alternations of 200 reps, then the timeline of each at decode-1.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/o && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_old/flashmoe_bench.gz > /tmp/o/flashmoe_bench; chmod +x /tmp/o/flashmoe_bench
for run in old:1 new:1 new:2 old:2 old:3 new:3 new:4 old:4 old:5 new:5 new:6 old:6; do
  m=${run%%:*}; rep=${run##*:}
  LEFT=$((200-(SECONDS-T0))); [ $LEFT -lt 20 ] && break
  B=/tmp/b/flashmoe_bench; [ $m = old ] && B=/tmp/o/flashmoe_bench
  timeout $LEFT $B --fp8 channel --reps 200 --warmup 20 --config decode-1 --config decode-16 > $OUT/b_${m}_r$rep.log 2>&1
  timeout $LEFT $B --fp8 block128 --reps 200 --warmup 20 --config dsv3-tp8 >> $OUT/b_${m}_r$rep.log 2>&1
  echo "$m $rep: $(grep -E '^(decode|dsv3)' $OUT/b_${m}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log)
for m in old new; do
  B=/tmp/b/flashmoe_bench; [ $m = old ] && B=/tmp/o/flashmoe_bench
  FLASHMOE_FUSED_TIMELINE=1 timeout 30 $B --fp8 channel --reps 20 --warmup 5 --config decode-1 > $OUT/tl_$m.log 2>&1; echo "$m: $(grep timeline $OUT/tl_$m.log | cut -c1-1200)"
done
echo "total $((SECONDS-T0)) s"
