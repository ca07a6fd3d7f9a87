#!/usr/bin/env bash
# Round 183: EXPERIMENT v0.38b debug: cuda-gdb on the failing bench invocation.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench
export FLASHMOE_FUSED=0 FLASHMOE_FP8_A_DENSE=1
which cuda-gdb || ls /usr/local/cuda/bin | grep -i gdb
GDB=$(which cuda-gdb || echo /usr/local/cuda/bin/cuda-gdb)
timeout 240 $GDB --batch -ex 'set pagination off' -ex run -ex 'info cuda kernels' -ex 'info cuda warps' -ex 'x/6i $pc-32' -ex 'info registers' --args $B --fp8 channel --reps 1 --warmup 0 --config prefill --tokens 512 > $OUT/gdb.log 2>&1; echo "gdb rc=$?"
grep -n -i "exception\|illegal\|kernel\|CUDA\|=>" $OUT/gdb.log | head -40
echo "total $((SECONDS-T0)) s"
