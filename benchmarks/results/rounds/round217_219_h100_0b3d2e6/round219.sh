#!/usr/bin/env bash
# Round 219: the harness (eager) on prefill / seed / dsv3 for flashmoe-fp8, its multi-kernel path
# and torch-scaled-grouped-mm, with the ceilings of the same run, at the commit in COMMIT, on the
# warm machine of rounds 217-218 (its extension build in /tmp/bpy). JSON -> $OUT/json.tgz.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi -L; C=$(cat $D/COMMIT); echo "commit $C"
if [ ! -d /tmp/bpy/python ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
  (cmake -S . -B /tmp/bpy -G Ninja -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_CUTLASS_INCLUDE=/tmp/site/cutlass_library/source/include -DFLASHMOE_BUILD_PYTHON=ON -DPython_EXECUTABLE=$(command -v python3) && cmake --build /tmp/bpy -j16) > $OUT/build.log 2>&1; echo "build rc=$? at $((SECONDS-T0)) s"
fi
export PYTHONPATH=/tmp/bpy/python:$PWD:/tmp/site PYTHONUNBUFFERED=1 FLASHMOE_COMMIT=$C
mkdir -p $OUT/json
for c in prefill seed dsv3; do
  LEFT=$((585-(SECONDS-T0))); [ $LEFT -lt 30 ] && break
  timeout $LEFT python3 -m benchmarks.bench_moe --config $c --impl flashmoe-fp8 flashmoe-fp8-multikernel torch-scaled-grouped-mm --out $OUT/json > $OUT/bench_$c.log 2>&1; echo "bench $c rc=$? at $((SECONDS-T0)) s"; grep -E "^(flashmoe|torch-scaled)|ceiling|copy" $OUT/bench_$c.log | head -8
done
(cd $OUT && tar czf json.tgz json 2>/dev/null; rm -rf json)
echo "total $((SECONDS-T0)) s"
