#!/usr/bin/env bash
# Round 290 (H200): v0.64 as committed (own scratch per dry warp) -- FP8 and bf16 forward gtests,
# memcheck and racecheck on the T = 1 suites, alternating 100-rep runs of v0.62's bench (h) and
# this one (b), timelines; then the extension built here and issue 5's five graph replays through
# the harness (the README's H200 graph table). -> $OUT.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi -L; C=$(cat $D/COMMIT); echo "commit $C"
mkdir -p /tmp/b /tmp/h $OUT/raw
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done; gunzip -c $D/bin_head/flashmoe_bench.gz > /tmp/h/flashmoe_bench; chmod +x /tmp/b/* /tmp/h/*
# the extension builds on the CPUs meanwhile
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
( (cmake -S . -B /tmp/bpy -G Ninja -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_CUTLASS_INCLUDE=/tmp/site/cutlass_library/source/include -DFLASHMOE_BUILD_PYTHON=ON -DPython_EXECUTABLE=$(command -v python3) && cmake --build /tmp/bpy -j14) > $OUT/build.log 2>&1; echo "build rc=$?" > $OUT/build.rc ) &
BPID=$!
timeout 200 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.*:GpuFp8Fwd.*:Fp8FwdHost.*:GpuSmall.*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -8
timeout 120 compute-sanitizer --tool memcheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SingleToken*' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s"; grep -E "ERROR SUMMARY|PASSED|FAILED" $OUT/memcheck.log | head -3
timeout 90 compute-sanitizer --tool racecheck /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SingleToken:GpuSmallFp8Fwd.SingleTokenRoutingOptions' > $OUT/racecheck.log 2>&1; echo "racecheck rc=$? at $((SECONDS-T0)) s"; grep -E "RACECHECK SUMMARY|PASSED|FAILED" $OUT/racecheck.log | head -3; grep -oE "in [a-z_0-9]+\.cuh?:[0-9]+" $OUT/racecheck.log | sort | uniq -c
for rep in 1 2; do
  for v in h b; do
    timeout 60 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 > $OUT/raw/c_${v}_$rep.txt 2>&1
    timeout 60 /tmp/$v/flashmoe_bench --fp8 block128 --reps 100 --warmup 10 --config dsv3-tp8 > $OUT/raw/b_${v}_$rep.txt 2>&1
    echo "$v $rep: $(grep -E '^(dsv3|decode)' $OUT/raw/c_${v}_$rep.txt | awk '{printf "%s %s | ", $1, $3}') block $(grep -E '^dsv3' $OUT/raw/b_${v}_$rep.txt | awk '{printf "%s %s", $1, $3}')"
  done
done
for c in dsv3-tp8 decode-1; do
  FLASHMOE_FUSED_TIMELINE=1 timeout 60 /tmp/b/flashmoe_bench --fp8 block128 --reps 10 --warmup 3 --config $c > $OUT/raw/tl_b_$c.txt 2>&1
  echo "tl b $c: $(grep -oE 'median [0-9.]+ ms|tk:scores [0-9./]+|tk:sum [0-9./]+|tk:q [0-9./]+|tk:selected [0-9./]+|fast:written [0-9./]+|row:e4m3\(t0\) [0-9./]+|barrier2 [0-9./]+|item:1st-TMA [0-9./]+|combined [0-9./]+' $OUT/raw/tl_b_$c.txt | head -10 | tr '\n' ' ')"
done
(cd $OUT && tar czf raw.tgz raw && rm -rf raw)
wait $BPID; cat $OUT/build.rc; echo "at $((SECONDS-T0)) s"
export PYTHONPATH=/tmp/bpy/python:$PWD:/tmp/site PYTHONUNBUFFERED=1 FLASHMOE_COMMIT=$C
mkdir -p $OUT/jg
I="flashmoe-fp8 flashmoe-fp8-multikernel flashmoe flashmoe-multikernel torch-scaled-grouped-mm torch-grouped-mm"
for c in "decode-1" "dsv3-tp8 --tokens 1" "decode-16" "dsv3 --tokens 16" "decode-128"; do
  LEFT=$((560-(SECONDS-T0))); [ $LEFT -lt 20 ] && break
  timeout $LEFT python3 -m benchmarks.bench_moe --config $c --graph --quick --impl $I --out $OUT/jg > "$OUT/graph_${c// /_}.log" 2>&1; echo "graph $c rc=$? at $((SECONDS-T0)) s"; grep -iE "flashmoe-fp8 |error" "$OUT/graph_${c// /_}.log" | head -2
done
(cd $OUT && mkdir -p logs && mv graph_*.log build.log logs/ && tar czf logs.tgz logs jg && rm -rf logs jg)
echo "total $((SECONDS-T0)) s"
