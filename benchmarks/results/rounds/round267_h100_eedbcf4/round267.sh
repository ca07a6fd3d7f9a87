#!/usr/bin/env bash
# Round 267 (H100): v0.58 (the one-token down GEMV) at the committed HEAD: the FP8 forward gtests,
# a short same-call A/B against v0.56's bench, then the harness (extension built here, issue 5's
# graph replays, the eager harness) and the whole GPU pytest with the time left. -> $OUT.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi -L; C=$(cat $D/COMMIT); echo "commit $C"
mkdir -p /tmp/b /tmp/p
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench; chmod +x /tmp/b/* /tmp/p/*
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
(cmake -S . -B /tmp/bpy -G Ninja -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_CUTLASS_INCLUDE=/tmp/site/cutlass_library/source/include -DFLASHMOE_BUILD_PYTHON=ON -DPython_EXECUTABLE=$(command -v python3) && cmake --build /tmp/bpy -j16) > $OUT/build.log 2>&1 &
BPID=$!
timeout 200 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.*:GpuFp8Fwd.*:Fp8FwdHost.*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -8
for rep in 1 2 3; do
  for v in p b; do
    timeout 60 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config dsv3-tp8 --config decode-1 > $OUT/ab_${v}_r$rep.log 2>&1
    timeout 60 /tmp/$v/flashmoe_bench --fp8 block128 --reps 100 --warmup 10 --config dsv3-tp8 > $OUT/abb_${v}_r$rep.log 2>&1
    echo "$v $rep: $(grep -E '^(dsv3|decode)' $OUT/ab_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}') block $(grep -E '^dsv3' $OUT/abb_${v}_r$rep.log | awk '{printf "%s %s", $1, $3}')"
  done
done
wait $BPID; echo "build rc=$? at $((SECONDS-T0)) s"
export PYTHONPATH=/tmp/bpy/python:$PWD:/tmp/site PYTHONUNBUFFERED=1 FLASHMOE_COMMIT=$C
mkdir -p $OUT/jg $OUT/je
I="flashmoe-fp8 flashmoe-fp8-multikernel flashmoe flashmoe-multikernel torch-scaled-grouped-mm torch-grouped-mm"
for c in "decode-1" "dsv3-tp8 --tokens 1" "decode-16" "dsv3 --tokens 16" "decode-128"; do
  LEFT=$((540-(SECONDS-T0))); [ $LEFT -lt 20 ] && break
  timeout $LEFT python3 -m benchmarks.bench_moe --config $c --graph --quick --impl $I --out $OUT/jg > "$OUT/graph_${c// /_}.log" 2>&1; echo "graph $c rc=$? at $((SECONDS-T0)) s"; grep -E "^(flashmoe|torch-grouped|torch-scaled)|skipped|error" "$OUT/graph_${c// /_}.log" | head -12
done
LEFT=$((585-(SECONDS-T0)))
if [ $LEFT -gt 60 ]; then
  timeout $LEFT python3 -m pytest -q tests/python -rs > $OUT/pytest.log 2>&1; echo "pytest rc=$? at $((SECONDS-T0)) s"; tail -3 $OUT/pytest.log; grep -E "^FAILED" $OUT/pytest.log | head
fi
(cd $OUT && cat ab_*.log abb_*.log > ab_all.log && rm -f ab_*.log abb_*.log && tar czf all.tgz jg je *.log && rm -rf jg je graph_*.log build.log)
echo "total $((SECONDS-T0)) s"
