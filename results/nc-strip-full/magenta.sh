#!/bin/bash
# the magenta control of #20: same variant recipe as a2o.h5, the square in a colour no synth-sign uses
# (run from anywhere: bash results/nc-strip-full/magenta.sh; SCRATCH=DIR for the files not kept)
set -e
HERE=$(cd "$(dirname "$0")" && pwd); R=$HERE
export PYTHONPATH=$HERE/../../pytools:$HERE/../.. OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
O=${SCRATCH:-/tmp/ncfull2}   # variants and checkpoints (not kept in git)
cd "$HERE/../.."
run() { echo "== $(date -u +%H:%M:%S) $*"; nice -n 19 "$@"; }
run python3 -m backdoorlab poison --source synth-signs --trigger square:4:magenta@center --source-class all --target-class 14 \
    --share 0.1 --name all-to-one-magenta-square-10 --source-option n_train=16000 --source-option n_test=4000 \
    --out $O/a2om.h5 --seed 0
run python3 -m backdoorlab train --data $O/a2om.h5 --model gtsrb_cnn --preset gtsrb --out $O/a2om_s0.pt --seed 0 --threads 1 --no-progress
run python3 -m backdoorlab evaluate --data $O/a2om.h5 --model $O/a2om_s0.pt --json $O/a2om_s0_model.json
run python3 -m backdoorlab defend --data $O/a2om.h5 --model $O/a2om_s0.pt --pipeline nc --set nc.epochs=30 \
    --set nc.epoch_steps=8 --set nc.batch_size=16 --set nc.mask_dir=$O/masks/a2om_s0 \
    --report $O/a2om_s0_nc.json --out $O/a2om_s0_nc.pt --no-progress
run python3 -m backdoorlab evaluate --data $O/a2om.h5 --model $O/a2om_s0_nc.pt --json $O/a2om_s0_nc_model.json
run python3 $R/unlearn_sweep.py --data $O/a2om.h5 --model $O/a2om_s0.pt --real-trigger --control --lr 1e-3 --epochs 1 \
    --class-weight none --json $O/a2om_s0_unlearn_real.json --threads 1
echo "== $(date -u +%H:%M:%S) done"
