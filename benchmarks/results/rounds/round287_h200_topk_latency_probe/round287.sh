#!/usr/bin/env bash
# Round 287 (H200/H100): the one-token top-k's latency alone (benchmarks/probes/
# topk_latency_probe.cu): four cache conditions x two forms; and the SASS sizes of the probe's
# kernels and of the fused kernel's routing function. -> $OUT.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L
cp $D/probe/topk_latency_probe /tmp/p && chmod +x /tmp/p
timeout 200 /tmp/p 200 > $OUT/probe.log 2>&1; echo "probe rc=$? at $((SECONDS-T0)) s"; cat $OUT/probe.log
cuobjdump -sass /tmp/p | awk '/Function :/{f=$3} /\/\*[0-9a-f]{4}\*\//{n[f]++} END{for(k in n) print n[k], k}'
gunzip -c $D/bin_head/flashmoe_bench.gz > /tmp/bench; chmod +x /tmp/bench



echo "total $((SECONDS-T0)) s"
