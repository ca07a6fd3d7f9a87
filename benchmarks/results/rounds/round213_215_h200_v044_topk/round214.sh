#!/usr/bin/env bash
# Round 214: v0.44b (v0.44 plus each warp's score rows prefetched to L2 before its tokens):
# timeline old/new at prefill and seed, alternating 100-rep runs, then ncu warp-state samples per
# SASS instruction of the new one-kernel forward at prefill (where the top-k's time goes).
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
mkdir -p /tmp/b /tmp/o
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_old/flashmoe_bench.gz > /tmp/o/flashmoe_bench; chmod +x /tmp/b/* /tmp/o/*
export FLASHMOE_FUSED_TIMELINE=1
for v in o b; do
  for c in prefill seed; do
    timeout 60 /tmp/$v/flashmoe_bench --fp8 channel --reps 10 --warmup 3 --config $c > $OUT/tl_${v}_$c.log 2>&1
    echo "$v $c: $(grep -oE 'tk:scores [0-9./]+|tk:sum [0-9./]+|tk:q [0-9./]+|tk:selected [0-9./]+|top-k\(t0\) [0-9./]+|barrier2 [0-9./]+' $OUT/tl_${v}_$c.log | tr '\n' ' ')"
  done
done
unset FLASHMOE_FUSED_TIMELINE
for rep in 1 2; do
  for v in o b; do
    timeout 90 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config prefill --config seed --config decode-1 > $OUT/b_${v}_r$rep.log 2>&1
    echo "$v $rep: $(grep -E '^(prefill|seed|decode)' $OUT/b_${v}_r$rep.log | awk '{printf "%s %s | ", $1, $3}')"
  done
done
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log)
echo "bench done at $((SECONDS-T0)) s"
timeout 240 ncu --kernel-name regex:fused_sm90_fp8 --launch-skip 1 --launch-count 1 --section WarpStateStats --section SourceCounters --warp-sampling-interval 2 -o /tmp/rep /tmp/b/flashmoe_bench --fp8 channel --reps 1 --warmup 1 --config prefill > $OUT/ncu_run.log 2>&1
echo "ncu rc=$? at $((SECONDS-T0)) s"; tail -3 $OUT/ncu_run.log
timeout 120 ncu --import /tmp/rep.ncu-rep --page source --csv --print-source sass > /tmp/src.csv 2>$OUT/ncu_export.err
echo "export rc=$? $(wc -c < /tmp/src.csv) bytes"; head -c 600 /tmp/src.csv; echo
python3 - <<'PY' > $OUT/ncu_prefill_sass_samples.csv
import csv,sys
r=csv.reader(open('/tmp/src.csv'))
hdr=next(r); print(','.join(hdr))
idx=[i for i,h in enumerate(hdr) if 'Sampl' in h]
for row in r:
    try:
        if any(float(row[i] or 0)>0 for i in idx): print(','.join('"%s"'%c for c in row))
    except Exception: pass
PY
wc -l $OUT/ncu_prefill_sass_samples.csv; gzip $OUT/ncu_prefill_sass_samples.csv
echo "total $((SECONDS-T0)) s"
