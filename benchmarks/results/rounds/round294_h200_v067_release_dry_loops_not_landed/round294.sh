#!/usr/bin/env bash
# Round 294 (H200): v0.67, the release routine's dry run covers its loops -- some FP8
# forward gtests, memcheck on the T = 1 suites,
# alternating 100-rep runs of v0.64's bench (h) and this one (b), timelines. -> $OUT.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/h $OUT/raw
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done; gunzip -c $D/bin_head/flashmoe_bench.gz > /tmp/h/flashmoe_bench; chmod +x /tmp/b/* /tmp/h/*
timeout 200 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.Single*:GpuSmallFp8Fwd.FfnDownGemv*:GpuSmallFp8Fwd.GraphCapture*:GpuSmallFp8Fwd.Solo*:GpuSmallFp8Fwd.ZeroedWorkspace*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -8
timeout 120 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SingleToken*:GpuSmallFp8Fwd.FfnDownGemv' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
for rep in 1 2 3 4; do
  for v in h b; do
    timeout 60 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 > $OUT/raw/c_${v}_$rep.txt 2>&1
    timeout 60 /tmp/$v/flashmoe_bench --fp8 block128 --reps 100 --warmup 10 --config dsv3-tp8 > $OUT/raw/b_${v}_$rep.txt 2>&1
    echo "$v $rep: $(grep -E '^(dsv3|decode)' $OUT/raw/c_${v}_$rep.txt | awk '{printf "%s %s | ", $1, $3}') block $(grep -E '^dsv3' $OUT/raw/b_${v}_$rep.txt | awk '{printf "%s %s", $1, $3}')"
  done
done
for c in dsv3-tp8 decode-1; do
  for v in h b; do
    FLASHMOE_FUSED_TIMELINE=1 timeout 60 /tmp/$v/flashmoe_bench --fp8 block128 --reps 10 --warmup 3 --config $c > $OUT/raw/tl_${v}_$c.txt 2>&1
    echo "tl $v $c: $(grep -oE 'median [0-9.]+ ms|tk:selected [0-9./]+|fast:written [0-9./]+|dispatched [0-9./]+|row:e4m3\(t0\) [0-9./]+|barrier2 [0-9./]+|item:rows [0-9./]+|item:1st-TMA [0-9./]+|item:1st-full [0-9./]+|combined [0-9./]+' $OUT/raw/tl_${v}_$c.txt | head -10 | tr '\n' ' ')"
  done
done
(cd $OUT && tar czf raw.tgz raw && rm -rf raw)
echo "total $((SECONDS-T0)) s"
