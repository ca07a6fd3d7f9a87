#!/usr/bin/env bash
# Round 270: v0.59b (one token: the CTAs prefetch their first item's first weight boxes before
# CTA 0's flag, and their slice of the down weights after their last gate/up copy) -- the GEMV /
# zeroed-workspace / host gtests, memcheck on the GEMV suite, alternating 100-rep runs of v0.58e's
# bench (h) and the new one with FLASHMOE_FP8_SOLO_PREFETCH=0..3 (p0..p3), timelines. -> $OUT.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/h $OUT/raw
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_head/flashmoe_bench.gz > /tmp/h/flashmoe_bench; chmod +x /tmp/b/* /tmp/h/*
timeout 150 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.FfnDownGemv*:GpuSmallFp8Fwd.ZeroedWorkspace*:GpuSmallFp8Fwd.SingleToken*:Fp8FwdHost.*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -8
timeout 90 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.FfnDownGemv' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
run() {  # variant rep
  local v=$1 r=$2 bin=/tmp/b/flashmoe_bench pf=${1#p}
  [ $v = h ] && bin=/tmp/h/flashmoe_bench && pf=3
  FLASHMOE_FP8_SOLO_PREFETCH=$pf timeout 60 $bin --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 > $OUT/raw/c_${v}_$r.txt 2>&1
  FLASHMOE_FP8_SOLO_PREFETCH=$pf timeout 60 $bin --fp8 block128 --reps 100 --warmup 10 --config dsv3-tp8 > $OUT/raw/b_${v}_$r.txt 2>&1
  echo "$v $r: $(grep -E '^(dsv3|decode)' $OUT/raw/c_${v}_$r.txt | awk '{printf "%s %s | ", $1, $3}') block $(grep -E '^dsv3' $OUT/raw/b_${v}_$r.txt | awk '{printf "%s %s", $1, $3}')"
}
for rep in 1 2 3 4 5; do for v in h p0 p1 p2 p3; do run $v $rep; done; done
for pf in 0 1 2 3; do
  FLASHMOE_FP8_SOLO_PREFETCH=$pf FLASHMOE_PRINT_CONFIG=1 FLASHMOE_FUSED_TIMELINE=1 timeout 60 /tmp/b/flashmoe_bench --fp8 block128 --reps 10 --warmup 3 --config dsv3-tp8 > $OUT/raw/tl_p$pf.txt 2>&1
  echo "tl p$pf: $(grep -oE 'median [0-9.]+ ms|tk:selected [0-9./]+|published [0-9./]+|prefetch [0-9./]+|barrier2 [0-9./]+|item:1st-TMA [0-9./]+|item:1st-full [0-9./]+|item:K-done [0-9./]+|gemm done [0-9./]+|barrier3 [0-9./]+|combined [0-9./]+|slot-released [0-9./]+' $OUT/raw/tl_p$pf.txt | tr '\n' ' ')"
done
grep -m1 -o 'solo_prefetch=[0-9]' $OUT/raw/tl_p3.txt
(cd $OUT && tar czf raw.tgz raw && rm -rf raw)
echo "total $((SECONDS-T0)) s"
