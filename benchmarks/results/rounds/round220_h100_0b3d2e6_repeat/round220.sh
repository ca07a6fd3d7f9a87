#!/usr/bin/env bash
# Round 220 (H200): the commit in COMMIT: extension build, issue 5's graph replays (decode
# shapes) and the eager harness (prefill / seed / dsv3) with the ceilings of the same run.
set -uo pipefail
OUT="$1"; D="$(cd "$(dirname "$0")" && pwd)"; T0=$SECONDS
bash $D/round218.sh $OUT
mkdir -p $OUT/graph && mv $OUT/json.tgz $OUT/graph/json.tgz && mv $OUT/graph_*.log $OUT/graph/
bash $D/round219.sh $OUT
echo "total $((SECONDS-T0)) s"
