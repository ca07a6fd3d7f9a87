#!/usr/bin/env bash
# Round 180: EXPERIMENT v0.38b debug: which kernel faults, at which size (CUDA_LAUNCH_BLOCKING=1).
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench
export FLASHMOE_FUSED=0 FLASHMOE_FP8_A_DENSE=1
for t in 512 2048 4096 8192 16384; do
  CUDA_LAUNCH_BLOCKING=1 timeout 60 $B --fp8 channel --reps 3 --warmup 1 --config prefill --tokens $t > $OUT/lb_$t.log 2>&1; echo "T=$t rc=$? $(grep -m1 'illegal\|rror' $OUT/lb_$t.log | cut -c1-200) $(grep -A2 'median/min/max' $OUT/lb_$t.log | tail -1 | cut -c1-50)"
done
CUDA_LAUNCH_BLOCKING=1 timeout 60 $B --fp8 channel --reps 3 --warmup 1 --config seed > $OUT/lb_seed.log 2>&1; echo "seed rc=$? $(grep -m1 'illegal\|rror' $OUT/lb_seed.log | cut -c1-200)"
echo "total $((SECONDS-T0)) s"
