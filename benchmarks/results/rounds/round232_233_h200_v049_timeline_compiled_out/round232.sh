#!/usr/bin/env bash
# Round 232: placebo-controlled look at the producer's sensitivity: HEAD's code (p, 08b60e5's
# bench) against the same code with the GEMM body's profiling stamps compiled out (a); four
# alternations of 100 reps at decode-1, dsv3-tp8, decode-16 and seed, twice each build order.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/p /tmp/a
gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench
gunzip -c $D/bin_a/flashmoe_bench.gz > /tmp/a/flashmoe_bench; chmod +x /tmp/?/flashmoe_bench
for rep in 1 2 3 4; do
  for v in p a; do
    timeout 90 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config decode-1 --config dsv3-tp8 --config decode-16 --config seed > $OUT/b_${v}_r$rep.log 2>&1
    echo "$v $rep: $(grep -E '^(dsv3|decode|seed)' $OUT/b_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
  done
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log)
echo "total $((SECONDS-T0)) s"
