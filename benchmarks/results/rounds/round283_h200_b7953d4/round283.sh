#!/usr/bin/env bash
# Round 283 (H200): the committed HEAD (v0.62) -- the extension built here and issue 5's five
# graph replays through the harness (the README's H200 graph table). The FP8 gtests ran on the
# same kernels in round 282. -> $OUT.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi -L; C=$(cat $D/COMMIT); echo "commit $C"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
(cmake -S . -B /tmp/bpy -G Ninja -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_CUTLASS_INCLUDE=/tmp/site/cutlass_library/source/include -DFLASHMOE_BUILD_PYTHON=ON -DPython_EXECUTABLE=$(command -v python3) && cmake --build /tmp/bpy -j16) > $OUT/build.log 2>&1; echo "build rc=$? at $((SECONDS-T0)) s"
export PYTHONPATH=/tmp/bpy/python:$PWD:/tmp/site PYTHONUNBUFFERED=1 FLASHMOE_COMMIT=$C
mkdir -p $OUT/jg
I="flashmoe-fp8 flashmoe-fp8-multikernel flashmoe flashmoe-multikernel torch-scaled-grouped-mm torch-grouped-mm"
for c in "decode-1" "dsv3-tp8 --tokens 1" "decode-16" "dsv3 --tokens 16" "decode-128"; do
  LEFT=$((400-(SECONDS-T0))); [ $LEFT -lt 20 ] && break
  timeout $LEFT python3 -m benchmarks.bench_moe --config $c --graph --quick --impl $I --out $OUT/jg > "$OUT/graph_${c// /_}.log" 2>&1; echo "graph $c rc=$? at $((SECONDS-T0)) s"; grep -iE "flashmoe-fp8 |error" "$OUT/graph_${c// /_}.log" | head -2
done
(cd $OUT && mkdir -p logs && mv graph_*.log build.log logs/ && tar czf logs.tgz logs jg && rm -rf logs jg)
echo "total $((SECONDS-T0)) s"
