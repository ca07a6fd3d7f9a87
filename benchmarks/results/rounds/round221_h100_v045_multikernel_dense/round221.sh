#!/usr/bin/env bash
# Round 221: v0.45 (the multi-kernel path quantizes 16-bit tokens straight into their dense rows):
# every gtest, memcheck on the dense-row tests, then 0b3d2e6 (old) and the new build alternating,
# multi-kernel path (FLASHMOE_FUSED=0) prefill / seed / dsv3 and the one kernel's prefill.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/o
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_old/flashmoe_bench.gz > /tmp/o/flashmoe_bench; chmod +x /tmp/b/* /tmp/o/*
timeout 150 /tmp/b/flashmoe_tests --gtest_brief=1 > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED" $OUT/gtest.log | head -8
timeout 150 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.DenseRowsManySlots:GpuFp8Fwd.LinearSeedK' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -4
for rep in 1 2 3; do
  for v in o b; do
    FLASHMOE_FUSED=0 timeout 90 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config prefill --config seed --config dsv3 > $OUT/m_${v}_r$rep.log 2>&1
    timeout 60 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config prefill > $OUT/f_${v}_r$rep.log 2>&1
    echo "$v $rep multi: $(grep -E '^(prefill|seed|dsv3)' $OUT/m_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}') fused: $(grep -E '^prefill' $OUT/f_${v}_r$rep.log | awk '{printf "%s %s", $1, $3}')"
  done
done
(cd $OUT && cat m_*.log f_*.log > bench_all.log && rm -f m_*.log f_*.log)
echo "total $((SECONDS-T0)) s"
