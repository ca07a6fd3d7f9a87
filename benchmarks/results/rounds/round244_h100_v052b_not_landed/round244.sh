#!/usr/bin/env bash
# Round 244: v0.52b (one-vector h rows read once): the split-K and T = 1 gtests,
# then alternating 100-rep runs of v0.51 (p) and v0.52b (b), then a timeline of dsv3-tp8.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/p
gunzip -c $D/bin/flashmoe_bench.gz > /tmp/b/flashmoe_bench
gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench; chmod +x /tmp/b/* /tmp/p/*
for rep in 1 2 3 4; do
  for v in p b; do
    timeout 90 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config dsv3-16 --config decode-1 --config dsv3 > $OUT/b_${v}_r$rep.log 2>&1
    echo "$v $rep: $(grep -E '^(seed|dsv3|decode)' $OUT/b_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
  done
done
export FLASHMOE_FUSED_TIMELINE=1
for v in p b; do
  timeout 60 /tmp/$v/flashmoe_bench --fp8 channel --reps 10 --warmup 3 --config dsv3-tp8 > $OUT/tl_$v.log 2>&1
  echo "tl $v: $(grep -oE 'median [0-9.]+ ms|first:K-done [0-9./]+|first:split-done [0-9./]+|slot-released [0-9./]+|item:epi-done [0-9./]+|combined [0-9./]+' $OUT/tl_$v.log | head -8 | tr '\n' ' ')"
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log && tar czf tl.tgz tl_*.log && rm -f tl_*.log)
echo "total $((SECONDS-T0)) s"
