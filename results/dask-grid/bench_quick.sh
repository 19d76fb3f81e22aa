#!/usr/bin/env bash
# The acceptance benchmark of issue #14: the whole quick study (`reproduce --quick --seed 0`, every
# cell) serially and with `--dask local:2`, each from an empty --out, same machine, in the order
# given (alternate it between runs). Modes: serial1 = one process, --threads 1 (the setting whose
# cells equal local:2's: torch's thread count changes the weights, see README.md); local2 =
# --dask local:2 (2 worker processes x 1 torch thread); serial2 = one process, torch's default
# threads (2 here), the issue's "one 2-thread process".
# Usage: results/dask-grid/bench_quick.sh TREE SCRATCH MODE... > quick.csv   (CSV on stdout)
set -euo pipefail
tree=$1; scratch=$2; shift 2
mkdir -p "$scratch"
echo "mode,wall_s,user_s,sys_s,maxrss_kib,load1_start,load1_end,rc"
for mode in "$@"; do
    case $mode in
        serial1) extra=(--threads 1) ;;
        serial2) extra=() ;;
        local2) extra=(--dask local:2) ;;
        *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    out="$scratch/$mode"
    rm -rf "$out"
    l0=$(cut -d' ' -f1 /proc/loadavg)
    rc=0
    (cd "$tree" && PYTHONPATH="$tree/pytools:$tree" /usr/bin/time -f "%e,%U,%S,%M" -o "$scratch/$mode.time" \
        nice -n 19 python3 -m backdoorlab reproduce --quick --seed 0 --no-progress --out "$out" "${extra[@]}" \
        > "$scratch/$mode.log" 2>&1) || rc=$?
    echo "$mode,$(tail -1 "$scratch/$mode.time"),$l0,$(cut -d' ' -f1 /proc/loadavg),$rc"
done
