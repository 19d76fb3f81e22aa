"""``backdoorlab reproduce``: run the paper's study and write its report (argument parsing only).

Calls :func:`backdoorlab.experiments.run_study`. Without ``--config`` it runs the built-in grid on
the embedded synthetic data (``--quick``: the reduced grid that fits in about ten minutes on two
CPU cores); with ``--config file.toml|yaml`` it runs the study the file describes, e.g. on the
real GTSRB / YTAF / LFW folders. Re-running with the same ``--out`` skips finished cells.
``--dask local:N`` computes the cells on a local Dask cluster of N worker processes,
``--dask tcp://HOST:PORT`` on a running scheduler's workers (see docs/reproduce.md).
Under ``torchrun --nproc_per_node N -m backdoorlab reproduce ...`` the study's models train
data-parallel (``--batch-size`` rule of docs/scaling.md: a data set's ``batch_size`` is per
process); rank 0 evaluates, defends and writes the cells and the report.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def add_parser(parser: argparse.ArgumentParser) -> None:
    from backdoorlab.cli import seed_arg

    parser.add_argument("--quick", action="store_true",
                        help="reduced study: smaller data, fewer epochs and settings (about 10 min on 2 cores)")
    parser.add_argument("--out", type=Path, default=Path("results"),
                        help="results folder (default: results); finished cells there are reused")
    parser.add_argument("--config", type=Path, default=None,
                        help="study file (.toml, .yaml, .yml): data folders, settings, defences; "
                             "default: the built-in grid on synthetic data")
    parser.add_argument("--seed", type=seed_arg, default=None,
                        help="run with this single seed instead of the config's seeds")
    parser.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                        help="override the config's device")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice); with --dask: per worker "
                             "(default: a local cluster splits the cores between its workers)")
    parser.add_argument("--dask", default=None, metavar="local[:N]|tcp://HOST:PORT",
                        help="compute the cells as Dask tasks: 'local:N' starts N worker processes here "
                             "(default N: one per core), 'tcp://HOST:PORT' uses a running scheduler whose "
                             "workers see --out at the same path; needs pip install 'backdoorlab[dask]'")
    parser.add_argument("--settings", default=None, metavar="PATTERN[,PATTERN...]",
                        help="run only the settings whose ids match these shell patterns (e.g. 'gtsrb-paper-white*'); "
                             "several processes may share one --out, each with its own settings")
    parser.add_argument("--defences", default=None, metavar="PATTERN[,PATTERN...]",
                        help="run only the defences whose ids match these patterns (e.g. 'clean,none,ac-size,fp-*')")
    parser.add_argument("--report-only", action="store_true",
                        help="compute nothing: write the report from the cells already in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from backdoorlab.experiments.runner import resolve_study, run_study

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.dask is not None:
        from backdoorlab.experiments.distributed_grid import parse_target, require_dask

        try:
            parse_target(args.dask)
        except ValueError as exc:
            raise ValueError(f"--{exc}") from None
        try:
            require_dask()
        except ModuleNotFoundError as exc:  # the user's to fix: one line, not a traceback
            raise ValueError(f"--dask {args.dask}: {exc}") from None
    elif args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    import signal

    def _terminate(signum, frame):  # a killed run ends like Ctrl-C: finished cells are kept, no half-written file
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)
    study = resolve_study(args.config, quick=args.quick)
    if args.device is not None:
        study = replace(study, device=args.device)
    ctx = None
    if not args.report_only:
        from backdoorlab import distributed

        if distributed.env_world_size() > 1:  # under torchrun: train every model data-parallel
            if args.dask is not None:
                raise ValueError("--dask under torchrun: use one of them (torchrun trains each model with all its "
                                 "processes; --dask runs cells side by side on workers)")
            from datetime import timedelta

            from backdoorlab.devices import resolve_device

            # the other ranks wait in a collective while rank 0 evaluates and defends (minutes to
            # hours per model on a CPU): far beyond gloo's default 30-minute timeout
            ctx, _ = distributed.init_from_env(resolve_device(study.device), timeout=timedelta(days=7))
    try:
        report = run_study(study, args.out, quick=args.quick, progress=not args.no_progress, seed=args.seed,
                           settings=_patterns("--settings", args.settings),
                           defences=_patterns("--defences", args.defences), report_only=args.report_only,
                           command=shlex.join(["backdoorlab", *getattr(args, "_argv", ["reproduce"])]),
                           dask=args.dask, dask_threads=args.threads if args.dask is not None else None)
    finally:
        if ctx is not None:
            distributed.shutdown()
    if ctx is not None and not ctx.is_main:
        return 0  # rank 0 writes and reports
    import json

    if args.report_only:
        run = json.loads((Path(args.out) / "run.json").read_text())
        print(f"report: {report}  ({run['n_cells'] - run['n_pending']} of {run['n_cells']} cells finished)")
        return 0
    failures = json.loads((Path(args.out) / "failures.json").read_text())
    print(f"report: {report}  (also {report.with_suffix('.html')}, cells.csv, cells.json, figures/)")
    if failures:
        print(f"{len(failures)} cell(s) failed; see {Path(args.out) / 'failures.json'} and the report")
        return 1
    return 0


def _patterns(flag: str, text: str | None) -> list[str] | None:
    """``"a,b*"`` -> ``["a", "b*"]`` (None when the flag was not given)."""
    if text is None:
        return None
    patterns = [p.strip() for p in text.split(",") if p.strip()]
    if not patterns:
        raise ValueError(f"{flag} needs at least one id or shell pattern, got {text!r}")
    return patterns
