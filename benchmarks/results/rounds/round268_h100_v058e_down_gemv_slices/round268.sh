#!/usr/bin/env bash
# Round 268: v0.58e (the GEMV's K slices as a template parameter, f16 MMAs on E4M3 converted once
# for A) against v0.58 (eedbcf4's bench): FP8 forward gtests, memcheck on the GEMV suites,
# alternating 100-rep runs, one timeline.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/h
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_head/flashmoe_bench.gz > /tmp/h/flashmoe_bench; chmod +x /tmp/b/* /tmp/h/*
timeout 150 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.*:GpuFp8Fwd.*:Fp8FwdHost.*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -8; grep -E "down GEMV vs" $OUT/gtest.log | head -12
timeout 80 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.FfnDownGemv*' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
for rep in 1 2 3 4; do
  for v in h b; do
    timeout 60 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 > $OUT/r_${v}_$rep.txt 2>&1
    timeout 60 /tmp/$v/flashmoe_bench --fp8 block128 --reps 100 --warmup 10 --config dsv3-tp8 > $OUT/rb_${v}_$rep.txt 2>&1
    echo "$v $rep: $(grep -E '^(dsv3|decode)' $OUT/r_${v}_$rep.txt | awk '{printf "%s %s | ", $1, $3}') block $(grep -E '^dsv3' $OUT/rb_${v}_$rep.txt | awk '{printf "%s %s", $1, $3}')"
  done
done
FLASHMOE_FUSED_TIMELINE=1 timeout 60 /tmp/b/flashmoe_bench --fp8 block128 --reps 10 --warmup 3 --config dsv3-tp8 > $OUT/tl_b.txt 2>&1
echo "tl b: $(grep -oE 'median [0-9.]+ ms|gemm done [0-9./]+|barrier3 [0-9./]+|combined [0-9./]+|slot-released [0-9./]+' $OUT/tl_b.txt | head -5 | tr '\n' ' ')"
(cd $OUT && cat r_*.txt rb_*.txt > bench_all.log && tar czf raw.tgz r_*.txt rb_*.txt tl_b.txt && rm -f r_*.txt rb_*.txt tl_b.txt)
echo "total $((SECONDS-T0)) s"
