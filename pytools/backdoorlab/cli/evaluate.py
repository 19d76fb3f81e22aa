"""``backdoorlab evaluate``: clean accuracy and attack success of a checkpoint on a variant
(calls :func:`backdoorlab.evaluate.evaluate_variant`)."""

from __future__ import annotations

import argparse

# The command's input files: an h5py error is reported with the file it was reading.
INPUT_FILES = {"data": "hdf5", "model": "checkpoint"}


def add_parser(parser: argparse.ArgumentParser) -> None:
    from backdoorlab.cli import add_device_args

    parser.add_argument("--data", required=True, help="variant .h5 file (splits 'test' and 'test_triggered')")
    parser.add_argument("--model", required=True, help="checkpoint .pt written by 'backdoorlab train'")
    parser.add_argument("--json", default=None, help="write the metrics here (atomically)")
    parser.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default 256)")
    add_device_args(parser)


def run(args: argparse.Namespace) -> int:
    from backdoorlab.evaluate import evaluate_variant

    res = evaluate_variant(args.data, args.model, json_out=args.json, device=args.device,
                           batch_size=args.batch_size, progress=not args.no_progress,
                           verify=not args.no_verify)
    asr = res["attack_success_rate"]
    print(f"clean accuracy {res['clean_accuracy']:.4f} on {res['n_test']} test images; "
          f"attack success {'n/a' if asr is None else f'{asr:.4f}'} on {res['n_triggered']} triggered images "
          f"(target class {res['target_class']})")
    if args.json:
        print(f"metrics written to {args.json}")
    return 0
