#!/usr/bin/env bash
# The test command (README): installs what a fresh Debian machine lacks, builds the library, the
# GoogleTest suite and the Python extension (CUDA sources for sm_80 and sm_90a included), runs
# ctest and pytest. Exits non-zero on any failure. GPU tests skip with a visible reason when no
# CUDA GPU is present.
#
#   bash scripts/test.sh            # everything
#   FLASHMOE_TEST_WHEEL=1 bash scripts/test.sh   # also `pip install .` and test the installed wheel
#
# run.sh sources this file for its setup functions.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
JOBS="$(nproc)"

log() { printf '\n== %s\n' "$*"; }

# cmake, g++, GoogleTest from Debian's packages, only when missing; nvcc must come with the machine.
setup_system() {
  local need_gtest="${1:-yes}" missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  command -v g++ >/dev/null || missing+=(g++)
  command -v make >/dev/null || missing+=(make)
  if [[ "$need_gtest" == yes && ! -f /usr/include/gtest/gtest.h ]]; then missing+=(libgtest-dev); fi
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
  if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export PATH="/usr/local/cuda/bin:$PATH"
  fi
  command -v nvcc >/dev/null || { echo "nvcc not found: the CUDA toolkit is required" >&2; exit 1; }
}

# Installs the pinned Python packages of requirements-dev.txt that are not installed yet (so a
# machine that already has them, such as the GPU machine without internet, needs no index).
# nvidia-cutlass goes in with --no-deps: only its C++ headers are used. Wheels in .whl/ (carried
# to a machine without internet) are used instead of the index. If pip fails, the run goes on
# with the installed versions when the modules named as arguments are all present.
setup_python() {
  local missing
  missing="$("$PY" - "$ROOT/requirements-dev.txt" <<'EOF'
import re, sys
from importlib import metadata
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, want = re.split(r"==", line)
    try:
        have = metadata.version(name.strip()).split("+", 1)[0]
    except metadata.PackageNotFoundError:
        have = None
    if have != want.strip():
        print(line)
EOF
)"
  [[ -z "$missing" ]] && return 0
  log "pip install: $(echo $missing)"
  local pip=("$PY" -m pip install --disable-pip-version-check --root-user-action=ignore
             --retries 1 --timeout 30)
  [[ -d "$ROOT/.whl" ]] && pip+=(--no-index --find-links "$ROOT/.whl")
  local deps=() nodeps=() ok=1 req
  while read -r req; do
    if [[ "$req" == nvidia-cutlass* ]]; then nodeps+=("$req"); else deps+=("$req"); fi
  done <<<"$missing"
  local t0=$SECONDS
  if ((${#deps[@]})); then "${pip[@]}" "${deps[@]}" || ok=0; fi
  if ((${#nodeps[@]})); then "${pip[@]}" --no-deps "${nodeps[@]}" || ok=0; fi
  echo "pip install took $((SECONDS - t0)) s"
  if ((!ok)); then
    "$PY" - "$@" <<'EOF' || { echo "pip install failed and required modules are missing" >&2; exit 1; }
import importlib.util, sys
absent = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]
if absent:
    sys.exit(f"missing Python modules: {', '.join(absent)}")
EOF
    echo "warning: pinned versions not installable here; going on with the installed ones" >&2
  fi
}

# Configures and builds into $1 with extra cmake arguments; the extension is staged importable
# at $1/python (PYTHONPATH), no install needed.
build() {
  local dir="$1"
  shift
  log "cmake build ($dir)"
  cmake -S "$ROOT" -B "$dir" -DPython_EXECUTABLE="$(command -v "$PY")" "$@"
  cmake --build "$dir" -j"$JOBS"
}

main() {
  local t_start=$SECONDS build_dir="$ROOT/build/test"
  setup_system yes
  setup_python numpy pytest nanobind scikit_build_core cutlass_library torch
  build "$build_dir" -DFLASHMOE_BUILD_TESTS=ON -DFLASHMOE_BUILD_PYTHON=ON

  log "ctest"
  ctest --test-dir "$build_dir" --output-on-failure -j"$JOBS" 2>&1 | tee "$build_dir/ctest.log"

  local pypath="$build_dir/python"
  if [[ "${FLASHMOE_TEST_WHEEL:-0}" == 1 ]]; then
    log "pip install --no-build-isolation ."
    "$PY" -m pip install --disable-pip-version-check --root-user-action=ignore \
      --no-build-isolation -v "$ROOT"
    pypath=""
  fi

  log "pytest"
  (cd "$ROOT" && PYTHONPATH="$pypath" "$PY" -m pytest tests/python -rs -p no:cacheprovider) 2>&1 |
    tee "$build_dir/pytest.log"

  log "done in $((SECONDS - t_start)) s"
  # The runners' closing lines, last: ctest's summary, then pytest's.
  grep -E '^[0-9]+% tests passed' "$build_dir/ctest.log" | tail -n 1
  tail -n 1 "$build_dir/pytest.log"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
