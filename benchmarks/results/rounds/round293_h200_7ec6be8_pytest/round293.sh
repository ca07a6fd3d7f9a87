#!/usr/bin/env bash
# Round 293 (H200): the committed HEAD (v0.64's kernels) -- the extension built here, then the
# whole GPU pytest (graph capture, torch.compile, both forwards). -> $OUT.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi -L; C=$(cat $D/COMMIT); echo "commit $C"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
(cmake -S . -B /tmp/bpy -G Ninja -DFLASHMOE_BUILD_TESTS=OFF -DFLASHMOE_CUTLASS_INCLUDE=/tmp/site/cutlass_library/source/include -DFLASHMOE_BUILD_PYTHON=ON -DPython_EXECUTABLE=$(command -v python3) && cmake --build /tmp/bpy -j16) > $OUT/build.log 2>&1; echo "build rc=$? at $((SECONDS-T0)) s"
export PYTHONPATH=/tmp/bpy/python:$PWD:/tmp/site PYTHONUNBUFFERED=1 FLASHMOE_COMMIT=$C
LEFT=$((400-(SECONDS-T0)))
timeout $LEFT python3 -m pytest -q tests/python -rs > $OUT/pytest.log 2>&1; echo "pytest rc=$? at $((SECONDS-T0)) s"; tail -3 $OUT/pytest.log; grep -E "^FAILED" $OUT/pytest.log | head
gzip -9 $OUT/build.log
echo "total $((SECONDS-T0)) s"
