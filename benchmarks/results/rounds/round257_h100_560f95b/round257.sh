#!/usr/bin/env bash
# Round 257 (H100): v0.56 (560f95b) through the harness: the extension built here,
# issue 5's graph replays and the eager harness (as round 242), then the whole GPU pytest with
# the time left. JSON and logs -> $OUT/all.tgz.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi -L; C=$(cat $D/COMMIT); echo "commit $C"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
(cmake -S . -B /tmp/bpy -G Ninja -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_CUTLASS_INCLUDE=/tmp/site/cutlass_library/source/include -DFLASHMOE_BUILD_PYTHON=ON -DPython_EXECUTABLE=$(command -v python3) && cmake --build /tmp/bpy -j16) > $OUT/build.log 2>&1; echo "build rc=$? at $((SECONDS-T0)) s"
export PYTHONPATH=/tmp/bpy/python:$PWD:/tmp/site PYTHONUNBUFFERED=1 FLASHMOE_COMMIT=$C
mkdir -p $OUT/jg $OUT/je
I="flashmoe-fp8 flashmoe-fp8-multikernel flashmoe flashmoe-multikernel torch-scaled-grouped-mm torch-grouped-mm"
for c in "decode-1" "dsv3-tp8 --tokens 1" "decode-16" "dsv3 --tokens 16" "decode-128"; do
  LEFT=$((560-(SECONDS-T0))); [ $LEFT -lt 20 ] && break
  timeout $LEFT python3 -m benchmarks.bench_moe --config $c --graph --quick --impl $I --out $OUT/jg > "$OUT/graph_${c// /_}.log" 2>&1; echo "graph $c rc=$? at $((SECONDS-T0)) s"; grep -E "^(flashmoe|torch-grouped|torch-scaled)|skipped|error" "$OUT/graph_${c// /_}.log" | head -12
done
for c in prefill seed dsv3; do
  LEFT=$((570-(SECONDS-T0))); [ $LEFT -lt 30 ] && break
  timeout $LEFT python3 -m benchmarks.bench_moe --config $c --impl flashmoe-fp8 flashmoe-fp8-multikernel torch-scaled-grouped-mm --out $OUT/je > $OUT/bench_$c.log 2>&1; echo "bench $c rc=$? at $((SECONDS-T0)) s"; grep -E "^(flashmoe|torch-scaled)|ceiling|copy" $OUT/bench_$c.log | head -8
done
LEFT=$((585-(SECONDS-T0)))
if [ $LEFT -gt 60 ]; then
  timeout $LEFT python3 -m pytest -q tests/python -rs > $OUT/pytest.log 2>&1; echo "pytest rc=$? at $((SECONDS-T0)) s"; tail -3 $OUT/pytest.log; grep -E "^FAILED" $OUT/pytest.log | head
fi
(cd $OUT && tar czf all.tgz jg je *.log && rm -rf jg je graph_*.log bench_*.log build.log)
echo "total $((SECONDS-T0)) s"
