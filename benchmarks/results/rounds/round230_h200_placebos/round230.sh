#!/usr/bin/env bash
# Round 230: how much the T = 1 forward moves with code that never runs (placebos): 08b60e5's
# bench (p), the same code plus v0.48's hook compiled in but switched off on the host (a), the
# same code plus a never-taken block at the top of the routing phases (b); four alternations
# of 100 reps at decode-1, dsv3-tp8 and decode-16.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
for v in p a b; do mkdir -p /tmp/$v; done
gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench
gunzip -c $D/bin_a/flashmoe_bench.gz > /tmp/a/flashmoe_bench
gunzip -c $D/bin_b/flashmoe_bench.gz > /tmp/b/flashmoe_bench; chmod +x /tmp/?/flashmoe_bench
for rep in 1 2 3 4; do
  for v in p a b; do
    timeout 90 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config decode-1 --config dsv3-tp8 --config decode-16 > $OUT/b_${v}_r$rep.log 2>&1
    echo "$v $rep: $(grep -E '^(dsv3|decode)' $OUT/b_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
  done
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log)
echo "total $((SECONDS-T0)) s"
