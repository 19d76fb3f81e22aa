"""The ``backdoorlab`` command line: argument parsing only.

Each subcommand lives in its own module of this package (so the parts built separately do not
edit one file) and exposes ``add_parser(subparsers)`` and ``run(args) -> int``; ``run`` calls one
library function. Modules are imported lazily so ``backdoorlab --help`` stays fast.
"""

from __future__ import annotations

import os

# On a busy machine, OpenMP threads that spin while waiting (libgomp's default) make torch and the
# native core several times slower; passive waiting costs nothing when the machine is idle. It must
# be set before torch or backdoorlab._core loads libgomp, hence here, before any other import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402

# subcommand -> (module in this package, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "poison": ("poison", "build a poisoned HDF5 variant of a data set (with manifest, card, preview)"),
    "train": ("train", "train a victim model on an HDF5 variant"),
    "evaluate": ("evaluate", "clean accuracy and attack success of a model on a variant"),
    "defend": ("defend", "run defences alone or in sequence (e.g. 'ac>fp') and report"),
    "reproduce": ("reproduce", "reproduce the paper's study and write a report"),
    "bench": ("bench", "benchmarks: native kernels vs reference, training throughput, pruning search"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backdoorlab",
        description="Backdoor attacks on image classifiers and the defences against them, alone and combined.",
    )
    from backdoorlab import __version__

    parser.add_argument("--version", action="version", version=f"backdoorlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(f"backdoorlab.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"backdoorlab.cli.{module}":
                raise
            continue  # subcommand not built yet
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_parser(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, KeyError, FileNotFoundError) as exc:
        # Bad input is the user's to fix: one clear line, no traceback. (str() of a KeyError
        # quotes its message, so take the message itself.)
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"backdoorlab {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
