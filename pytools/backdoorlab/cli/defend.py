"""``backdoorlab defend``: run defences alone or in sequence on a variant and a model.

Argument parsing only; the work is :func:`backdoorlab.defences.pipeline.defend`. Example::

    backdoorlab defend --data v.h5 --model m.pt --pipeline "ac>fp" \\
        --out defended.pt --report report.json --set ac.analysis=smaller --set fp.threshold=0.02

``--set NAME.PARAM=VALUE`` (repeatable) sets one parameter of one defence (``NAME`` is a registry
name such as ``fp`` or an alias such as ``fp-second``); ``VALUE`` is read as JSON when it parses
(numbers, true/false, null), else as a string. ``--config FILE`` reads the same mapping
(``{"fp": {"threshold": 0.02}}``) from a JSON or YAML file; ``--set`` wins over it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# The command's input files: an h5py error is reported with the file it was reading.
INPUT_FILES = {"data": "hdf5", "model": "checkpoint"}


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_sets(items: list[str], base: dict | None = None) -> dict:
    """``["fp.threshold=0.02", "ac.analysis=smaller"]`` -> ``{"fp": {"threshold": 0.02}, "ac": {...}}``."""
    configs: dict = {k: dict(v) for k, v in (base or {}).items()}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, param = key.partition(".")
        if not sep or not dot or not name or not param:
            raise ValueError(f"--set expects NAME.PARAM=VALUE (e.g. fp.threshold=0.02), got {item!r}")
        configs.setdefault(name.strip().lower(), {})[param.strip()] = _parse_value(value.strip())
    return configs


def _read_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {path!r}")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:  # not a ValueError: say which file, in the CLI's one line
            raise ValueError(f"cannot parse YAML config {path}: {exc}") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"cannot parse JSON config {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path!r} must map defence names to parameter tables, e.g. {{\"fp\": {{\"threshold\": 0.02}}}}")
    return data


def add_parser(parser: argparse.ArgumentParser) -> None:
    from backdoorlab.cli import add_device_args, seed_arg

    parser.add_argument("--data", required=True, help="HDF5 variant (splits train, clean, test, test_triggered)")
    parser.add_argument("--model", required=True, help="checkpoint of the model to defend")
    parser.add_argument("--pipeline", default="ac>fp",
                        help="defences in order, from ac, ss, dp, strip (data filters), fp, nc (model repairs) and "
                             "their aliases, e.g. 'ac', 'fp-second', 'ac>fp', 'nc>fp', 'strip>fp' (default: ac>fp)")
    parser.add_argument("--out", help="where to write the defended checkpoint (atomic)")
    parser.add_argument("--report", help="where to write the JSON report (atomic)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME.PARAM=VALUE",
                        help="one defence parameter, e.g. fp.threshold=0.02 (repeatable)")
    parser.add_argument("--config", help="JSON/YAML file of per-defence parameters")
    parser.add_argument("--train-preset", help="retraining recipe (backdoorlab.train.PRESETS name); "
                        "default: the recipe recorded in the checkpoint")
    parser.add_argument("--epochs", type=int, help="override the retraining recipe's epochs")
    parser.add_argument("--seed", type=seed_arg, default=0, help="seed of every random choice (default 0)")
    add_device_args(parser)


def run(args: argparse.Namespace) -> int:
    from backdoorlab.defences.pipeline import defend

    configs = parse_sets(args.sets, _read_config(args.config) if args.config else None)
    train_config = args.train_preset
    if args.epochs is not None:
        from backdoorlab.train import PRESETS

        if args.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
        if train_config is None:
            raise ValueError("--epochs needs --train-preset (the recipe it overrides)")
        if train_config not in PRESETS:
            raise ValueError(f"unknown training preset {train_config!r}; choose one of {sorted(PRESETS)}")
        train_config = PRESETS[train_config].replace(epochs=args.epochs)
    if args.out is None and args.report is None:
        raise ValueError("nothing would be written: give --out and/or --report")
    result = defend(args.data, args.model, args.pipeline, args.out, args.report, configs=configs,
                    train_config=train_config, device=args.device, seed=args.seed, progress=not args.no_progress,
                    verify=not args.no_verify)
    print(f"pipeline {result.spec!r}:")
    _print_row(0, "none", result.initial.get("clean_accuracy"), result.initial.get("attack_success_rate"), [])
    for st in result.steps:
        extra = []
        if st.removal is not None:
            extra.append(f"removed poisoned {st.removal.removed_poisoned} ({st.removal.removed_poisoned_pct:.1f} %), "
                         f"clean {st.removal.removed_clean} ({st.removal.removed_clean_pct:.1f} %)")
        if st.pruning is not None:
            extra.append(f"pruned {st.pruning.label}")
        _print_row(st.step, st.defence, st.clean_accuracy, st.attack_success_rate, extra)
    return 0


def _print_row(step: int, defence: str, accuracy: float, asr: float | None, extra: list[str]) -> None:
    print(f"  {step} {defence:<10} clean acc {accuracy:.4f}  attack success "
          f"{'n/a' if asr is None else f'{asr:.4f}'}  {'; '.join(extra)}")
