#!/usr/bin/env bash
# Round 202: at 32a7b9c (v0.40 kernels), the gated FFN's dense A rows (FLASHMOE_FP8_A_DENSE=1,
# opt-in) against the default on dsv3, both paths, three alternations of 100 reps. Since v0.39
# the one kernel's dispatch quantizes straight into the dense rows (no separate copy).
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b && for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); chmod +x /tmp/b/$(basename $f .gz); done
B=/tmp/b/flashmoe_bench
for run in def:1 d1:1 mdef:1 m1:1 d1:2 def:2 m1:2 mdef:2 def:3 d1:3 mdef:3 m1:3; do
  m=${run%%:*}; rep=${run##*:}
  LEFT=$((200-(SECONDS-T0))); [ $LEFT -lt 20 ] && break
  unset FLASHMOE_FP8_A_DENSE FLASHMOE_FUSED
  case $m in d1|m1) export FLASHMOE_FP8_A_DENSE=1;; esac
  case $m in m1|mdef) export FLASHMOE_FUSED=0;; esac
  timeout $LEFT $B --fp8 channel --reps 100 --warmup 10 --config dsv3 > $OUT/b_${m}_r$rep.log 2>&1
  echo "$m $rep rc=$?: $(grep -E '^dsv3' $OUT/b_${m}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log)
echo "total $((SECONDS-T0)) s"
