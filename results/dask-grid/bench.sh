#!/usr/bin/env bash
# Paired wall-time benchmark: `backdoorlab reproduce --quick --seed 0 --defences $DEFENCES` serially (one process, torch's
# default 2 threads on 2 cores) vs `--dask local:2` (2 worker processes x 1 torch thread), in ABBA
# order so a drift in the machine's load hits both sides alike. Every run starts from an empty --out.
# DEFENCES: 8 of the quick study's 15 seed-0 cells (both settings, 2 variants, 3 models, a filter,
# a pruning and the ac>fp pipeline that reuses ac's step), so that 4 runs fit in the time we had.
# Usage: results/dask-grid/bench.sh [ROUNDS] (scratch in /tmp/dask/bench, summary on stdout as CSV)
set -euo pipefail
rounds=${1:-1}
DEFENCES=${DEFENCES:-clean,none,ac-size,fp-last,ac>fp}
scratch=/tmp/dask/bench
mkdir -p "$scratch"
run() {  # $1 = serial|dask, $2 = run id
  local out="$scratch/$1-$2" extra=()
  rm -rf "$out"
  [[ $1 == dask ]] && extra=(--dask local:2)
  local load0 t0 t1
  load0=$(cut -d' ' -f1 /proc/loadavg)
  t0=$(date +%s.%N)
  nice -n 10 python3 -m backdoorlab reproduce --quick --seed 0 --defences "$DEFENCES" --no-progress --out "$out" "${extra[@]}" \
    > "$out.log" 2>&1
  t1=$(date +%s.%N)
  echo "$1,$2,$(echo "$t1 - $t0" | bc),$load0,$(cut -d' ' -f1 /proc/loadavg)"
}
echo "mode,run,wall_s,loadavg_start,loadavg_end"
for r in $(seq 1 "$rounds"); do
  run serial "$r"a; run dask "$r"a; run dask "$r"b; run serial "$r"b
done
