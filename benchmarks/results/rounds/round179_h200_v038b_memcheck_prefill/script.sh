#!/usr/bin/env bash
# Round 179: EXPERIMENT v0.38b debug: memcheck at prefill sizes with FLASHMOE_FP8_A_DENSE=1.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench
export FLASHMOE_FUSED=0 FLASHMOE_FP8_A_DENSE=1
for t in 4096 16384; do
timeout 200 compute-sanitizer --tool memcheck --print-limit 10 $B --fp8 channel --reps 1 --warmup 0 --config prefill --tokens $t > $OUT/memcheck_$t.log 2>&1; echo "memcheck $t rc=$? at $((SECONDS-T0)) s"
grep -m2 -B2 -A14 "Invalid\|rror" $OUT/memcheck_$t.log | cut -c1-220 | head -40
done
echo "total $((SECONDS-T0)) s"
