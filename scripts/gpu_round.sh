#!/usr/bin/env bash
# One whole GPU round on the GPU machine, in one call, finished in under 9 minutes:
#
#   bash scripts/gpu_round.sh OUTDIR
#
#   1. environment (GPU, driver, toolchain)                    -> OUTDIR/env.txt
#   2. the C++ GoogleTest binary, all tests                    -> OUTDIR/gtest.log, gtest.json
#      (a prebuilt, carried build-gpu/tests/cpp/flashmoe_tests is used as is; without one it is
#      configured and built here with ninja, into build-round/)
#   3. compute-sanitizer memcheck on the small-shape tests     -> OUTDIR/sanitizer.log
#      (--gtest_filter='GpuSmall.*')
#   4. if present: the Python extension (pip install --no-build-isolation --no-deps .) and
#      pytest tests/python -rs                                 -> OUTDIR/python.log
#   5. if present: python3 -m benchmarks.bench_moe --config seed --quick --out OUTDIR
#                                                              -> OUTDIR/bench.log (+ its JSON/PNG)
#   6. a summary table on stdout (also appended to env.txt)
#
# The machine has no internet: wheels it lacks travel in .whl/ (scripts/fetch_wheels.sh), at least
# nvidia-cutlass (the CUTLASS/CuTe headers); they are installed with --target /tmp/site.
# At most 8 files come back from OUTDIR, so logs are merged: keep it that way.
#
# Environment knobs: FLASHMOE_ROUND_BUDGET_S (default 510 s for the whole round),
# FLASHMOE_GPU_ARCHS (default "80-real;90a-real"), FLASHMOE_REBUILD=1 (ignore a carried binary).
set -uo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: bash scripts/gpu_round.sh OUTDIR" >&2
  exit 2
fi
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BUDGET="${FLASHMOE_ROUND_BUDGET_S:-510}"
ARCHS="${FLASHMOE_GPU_ARCHS:-80-real;90a-real}"
JOBS="$(nproc)"
START=$SECONDS
SUMMARY=()
export PATH="/usr/local/cuda/bin:$PATH"
export PYTHONUNBUFFERED=1

remaining() { echo $((BUDGET - (SECONDS - START))); }

# step NAME CAP_SECONDS LOGFILE COMMAND: runs COMMAND (a bash string) under `timeout`, limited to
# CAP and to what is left of the budget, appending its output to LOGFILE (and to stdout).
step() {
  local name="$1" cap="$2" log="$3" cmd="$4"
  local left=$(($(remaining) - 10))
  local limit=$((cap < left ? cap : left))
  if ((limit < 15)); then
    SUMMARY+=("$name|skipped: round budget spent|0s")
    echo "== $name: skipped (round budget spent)" | tee -a "$log"
    return 1
  fi
  echo "== $name (limit ${limit}s): $cmd" | tee -a "$log"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" bash -c "$cmd" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  local dt=$((SECONDS - t0))
  local status
  case $rc in
    0) status="ok" ;;
    124 | 137) status="TIMEOUT after ${limit}s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  SUMMARY+=("$name|$status|${dt}s")
  echo "== $name: $status in ${dt}s" | tee -a "$log"
  return "$rc"
}

skip() { SUMMARY+=("$1|skipped: $2|0s"); echo "== $1: skipped ($2)"; }

# ---- 1. Environment and wheels. ----
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi -L 2>&1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  nvcc --version 2>&1 | tail -2
  cmake --version 2>&1 | head -1
  echo "ninja $(ninja --version 2>&1)"
  python3 --version 2>&1
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1
  command -v compute-sanitizer || echo "compute-sanitizer: not found"
  echo "cpus: $JOBS, archs: $ARCHS, budget: ${BUDGET}s"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$OUT/env.txt" 2>&1 &&
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
CUTLASS_INC="${FLASHMOE_CUTLASS_INCLUDE:-}"
if [[ -z "$CUTLASS_INC" ]]; then
  CUTLASS_INC="$(python3 -c 'import importlib.util as u, os; print(os.path.join(list(u.find_spec("cutlass_library").submodule_search_locations)[0], "source", "include"))' 2>/dev/null || true)"
fi
echo "cutlass include: ${CUTLASS_INC:-not found}" | tee -a "$OUT/env.txt"
export FLASHMOE_CUTLASS_INCLUDE="$CUTLASS_INC"

# ---- 2. The C++ tests. ----
BIN="build-gpu/tests/cpp/flashmoe_tests"
if [[ -x "$BIN" && "${FLASHMOE_REBUILD:-0}" != 1 ]]; then
  echo "using the carried test binary $BIN (built $(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ))" |
    tee -a "$OUT/gtest.log"
else
  BIN="build-round/tests/cpp/flashmoe_tests"
  GTEST_ARGS=""
  if [[ ! -f /usr/include/gtest/gtest.h && -d .carry/googletest ]]; then
    # No GoogleTest in the image: build the carried sources (e.g. Debian's /usr/src/googletest).
    GTEST_ARGS="-DCMAKE_PREFIX_PATH=/tmp/gtest"
    step "googletest build" 120 "$OUT/gtest.log" \
      "cmake -S .carry/googletest -B /tmp/gtest-build -G Ninja -DCMAKE_BUILD_TYPE=Release \
         -DBUILD_GMOCK=OFF -DCMAKE_INSTALL_PREFIX=/tmp/gtest && cmake --build /tmp/gtest-build \
         -j$JOBS && cmake --install /tmp/gtest-build"
  fi
  step "C++ build (${ARCHS})" 300 "$OUT/gtest.log" \
    "cmake -S . -B build-round -G Ninja -DCMAKE_BUILD_TYPE=Release \
       '-DCMAKE_CUDA_ARCHITECTURES=$ARCHS' -DFLASHMOE_CUTLASS_INCLUDE='$CUTLASS_INC' \
       -DPython_EXECUTABLE=\$(command -v python3) $GTEST_ARGS && \
     cmake --build build-round -j$JOBS --target flashmoe_tests"
fi
if [[ -x "$BIN" ]]; then
  step "gtest (all)" 170 "$OUT/gtest.log" \
    "'$BIN' --gtest_output=json:'$OUT/gtest.json' --gtest_color=no"
  if command -v compute-sanitizer >/dev/null; then
    step "compute-sanitizer memcheck (GpuSmall*)" 150 "$OUT/sanitizer.log" \
      "compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 50 \
         '$BIN' --gtest_filter='GpuSmall*' --gtest_color=no"
  else
    skip "compute-sanitizer memcheck" "compute-sanitizer not found"
  fi
else
  skip "gtest (all)" "no test binary"
  skip "compute-sanitizer memcheck" "no test binary"
fi

# ---- 3. Python extension, tests, benchmark (written by others; skipped when absent). ----
if [[ -f pyproject.toml && -d tests/python ]]; then
  if step "pip install . (extension)" 210 "$OUT/python.log" \
    "CMAKE_ARGS='-DCMAKE_CUDA_ARCHITECTURES=$ARCHS -DFLASHMOE_CUTLASS_INCLUDE=$CUTLASS_INC' \
     CMAKE_BUILD_PARALLEL_LEVEL=$JOBS \
     python3 -m pip install --no-build-isolation --no-deps --no-cache-dir ."; then
    step "pytest tests/python" 240 "$OUT/python.log" \
      "cd /tmp && python3 -m pytest '$ROOT/tests/python' -rs -q -p no:cacheprovider"
  else
    skip "pytest tests/python" "the extension did not build"
  fi
else
  skip "python" "no pyproject.toml or tests/python"
fi
if [[ -f benchmarks/bench_moe.py ]]; then
  step "bench seed --quick" 150 "$OUT/bench.log" \
    "python3 -m benchmarks.bench_moe --config seed --quick --out '$OUT'"
else
  skip "bench" "benchmarks/bench_moe.py not present"
fi

# ---- 4. Summary. ----
{
  echo
  echo "GPU round summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $((SECONDS - START))s of ${BUDGET}s)"
  printf '%-44s %-32s %s\n' "step" "status" "time"
  for row in "${SUMMARY[@]}"; do
    IFS='|' read -r name status dt <<<"$row"
    printf '%-44s %-32s %s\n' "$name" "$status" "$dt"
  done
  if [[ -f "$OUT/gtest.log" ]]; then
    echo
    grep -E '^\[ +(PASSED|FAILED|SKIPPED) +\]|tests? ran' "$OUT/gtest.log" | tail -40
  fi
  if [[ -f "$OUT/sanitizer.log" ]]; then
    grep -E 'ERROR SUMMARY' "$OUT/sanitizer.log" | tail -1
  fi
} | tee -a "$OUT/env.txt"

for row in "${SUMMARY[@]}"; do
  [[ "$row" == *"|FAILED"* || "$row" == *"|TIMEOUT"* ]] && exit 1
done
exit 0
