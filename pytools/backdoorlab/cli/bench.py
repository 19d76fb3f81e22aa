"""``backdoorlab bench NAME [args...]``: run the benchmark module ``backdoorlab.bench.NAME``.

Argument parsing only: the benchmark parses its own arguments (``backdoorlab bench kernels
--help``), so benchmarks are added as modules of :mod:`backdoorlab.bench` without editing this
file. The library function called is :func:`backdoorlab.bench.dispatch`.
"""

from __future__ import annotations

import argparse

from backdoorlab.bench import available, dispatch


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="benchmark to run: " + ", ".join(available()))
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="arguments of the benchmark (see `backdoorlab bench NAME --help`)")


def run(args: argparse.Namespace) -> int:
    return dispatch(args.name, list(args.args))
