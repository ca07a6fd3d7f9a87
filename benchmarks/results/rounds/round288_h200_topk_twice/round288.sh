#!/usr/bin/env bash
# Round 288 (H200): the one-token top-k run twice in CTA 0 (experiment build, FLASHMOE_EXP_TOPK_PASSES=2,
# stamps on the second pass) against HEAD's bench: is its 8 us cold code (the second pass then
# ~2.5 us, as the standalone probe) or the kernel's surroundings (~5 us again)? -> $OUT.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L
mkdir -p /tmp/x /tmp/h
gunzip -c $D/bin_exp2/flashmoe_bench.gz > /tmp/x/flashmoe_bench; gunzip -c $D/bin_head/flashmoe_bench.gz > /tmp/h/flashmoe_bench; chmod +x /tmp/x/* /tmp/h/*
for c in dsv3-tp8 decode-1; do
  for v in h x; do
    FLASHMOE_FUSED_TIMELINE=1 timeout 60 /tmp/$v/flashmoe_bench --fp8 block128 --reps 10 --warmup 3 --config $c > $OUT/tl_${v}_$c.txt 2>&1
    echo "$v $c: $(grep -oE 'median [0-9.]+ ms|tk:scores [0-9./]+|tk:sum [0-9./]+|tk:q [0-9./]+|tk:selected [0-9./]+|fast:written [0-9./]+|row:e4m3\(t0\) [0-9./]+|barrier2 [0-9./]+|item:1st-TMA [0-9./]+|combined [0-9./]+' $OUT/tl_${v}_$c.txt | head -10 | tr '\n' ' ')"
  done
done
echo "total $((SECONDS-T0)) s"
