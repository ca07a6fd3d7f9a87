#!/usr/bin/env bash
# Round 261: v0.57b (solo mode: the down projection starts with a dry tile). FP8 forward
# gtests, memcheck on the solo suites, then alternating 100-rep runs of v0.56 (p), v0.57b (b) and
# v0.57b with the dry tile off (o); dsv3-tp8 timelines of b and o.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/p
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench; chmod +x /tmp/b/* /tmp/p/*
timeout 200 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.*:GpuFp8Fwd.*:Fp8FwdHost.*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -8
timeout 200 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.FfnSlotFinish:GpuSmallFp8Fwd.FfnSiluAndGelu' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
run() {  # tag binary-dir env
  env $3 timeout 120 /tmp/$2/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 --config decode-16 --config dsv3-16 > $OUT/b_$1_r$rep.log 2>&1
  env $3 timeout 60 /tmp/$2/flashmoe_bench --fp8 block128 --reps 100 --warmup 10 --config dsv3-tp8 > $OUT/bb_$1_r$rep.log 2>&1
  echo "$1 $rep: $(grep -E '^(seed|dsv3|decode)' $OUT/b_$1_r$rep.log | awk '{printf "%s %s | ", $1, $3}') block $(grep -E '^dsv3' $OUT/bb_$1_r$rep.log | awk '{printf "%s %s", $1, $3}')"
}
for rep in 1 2 3 4 5; do
  run p p X=1; run b b X=1; run o b FLASHMOE_FP8_DRY_TILE=0
done
export FLASHMOE_FUSED_TIMELINE=1
for v in b o; do
  e=X=1; [ $v = o ] && e=FLASHMOE_FP8_DRY_TILE=0
  for c in dsv3-tp8; do
    env $e FLASHMOE_TIMELINE_PER_CTA=1 timeout 60 /tmp/b/flashmoe_bench --fp8 channel --reps 10 --warmup 3 --config $c > $OUT/tl_${v}_$c.log 2>&1
    echo "tl $v $c: $(grep -oE 'median [0-9.]+ ms|first:K-done [0-9./]+|slot-released [0-9./]+|item:1st-full [0-9./]+|item:K-done [0-9./]+|item:epi-done [0-9./]+|combined [0-9./]+' $OUT/tl_${v}_$c.log | head -7 | tr '\n' ' ')"
  done
done
(cd $OUT && cat b_*.log bb_*.log > bench_all.log && rm -f b_*.log bb_*.log && tar czf tl.tgz tl_*.log && rm -f tl_*.log)
echo "total $((SECONDS-T0)) s"
