#!/usr/bin/env bash
# Round 277: v0.60b (one token: the other CTAs' first math warpgroup selects the experts in the body, the producer issues its first
# item's weight copies before CTA 0's flag) -- the new gtest and the FP8 forward gtests, memcheck
# on the T = 1 suites, alternating 100-rep runs of HEAD's bench (h), the new one (b) and the new
# one with FLASHMOE_FP8_SOLO_EARLY=0 (o), then timelines. -> $OUT.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/h $OUT/raw
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_head/flashmoe_bench.gz > /tmp/h/flashmoe_bench; chmod +x /tmp/b/* /tmp/h/*
timeout 60 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SoloEarly*:GpuSmallFp8Fwd.OnePass*' > $OUT/gtest_early.log 2>&1; echo "early gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure|Expected|Which is|actual" $OUT/gtest_early.log | head -12
timeout 200 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.*:GpuFp8Fwd.*:Fp8FwdHost.*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -8
timeout 90 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SoloEarly*:GpuSmallFp8Fwd.SingleToken' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
run() {  # $1 label, $2 binary dir, $3 rep, rest: env
  local l=$1 v=$2 rep=$3; shift 3
  env "$@" timeout 60 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 > $OUT/raw/c_${l}_$rep.txt 2>&1
  env "$@" timeout 60 /tmp/$v/flashmoe_bench --fp8 block128 --reps 100 --warmup 10 --config dsv3-tp8 > $OUT/raw/b_${l}_$rep.txt 2>&1
  echo "$l $rep: $(grep -E '^(dsv3|decode)' $OUT/raw/c_${l}_$rep.txt | awk '{printf "%s %s | ", $1, $3}') block $(grep -E '^dsv3' $OUT/raw/b_${l}_$rep.txt | awk '{printf "%s %s", $1, $3}')"
}
for rep in 1 2 3 4; do
  run h h $rep X=1; run b b $rep X=1; run o b $rep FLASHMOE_FP8_SOLO_EARLY=0
done
for v in h b; do
  for c in "block128 dsv3-tp8" "channel decode-1"; do set -- $c
    FLASHMOE_TIMELINE_PER_CTA=1 FLASHMOE_FUSED_TIMELINE=1 timeout 60 /tmp/$v/flashmoe_bench --fp8 $1 --reps 10 --warmup 3 --config $2 > $OUT/raw/tl_${v}_$2.txt 2>&1
    echo "tl $v $2: $(grep -oE 'median [0-9.]+ ms|tk:selected [0-9./]+|barrier2 [0-9./]+|item:1st-TMA [0-9./]+|item:1st-full [0-9./]+|item:K-done [0-9./]+|gemm done [0-9./]+|barrier3 [0-9./]+|combined [0-9./]+|slot-released [0-9./]+' $OUT/raw/tl_${v}_$2.txt | head -10 | tr '\n' ' ')"
  done
done
(cd $OUT && tar czf raw.tgz raw && rm -rf raw)
echo "total $((SECONDS-T0)) s"
