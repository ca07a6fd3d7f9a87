#!/usr/bin/env bash
# Round 238 (no code change, ec25d71's bench): split-K counts (FLASHMOE_FP8_SPLITK) at the decode
# shapes -- does cutting decode-1's 128 one-MB items in K let the CTAs balance the stream's tail?
# Alternating 100-rep runs per count; timelines for decode-1 at 1 and 2 ranges.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b; gunzip -c $D/bin/flashmoe_bench.gz > /tmp/b/flashmoe_bench; chmod +x /tmp/b/*
B=/tmp/b/flashmoe_bench
run() {  # config splitk tag
  if [ "$2" = "-" ]; then unset FLASHMOE_FP8_SPLITK; else export FLASHMOE_FP8_SPLITK=$2; fi
  timeout 60 $B --fp8 channel --reps 100 --warmup 10 --config $1 > $OUT/b_$1_$2_$3.log 2>&1
  grep -E "^$1 " $OUT/b_$1_$2_$3.log | awk '{printf "%s ", $3}'
}
for rep in 1 2 3; do
  echo "decode-1 rep $rep: -: $(run decode-1 - $rep) 2: $(run decode-1 2 $rep) 3: $(run decode-1 3 $rep) 4: $(run decode-1 4 $rep)"
  echo "dsv3-tp8 rep $rep: -: $(run dsv3-tp8 - $rep) 4: $(run dsv3-tp8 4 $rep) 6: $(run dsv3-tp8 6 $rep) 12: $(run dsv3-tp8 12 $rep)"
  echo "decode-16 rep $rep: -: $(run decode-16 - $rep) 2: $(run decode-16 2 $rep) 4: $(run decode-16 4 $rep)"
done
unset FLASHMOE_FP8_SPLITK
echo "A/B done at $((SECONDS-T0)) s"
export FLASHMOE_FUSED_TIMELINE=1
for s in - 2; do
  if [ "$s" = "-" ]; then unset FLASHMOE_FP8_SPLITK; else export FLASHMOE_FP8_SPLITK=$s; fi
  timeout 60 $B --fp8 channel --reps 10 --warmup 3 --config decode-1 > $OUT/tl_$s.log 2>&1
  echo "tl split $s: $(grep -oE 'median [0-9.]+ ms|dispatched [0-9./]+|item:1st-TMA [0-9./]+|item:1st-full [0-9./]+|item:last-TMA [0-9./]+|item:K-done [0-9./]+|item:epi-done [0-9./]+|gemm done [0-9./]+|combined [0-9./]+' $OUT/tl_$s.log | head -12 | tr '\n' ' ')"
  grep -iE "split|k_splits|path=" $OUT/tl_$s.log | head -3
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log && tar czf tl.tgz tl_*.log && rm -f tl_*.log)
echo "total $((SECONDS-T0)) s"
