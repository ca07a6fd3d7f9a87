#!/usr/bin/env bash
# Round 178: EXPERIMENT v0.38b debug: memcheck of the multi-kernel forward with FLASHMOE_FP8_A_DENSE=1.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench
export FLASHMOE_FUSED=0 FLASHMOE_FP8_A_DENSE=1 FLASHMOE_PRINT_CONFIG=1
timeout 200 compute-sanitizer --tool memcheck --print-limit 20 $B --fp8 channel --reps 1 --warmup 0 --config seed --tokens 512 > $OUT/memcheck_seed512.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"
grep -m3 -A12 "Invalid\|Error\|error" $OUT/memcheck_seed512.log | head -60
grep -i "prequant\|config" $OUT/memcheck_seed512.log | head -5
echo "total $((SECONDS-T0)) s"
