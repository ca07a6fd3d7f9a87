#!/usr/bin/env bash
# Round 211: v0.43 (the producer's dense-row path a compile-time mode, kMode 3): every gtest, then
# the C++ bench of 9977cd5 (old), 7d69aa9 (mid) and the new build: multi-kernel and one-kernel
# decode-16 / decode-128 (100 reps), one-kernel prefill (mid vs new), alternating.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/o /tmp/m
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_old/flashmoe_bench.gz > /tmp/o/flashmoe_bench; gunzip -c $D/bin_mid/flashmoe_bench.gz > /tmp/m/flashmoe_bench; chmod +x /tmp/b/* /tmp/o/* /tmp/m/*
timeout 150 /tmp/b/flashmoe_tests --gtest_brief=1 > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED" $OUT/gtest.log | head -5
for rep in 1 2 3; do
  for v in o m b; do
    for md in multi fused; do
      unset FLASHMOE_FUSED; [ $md = multi ] && export FLASHMOE_FUSED=0
      timeout 60 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config decode-16 --config decode-128 > $OUT/b_${v}_${md}_r$rep.log 2>&1
      echo "$v $md $rep: $(grep -E '^decode' $OUT/b_${v}_${md}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
    done
  done
  unset FLASHMOE_FUSED
  for v in m b; do
    timeout 60 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config prefill > $OUT/p_${v}_r$rep.log 2>&1
    echo "$v prefill $rep: $(grep -E '^prefill' $OUT/p_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
  done
done
(cd $OUT && cat b_*.log p_*.log > bench_all.log && rm -f b_*.log p_*.log)
echo "total $((SECONDS-T0)) s"
