#!/usr/bin/env bash
# Round 216: is the FP8 prefill forward power-capped? nvidia-smi samples (SM clock, power, the
# power-cap event) every 50 ms while 58fe261 (old) and v0.44 run prefill (100 reps) and seed.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
nvidia-smi -L; echo "commit $(cat $D/COMMIT)"
nvidia-smi --query-gpu=power.limit,power.max_limit,clocks.max.sm,clocks.max.mem --format=csv
mkdir -p /tmp/b /tmp/o
for f in $D/bin/*.gz; do gunzip -c $f > /tmp/b/$(basename $f .gz); done
gunzip -c $D/bin_old/flashmoe_bench.gz > /tmp/o/flashmoe_bench; chmod +x /tmp/b/* /tmp/o/*
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_event_reasons.sw_power_cap,clocks_event_reasons.hw_slowdown,clocks_event_reasons.sw_thermal_slowdown --format=csv,noheader -lms 50 > $OUT/smi.csv 2>&1 &
SMI=$!
sleep 1
for rep in 1 2; do
  for v in o b; do
    for c in prefill seed; do
      echo "MARK $v $c $rep start $(date +%H:%M:%S.%N)" >> $OUT/marks.txt
      timeout 90 /tmp/$v/flashmoe_bench --fp8 channel --reps 100 --warmup 10 --config $c > $OUT/b_${v}_${c}_r$rep.log 2>&1
      echo "MARK $v $c $rep end $(date +%H:%M:%S.%N)" >> $OUT/marks.txt
      echo "$v $c $rep: $(grep -E "^$c " $OUT/b_${v}_${c}_r$rep.log | awk '{printf "%s %s", $1, $3}')"
    done
  done
done
kill $SMI; sleep 0.5
(cd $OUT && cat b_*.log > bench_all.log && rm -f b_*.log)
python3 - "$OUT" <<'PY'
import sys,datetime
out=sys.argv[1]
def t(s): 
    h,m,x=s.split(':'); return int(h)*3600+int(m)*60+float(x)
marks=[l.split() for l in open(out+'/marks.txt')]
rows=[]
for l in open(out+'/smi.csv'):
    p=[x.strip() for x in l.split(',')]
    if len(p)<8: continue
    try: ts=t(p[0].split()[1]); rows.append((ts,float(p[1].split()[0]),float(p[3].split()[0]),p[5]))
    except Exception: pass
for i in range(0,len(marks),2):
    a,b=t(marks[i][5]),t(marks[i+1][5]); sel=[r for r in rows if a+0.3<r[0]<b]
    if not sel: continue
    sm=sorted(r[1] for r in sel); pw=sorted(r[2] for r in sel); cap=sum(1 for r in sel if r[3]=='Active')
    print(marks[i][1],marks[i][2],marks[i][3],'n',len(sel),'sm MHz median',sm[len(sm)//2],'min',sm[0],'power W median',pw[len(pw)//2],'max',pw[-1],'power-cap active',cap)
PY
echo "total $((SECONDS-T0)) s"
