#!/usr/bin/env bash
# Round 249: v0.55 (the one kernel's epilogue without fp32 stores and atomic adds; one call site
# for the combine after the GEMM).
# All gtests, memcheck, then alternating 100-rep runs of a84c13f (a), v0.54 (p) and v0.55 (b).
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/p /tmp/a; gunzip -c $D/bin_a/flashmoe_bench.gz > /tmp/a/flashmoe_bench; chmod +x /tmp/a/*
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench; chmod +x /tmp/b/* /tmp/p/*
timeout 240 /tmp/b/flashmoe_tests --gtest_brief=1 > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -8
timeout 120 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.FfnSiluAndGelu:GpuSmallFp8Fwd.SingleToken:GpuSmallFp8Fwd.LinearSeedLike:GpuSmallFp8Fwd.TwoAndThreeTokens' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
for rep in 1 2 3 4; do
  for v in a p b; do
    timeout 120 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 --config decode-16 --config dsv3-16 --config seed > $OUT/b_${v}_r$rep.log 2>&1
    echo "$v $rep: $(grep -E '^(seed|dsv3|decode)' $OUT/b_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
  done
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log)
echo "total $((SECONDS-T0)) s"
