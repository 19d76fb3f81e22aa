"""Benchmarks: every module ``backdoorlab.bench.<name>`` exposing ``run(argv: list[str]) -> int``.

``backdoorlab bench NAME [args...]`` and ``python -m backdoorlab.bench NAME [args...]`` both
import ``backdoorlab.bench.NAME`` and hand it the remaining arguments, so a new benchmark is one
new module here and nothing else to edit. Every benchmark reports the ratio to its reference
measured in the same run, never a bare time.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re

__all__ = ["available", "dispatch", "add_run_args"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def available() -> list[str]:
    """Names of the benchmark modules in this package (those defining ``run``)."""
    names = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or not _NAME.match(info.name):
            continue
        names.append(info.name)
    return sorted(names)


def dispatch(name: str, argv: list[str]) -> int:
    """Run benchmark ``name`` with ``argv``; returns its exit status.

    Raises
    ------
    ValueError
        ``name`` is not a benchmark module of this package (the message lists the ones there are).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"benchmark name must be a lowercase module name, got {name!r}; available: {', '.join(available())}")
    try:
        module = importlib.import_module(f"backdoorlab.bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"backdoorlab.bench.{name}":
            raise
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(available())}") from None
    run = getattr(module, "run", None)
    if not callable(run):
        raise ValueError(f"backdoorlab.bench.{name} has no run(argv) function")
    return int(run(list(argv)) or 0)


def add_run_args(p: argparse.ArgumentParser, *, batch_size: int, threads: int) -> argparse.ArgumentParser:
    """The arguments every model benchmark (``prune``, ``train``) takes, with its own defaults:
    ``--batch-size``, ``--threads`` (torch threads), ``--seed``, ``--device`` (default cpu) and
    ``--json`` (results written atomically)."""
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--threads", type=int, default=threads, help=f"torch threads (default {threads})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the results here (atomic)")
    return p
