#!/bin/bash
# The paper's setting for #20 on a fully trained model: the source-specific variant of results/nc-strip
# (class 8 -> 14, 82 poisoned rows; the same 16,000-image synth-signs pool), seed 0, whole gtsrb recipe;
# NC with the 30 x 8 x 16 search of report.md, the real trigger's unlearning, STRIP's trigger survival.
# (run from anywhere: bash results/nc-strip-full/source_specific.sh; SCRATCH=DIR for the files not kept)
set -e
HERE=$(cd "$(dirname "$0")" && pwd); R=$HERE
export PYTHONPATH=$HERE/../../pytools:$HERE/../..
O=${SCRATCH:-/tmp/ncfull2}   # variants and checkpoints (not kept in git)
cd "$HERE/../.."
run() { echo "== $(date -u +%H:%M:%S) $*"; nice -n 10 "$@"; }
run python3 -m backdoorlab poison --preset gtsrb-ours-yellow-square-15 --source synth-signs --source-option n_train=16000 \
    --source-option n_test=4000 --out $O/src.h5 --seed 0
run python3 -m backdoorlab train --data $O/src.h5 --model gtsrb_cnn --preset gtsrb --out $O/src_s0.pt --seed 0 --threads 2 --no-progress
run python3 -m backdoorlab evaluate --data $O/src.h5 --model $O/src_s0.pt --json $R/src_s0_model.json
run python3 -m backdoorlab defend --data $O/src.h5 --model $O/src_s0.pt --pipeline nc --set nc.epochs=30 \
    --set nc.epoch_steps=8 --set nc.batch_size=16 --set nc.mask_dir=results/nc-strip-full/masks/src_s0 \
    --report $R/src_s0_nc.json --out $O/src_s0_nc.pt --no-progress
run python3 -m backdoorlab evaluate --data $O/src.h5 --model $O/src_s0_nc.pt --json $R/src_s0_nc_model.json
run python3 $R/unlearn_sweep.py --data $O/src.h5 --model $O/src_s0.pt --real-trigger --control --lr 1e-3 --epochs 1 \
    --class-weight none --json $R/src_s0_unlearn_real.json --threads 2
run python3 $R/strip_survival.py --data $O/src.h5 --model $O/src_s0.pt --json $R/src_s0_strip_survival.json --sample 143 --threads 2
echo "== $(date -u +%H:%M:%S) done"
