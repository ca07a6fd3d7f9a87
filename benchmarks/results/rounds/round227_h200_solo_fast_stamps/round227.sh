#!/usr/bin/env bash
# Round 227: where v0.47's ~3 us between CTA 0's selection and its flag go: timelines with the
# new stamps (row quantized, inputs written), per CTA at decode-1; no code change otherwise.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done; chmod +x /tmp/b/*
export FLASHMOE_FUSED_TIMELINE=1
for c in decode-1 dsv3-tp8; do
  for rep in 1 2; do
    FLASHMOE_TIMELINE_PER_CTA=1 timeout 60 /tmp/b/flashmoe_bench --fp8 channel --reps 10 --warmup 3 --config $c > $OUT/tl_${c}_$rep.log 2>&1
    grep -oE "median [0-9.]+ ms|fused timeline.*" $OUT/tl_${c}_$rep.log | cut -c1-900
    grep -E "^   cta 0:" $OUT/tl_${c}_$rep.log
  done
done
echo "total $((SECONDS-T0)) s"
