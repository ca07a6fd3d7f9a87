#!/usr/bin/env bash
# Round 278: v0.61 (experiment) -- the one-token GEMV's weight bytes by thread 0's bulk copies
# (k), by cp.async from the 256 math threads (l) or half and half (f): the GEMV gtests, memcheck
# with both engines, alternating 100-rep runs of dsv3-tp8 (channel, block scales) and decode-1,
# then timelines of each. -> $OUT.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b $OUT/raw
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done; chmod +x /tmp/b/*
timeout 120 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.FfnDownGemv*:GpuSmallFp8Fwd.SingleToken*:Fp8FwdHost.*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure|FLASHMOE_FP8_GEMV_COPY=" $OUT/gtest.log | head -8
FLASHMOE_FP8_GEMV_COPY=half timeout 120 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.FfnDownGemv' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
run() {  # $1 label, rest: env
  local l=$1 rep=$2; shift 2
  env "$@" timeout 60 /tmp/b/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 > $OUT/raw/c_${l}_$rep.txt 2>&1
  env "$@" timeout 60 /tmp/b/flashmoe_bench --fp8 block128 --reps 100 --warmup 10 --config dsv3-tp8 > $OUT/raw/b_${l}_$rep.txt 2>&1
  echo "$l $rep: $(grep -E '^(dsv3|decode)' $OUT/raw/c_${l}_$rep.txt | awk '{printf "%s %s | ", $1, $3}') block $(grep -E '^dsv3' $OUT/raw/b_${l}_$rep.txt | awk '{printf "%s %s", $1, $3}')"
}
for rep in 1 2 3 4; do
  run k $rep FLASHMOE_FP8_GEMV_COPY=bulk; run l $rep FLASHMOE_FP8_GEMV_COPY=lsu; run f $rep FLASHMOE_FP8_GEMV_COPY=half
done
for m in bulk lsu half; do
  FLASHMOE_FP8_GEMV_COPY=$m FLASHMOE_FUSED_TIMELINE=1 timeout 60 /tmp/b/flashmoe_bench --fp8 block128 --reps 10 --warmup 3 --config dsv3-tp8 > $OUT/raw/tl_$m.txt 2>&1
  echo "tl $m: $(grep -oE 'median [0-9.]+ ms|item:K-done [0-9./]+|gemm done [0-9./]+|slot-released [0-9./]+|gemv:h-last [0-9./]+|gemv:weights [0-9./]+|barrier3 [0-9./]+|combined [0-9./]+' $OUT/raw/tl_$m.txt | head -8 | tr '\n' ' ')"
done
FLASHMOE_FP8_GEMV_EARLY=0 FLASHMOE_FP8_GEMV_COPY=lsu FLASHMOE_FUSED_TIMELINE=1 timeout 60 /tmp/b/flashmoe_bench --fp8 block128 --reps 10 --warmup 3 --config dsv3-tp8 > $OUT/raw/tl_lsu_late.txt 2>&1
echo "tl lsu late: $(grep -oE 'median [0-9.]+ ms|gemm done [0-9./]+|slot-released [0-9./]+|gemv:h-last [0-9./]+|gemv:weights [0-9./]+|barrier3 [0-9./]+|combined [0-9./]+' $OUT/raw/tl_lsu_late.txt | head -8 | tr '\n' ' ')"
(cd $OUT && tar czf raw.tgz raw && rm -rf raw)
echo "total $((SECONDS-T0)) s"
