"""The study runner: variants, models and defences for every cell of the grid, cached and resumable.

:func:`run_study` plans the grid (settings × defences × seeds), skips the cells already in the
cache, and computes the rest setting by setting, sharing what cells of one setting have in
common:

1. the **variant** (``variants/<key>.h5``, built by ``datasets_gen`` — or the toy generator for
   tests — keyed by source, recipe, poison share, seed and size limit);
2. the **poisoned model** (``models/<key>.pt``) trained on the variant's training split, and the
   **clean model** trained on the same rows without the poisoned ones (one per data set and seed,
   on the first setting's variant; every setting of that data set is evaluated with it);
3. each **defence cell**: a fresh copy of the poisoned model goes through
   ``backdoorlab.defences.Pipeline(spec, configs)``; the cell records the pipeline's before/after
   metrics, the paper's removal and pruning columns, the per-step report, the seed, package
   versions and timings, and is written atomically to ``cells/<key>.json``.

Models are trained through a resumable checkpoint (``models/<key>.partial.pt``), so an interrupted
run loses at most one epoch; a finished cell is never recomputed. A cell that raises is recorded
in ``failures.json`` and the report (and retried by the next run); the study goes on. tqdm shows
which cell runs and how many are done.

With ``dask=`` the same cells run as Dask tasks (:mod:`.distributed_grid`): variants, models and
cells are tasks with their dependencies, and every file that two processes may write at once is
either written under a lock (variants, previews, models, shared pipeline steps: ``_exclusive``) or
through a private temporary (cells: the last writer wins whole).

Under ``torchrun`` (``torchrun --nproc_per_node N -m backdoorlab reproduce ...``) the study's
models train data-parallel: every rank walks the same cells in the same order, the ranks train
each model together (``backdoorlab.distributed``: DistributedDataParallel, a shard of the rows per
rank, rank 0 writes the checkpoint), and rank 0 alone evaluates, defends and writes the cells and
the report while the other ranks wait for the next model (:func:`_data_parallel_group`).
"""

from __future__ import annotations

import copy
import fcntl
import io
import json
import os
import platform
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from datasets_gen.atomic import atomic_write_bytes, atomic_write_json, json_safe

from .cache import CellCache, config_key
from .config import TRUE_SHARE, DatasetSpec, DefenceSpec, SettingSpec, StudyConfig, load_config, study_from_dict
from .variants import build_setting_variant

# torch and everything built on it (checkpoint, data, models, train, evaluate, defences) are imported
# inside the functions that train or defend: importing them costs ~5 s (0.9 s for this module alone
# against 6.1 s with backdoorlab.defences, 2 shared cores), which --report-only never needs.
if TYPE_CHECKING:
    from backdoorlab.defences.pipeline import PipelineReport

__all__ = ["run_study", "plan_cells", "CellPlan", "resolve_study"]


# ----------------------------------------------------------------------------------------------
# planning


@dataclass(frozen=True)
class CellPlan:
    """One cell to compute: its setting, defence, seed and cache key (with the hashed config)."""

    setting: SettingSpec
    defence: DefenceSpec
    seed: int
    key: str
    config: dict = field(hash=False, compare=False)


def resolve_study(config: StudyConfig | Mapping | str | os.PathLike | None, *, quick: bool = False) -> StudyConfig:
    """Turn what the caller gave into a :class:`StudyConfig`.

    ``None`` → the built-in synthetic grid (:func:`presets.full_study` or, with ``quick``,
    :func:`presets.quick_study`); a path → :func:`config.load_config`; a mapping →
    :func:`config.study_from_dict`; a :class:`StudyConfig` is used as is.
    """
    if config is None:
        from .presets import full_study, quick_study

        return quick_study() if quick else full_study()
    if isinstance(config, StudyConfig):
        return config
    if isinstance(config, Mapping):
        return study_from_dict(config, quick=quick)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config, quick=quick)
    raise TypeError(f"config must be None, a StudyConfig, a mapping or a file path, got {type(config).__name__}")


def _variant_config(study: StudyConfig, s: SettingSpec, seed: int) -> dict:
    d = study.datasets[s.dataset]
    cfg = {"source": d.source, "toy": d.toy if d.source == "toy" else None, "preset": s.preset,
           "recipe": s.recipe, "share": s.poison_share, "share_key": s.share_key, "seed": seed,
           "limit_per_class": d.limit_per_class, "classes": list(d.classes) if d.classes else None}
    if s.count is not None:  # only when set, so the keys of earlier share-only variants stay valid
        cfg["count"] = s.count
    return cfg


def _data_parallel_group(*, local_aware: bool = False):
    """The ``torchrun`` process group this process trains in (a ``DistContext`` with ``world_size >
    1``), or None. Looked up only when ``torch.distributed`` is loaded, so a ``--report-only`` run
    imports no torch. ``local_aware``: None inside ``distributed.local_only()`` (rank 0's own work)."""
    import sys

    if "torch.distributed" not in sys.modules:
        return None
    from backdoorlab import distributed as ddp

    ctx = ddp.current() if local_aware else ddp.group()
    return ctx if ctx.active else None


def _model_config(study: StudyConfig, d: DatasetSpec, seed: int) -> dict:
    cfg = {"model": d.model, "model_kw": d.model_kw, "weights": d.weights, "train": d.train, "seed": seed,
           "max_clean_per_class": d.max_clean_per_class}
    group = _data_parallel_group()
    if group is not None:  # N processes train other batches (batch_size per process): another model and cell
        cfg["data_parallel"] = group.world_size
    return cfg


def _clean_anchor(study: StudyConfig, dataset: str) -> SettingSpec:
    """The setting whose variant the clean model of ``dataset`` is trained on (its first one)."""
    return next(s for s in study.settings if s.dataset == dataset)


def resolved_configs(df: DefenceSpec, d: DatasetSpec, s: SettingSpec) -> dict:
    """The defence's step parameters for setting ``s`` of data set ``d``: an FP step without a
    layer prunes ``d.fp_layer``; an SS expected share of ``"true"`` is the setting's own share."""
    configs = copy.deepcopy(df.configs)
    if "fp" in df.pipeline.split(">"):
        fp = configs.setdefault("fp", {})
        fp.setdefault("layer", d.fp_layer)
    ss = configs.get("ss", {})
    if ss.get("expected_poison_share") == TRUE_SHARE:
        ss["expected_poison_share"] = s.poison_share
    return configs


def plan_cells(study: StudyConfig, settings: Sequence[str] | None = None,
               defences: Sequence[str] | None = None) -> list[CellPlan]:
    """Every cell of the study in run order (setting by setting, seed by seed, defences in grid order).

    The clean-model cell of a setting other than its data set's first one comes last in its
    setting: that model is trained on the first setting's variant, so a second process that runs
    other settings (``settings=``) reaches it only after the first process has trained it.
    ``settings`` and ``defences`` keep only the settings and defences whose ids match one of
    their ``fnmatch`` patterns (e.g. the cells of the paper's tables first, the rest later).
    """
    plans = []
    chosen = _matching(study.settings, settings, "setting")
    columns = _matching(study.defences, defences, "defence")
    for s in chosen:
        d = study.datasets[s.dataset]
        anchor = _clean_anchor(study, s.dataset)
        for seed in study.seeds:
            variant = _variant_config(study, s, seed)
            model = _model_config(study, d, seed)
            own, later = [], []
            for df in columns:
                if not df.applies_to(s.id):
                    continue
                configs = resolved_configs(df, d, s)
                cfg = {"variant": variant, "model": model, "kind": df.kind, "pipeline": df.pipeline,
                       "configs": configs, "seed": seed, "device_independent": True}
                if df.kind == "clean":
                    cfg["clean_model_variant"] = _variant_config(study, anchor, seed)
                plan = CellPlan(s, replace(df, configs=configs), seed, config_key(cfg), cfg)
                (later if df.kind == "clean" and s.id != anchor.id else own).append(plan)
            plans.extend(own + later)
    return plans


def _matching(specs: Sequence[Any], patterns: Sequence[str] | None, what: str) -> list[Any]:
    """The specs whose ``id`` matches one of ``patterns`` (all of them for None)."""
    if patterns is None:
        return list(specs)
    chosen = [x for x in specs if any(fnmatch(x.id, pat) for pat in patterns)]
    if not chosen:
        raise ValueError(f"no {what} matches {list(patterns)}; the study's {what}s: {[x.id for x in specs]}")
    return chosen


# ----------------------------------------------------------------------------------------------
# artefacts shared by cells: variants and trained models


def versions() -> dict[str, str]:
    """Versions of what produced a cell (recorded in every cell)."""
    import torch

    import backdoorlab

    v = {"backdoorlab": backdoorlab.__version__, "torch": torch.__version__, "numpy": np.__version__,
         "python": platform.python_version()}
    try:
        import datasets_gen

        v["datasets_gen"] = datasets_gen.__version__
    except ImportError:  # pragma: no cover
        pass
    return v


class _Workspace:
    """Builds (or finds) the variants and trained models of one results folder."""

    def __init__(self, study: StudyConfig, out: Path, progress: bool) -> None:
        self.study, self.out, self.progress = study, out, progress
        self.timings: dict[str, float] = {}

    # -- variants
    def variant(self, s: SettingSpec, seed: int) -> Path:
        cfg = _variant_config(self.study, s, seed)
        path = self.out / "variants" / f"{config_key(cfg)}.h5"
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(path.with_suffix(".lock")):
            # the writer streams into a fixed <name>.tmp: a second process must wait, then reuse it
            if path.is_file():
                return path
            started = time.perf_counter()
            build_setting_variant(path, s, self.study.datasets[s.dataset], seed, progress=self.progress)
            self.timings[f"variant:{path.name}"] = time.perf_counter() - started
            atomic_write_json(path.with_suffix(".json"), {"config": cfg, "setting": s.id,
                                                           "seconds": time.perf_counter() - started})
        return path

    def preview(self, s: SettingSpec, seed: int, variant: Path) -> str | None:
        """Copy (or draw) the variant's preview grid to ``previews/`` and return its relative path."""
        from datasets_gen.variant_io import sidecar_paths

        target = self.out / "previews" / f"{_slug(s.id)}.png"
        if not target.is_file():
            with _exclusive(variant.with_suffix(".lock")):  # cells of one setting may run at once
                if not target.is_file():
                    src = sidecar_paths(variant)["preview"]
                    if src.is_file():
                        atomic_write_bytes(target, src.read_bytes())
                    else:  # the toy generator writes no preview: draw clean/triggered test pairs ourselves
                        from .plots import preview_from_variant

                        preview_from_variant(variant, target, title=s.id)
        return target.relative_to(self.out).as_posix()

    # -- models
    def _model_path(self, cfg: Mapping[str, Any]) -> Path:
        return self.out / "models" / f"{config_key(cfg)}.pt"

    def model_key(self, s: SettingSpec, seed: int, *, clean: bool) -> str:
        """Cache key of the poisoned (or clean) model of setting ``s``."""
        return config_key(self._model_cfg(s, seed, clean=clean))

    def _model_cfg(self, s: SettingSpec, seed: int, *, clean: bool) -> dict:
        d = self.study.datasets[s.dataset]
        anchor = _clean_anchor(self.study, s.dataset) if clean else s
        return {"variant": _variant_config(self.study, anchor, seed), "model": _model_config(self.study, d, seed),
                "clean": clean}

    def trained_model(self, s: SettingSpec, seed: int, *, clean: bool):
        """Path and training seconds of the poisoned (or clean) model of setting ``s``."""
        d = self.study.datasets[s.dataset]
        anchor = _clean_anchor(self.study, s.dataset) if clean else s
        variant = self.variant(anchor, seed)
        cfg = self._model_cfg(s, seed, clean=clean)
        path = self._model_path(cfg)
        info_path = path.with_suffix(".json")
        group = _data_parallel_group(local_aware=True)
        if group is not None:  # the ranks train it together: one decision (rank 0's look), no lock
            from backdoorlab import distributed as ddp

            if ddp.broadcast_object(path.is_file() and info_path.is_file(), group):
                return path, json.loads(info_path.read_text())["seconds"]
            path.parent.mkdir(parents=True, exist_ok=True)
            return self._train(path, info_path, variant, anchor, d, cfg, seed, clean, group)
        if path.is_file() and info_path.is_file():
            return path, json.loads(info_path.read_text())["seconds"]
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(path.with_suffix(".lock")):
            # another process of the same results folder may have trained it while we waited
            if path.is_file() and info_path.is_file():
                return path, json.loads(info_path.read_text())["seconds"]
            return self._train(path, info_path, variant, anchor, d, cfg, seed, clean)

    def _train(self, path: Path, info_path: Path, variant: Path, anchor: SettingSpec, d: DatasetSpec, cfg: dict,
               seed: int, clean: bool, group=None):
        from backdoorlab import checkpoint
        from backdoorlab.data import H5Split
        from backdoorlab.models import build_model
        from backdoorlab.train import train_model

        train = H5Split(variant, "train")
        if clean:
            train = train.subset(np.flatnonzero(~np.asarray(train.is_poisoned, dtype=bool)))
        model = build_model(d.model, train.n_classes, seed=seed, **_model_kw(d))
        config = train_config(d)
        started = time.perf_counter()
        partial = path.with_name(path.stem + ".partial.pt")
        model = train_model(model, train, config, seed=seed, device=self.study.device, checkpoint=partial,
                            resume=True, progress=self.progress,
                            meta={"study_key": config_key(cfg), "clean": clean, "setting": anchor.id})
        seconds = time.perf_counter() - started
        if group is None or group.is_main:
            checkpoint.save(path, model, {"config": json_safe(cfg), "seed": seed, "clean": clean,
                                          "train_seconds": seconds,
                                          **({"distributed": group.to_dict()} if group is not None else {})})
            atomic_write_json(info_path, {"config": json_safe(cfg), "seconds": seconds, "n_train": len(train)})
            if partial.exists():
                partial.unlink()
        if group is not None:
            from backdoorlab import distributed as ddp

            ddp.barrier(group)  # the other ranks go on once rank 0 has written the model
        return path, seconds


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_path`` (processes sharing a results folder take
    turns at training one model instead of training it twice); released on exit or on death."""
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _StepCache:
    """Leading pipeline steps shared by the cells of one model: ``ac`` and ``ac>fp`` retrain after
    the same AC step, ``fp`` and ``fp>ac`` prune the same way; the second cell starts from the
    first one's result (``models/steps/<key>.{pt,npy,json}``, the JSON written last). The key holds
    the model's key, the seed and the resolved configuration of the shared steps."""

    def __init__(self, root: Path, model_key: str, seed: int, pipeline, train) -> None:
        self.root, self.model_key, self.seed, self.pipeline, self.train = root, model_key, seed, pipeline, train

    def _base(self, n_steps: int) -> Path:
        return self.root / _step_key(self.model_key, self.seed, self.pipeline, n_steps)

    def load(self, n_steps: int, ctx):
        from backdoorlab import checkpoint
        from backdoorlab.defences.pipeline import PipelineStep

        base = self._base(n_steps)
        info, weights, alive_path = base.with_suffix(".json"), base.with_suffix(".pt"), base.with_suffix(".npy")
        if not (info.is_file() and weights.is_file() and alive_path.is_file()):
            return None
        model, _ = checkpoint.load(weights)
        alive = np.load(alive_path, allow_pickle=False)
        train = self.train if alive.size == len(self.train) else self.train.subset(alive)
        steps = [PipelineStep.from_dict(st) for st in json.loads(info.read_text())["steps"]]
        return ctx.replace(model=model, train=train), alive, steps

    def save(self, n_steps: int, ctx, alive: np.ndarray, steps: list) -> None:
        from backdoorlab import checkpoint

        base = self._base(n_steps)
        base.parent.mkdir(parents=True, exist_ok=True)
        # Two cells that run at once may both finish the same prefix (same seed: same result);
        # the files go through fixed temporaries, so they take turns and the second keeps the first's.
        with _exclusive(base.with_suffix(".lock")):
            if base.with_suffix(".json").is_file():
                return
            checkpoint.save(base.with_suffix(".pt"), ctx.model, {"steps": "->".join(self.pipeline.tokens[:n_steps])})
            buf = io.BytesIO()
            np.save(buf, np.asarray(alive, dtype=np.int64), allow_pickle=False)
            atomic_write_bytes(base.with_suffix(".npy"), buf.getvalue())
            atomic_write_json(base.with_suffix(".json"), {"steps": json_safe([st.to_dict() for st in steps[:n_steps]])})


def _step_key(model_key: str, seed: int, pipeline, n_steps: int) -> str:
    """Step-cache key of the first ``n_steps`` steps of ``pipeline`` on one model and seed (what
    the Dask graph also uses to tell which cell reuses whose steps)."""
    return config_key({"model": model_key, "seed": seed, **pipeline.prefix_config(n_steps)})


def _model_kw(d: DatasetSpec) -> dict:
    kw = dict(d.model_kw)
    if d.weights:
        kw["weights"] = d.weights
    return kw


def train_config(d: DatasetSpec):
    """The :class:`backdoorlab.train.TrainConfig` of a data set: its preset with the overrides."""
    from backdoorlab.train import TrainConfig

    return TrainConfig.from_spec(d.train, where=f"datasets.{d.name}.train")


def first_per_class(labels: np.ndarray, k: int) -> np.ndarray:
    """Positions of the first ``k`` rows of every class, in ascending order (deterministic)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    keep = np.zeros(labels.size, dtype=bool)
    for c in np.unique(labels):
        keep[np.flatnonzero(labels == c)[:k]] = True
    return np.flatnonzero(keep)


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


# ----------------------------------------------------------------------------------------------
# one cell


def _metrics(model, test, test_triggered, target: int, device: str, batch_size: int) -> dict:
    from backdoorlab.evaluate import evaluate

    m = evaluate(model, test, test_triggered, target_class=target, device=device, batch_size=batch_size)
    return {"accuracy": float(m["clean_accuracy"]), "attack_success": float(m["attack_success_rate"])}


def compute_cell(plan: CellPlan, ws: _Workspace, progress: bool, *,
                 command: str | None = None) -> tuple[dict | None, dict | None]:
    """Compute one cell and store it in the cache: ``(cell as stored, None)``, or ``(None, failure)``
    when the cell raised (one bad cell must not lose the study: it is reported and retried by the
    next run). The serial loop and the Dask workers both come through here."""
    try:
        cell = _run_cell(plan, ws, progress)
        if command:
            cell["command"] = command
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001
        return None, {"setting": plan.setting.id, "defence": plan.defence.id, "seed": plan.seed, "key": plan.key,
                      "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
    cache = CellCache(ws.out)
    cache.put(plan.key, cell)
    return cache.get(plan.key), None


def _compute_cell_data_parallel(plan: CellPlan, ws: _Workspace, progress: bool, *,
                                command: str | None = None) -> tuple[dict | None, dict | None]:
    """Rank 0's part of a cell under ``torchrun``: the model with the other ranks, then the cell
    alone (a defence that retrains retrains in rank 0 only: ``distributed.local_only``).

    A training that raises is not caught here: the other ranks may be waiting inside one of its
    collectives, so the run stops (``torchrun`` ends every rank) instead of hanging; the finished
    cells and models are kept and a rerun resumes."""
    from backdoorlab import distributed as ddp

    ws.trained_model(plan.setting, plan.seed, clean=plan.defence.kind == "clean")
    with ddp.local_only():
        return compute_cell(plan, ws, progress, command=command)


def _follow_rank0(plans: Sequence[CellPlan], is_cached: Sequence[bool], ws: _Workspace) -> None:
    """A rank other than 0 under ``torchrun``: train, with rank 0, the model of every cell rank 0
    computes, in the same order; rank 0 alone writes the cells and the report."""
    for plan, done in zip(plans, is_cached):
        if not done:
            ws.trained_model(plan.setting, plan.seed, clean=plan.defence.kind == "clean")


def _run_cell(plan: CellPlan, ws: _Workspace, progress: bool) -> dict:
    from backdoorlab import checkpoint
    from backdoorlab.data import open_variant

    study, s, df, seed = ws.study, plan.setting, plan.defence, plan.seed
    d = study.datasets[s.dataset]
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    ws.timings.clear()
    variant = ws.variant(s, seed)
    preview = ws.preview(s, seed, variant)
    # checked against its manifest like every other use (a cached hash after the first cell)
    splits = open_variant(variant, verify=True)  # every split of the schema
    if d.max_clean_per_class is not None:
        splits["clean"] = splits["clean"].subset(first_per_class(splits["clean"].labels, d.max_clean_per_class))
    attrs = splits["train"].attrs
    target = int(attrs["target_class"])
    recipe = attrs.get("recipe") or {}
    is_poisoned = np.asarray(splits["train"].is_poisoned, dtype=bool)
    cell: dict[str, Any] = {
        "setting": s.id, "dataset": s.dataset, "trigger": s.trigger, "preset": s.preset,
        "paper_row": s.paper_row, "poison_count": s.count, "share_achieved": recipe.get("share_achieved"),
        "share_of": recipe.get("share_of"), "source_classes": [int(c) for c in attrs.get("source_classes", [])],
        "ac_analysis": df.ac_analysis,
        "poison_share": s.poison_share, "defence": df.id, "defence_label": df.display_label(), "kind": df.kind,
        "pipeline": df.pipeline, "sweep": df.sweep, "seed": seed, "n_train": int(is_poisoned.size),
        "poisoned_present": int(is_poisoned.sum()), "target_class": target,
        "before_accuracy": None, "before_attack_success": None, "delta_accuracy": None, "delta_attack_success": None,
        "removed_poisoned": None, "removed_clean": None, "removed_poisoned_share": None, "removed_clean_share": None,
        "neurons_pruned": None, "n_channels": None, "layer": None, "fp_threshold": None,
        "model": d.model, "variant": variant.relative_to(ws.out).as_posix(), "preview": preview, "steps": [],
    }

    model_path, train_s = ws.trained_model(s, seed, clean=df.kind == "clean")
    timings["model_train_s"] = train_s  # time it took to train (whether now or in an earlier run)
    model, _ = checkpoint.load(model_path)
    t0 = time.perf_counter()
    if df.kind == "clean":
        m = _metrics(model, splits["test"], splits["test_triggered"], target, study.device,
                     study.eval_batch_size)
        cell.update(m)
        cell["n_train"] = int((~is_poisoned).sum())
        cell["poisoned_present"] = 0
        timings["evaluate_s"] = time.perf_counter() - t0
    elif df.kind == "attack":
        m = _metrics(model, splits["test"], splits["test_triggered"], target, study.device,
                     study.eval_batch_size)
        cell.update(m)
        cell.update(before_accuracy=m["accuracy"], before_attack_success=m["attack_success"],
                    delta_accuracy=0.0, delta_attack_success=0.0)
        cell["channel_activity"] = _channel_activity(model, splits, cell["source_classes"], study)
        timings["evaluate_s"] = time.perf_counter() - t0
    else:
        from backdoorlab.defences import DefenceContext, Pipeline
        from backdoorlab.defences.pipeline import parse_spec

        configs = copy.deepcopy(df.configs)
        if any(t.startswith("nc") for t in parse_spec(df.pipeline)):  # NC's reversed masks, per cell
            configs.setdefault("nc", {}).setdefault("mask_dir", str(ws.out / "masks" / plan.key))
        pipe = Pipeline(df.pipeline, configs)
        ctx = DefenceContext(model=model, train=splits["train"], clean=splits["clean"], test=splits["test"],
                             test_triggered=splits["test_triggered"], target_class=target,
                             train_config=train_config(d), device=study.device, seed=seed)
        steps = _StepCache(ws.out / "models" / "steps", ws.model_key(s, seed, clean=False), seed, pipe,
                           splits["train"])
        rep = pipe.run(ctx, progress=progress, step_cache=steps)
        timings["defence_s"] = time.perf_counter() - t0
        cell.update(_columns_from_pipeline(rep, is_poisoned))
    cell["timings"] = {**timings, **{k.split(":")[0] + "_build_s": v for k, v in ws.timings.items()},
                       "total_s": time.perf_counter() - t_start}
    cell["versions"] = versions()
    cell["config"] = json_safe(plan.config)
    cell["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return json_safe(cell)


def _channel_activity(model, splits: Mapping[str, Any], sources: Sequence[int], study: StudyConfig) -> dict:
    """Mean activation per channel of the last two conv layers over the clean source-class test
    images and over their triggered copies (the paper's Figs. 7/8: channels that stay dormant on
    clean inputs and wake up on the trigger are what Fine-Pruning hopes to find)."""
    from backdoorlab.activations import channel_means

    test = splits["test"]
    clean = test.subset(np.flatnonzero(np.isin(np.asarray(test.labels), list(sources))))
    out = {}
    for layer in ("last_conv", "second_last_conv"):
        out[layer] = {name: [float(v) for v in channel_means(model, data, layer, device=study.device,
                                                              batch_size=study.eval_batch_size, progress=False)]
                      for name, data in (("clean", clean), ("triggered", splits["test_triggered"]))}
    return out


def _columns_from_pipeline(rep: PipelineReport, is_poisoned: np.ndarray) -> dict:
    """The paper's columns of a defence cell from a :class:`PipelineReport`."""
    out: dict[str, Any] = {}
    init, final = rep.initial, rep.final
    out["before_accuracy"] = float(init["clean_accuracy"])
    out["before_attack_success"] = float(init["attack_success_rate"])
    out["accuracy"] = float(final["clean_accuracy"])
    out["attack_success"] = float(final["attack_success_rate"])
    out["delta_accuracy"] = out["accuracy"] - out["before_accuracy"]
    out["delta_attack_success"] = out["attack_success"] - out["before_attack_success"]
    n_pois = int(is_poisoned.sum())
    n_clean = int(is_poisoned.size - n_pois)
    if any(st.removal is not None for st in rep.steps):
        cum = rep.steps[-1].cumulative
        out["removed_poisoned"] = cum.removed_poisoned
        out["removed_clean"] = cum.removed_clean
        out["removed_poisoned_share"] = cum.removed_poisoned / n_pois if n_pois else 0.0
        out["removed_clean_share"] = cum.removed_clean / n_clean if n_clean else 0.0
    pruned = [st.pruning for st in rep.steps if st.pruning is not None]
    if pruned:
        out["neurons_pruned"] = pruned[-1].neurons_pruned
        out["n_channels"] = pruned[-1].n_channels
        out["layer"] = pruned[-1].layer
        out["fp_threshold"] = pruned[-1].threshold
    # the cells keep a subset of each step's JSON (committed results/ read these keys)
    keep = ("step", "defence", "name", "clean_accuracy", "attack_success_rate", "removed_poisoned", "removed_clean",
            "neurons_pruned", "cumulative", "seconds", "report")
    out["steps"] = [{k: d[k] for k in keep} for d in (st.to_dict() for st in rep.steps)]
    out["pipeline_config"] = rep.config
    return out


# ----------------------------------------------------------------------------------------------
# the study


def run_study(config: StudyConfig | Mapping | str | os.PathLike | None, out: str | os.PathLike,
              quick: bool = False, progress: bool = True, *, seed: int | None = None,
              report: bool = True, on_cell: Callable[[dict], None] | None = None,
              settings: Sequence[str] | None = None, defences: Sequence[str] | None = None,
              report_only: bool = False, command: str | None = None, dask: str | None = None,
              dask_threads: int | None = None) -> Path:
    """Run (or resume) a study and write its report; returns the path of ``report.md``.

    Parameters
    ----------
    config : StudyConfig, mapping, path or None
        The study (see :func:`resolve_study`); ``None`` runs the built-in synthetic grid.
    out : path
        Results folder: ``cells/``, ``variants/``, ``models/``, ``previews/``, ``figures/``,
        ``cells.json``, ``cells.csv``, ``tables.json``, ``study.json``, ``report.md``, ``report.html``.
    quick : bool
        The reduced study (config files: their ``[quick]`` table).
    progress : bool
        tqdm over the cells (and the inner bars of training and the defences).
    seed : int, optional
        Run with this one seed instead of the config's seeds.
    report : bool
        Write the report at the end (tests of the runner alone may skip it).
    on_cell : callable, optional
        Called with each finished (or cached) cell record.
    settings : sequence of str, optional
        Run only the settings whose ids match these ``fnmatch`` patterns (several processes may
        share one ``out`` folder, each with its own settings: models are trained under a lock).
    defences : sequence of str, optional
        Run only the defences whose ids match these patterns.
    report_only : bool
        Compute nothing: write the report from the cells already in ``out`` (the missing ones are
        listed as not run yet), e.g. while a long study is still running elsewhere.
    command : str, optional
        The command line of this run (the CLI passes it): shown at the top of the report and
        recorded in every cell it computes, so a report names the commands behind its numbers.
    dask : str, optional
        Compute the cells as Dask tasks (:mod:`.distributed_grid`): ``"local"`` / ``"local:N"``
        starts a local cluster of N worker processes, ``"tcp://HOST:PORT"`` uses a running
        scheduler whose workers see ``out`` at the same path. Same cells as a serial run; they
        arrive in the order they finish (``on_cell``), ``cells.json`` keeps the run order.
    dask_threads : int, optional
        Torch threads per Dask task (default: a local cluster splits the cores between its
        workers; remote workers keep their own).

    Raises
    ------
    RuntimeError
        When every cell failed (the report would be empty); single failures are reported instead.
    ModuleNotFoundError
        ``dask`` given without Dask installed (the message says what to install).
    """
    from tqdm.auto import tqdm

    if dask is not None:  # refuse a bad target or a missing extra before anything is written
        from .distributed_grid import parse_target, require_dask

        parse_target(dask)
        require_dask()
    if dask_threads is not None and (isinstance(dask_threads, bool) or not isinstance(dask_threads, int)
                                     or dask_threads < 1):
        raise ValueError(f"dask_threads must be an integer >= 1, got {dask_threads!r}")

    group = _data_parallel_group()  # torchrun: the ranks train every model together
    if group is not None and dask is not None:
        raise ValueError("torchrun (each model trained data-parallel by its processes) and dask (cells as tasks "
                         "on workers) are two ways to use several processes for one study: use one of them")
    main = group is None or group.is_main
    progress = progress and main
    study = resolve_study(config, quick=quick)
    if seed is not None:
        study = study.with_seed(seed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if main:
        atomic_write_json(out / "study.json", study.to_dict())
    started = time.perf_counter()
    plans = plan_cells(study, settings, defences)
    if not plans:
        raise ValueError("the study has no cells (no settings, or every defence restricted to absent settings)")
    cache = CellCache(out)
    cached = {p.key: cache.get(p.key) for p in plans}
    n_cached = sum(v is not None for v in cached.values())
    ws = _Workspace(study, out, progress)
    if group is not None:
        from backdoorlab import distributed as ddp

        # rank 0's look at the cache decides for every rank (a cell it writes must not make
        # another rank skip a model rank 0 then trains without it)
        is_cached = ddp.broadcast_object([cached[p.key] is not None for p in plans], group)
        if not main:
            if not report_only:
                _follow_rank0(plans, is_cached, ws)
            return out / "report.md"
    failures: list[dict] = []
    pending: list[dict] = []
    bar = tqdm(total=len(plans), initial=0, desc="cells", unit="cell", disable=not progress, dynamic_ncols=True)
    done: dict[int, dict] = {}  # plan position -> finished cell (cells.json keeps the run order)

    def finish(i: int, cell: dict | None, failure: dict | None) -> None:
        p = plans[i]
        if failure is not None:
            failures.append(failure)
            if progress:
                tqdm.write(f"cell {p.setting.id} / {p.defence.id} (seed {p.seed}) failed: {failure['error']}")
        else:
            done[i] = cell
            if on_cell is not None:
                on_cell(cell)
        bar.update(1)

    todo = [i for i, p in enumerate(plans) if cached[p.key] is None]
    try:
        if dask is not None and todo and not report_only:
            from contextlib import closing

            from .distributed_grid import run_cells

            for i, p in enumerate(plans):
                if cached[p.key] is not None:
                    finish(i, cached[p.key], None)
            bar.set_description("cells (Dask)")
            on_start = tqdm.write if progress else None
            with closing(run_cells(study, out, plans, todo, target=dask, threads=dask_threads, command=command,
                                   on_start=on_start)) as finished:
                for i, cell, failure in finished:
                    if progress:
                        bar.set_description(f"{plans[i].setting.id} | {plans[i].defence.id} | seed {plans[i].seed} done")
                    finish(i, cell, failure)
        else:
            for i, p in enumerate(plans):
                cell = cached[p.key]
                if cell is None and report_only:
                    pending.append({"setting": p.setting.id, "defence": p.defence.id, "seed": p.seed})
                    bar.update(1)
                    continue
                if cell is None:
                    bar.set_description(f"{p.setting.id} | {p.defence.id} | seed {p.seed}")
                    if group is None:
                        finish(i, *compute_cell(p, ws, progress, command=command))
                    else:
                        finish(i, *_compute_cell_data_parallel(p, ws, progress, command=command))
                else:
                    finish(i, cell, None)
    finally:
        bar.close()
        if not report_only:
            order = {p.key: i for i, p in enumerate(plans)}
            failures.sort(key=lambda f: order[f["key"]])
            atomic_write_json(out / "failures.json", failures)
    cells = [done[i] for i in sorted(done)]
    if not cells and report_only:
        raise RuntimeError(f"no finished cell in {out} yet: nothing to report")
    if not cells:
        raise RuntimeError(f"every cell failed; first error: {failures[0]['error']} (see {out / 'failures.json'})")
    wall = time.perf_counter() - started
    meta = {"name": study.name, "description": study.description, "quick": study.quick, "seeds": list(study.seeds),
            "command": command, "cell_commands": sorted({c["command"] for c in cells if c.get("command")}),
            "device": study.device, "versions": versions(), "wall_time_s": wall,
            "n_computed": len(cells) - n_cached, "n_cached": n_cached, "failures": failures, "pending": pending,
            "notes": [n for n in (d.note for d in study.datasets.values()) if n]}
    if report:
        from .report import write_report

        write_report(out, cells, meta, progress=False)
    atomic_write_json(out / "run.json", {k: v for k, v in meta.items() if k not in ("failures", "pending")} |
                      {"n_failures": len(failures), "n_pending": len(pending), "n_cells": len(plans)})
    return out / "report.md"
