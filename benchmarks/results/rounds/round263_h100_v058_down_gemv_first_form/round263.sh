#!/usr/bin/env bash
# Round 263: v0.58 (the one-token gated FFN's down projection and combine as a GEMV). FP8
# forward gtests, memcheck/synccheck on the GEMV suites, then alternating 100-rep runs of v0.56 (p),
# v0.58 (b), v0.58 with the GEMV off (o) and with the copies after the wait (l); timelines.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/p
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench; chmod +x /tmp/b/* /tmp/p/*
timeout 240 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.*:GpuFp8Fwd.*:Fp8FwdHost.*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -12; grep -E "down GEMV vs" $OUT/gtest.log | head -12
timeout 150 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.FfnDownGemv*:GpuSmallFp8Fwd.SingleToken' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
timeout 100 compute-sanitizer --tool synccheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.FfnDownGemvWithoutLocalRowWritesZeros:GpuSmallFp8Fwd.SingleToken' > $OUT/synccheck.log 2>&1; echo "synccheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/synccheck.log | head -3
FLASHMOE_PRINT_CONFIG=1 timeout 30 /tmp/b/flashmoe_bench --fp8 block128 --reps 3 --warmup 1 --config dsv3-tp8 2>&1 | grep -i "config" | head -2
run() {  # tag binary-dir env
  env $3 timeout 120 /tmp/$2/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 --config decode-16 --config dsv3-16 > $OUT/b_$1_r$rep.log 2>&1
  env $3 timeout 60 /tmp/$2/flashmoe_bench --fp8 block128 --reps 100 --warmup 10 --config dsv3-tp8 > $OUT/bb_$1_r$rep.log 2>&1
  echo "$1 $rep: $(grep -E '^(seed|dsv3|decode)' $OUT/b_$1_r$rep.log | awk '{printf "%s %s | ", $1, $3}') block $(grep -E '^dsv3' $OUT/bb_$1_r$rep.log | awk '{printf "%s %s", $1, $3}')"
}
for rep in 1 2 3 4; do
  run p p X=1; run b b X=1; run o b FLASHMOE_FP8_DOWN_GEMV=0; run l b FLASHMOE_FP8_GEMV_EARLY=0
done
export FLASHMOE_FUSED_TIMELINE=1
for v in b l o; do
  e=X=1; [ $v = o ] && e=FLASHMOE_FP8_DOWN_GEMV=0; [ $v = l ] && e=FLASHMOE_FP8_GEMV_EARLY=0
  env $e FLASHMOE_TIMELINE_PER_CTA=1 timeout 60 /tmp/b/flashmoe_bench --fp8 block128 --reps 10 --warmup 3 --config dsv3-tp8 > $OUT/tl_${v}_dsv3-tp8.log 2>&1
  echo "tl $v: $(grep -oE 'median [0-9.]+ ms|first:K-done [0-9./]+|slot-released [0-9./]+|gemm done [0-9./]+|barrier3 [0-9./]+|combined [0-9./]+' $OUT/tl_${v}_dsv3-tp8.log | head -6 | tr '\n' ' ')"
done
(cd $OUT && cat b_*.log bb_*.log > bench_all.log && rm -f b_*.log bb_*.log && tar czf tl.tgz tl_*.log && rm -f tl_*.log)
echo "total $((SECONDS-T0)) s"
