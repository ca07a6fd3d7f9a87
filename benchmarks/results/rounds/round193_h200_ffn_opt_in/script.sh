#!/usr/bin/env bash
# Round 193: the gated FFN's dense rows made opt-in (FLASHMOE_FP8_A_DENSE=1): the forward gtests.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
G=/tmp/b/flashmoe_tests
timeout 200 $G --gtest_brief=1 --gtest_filter='GpuFp8Fwd*:GpuSmallFp8Fwd*:Fp8FwdHost.*' > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; tail -2 $OUT/gtest.log; grep -E "^\[  FAILED" $OUT/gtest.log | head
echo "total $((SECONDS-T0)) s"
