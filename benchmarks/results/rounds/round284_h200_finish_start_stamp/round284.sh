#!/usr/bin/env bash
# Round 284 (H200): a "finish:start" stamp (the slot finisher entered) in the split gate/up GEMM
# -- alternating 100-rep runs of HEAD's bench (h) and this one (b), then per-CTA timelines of
# dsv3-tp8, copies early and late. -> $OUT.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/h $OUT/raw
gunzip -c $D/bin/flashmoe_bench.gz > /tmp/b/flashmoe_bench; gunzip -c $D/bin_head/flashmoe_bench.gz > /tmp/h/flashmoe_bench; chmod +x /tmp/b/* /tmp/h/*
for rep in 1 2 3; do
  for v in h b; do
    timeout 60 /tmp/$v/flashmoe_bench --fp8 block128 --reps 100 --warmup 10 --config dsv3-tp8 > $OUT/raw/b_${v}_$rep.txt 2>&1
    echo "$v $rep: block $(grep -E '^dsv3' $OUT/raw/b_${v}_$rep.txt | awk '{printf "%s %s", $1, $3}')"
  done
done
for s in block128 channel; do
  FLASHMOE_TIMELINE_PER_CTA=1 FLASHMOE_FUSED_TIMELINE=1 timeout 60 /tmp/b/flashmoe_bench --fp8 $s --reps 10 --warmup 3 --config dsv3-tp8 > $OUT/raw/tl_$s.txt 2>&1
  echo "tl $s: $(grep -oE 'median [0-9.]+ ms|item:K-done [0-9./]+|gemm done [0-9./]+|finish:start [0-9./]+|first:split-done [0-9./]+|gemv:issued [0-9./]+|gemv:weights [0-9./]+|gemv:h-last [0-9./]+|barrier3 [0-9./]+|combined [0-9./]+|slot-released [0-9./]+' $OUT/raw/tl_$s.txt | head -12 | tr '\n' ' ')"
done
FLASHMOE_FP8_GEMV_EARLY=0 FLASHMOE_TIMELINE_PER_CTA=1 FLASHMOE_FUSED_TIMELINE=1 timeout 60 /tmp/b/flashmoe_bench --fp8 block128 --reps 10 --warmup 3 --config dsv3-tp8 > $OUT/raw/tl_late.txt 2>&1
echo "tl late: $(grep -oE 'median [0-9.]+ ms|gemm done [0-9./]+|finish:start [0-9./]+|first:split-done [0-9./]+|gemv:issued [0-9./]+|gemv:weights [0-9./]+|gemv:h-last [0-9./]+|barrier3 [0-9./]+|combined [0-9./]+|slot-released [0-9./]+' $OUT/raw/tl_late.txt | head -8 | tr '\n' ' ')"
(cd $OUT && tar czf raw.tgz raw && rm -rf raw)
echo "total $((SECONDS-T0)) s"
