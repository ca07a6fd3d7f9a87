#!/usr/bin/env bash
# Round 252: review -- the tokens' bf16/fp16 dispatch of the routing phases as one helper
# (with_token_type). Not the same SASS (the scheduler reordered the routing code), so: the FP8 and
# bf16 forward gtests, then alternating 100-rep runs of HEAD's code (p) and the change (b).
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/p
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench; chmod +x /tmp/b/* /tmp/p/*
timeout 200 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.*:GpuFp8Fwd.*:GpuSmall.*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -8
for rep in 1 2 3 4; do
  for v in p b; do
    timeout 120 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 --config decode-16 > $OUT/b_${v}_r$rep.log 2>&1
    timeout 60 /tmp/$v/flashmoe_bench --reps 100 --warmup 10 --config decode-1 > $OUT/b16_${v}_r$rep.log 2>&1
    echo "$v $rep: $(grep -E '^(seed|dsv3|decode)' $OUT/b_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}') bf16 $(grep -E '^decode' $OUT/b16_${v}_r$rep.log | awk '{printf "%s %s", $1, $3}')"
  done
done
(cd $OUT && cat b_*.log b16_*.log > bench_all.log && rm -f b_*.log b16_*.log)
echo "total $((SECONDS-T0)) s"
