#!/usr/bin/env bash
# Round 237 (H100): v0.50 (ec25d71). The T = 1 gtests; racecheck of GpuSmallFp8Fwd.SingleToken with
# 38a00fb's test binary and v0.50's (are the producer hazards of round 236 new?); alternating
# 100-rep runs of 38a00fb (p) and v0.50 (b); then the extension built here, issue 5's graph
# replays and the eager harness (as round 234). JSON and logs -> $OUT/all.tgz.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi -L; C=$(cat $D/COMMIT); echo "commit $C"
mkdir -p /tmp/b /tmp/p
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
for f in $D/bin_prev/*.gz; do gunzip -c $f > /tmp/p/$(basename $f .gz); done; chmod +x /tmp/b/* /tmp/p/*
timeout 90 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SingleToken*:GpuSmallFp8Fwd.Solo*:GpuSmallFp8Fwd.TwoAndThreeTokens' > $OUT/gtest_solo.log 2>&1; echo "solo gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest_solo.log | head -8
for v in p b; do
  timeout 100 compute-sanitizer --tool racecheck /tmp/$v/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.SingleToken' > $OUT/racecheck_$v.log 2>&1; echo "racecheck $v rc=$? at $((SECONDS-T0)) s"; grep -E "RACECHECK SUMMARY|PASSED|FAILED" $OUT/racecheck_$v.log | head -3
done
for rep in 1 2 3 4; do
  for v in p b; do
    timeout 90 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config decode-1 --config dsv3-tp8 --config decode-16 --config seed > $OUT/b_${v}_r$rep.log 2>&1
    echo "$v $rep: $(grep -E '^(seed|dsv3|decode)' $OUT/b_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
  done
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log)
echo "A/B done at $((SECONDS-T0)) s"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
(cmake -S . -B /tmp/bpy -G Ninja -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_CUTLASS_INCLUDE=/tmp/site/cutlass_library/source/include -DFLASHMOE_BUILD_PYTHON=ON -DPython_EXECUTABLE=$(command -v python3) && cmake --build /tmp/bpy -j16) > $OUT/build.log 2>&1; echo "build rc=$? at $((SECONDS-T0)) s"
export PYTHONPATH=/tmp/bpy/python:$PWD:/tmp/site PYTHONUNBUFFERED=1 FLASHMOE_COMMIT=$C
mkdir -p $OUT/jg $OUT/je
I="flashmoe-fp8 flashmoe-fp8-multikernel flashmoe flashmoe-multikernel torch-scaled-grouped-mm torch-grouped-mm"
for c in "decode-1" "dsv3-tp8 --tokens 1" "decode-16" "dsv3 --tokens 16" "decode-128"; do
  LEFT=$((570-(SECONDS-T0))); [ $LEFT -lt 20 ] && break
  timeout $LEFT python3 -m benchmarks.bench_moe --config $c --graph --quick --impl $I --out $OUT/jg > "$OUT/graph_${c// /_}.log" 2>&1; echo "graph $c rc=$? at $((SECONDS-T0)) s"; grep -E "^(flashmoe|torch-grouped|torch-scaled)|skipped|error" "$OUT/graph_${c// /_}.log" | head -12
done
for c in prefill seed dsv3; do
  LEFT=$((585-(SECONDS-T0))); [ $LEFT -lt 30 ] && break
  timeout $LEFT python3 -m benchmarks.bench_moe --config $c --impl flashmoe-fp8 flashmoe-fp8-multikernel torch-scaled-grouped-mm --out $OUT/je > $OUT/bench_$c.log 2>&1; echo "bench $c rc=$? at $((SECONDS-T0)) s"; grep -E "^(flashmoe|torch-scaled)|ceiling|copy" $OUT/bench_$c.log | head -8
done
(cd $OUT && tar czf all.tgz jg je *.log && rm -rf jg je graph_*.log bench_*.log build.log gtest_solo.log racecheck_*.log)
echo "total $((SECONDS-T0)) s"
