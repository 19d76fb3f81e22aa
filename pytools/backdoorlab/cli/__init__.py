"""The ``backdoorlab`` command line: argument parsing only.

Each subcommand lives in its own module of this package (so the parts built separately do not
edit one file) and exposes ``add_parser(subparsers)`` and ``run(args) -> int``; ``run`` calls one
library function. The modules are found by name in :data:`COMMANDS` (one not built yet is left
out of the parser). A module may also declare ``INPUT_FILES = {"data": "hdf5", "model":
"checkpoint"}``: the files its arguments name, so that an h5py error (which never names its file) is reported with the file it was reading.
Empty, foreign, truncated or swapped files are refused by their readers (``backdoorlab.data``,
``backdoorlab.checkpoint``), which every caller of the library goes through, not only the CLI.

The error boundary (:func:`main`, the only one) sorts what a command raises into two kinds:

* **expected failures** -- the user's to fix: bad input refused by our validation (``ValueError``,
  ``TypeError``, ``KeyError``, as ``docs/contracts.md`` prescribes for every public function),
  files that cannot be read or written (``OSError``, which includes h5py's errors for truncated,
  foreign or corrupt HDF5 files and a full disk), ``MemoryError`` (a size asked for that does not
  fit), a missing GPU (:class:`backdoorlab.errors.DeviceUnavailableError`) and a training run that
  diverged (``FloatingPointError``). They end as one line on stderr,
  ``backdoorlab CMD: error: <file>: <problem>``, and exit status 2.
* **everything else** (``RuntimeError``, ``AttributeError``, ``IndexError``, ...) is a bug: the
  traceback is shown as Python shows it (exit status 1).

``--debug`` (before the command) or ``BACKDOORLAB_DEBUG=1`` shows the traceback of expected
failures too. Ctrl-C ends with status 130.
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
from pathlib import Path  # noqa: E402

from backdoorlab import __version__  # noqa: E402
from backdoorlab.errors import DeviceUnavailableError  # noqa: E402
from backdoorlab.seeding import check_seed  # noqa: E402

# subcommand -> (module in this package, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "poison": ("poison", "build a poisoned HDF5 variant of a data set (with manifest, card, preview)"),
    "train": ("train", "train a victim model on an HDF5 variant"),
    "evaluate": ("evaluate", "clean accuracy and attack success of a model on a variant"),
    "defend": ("defend", "run defences alone or in sequence (e.g. 'ac>fp') and report"),
    "reproduce": ("reproduce", "reproduce the paper's study and write a report"),
    "faces": ("faces", "face sources: check where the sunglasses trigger lands (eye location per method, contact sheet)"),
    "bench": ("bench", "benchmarks: native kernels vs reference, training throughput, pruning search"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backdoorlab",
        description="Backdoor attacks on image classifiers and the defences against them, alone and combined.",
    )
    parser.add_argument("--version", action="version", version=f"backdoorlab {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of every error, not just of bugs (also: BACKDOORLAB_DEBUG=1)")
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
        p.set_defaults(_run=mod.run, _inputs=dict(getattr(mod, "INPUT_FILES", {})))
    return parser


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--no-progress`` and ``--no-verify``: the options of every command that runs a
    model on a variant (train, evaluate, defend), written once so they read and behave alike."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the SHA-256 check of --data against its manifest (for huge files; the first "
                             "check of a file is cached, later ones cost nothing). The checkpoint's own checksum "
                             "and finite-weights check always run")


def seed_arg(text: str) -> int:
    """argparse ``type`` of every ``--seed``: an integer in the range :func:`backdoorlab.seeding.check_seed` takes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    try:
        return check_seed(value, "the seed")
    except ValueError as exc:  # argparse prefixes the flag: "argument --seed: the seed must be ..."
        raise argparse.ArgumentTypeError(str(exc)) from None


def _expected(exc: BaseException) -> bool:
    """Whether ``exc`` is an expected failure (see the module docstring) rather than a bug."""
    return isinstance(exc, (ValueError, TypeError, KeyError, OSError, MemoryError, FloatingPointError,
                            DeviceUnavailableError))


def _from_h5py(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("h5py"):
            return True
        tb = tb.tb_next
    return False


def error_line(exc: BaseException, args: argparse.Namespace | None = None) -> str:
    """The one line an expected failure is reported as: the file (where known) and the problem."""
    if isinstance(exc, KeyError) and exc.args:
        message = str(exc.args[0])  # str() of a KeyError quotes its message
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        names = [str(exc.filename)] + ([str(exc.filename2)] if exc.filename2 is not None else [])
        message = f"{' -> '.join(names)}: {exc.strerror}"
    else:
        message = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError):
        message = f"out of memory: {message}"
    # h5py's errors do not name the file; the command's one HDF5 input is the file it was reading.
    inputs = getattr(args, "_inputs", {}) if args is not None else {}
    hdf5 = [d for d, k in inputs.items() if k == "hdf5" and getattr(args, d, None) is not None]
    if len(hdf5) == 1 and _from_h5py(exc) and str(getattr(args, hdf5[0])) not in message:
        message = f"--{hdf5[0].replace('_', '-')} {getattr(args, hdf5[0])}: {message}"
    # One line even for multi-line messages (YAML parser errors, wrapped library messages).
    return " ".join(message.split())


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    import faulthandler

    if not faulthandler.is_enabled():
        # A native crash (a SIGSEGV, e.g. the one of #14's full-size `defend` at exit) then prints
        # every thread's Python stack to stderr instead of dying silently with status 139.
        faulthandler.enable()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args._argv = argv  # what was typed, for outputs that record the command that made them
    debug = args.debug or os.environ.get("BACKDOORLAB_DEBUG", "") not in ("", "0")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug or not _expected(exc):
            raise
        print(f"backdoorlab {args.command}: error: {error_line(exc, args)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
