#!/usr/bin/env bash
# Round 182: EXPERIMENT v0.38b debug: the failing bench invocation, plain and under memcheck.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench
export FLASHMOE_FUSED=0 FLASHMOE_FP8_A_DENSE=1
for r in "1 0" "3 1"; do set -- $r
  CUDA_LAUNCH_BLOCKING=1 timeout 60 $B --fp8 channel --reps $1 --warmup $2 --config prefill --tokens 512 > $OUT/plain_$1_$2.log 2>&1; echo "plain reps $1 warmup $2 rc=$? $(grep -m1 'illegal\|rror' $OUT/plain_$1_$2.log | cut -c1-160)"; grep "check:\|stages\|time:" $OUT/plain_$1_$2.log | head -4
done
timeout 200 compute-sanitizer --tool memcheck --print-limit 8 $B --fp8 channel --reps 3 --warmup 1 --config prefill --tokens 512 > $OUT/memcheck_3_1.log 2>&1; echo "memcheck rc=$?: $(grep 'ERROR SUMMARY' $OUT/memcheck_3_1.log)"
grep -m2 -A10 "Invalid\|Error:" $OUT/memcheck_3_1.log | cut -c1-220 | head -24
echo "total $((SECONDS-T0)) s"
