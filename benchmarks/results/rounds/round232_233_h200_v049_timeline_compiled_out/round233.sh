#!/usr/bin/env bash
# Round 233: v0.49 (the FP8 GEMM body's profiling stamps compiled out of the production kernels):
# every gtest (the timeline test runs the profiling build), memcheck, a timeline print, then
# 08b60e5's bench (p) against v0.49's (n), four alternations of 100 reps, one kernel and the
# multi-kernel path.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/p /tmp/n
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/n/$(basename $f .gz); done
gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench; chmod +x /tmp/n/* /tmp/p/*
timeout 160 /tmp/n/flashmoe_tests --gtest_brief=1 > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED" $OUT/gtest.log | head -6
timeout 90 compute-sanitizer --tool memcheck /tmp/n/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SingleToken:GpuSmallFp8Fwd.SplitKDecode:GpuSmallFp8Fwd.LinearSeedLike' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
FLASHMOE_FUSED_TIMELINE=1 timeout 60 /tmp/n/flashmoe_bench --fp8 channel --reps 10 --warmup 3 --config decode-1 > $OUT/tl_n.log 2>&1; grep -oE "fused timeline.*" $OUT/tl_n.log | cut -c1-600
for rep in 1 2 3 4; do
  for v in p n; do
    timeout 90 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config decode-1 --config dsv3-tp8 --config decode-16 --config seed --config prefill > $OUT/b_${v}_r$rep.log 2>&1
    FLASHMOE_FUSED=0 timeout 90 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config decode-16 --config seed > $OUT/m_${v}_r$rep.log 2>&1
    echo "$v $rep: $(grep -E '^(dsv3|decode|seed|prefill)' $OUT/b_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}') multi: $(grep -E '^(decode|seed)' $OUT/m_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
  done
done
(cd $OUT && cat b_*.log m_*.log > bench_all.log && rm -f b_*.log m_*.log)
echo "total $((SECONDS-T0)) s"
