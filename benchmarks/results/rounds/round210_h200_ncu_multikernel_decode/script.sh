#!/usr/bin/env bash
# Round 210: ncu of the multi-kernel path's decode-16 GEMM (the standalone m128 kernel) at 9977cd5
# (bin_old) and 45a115f (bin_mid), to find what v0.38c changed there (+8%, rounds 208-209).
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L
mkdir -p /tmp/o /tmp/m
gunzip -c $D/bin_old/flashmoe_bench.gz > /tmp/o/flashmoe_bench; gunzip -c $D/bin_mid/flashmoe_bench.gz > /tmp/m/flashmoe_bench; chmod +x /tmp/o/flashmoe_bench /tmp/m/flashmoe_bench
export FLASHMOE_FUSED=0
for v in o m; do
  timeout 150 ncu --kernel-name regex:sm90_fp8_pipelined --launch-skip 2 --launch-count 1 --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section MemoryWorkloadAnalysis --metrics dram__bytes_read.sum,lts__t_sectors_srcunit_tex_op_read.sum,smsp__cycles_active.avg,gpu__time_duration.sum /tmp/$v/flashmoe_bench --fp8 channel --reps 3 --warmup 1 --config decode-16 > $OUT/ncu_$v.log 2>&1
  echo "$v rc=$? at $((SECONDS-T0)) s"
  grep -E "Duration|Registers Per|Shared Memory Config|Dynamic Shared|Static Shared|Block Size|Grid Size|DRAM Throughput|dram__bytes_read|Stall|Warp Cycles Per Issued|Memory Throughput|Achieved Occupancy|Waves" $OUT/ncu_$v.log | head -30
done
echo "total $((SECONDS-T0)) s"
