#!/bin/bash
# A third seed of the yellow all-to-one variant (a2o.h5 of report.md), machine otherwise idle: train the whole
# gtsrb recipe with seed 2, evaluate, NC with the 30 x 8 x 16 search and its default repair, evaluate, the real
# trigger's unlearning. (bash results/nc-strip-full/seed2.sh; DATA=the a2o.h5 variant, SCRATCH=DIR for checkpoints)
set -e
HERE=$(cd "$(dirname "$0")" && pwd); R=$HERE
export PYTHONPATH=$HERE/../../pytools:$HERE/../..
D=${DATA:-/tmp/ncfull/a2o.h5}
O=${SCRATCH:-/tmp/ncfull2}
cd "$HERE/../.."
run() { echo "== $(date -u +%H:%M:%S) $*"; nice -n 10 "$@"; }
run python3 -m backdoorlab train --data $D --model gtsrb_cnn --preset gtsrb --out $O/a2o_s2.pt --seed 2 --threads 2 --no-progress
run python3 -m backdoorlab evaluate --data $D --model $O/a2o_s2.pt --json $R/a2o_s2_model.json
run python3 -m backdoorlab defend --data $D --model $O/a2o_s2.pt --pipeline nc --set nc.epochs=30 \
    --set nc.epoch_steps=8 --set nc.batch_size=16 --set nc.mask_dir=results/nc-strip-full/masks/a2o_s2 \
    --report $R/a2o_s2_nc.json --out $O/a2o_s2_nc.pt --no-progress
run python3 -m backdoorlab evaluate --data $D --model $O/a2o_s2_nc.pt --json $R/a2o_s2_nc_model.json
run python3 $R/unlearn_sweep.py --data $D --model $O/a2o_s2.pt --real-trigger --control --lr 1e-3 --epochs 1 \
    --class-weight none --json $R/a2o_s2_unlearn_real.json --threads 2
echo "== $(date -u +%H:%M:%S) done"
