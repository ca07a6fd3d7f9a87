#!/usr/bin/env bash
# Downloads into <repo>/.whl the Python 3.12 / manylinux x86_64 wheels that the GPU machine's image
# lacks (it has no internet), for `pip install --no-index --no-deps --target ... .whl/*.whl` there:
#   nvidia-cutlass  the CUTLASS/CuTe headers the CUDA build includes
#   deepspeed       the seed's baseline (benchmarks/baselines.py), plus its runtime dependencies
#                   that the image does not have: hjson, pydantic (+ pydantic-core,
#                   annotated-types, typing-inspection). Its other needs (torch, numpy, einops,
#                   msgpack, ninja, psutil, py-cpuinfo, packaging, tqdm, typing-extensions) are
#                   in the image (.library/device/KINDS.md, "Python packages already there").
# DeepSpeed ships only an sdist: it is built here into a pure-Python wheel with DS_BUILD_OPS=0 (no
# compiled ops; the MoE layer needs none). pydantic is pinned to 2.11, whose typing-extensions
# floor (4.12.2) any recent image meets, so typing-extensions need not travel.
# Run on the development machine (needs PyPI): bash scripts/fetch_wheels.sh
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=.whl
DEEPSPEED=deepspeed==0.19.8
PINNED=(
  nvidia-cutlass==4.2.0.0
  hjson==3.1.0
  pydantic==2.11.10
  pydantic-core==2.33.2
  annotated-types==0.7.0
  typing-inspection==0.4.2
)
MAX_MB=40

mkdir -p "$DEST"
git check-ignore -q "$DEST/" || echo "warning: $DEST is not ignored by git" >&2

download() {  # the form given in .library/device/README.md, Notes
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST" "$@"
}

download "${PINNED[@]}"

if ls "$DEST"/deepspeed-*.whl >/dev/null 2>&1; then
  echo "deepspeed wheel already in $DEST"
elif download "$DEEPSPEED"; then
  echo "deepspeed: downloaded a binary wheel"
else
  # sdist only. With build isolation the build sees no torch, so setup.py takes its torch-free
  # path (it prints a warning and compiles no ops), which is what a pure-Python wheel needs.
  echo "deepspeed: no wheel on PyPI; building a pure-Python one (DS_BUILD_OPS=0)"
  DS_BUILD_OPS=0 python3 -m pip wheel --no-deps -w "$DEST" "$DEEPSPEED" ||
    DS_BUILD_OPS=0 python3 -m pip wheel --no-deps --no-build-isolation -w "$DEST" "$DEEPSPEED"
fi

# Two versions of one package stop the whole install there: keep exactly one of each.
dupes=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [ -n "$dupes" ]; then
  echo "error: more than one wheel of: $dupes (remove the extra ones from $DEST)" >&2
  exit 1
fi
if unzip -l "$DEST"/deepspeed-*.whl | grep -q '\.so$'; then
  echo "error: the deepspeed wheel holds compiled ops; rebuild it with DS_BUILD_OPS=0" >&2
  exit 1
fi

ls -l "$DEST"
total_kb=$(du -ck "$DEST"/*.whl | tail -1 | cut -f1)
echo "total: $((total_kb / 1024)) MB in $(ls "$DEST"/*.whl | wc -l) wheels"
if [ "$total_kb" -gt $((MAX_MB * 1024)) ]; then
  echo "error: the wheels exceed $MAX_MB MB" >&2
  exit 1
fi
