"""``backdoorlab train``: train a victim model on an HDF5 variant (calls :func:`backdoorlab.train.train_variant`).

Under ``torchrun --nproc_per_node N -m backdoorlab train ...`` the N processes train one model
data-parallel (:mod:`backdoorlab.distributed`): ``--batch-size`` is then per process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from backdoorlab import distributed
from backdoorlab.augment import AUGMENTATIONS
from backdoorlab.cli import add_device_args, seed_arg
from backdoorlab.devices import resolve_device
from backdoorlab.fastpath import PRECISIONS
from backdoorlab.models import INPUT_NORMS, MODELS
from backdoorlab.train import LR_SCHEDULES, PRESETS, train_variant

# Checked by the CLI before run() (--model here is an architecture, not a file).
INPUT_FILES = {"data": "hdf5"}


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="variant .h5 file (its 'train' split is used)")
    parser.add_argument("--model", required=True, choices=sorted(MODELS), help="architecture")
    parser.add_argument("--preset", default="gtsrb", choices=sorted(PRESETS),
                        help="the paper's hyper-parameters: gtsrb (Adam 1e-3, 10 epochs), ytaf (Adadelta 0.1, 10), "
                             "lfw (Adadelta 0.1, 50, last layer only); not the paper's: gtsrb-augmented (gtsrb with "
                             "--augment gtsrb and 40 epochs, for small real subsets); default gtsrb")
    parser.add_argument("--out", required=True, help="checkpoint .pt, rewritten atomically after every epoch")
    parser.add_argument("--seed", type=seed_arg, default=0, help="seed of initialisation, shuffling and dropout (default 0)")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override the preset's batch size; under torchrun it is per process, so a step "
                             "sees batch size x processes images (docs/scaling.md)")
    parser.add_argument("--lr", type=float, default=None, help="override the preset's learning rate")
    parser.add_argument("--lr-schedule", default=None, choices=LR_SCHEDULES,
                        help="override the preset's learning-rate schedule (constant, or cosine decay over the epochs)")
    parser.add_argument("--average-last", type=int, default=None, metavar="K",
                        help="return the mean of the weights after each of the last K epochs (stochastic weight "
                             "averaging) instead of the last epoch's; 0 = off. Default: the preset's (off)")
    parser.add_argument("--augment", default=None, choices=sorted(AUGMENTATIONS),
                        help="training-time augmentation, overriding the preset's: none, or gtsrb (rotation "
                             "+-10 deg, zoom +-10 %%, shift +-2 px, brightness x0.3-1.7, contrast x0.5-1.5; no flips). "
                             "The trigger of poisoned rows moves with the image. Default: the preset's (off except "
                             "gtsrb-augmented)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="float32 (the presets', the paper's) or mixed: the forward pass under autocast, bfloat16 "
                             "on CPU (faster where the CPU has bfloat16 units), float16 with loss scaling on CUDA; "
                             "another computation, recorded in the checkpoint. Default: the preset's (float32)")
    parser.add_argument("--drop-poisoned", action="store_true",
                        help="train without the split's poisoned rows (the clean baseline of the same variant)")
    parser.add_argument("--input-norm", default=None, choices=INPUT_NORMS,
                        help="gtsrb_cnn and deepid: standardise each input image (per_image) before the first "
                             "layer; recorded in the checkpoint. Default none (the paper's models)")
    parser.add_argument("--weights", default=None,
                        help="vgg16_face only: converted VGG-Face state dict (vgg_face_dag.pth) or 'env'")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue an interrupted run from --out")
    group.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); per process under torchrun")
    parser.add_argument("--max-memory-mb", type=int, default=None,
                        help="hold the training split (this process's shard under torchrun) in memory as uint8 "
                             "when it fits this many MiB, else stream it from the file (default: the preset's, 1024)")
    add_device_args(parser)


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    model_kw = {}
    if args.weights is not None:
        if args.model != "vgg16_face":
            raise ValueError(f"--weights applies to vgg16_face only, not {args.model}")
        model_kw["weights"] = args.weights
    if args.input_norm is not None:
        if args.model == "vgg16_face":
            raise ValueError("--input-norm applies to gtsrb_cnn and deepid; vgg16_face subtracts its own channel means")
        model_kw["input_norm"] = args.input_norm
    if args.resume and not Path(args.out).exists():
        # Not an error: "train --resume" is safe to repeat until the run is done. But say it, so
        # a mistyped --out does not pass for a resumed run.
        print(f"note: --resume: no checkpoint at {args.out} yet, training starts at epoch 1", file=sys.stderr)
    if args.max_memory_mb is not None and args.max_memory_mb < 1:
        raise ValueError(f"--max-memory-mb must be >= 1, got {args.max_memory_mb}")
    # torchrun sets WORLD_SIZE: join its process group (gloo on CPU, nccl on CUDA) before training.
    ctx, _ = distributed.init_from_env(resolve_device(args.device))
    try:
        out = train_variant(args.data, args.model, args.out, preset=args.preset, seed=args.seed, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, augment=args.augment,
                            lr_schedule=args.lr_schedule, average_last=args.average_last,
                            max_memory_mb=args.max_memory_mb, precision=args.precision,
                            drop_poisoned=args.drop_poisoned, resume=args.resume, overwrite=args.overwrite,
                            device=args.device, progress=not args.no_progress, verify=not args.no_verify, **model_kw)
    finally:
        distributed.shutdown()
    if ctx.is_main:
        print(f"model written to {out}" + (f" ({ctx.world_size} processes, {ctx.backend})" if ctx.active else ""))
    return 0
