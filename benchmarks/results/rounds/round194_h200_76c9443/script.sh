#!/usr/bin/env bash
# Round 194: the final build (76c9443's code): every gtest, memcheck on the opt-in FFN dense path.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
G=/tmp/b/flashmoe_tests
timeout 240 $G --gtest_brief=1 > $OUT/gtest.log 2>&1; echo "gtest rc=$? at $((SECONDS-T0)) s"; tail -2 $OUT/gtest.log; grep -E "^\[  FAILED" $OUT/gtest.log | head
FLASHMOE_FP8_A_DENSE=1 timeout 100 compute-sanitizer --tool memcheck --print-limit 8 $G --gtest_brief=1 --gtest_filter='GpuFp8Fwd.FfnDownPairs' > $OUT/memcheck_ffn_dense.log 2>&1; echo "memcheck rc=$? at $((SECONDS-T0)) s: $(grep 'ERROR SUMMARY' $OUT/memcheck_ffn_dense.log)"
echo "total $((SECONDS-T0)) s"
