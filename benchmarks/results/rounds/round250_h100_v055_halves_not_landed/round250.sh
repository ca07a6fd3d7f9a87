#!/usr/bin/env bash
# Round 250: which half of v0.55 moved the T = 1 forward: v0.54 (p), v0.55 (b), v0.55's epilogue
# change alone (c), its single combine call site alone (d); alternating 100-rep runs, then the
# dsv3-tp8 timelines of p and b.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L
for v in p b c d; do mkdir -p /tmp/$v; done
gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench
gunzip -c $D/bin/flashmoe_bench.gz > /tmp/b/flashmoe_bench
gunzip -c $D/bin_c/flashmoe_bench.gz > /tmp/c/flashmoe_bench
gunzip -c $D/bin_d/flashmoe_bench.gz > /tmp/d/flashmoe_bench; chmod +x /tmp/?/flashmoe_bench
for rep in 1 2 3 4; do
  for v in p b c d; do
    timeout 120 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 --config decode-16 > $OUT/b_${v}_r$rep.log 2>&1
    echo "$v $rep: $(grep -E '^(seed|dsv3|decode)' $OUT/b_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
  done
done
export FLASHMOE_FUSED_TIMELINE=1
for v in p b; do
  timeout 60 /tmp/$v/flashmoe_bench --fp8 channel --reps 10 --warmup 3 --config dsv3-tp8 > $OUT/tl_$v.log 2>&1
  echo "tl $v: $(grep -oE 'median [0-9.]+ ms|first:K-done [0-9./]+|first:split-done [0-9./]+|slot-released [0-9./]+|item:1st-full [0-9./]+|item:K-done [0-9./]+|item:epi-done [0-9./]+|combined [0-9./]+' $OUT/tl_$v.log | head -9 | tr '\n' ' ')"
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log && tar czf tl.tgz tl_*.log && rm -f tl_*.log)
echo "total $((SECONDS-T0)) s"
