#!/usr/bin/env bash
# Round 286 (H200): review -- the GEMV's "gemv:issued" stamp moved into issue_weight_copies and a
# globaltimer helper shared by the stamps: the GEMV / T = 1 gtests, two alternations against
# v0.62's bench (h), one timeline. -> $OUT.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/h $OUT/raw
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done; gunzip -c $D/bin_head/flashmoe_bench.gz > /tmp/h/flashmoe_bench; chmod +x /tmp/b/* /tmp/h/*
timeout 80 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.FfnDownGemv*:GpuSmallFp8Fwd.SingleToken:GpuSmallFp8Fwd.OnePass*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -6
for rep in 1 2; do
  for v in h b; do
    timeout 60 /tmp/$v/flashmoe_bench --fp8 block128 --reps 100 --warmup 10 --config dsv3-tp8 > $OUT/raw/b_${v}_$rep.txt 2>&1
    echo "$v $rep: block $(grep -E '^dsv3' $OUT/raw/b_${v}_$rep.txt | awk '{printf "%s %s", $1, $3}')"
  done
done
FLASHMOE_FUSED_TIMELINE=1 timeout 60 /tmp/b/flashmoe_bench --fp8 block128 --reps 10 --warmup 3 --config dsv3-tp8 > $OUT/raw/tl_b.txt 2>&1
echo "tl b: $(grep -oE 'median [0-9.]+ ms|gemm done [0-9./]+|gemv:issued [0-9./]+|gemv:weights [0-9./]+|gemv:h-last [0-9./]+|combined [0-9./]+|finish:start [0-9./]+|slot-released [0-9./]+' $OUT/raw/tl_b.txt | head -8 | tr '\n' ' ')"
(cd $OUT && tar czf raw.tgz raw && rm -rf raw)
echo "total $((SECONDS-T0)) s"
