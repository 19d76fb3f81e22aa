"""The study grid on Dask distributed: variants, models and cells as tasks with their real dependencies.

``run_study(..., dask="local:2")`` (``backdoorlab reproduce --dask local:2``) hands the cells it has
to compute to this module instead of running them one after another. Every artefact the serial
runner builds on the way becomes one Dask task, submitted with the futures it needs as arguments,
so Dask's own scheduler orders and places them:

* ``variant-<key>``: the poisoned variant of a (setting, seed) and its preview;
* ``model-<key>``: the poisoned model of a setting, or the clean model of a data set (trained once
  on its first setting's variant and shared by every setting's ``clean`` cell); depends on the
  variant it trains on;
* ``cell-<key>``: one cell, i.e. :func:`runner._run_cell` as in a serial run, written to the cell
  cache by the worker; depends on its variant, its model and -- through the step cache, which lets
  ``ac>fp`` start from the ``ac`` cell's retrained model and ``fp>ac`` from ``fp-last``'s pruned
  one -- on the earlier cell whose finished steps it reuses.

The tasks call the same functions as the serial runner with the same seeds, so the cells are the
same; the dependencies only decide what waits for what. Tasks of one run share nothing but the
results folder: a task finds what its dependencies built on disk (``variants/``, ``models/``,
``models/steps/``), which is why remote workers must see ``--out`` at the same path (a shared
filesystem). A failed build is not an error of its task: the cells that need it try again and
record the failure, as in a serial run, and the other cells go on.

``local[:N]`` starts a :class:`distributed.LocalCluster` of N worker processes, each running one
task at a time with ``cores // N`` torch threads; ``tcp://HOST:PORT`` connects to a running
scheduler. Dask is optional (``pip install "backdoorlab[dask]"``); :func:`require_dask` says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["DaskTarget", "GridTask", "build_graph", "parse_target", "require_dask", "run_cells"]

INSTALL_HINT = "pip install 'backdoorlab[dask]' (or: pip install 'dask[distributed]')"
# Thread pools a local worker sizes from its environment at import (torch's OpenMP among them).
_ENV_THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def require_dask() -> None:
    """Raise :class:`ModuleNotFoundError` with the install command when ``distributed`` is missing."""
    try:
        import distributed  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"running the study on Dask needs the optional dask extra, which is not "
                                  f"installed ({exc}): {INSTALL_HINT}", name="distributed") from None


# ----------------------------------------------------------------------------------------------
# where to run


@dataclass(frozen=True)
class DaskTarget:
    """A parsed ``--dask`` value: a local cluster of ``n_workers`` (None: one per core), or a
    scheduler ``address``."""

    n_workers: int | None = None
    address: str | None = None

    @property
    def local(self) -> bool:
        return self.address is None


def parse_target(spec: str) -> DaskTarget:
    """``"local"``, ``"local:N"`` or a scheduler address (``tcp://HOST:PORT``, ``tls://...``).

    Raises
    ------
    ValueError
        For anything else, naming the value and the accepted forms.
    """
    if not isinstance(spec, str):
        raise TypeError(f"dask must be a string such as 'local:2' or 'tcp://host:8786', got {type(spec).__name__}")
    text = spec.strip()
    if text == "local":
        return DaskTarget()
    if text.startswith("local:"):
        count = text[len("local:"):]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"dask {spec!r}: the number of local workers must be an integer >= 1, got {count!r}")
        return DaskTarget(n_workers=int(count))
    scheme, sep, rest = text.partition("://")
    if sep and scheme in ("tcp", "tls", "ws", "wss", "inproc", "ucx") and rest:
        return DaskTarget(address=text)
    raise ValueError(f"dask {spec!r} is not 'local', 'local:N' or a scheduler address such as 'tcp://host:8786'")


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def local_shape(n_workers: int | None, threads: int | None, n_tasks: int, cores: int | None = None) -> tuple[int, int]:
    """``(workers, torch threads per worker)`` of a local cluster.

    One worker per core by default (no more than there are tasks); each runs one task at a time
    with the cores split evenly between the workers, unless ``threads`` says otherwise.
    """
    cores = available_cores() if cores is None else cores
    if n_workers is None:
        n_workers = max(1, min(cores, n_tasks))
    if threads is None:
        threads = max(1, cores // n_workers)
    if n_workers < 1 or threads < 1:
        raise ValueError(f"a local cluster needs >= 1 worker and >= 1 thread, got {n_workers} x {threads}")
    return n_workers, threads


# ----------------------------------------------------------------------------------------------
# the graph


@dataclass(frozen=True)
class GridTask:
    """One task of the grid: its Dask key, what it builds, the keys it waits for, and its arguments
    (``setting``/``seed``/``clean`` for variants and models; ``index`` into the plans for cells)."""

    key: str
    kind: str  # "variant" | "model" | "cell"
    deps: tuple[str, ...]
    setting: Any = None
    seed: int | None = None
    clean: bool = False
    index: int | None = None


def build_graph(study, plans: Sequence, pending: Sequence[int]) -> dict[str, GridTask]:
    """The tasks that compute the cells ``plans[i]`` for ``i`` in ``pending``, in submission order.

    ``plans`` is the whole study in run order (:func:`runner.plan_cells`) -- the cells already
    cached included, since the steps they saved are reused -- and ``pending`` the positions of the
    cells to compute. Variants and models are deduplicated by their cache keys, so a model
    shared by several cells (the clean model of a data set, the poisoned model of a setting) is
    one task.
    """
    from .cache import config_key
    from .runner import _clean_anchor, _variant_config, _Workspace

    ws = _Workspace(study, Path("."), progress=False)  # only for its key functions
    tasks: dict[str, GridTask] = {}

    def variant(s, seed) -> str:
        key = f"variant-{config_key(_variant_config(study, s, seed))}"
        tasks.setdefault(key, GridTask(key, "variant", (), setting=s, seed=seed))
        return key

    def model(s, seed, clean) -> str:
        key = f"model-{ws.model_key(s, seed, clean=clean)}"
        if key not in tasks:
            anchor = _clean_anchor(study, s.dataset) if clean else s
            tasks[key] = GridTask(key, "model", (variant(anchor, seed),), setting=s, seed=seed, clean=clean)
        return key

    reuse = _step_predecessors(ws, plans)
    pending_set = set(pending)
    for i in sorted(pending_set):
        p = plans[i]
        deps = [variant(p.setting, p.seed), model(p.setting, p.seed, p.defence.kind == "clean")]
        before = reuse.get(i)
        if before is not None and before in pending_set:
            deps.append(_cell_task_key(plans, before))
        key = _cell_task_key(plans, i)
        tasks[key] = GridTask(key, "cell", tuple(deps), index=i)
    return tasks


def _cell_task_key(plans: Sequence, i: int) -> str:
    # the position too: two defences with the same configuration share a cache key, not a task
    return f"cell-{i}-{plans[i].key}"


def _step_predecessors(ws, plans: Sequence) -> dict[int, int]:
    """For each pipeline cell, the earlier cell (in run order) whose saved steps it would reuse.

    The step cache keys a finished prefix of a pipeline by the poisoned model, the seed and the
    prefix's resolved configuration; a cell loads the longest prefix on disk. In a serial run
    that is the longest prefix any earlier cell saved; waiting for that cell gives the same here,
    and no two cells running at once ever compute the same prefix. Ties go to the earliest cell.
    """
    from .runner import _step_key

    saved: list[tuple[int, list[str]]] = []  # (position, step keys of its prefixes 1..n)
    out: dict[int, int] = {}
    for i, p in enumerate(plans):
        keys = _pipeline_step_keys(ws, p, _step_key)
        if not keys:
            continue
        best, best_len = None, 0
        for j, other in saved:
            n = 0
            while n < min(len(keys), len(other)) and keys[n] == other[n]:
                n += 1
            if n > best_len:
                best, best_len = j, n
        if best is not None:
            out[i] = best
        saved.append((i, keys))
    return out


def _pipeline_step_keys(ws, plan, step_key) -> list[str]:
    """Step-cache keys of the prefixes 1..n of a pipeline cell ([] for clean/attack cells or a
    pipeline that does not build: that cell fails on its own, as in a serial run)."""
    if plan.defence.kind in ("clean", "attack"):
        return []
    import copy

    from backdoorlab.defences import Pipeline

    try:
        pipe = Pipeline(plan.defence.pipeline, copy.deepcopy(plan.defence.configs))
    except Exception:  # noqa: BLE001 - reported by the cell itself
        return []
    model_key = ws.model_key(plan.setting, plan.seed, clean=False)
    return [step_key(model_key, plan.seed, pipe, n) for n in range(1, len(pipe.tokens) + 1)]


# ----------------------------------------------------------------------------------------------
# what the workers run (module-level functions: Dask pickles them by reference)


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def build_artefact(task: GridTask, study, out: str, threads: int | None, *deps) -> str | None:
    """Worker side of a variant or model task; returns None, or the error of a failed build (the
    cells that need it try again and record it, as in a serial run)."""
    from .runner import _Workspace

    _set_threads(threads)
    ws = _Workspace(study, Path(out), progress=False)
    try:
        if task.kind == "variant":
            path = ws.variant(task.setting, task.seed)
            ws.preview(task.setting, task.seed, path)
        else:
            ws.trained_model(task.setting, task.seed, clean=task.clean)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def compute_cell(plan, study, out: str, threads: int | None, command: str | None, *deps):
    """Worker side of a cell task: :func:`runner.compute_cell` (the cell is written to the cache
    here, by the worker, so it survives a client that goes away)."""
    from .runner import _Workspace, compute_cell as compute

    _set_threads(threads)
    return compute(plan, _Workspace(study, Path(out), progress=False), progress=False, command=command)


def dask_setup(worker) -> None:
    """Preload of the local cluster's workers: Ctrl-C reaches every process of the terminal's
    group, and a worker killed by it mid-task would only be restarted by its nanny; the client
    shuts the cluster down instead."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # pragma: no cover - not the main thread
        pass


# ----------------------------------------------------------------------------------------------
# the client


def run_cells(study, out: Path, plans: Sequence, pending: Sequence[int], *, target: str,
              threads: int | None = None, command: str | None = None,
              on_start=None) -> Iterator[tuple[int, dict | None, dict | None]]:
    """Compute the cells ``plans[i]`` (``i`` in ``pending``) on Dask; yield ``(i, cell, failure)``
    as each one finishes (one of ``cell``/``failure`` is None).

    The cluster (or the connection) lives as long as the iteration: closing the generator --
    Ctrl-C in the loop that consumes it, or its end -- cancels what is left and shuts a local
    cluster down.

    Parameters
    ----------
    target : str
        ``"local"``, ``"local:N"`` or a scheduler address (:func:`parse_target`).
    threads : int, optional
        Torch threads in every task (default: a local cluster splits the cores between its
        workers; remote workers keep their own setting).
    on_start : callable, optional
        Called with a one-line description of the cluster once it is up.
    """
    require_dask()
    from distributed import as_completed

    where = parse_target(target)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    tasks = build_graph(study, plans, pending)
    # Dask shares a key's result between the clients of one scheduler: two studies with the same
    # cells but different --out folders must not take each other's results (the files would be in
    # the other folder), so the folder is part of every key.
    folder = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:8]
    with _connect(where, threads, len(pending), Path(out)) as (client, task_threads, description):
        if on_start is not None:
            on_start(description)
        futures: dict[str, Any] = {}
        cells: dict[Any, int] = {}
        try:
            for t in tasks.values():
                deps = [futures[d] for d in t.deps]
                if t.kind == "cell":
                    fut = client.submit(compute_cell, plans[t.index], study, str(out), task_threads, command, *deps,
                                        key=f"{t.key}@{folder}", retries=0)
                    cells[fut] = t.index
                else:
                    fut = client.submit(build_artefact, t, study, str(out), task_threads, *deps, key=f"{t.key}@{folder}")
                futures[t.key] = fut
            for fut in as_completed(list(cells)):
                i = cells.pop(fut)
                yield (i, *_outcome(fut, plans[i]))
                fut.release()
        finally:
            if cells:  # interrupted: nothing left may run on (a remote scheduler would go on otherwise)
                client.cancel(list(futures.values()), force=True)


def _outcome(fut, plan) -> tuple[dict | None, dict | None]:
    """``(cell, failure)`` of a finished cell future. A task that raised (its worker died, or a
    dependency raised) is that cell's failure; a MemoryError stops the run, as in a serial run."""
    if fut.status != "error":
        return fut.result()
    exc = fut.exception()
    if isinstance(exc, MemoryError):
        raise exc
    tb = "".join(traceback.format_tb(fut.traceback(), limit=8))
    return None, {"setting": plan.setting.id, "defence": plan.defence.id, "seed": plan.seed, "key": plan.key,
                  "error": f"{type(exc).__name__}: {exc}", "traceback": tb}


class _connect:
    """Context manager: ``(client, torch threads per task, description)`` for a target, and a clean
    shutdown on exit (a local cluster is closed; a remote scheduler is only disconnected from)."""

    def __init__(self, where: DaskTarget, threads: int | None, n_tasks: int, out: Path) -> None:
        self.where, self.threads, self.n_tasks, self.out = where, threads, n_tasks, out
        self.client = self.cluster = None

    def __enter__(self):
        import dask
        from distributed import Client, LocalCluster

        if self.where.local:
            n, threads = local_shape(self.where.n_workers, self.threads, self.n_tasks)
            env = {name: str(threads) for name in _ENV_THREADS}
            # OMP_* must be in the environment before a worker imports torch (the nanny sets these
            # before spawning); non-daemonic workers may start DataLoader processes of their own.
            with dask.config.set({"distributed.nanny.pre-spawn-environ": env, "distributed.worker.daemon": False}):
                self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                            dashboard_address=None, preload=[__name__])
            self.client = Client(self.cluster)
            return self.client, threads, f"local Dask cluster: {n} workers x {threads} torch thread(s)"
        self.client = Client(self.where.address, timeout="30s")
        try:
            info = self._check_workers()
        except BaseException:
            self.client.close()
            raise
        return self.client, self.threads, f"Dask scheduler {self.where.address}: {info}"

    def _check_workers(self) -> str:
        """Wait for a first worker, then check that every worker sees ``--out`` and runs this
        version of backdoorlab (a worker that cannot would fail every task it gets)."""
        from backdoorlab import __version__

        if not self.client.scheduler_info()["workers"]:
            print(f"waiting for a worker to join {self.where.address} (Ctrl-C to stop)", flush=True)
            self.client.wait_for_workers(1)
        seen = self.client.run(_worker_view, str(self.out.resolve()))
        bad = {w: v for w, v in seen.items() if not v["study_json"] or v["backdoorlab"] != __version__}
        if bad:
            w, v = next(iter(bad.items()))
            why = (f"does not see {self.out.resolve()}/study.json (workers need --out on a shared filesystem, "
                   "at the same path)" if not v["study_json"] else
                   f"runs backdoorlab {v['backdoorlab']}, this client {__version__}")
            raise ValueError(f"Dask worker {w} {why}; {len(bad)} of {len(seen)} workers affected")
        threads = sorted({v["torch_threads"] for v in seen.values()})
        return f"{len(seen)} workers, torch threads per worker {threads if len(threads) > 1 else threads[0]}"

    def __exit__(self, *exc) -> None:
        try:
            if self.client is not None:
                self.client.close()
        finally:
            if self.cluster is not None:
                # A worker that has imported torch can spend longer than the nanny's 4 s in the
                # interpreter's final garbage collection on a loaded machine (seen on 2 shared
                # cores); the nanny then kills it with a WARNING. Every file was written before
                # (atomically), so nothing is lost: keep that warning out of the user's terminal.
                nanny = logging.getLogger("distributed.nanny")
                level = nanny.level
                nanny.setLevel(logging.ERROR)
                try:
                    self.cluster.close()
                finally:
                    nanny.setLevel(level)


def _worker_view(out: str) -> dict:
    """What a worker sees (run on every worker by :meth:`_connect._check_workers`)."""
    import torch

    import backdoorlab

    return {"study_json": (Path(out) / "study.json").is_file(), "backdoorlab": backdoorlab.__version__,
            "torch_threads": torch.get_num_threads()}
