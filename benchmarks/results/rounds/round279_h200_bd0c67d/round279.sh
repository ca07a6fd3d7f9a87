#!/usr/bin/env bash
# Round 279 (H200): the committed HEAD -- the FP8 forward gtests (with the per-GEMM check
# of the gated FFN's h rows), the extension built here, issue 5's graph replays through the
# harness, then the whole GPU pytest. -> $OUT.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi -L; C=$(cat $D/COMMIT); echo "commit $C"
mkdir -p /tmp/b
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done; chmod +x /tmp/b/*
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
(cmake -S . -B /tmp/bpy -G Ninja -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_CUTLASS_INCLUDE=/tmp/site/cutlass_library/source/include -DFLASHMOE_BUILD_PYTHON=ON -DPython_EXECUTABLE=$(command -v python3) && cmake --build /tmp/bpy -j16) > $OUT/build.log 2>&1 &
BPID=$!
timeout 200 /tmp/b/flashmoe_tests --gtest_brief=1 --gtest_filter='GpuSmallFp8Fwd.*:GpuFp8Fwd.*:Fp8FwdHost.*' > $OUT/gtest.log 2>&1; echo "gtests rc=$? at $((SECONDS-T0)) s"; grep -E "tests from .* ran|PASSED|^\[  FAILED|Failure" $OUT/gtest.log | head -8
grep -E "h rows vs mirror" $OUT/gtest.log | awk -F': h rows' '{print $2}' | sort | uniq -c | sort -rn | head -3; grep -cE "h rows vs mirror" $OUT/gtest.log
grep -E "h rows vs mirror" $OUT/gtest.log | grep -oE 'mirror [0-9.e-]+$' | sort -k2 -g | tail -3
wait $BPID; echo "build rc=$? at $((SECONDS-T0)) s"
export PYTHONPATH=/tmp/bpy/python:$PWD:/tmp/site PYTHONUNBUFFERED=1 FLASHMOE_COMMIT=$C
mkdir -p $OUT/jg
I="flashmoe-fp8 flashmoe-fp8-multikernel flashmoe flashmoe-multikernel torch-scaled-grouped-mm torch-grouped-mm"
for c in "decode-1" "dsv3-tp8 --tokens 1" "decode-16" "dsv3 --tokens 16" "decode-128"; do
  LEFT=$((420-(SECONDS-T0))); [ $LEFT -lt 20 ] && break
  timeout $LEFT python3 -m benchmarks.bench_moe --config $c --graph --quick --impl $I --out $OUT/jg > "$OUT/graph_${c// /_}.log" 2>&1; echo "graph $c rc=$? at $((SECONDS-T0)) s"; grep -iE "flashmoe-fp8 |error" "$OUT/graph_${c// /_}.log" | head -4
done
LEFT=$((585-(SECONDS-T0)))
if [ $LEFT -gt 60 ]; then
  timeout $LEFT python3 -m pytest -q tests/python -rs > $OUT/pytest.log 2>&1; echo "pytest rc=$? at $((SECONDS-T0)) s"; tail -3 $OUT/pytest.log; grep -E "^FAILED" $OUT/pytest.log | head
fi
(cd $OUT && mkdir -p logs && mv graph_*.log build.log logs/ && tar czf logs.tgz logs jg && rm -rf logs jg)
echo "total $((SECONDS-T0)) s"
