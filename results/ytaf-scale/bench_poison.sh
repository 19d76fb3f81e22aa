#!/usr/bin/env bash
# Paired A/B of `backdoorlab poison` on synth-faces at a tenth of YTAF (128 identities x 468 = 59,904
# images, 55x47), issue #14 item 3 / follow-up (a). Usage:
#   results/ytaf-scale/bench_poison.sh BASE_TREE NEW_TREE ROUNDS OUTDIR > poison_ab.csv
# BASE_TREE: a checkout of the code before the change (here: `git archive 956f6c5`), NEW_TREE: this
# branch. Every round runs base, new (v1, default), new v2, new v2 + --image-compression none, in an
# order that alternates between rounds; each at nice -n 19 under /usr/bin/time. CPU = user + sys.
set -euo pipefail
base=$1; new=$2; rounds=$3; out=$4
mkdir -p "$out"
cmd=(python3 -m backdoorlab poison --preset ytaf-paper-green-glasses --source synth-faces
     --source-option n_identities=128 --source-option images_per_identity=468 --no-progress)
echo "round,config,wall_s,user_s,sys_s,maxrss_kib,load1_start,load1_end,images,sha256_16"
run() {  # tree config extra...
    local tree=$1 cfg=$2; shift 2
    local f="$out/$cfg.h5"
    rm -f "$out/$cfg".*
    local l0; l0=$(cut -d' ' -f1 /proc/loadavg)
    # from the tree's root: `python3 -m` puts the working directory first on sys.path, so run
    # anywhere else, the datasets_gen of that directory (e.g. another checkout) would be imported
    (cd "$tree" && PYTHONPATH="$tree/pytools:$tree" /usr/bin/time -f "%e,%U,%S,%M" -o "$out/time.txt" \
        nice -n 19 "${cmd[@]}" "$@" --out "$f" 2> "$out/$cfg.log")
    local l1; l1=$(cut -d' ' -f1 /proc/loadavg)
    local n; n=$(python3 -c "import h5py,sys; f=h5py.File(sys.argv[1]); print(sum(f[s]['images'].shape[0] for s in ('train','test','clean','test_triggered')))" "$f")
    local sha; sha=$(sha256sum "$f" | cut -c1-16)
    echo "$r,$cfg,$(cat "$out/time.txt"),$l0,$l1,$n,$sha"
}
for r in $(seq 1 "$rounds"); do
    if (( r % 2 )); then
        run "$base" base; run "$new" v1; run "$new" v2 --source-option renderer=v2
        run "$new" v2-none --source-option renderer=v2 --image-compression none
    else
        run "$new" v2-none --source-option renderer=v2 --image-compression none
        run "$new" v2 --source-option renderer=v2; run "$new" v1; run "$base" base
    fi
done
