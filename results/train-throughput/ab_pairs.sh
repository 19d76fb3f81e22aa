#!/usr/bin/env bash
# Paired A/B of the issue-19 training command between two source trees, alternated (A B, B A, ...)
#
#   bash ab_pairs.sh NEW_TREE OLD_TREE PAIRS OUT_PREFIX
#
# Each tree is a checkout (or `git archive`) with its native module built in
# pytools/backdoorlab/. Every run is a fresh process of
#   python3 -m backdoorlab bench train --n-train 2000 --rounds 2 --skip-stream
# under /usr/bin/time; the figure kept is the `trainer/memory` images/s the run prints (the median
# of its two rounds: the issue's figure). One warm-up pair is run first and not counted. On a
# shared machine single runs move by up to 1.5x: the ratio is taken pair by pair (NEW / OLD) and
# the median of the pairs quoted, so a drift of the machine's speed over minutes cancels.
# Writes OUT_PREFIX.csv (pair, old img/s, new img/s, ratio, wall and CPU seconds of both processes)
# and OUT_PREFIX_{new,old}.log (every run's own output), and prints the summary.
set -euo pipefail
new=$(cd "$1" && pwd); old=$(cd "$2" && pwd); pairs=$3; out=$4
[[ $pairs =~ ^[1-9][0-9]*$ ]] || { echo "PAIRS must be a positive integer, got '$pairs'" >&2; exit 2; }
for tree in "$new" "$old"; do
  compgen -G "$tree/pytools/backdoorlab/_core*.so" >/dev/null || { echo "no native module built in $tree" >&2; exit 2; }
done
cmd=(python3 -m backdoorlab bench train --n-train 2000 --rounds 2 --skip-stream)

run() {  # run TREE LOG -> prints "img/s wall_s cpu_s"
  local tree=$1 log=$2 tmp
  tmp=$(mktemp)
  env PYTHONPATH="$tree/pytools:$tree" /usr/bin/time -f "%e %U %S" -o "$tmp.time" "${cmd[@]}" >"$tmp" 2>&1
  cat "$tmp" >>"$log"
  local ips
  ips=$(awk '/^  trainer\/memory/ {print $2}' "$tmp" | tail -1)
  [[ -n $ips ]] || { echo "no trainer/memory figure in the output of $tree (see $log)" >&2; exit 1; }
  awk -v ips="$ips" '{printf "%s %s %.2f\n", ips, $1, $2 + $3}' "$tmp.time"
  rm -f "$tmp" "$tmp.time"
}

: >"${out}_new.log"; : >"${out}_old.log"
echo "pair,old_img_s,new_img_s,ratio,old_wall_s,new_wall_s,old_cpu_s,new_cpu_s" >"$out.csv.tmp"
for ((i = 0; i <= pairs; i++)); do
  # the order flips every pair (new old, old new, ...): what a process leaves behind (caches, clock)
  # then favours neither side
  if ((i % 2 == 0)); then
    read -r n_ips n_wall n_cpu < <(run "$new" "${out}_new.log")
    read -r o_ips o_wall o_cpu < <(run "$old" "${out}_old.log")
  else
    read -r o_ips o_wall o_cpu < <(run "$old" "${out}_old.log")
    read -r n_ips n_wall n_cpu < <(run "$new" "${out}_new.log")
  fi
  ratio=$(awk -v a="$n_ips" -v b="$o_ips" 'BEGIN {printf "%.3f", a / b}')
  label=$([[ $i -eq 0 ]] && echo warmup || echo "$i")
  echo "$label,$o_ips,$n_ips,$ratio,$o_wall,$n_wall,$o_cpu,$n_cpu" >>"$out.csv.tmp"
  echo "pair $label: old $o_ips img/s, new $n_ips img/s, ratio $ratio" >&2
done
mv "$out.csv.tmp" "$out.csv"  # complete or absent: an interrupted series leaves only the .tmp
python3 - "$out.csv" <<'EOF'
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["pair"] != "warmup"]
ratios = sorted(float(r["ratio"]) for r in rows)
q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
print(f"{len(ratios)} pairs: ratio new/old median {statistics.median(ratios):.3f}, quartiles {q[0]:.3f}-{q[2]:.3f}, "
      f"range {ratios[0]:.3f}-{ratios[-1]:.3f}, {sum(r >= 1.3 for r in ratios)} of {len(ratios)} at or above 1.3")
EOF
