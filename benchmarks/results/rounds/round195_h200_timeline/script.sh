#!/usr/bin/env bash
# Round 195: where the one-kernel FP8 prefill / seed / dsv3 spend their time (phase timeline,
# C++ bench at 76c9443's kernels = ec2a660's SASS), no change.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench
export FLASHMOE_FUSED_TIMELINE=1
for c in prefill seed dsv3; do
  timeout 120 $B --fp8 channel --reps 10 --warmup 3 --config $c > $OUT/tl_$c.log 2>&1
  echo "$c rc=$? at $((SECONDS-T0)) s"; grep -E "median|timeline" $OUT/tl_$c.log | cut -c1-2000
done
export FLASHMOE_TIMELINE_PER_CTA=1
timeout 120 $B --fp8 channel --reps 3 --warmup 2 --config prefill > $OUT/tl_prefill_percta.log 2>&1
echo "total $((SECONDS-T0)) s"
