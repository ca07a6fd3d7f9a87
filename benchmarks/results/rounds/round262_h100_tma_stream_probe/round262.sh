#!/usr/bin/env bash
# Round 262: (1) the TMA weight-stream probe: does the box's DRAM pattern (256 runs of 128 bytes,
# K apart) bound the FP8 weight stream? (2) prefill, one kernel against the multi-kernel path,
# three alternations of v0.56's bench (HEAD's SASS) in one call.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; nvidia-smi --query-gpu=power.limit,clocks.max.sm --format=csv,noheader
chmod +x $D/probe/tma_stream_probe
timeout 120 $D/probe/tma_stream_probe 44 > $OUT/probe.log 2>&1; echo "probe rc=$? at $((SECONDS-T0)) s"; cat $OUT/probe.log
mkdir -p /tmp/p; gunzip -c $D/bin_prev/flashmoe_bench.gz > /tmp/p/flashmoe_bench; chmod +x /tmp/p/flashmoe_bench
for rep in 1 2 3; do
  for f in 1 0; do
    FLASHMOE_FUSED=$f timeout 120 /tmp/p/flashmoe_bench --fp8 channel --reps 50 --warmup 10 --config prefill > $OUT/pf_f${f}_r$rep.log 2>&1
    echo "prefill fused=$f rep $rep: $(grep -E '^prefill' $OUT/pf_f${f}_r$rep.log | awk '{print $3, $4, $5}') at $((SECONDS-T0)) s"
  done
done
(cd $OUT && cat pf_*.log > prefill_all.log && rm -f pf_*.log)
echo "total $((SECONDS-T0)) s"
