"""Defences in sequence: ``Pipeline("ac>fp")`` and the ``backdoorlab defend`` library function.

A pipeline spec names defences separated by ``>`` and runs them left to right (``ac>fp``,
``fp>ac``, ``ss>fp``, ``ac>ss>fp``; aliases such as ``fp-last`` / ``fp-second`` choose the pruned
layer). Each step receives the current model and training set and returns new ones (a data filter
shrinks the training set and retrains; Fine-Pruning repairs the model). Clean accuracy and attack
success are measured on the test sets before the first step and after every step, and the report
carries the paper's columns (Table 6: removed poisoned / clean, neurons pruned, clean accuracy,
attack success), per step and cumulated over the original training set.

:func:`defend` is what the CLI calls: it opens the HDF5 variant and the checkpoint, runs a
pipeline, and writes the defended checkpoint and a JSON report atomically.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backdoorlab import checkpoint
from backdoorlab.data import open_variant
from backdoorlab.devices import resolve_device
from backdoorlab.evaluate import evaluate
from backdoorlab.train import PRESETS, TrainConfig
from datasets_gen.atomic import atomic_write_json, json_safe

from .base import DefenceContext, DefenceResult, Pruning, Removal
from .registry import canonical_name, make_defence

__all__ = ["Pipeline", "PipelineReport", "PipelineStep", "Cumulative", "parse_spec", "evaluate_context", "defend",
           "TABLE_COLUMNS"]

#: Columns of the per-step table (the paper's Table 6, plus the step's position and name).
TABLE_COLUMNS = (
    "step", "defence", "clean_accuracy", "attack_success_rate", "removed_poisoned", "removed_poisoned_pct",
    "removed_clean", "removed_clean_pct", "neurons_pruned", "seconds",
)


def parse_spec(spec: str) -> list[str]:
    """``"ac>fp"`` -> ``["ac", "fp"]``; every name checked against the registry (``"none"`` -> ``[]``)."""
    if not isinstance(spec, str):
        raise TypeError(f"pipeline spec must be a string like 'ac>fp', got {spec!r}")
    if spec.strip().lower() in ("", "none"):
        return []
    steps = [token.strip().lower() for token in spec.split(">")]
    for token in steps:
        try:
            canonical_name(token)
        except ValueError as exc:
            raise ValueError(f"{exc} (in pipeline {spec!r})") from None
    return steps


def evaluate_context(ctx: DefenceContext) -> dict:
    """Clean accuracy and attack success of ``ctx.model`` on ``ctx.test`` / ``ctx.test_triggered``."""
    metrics = evaluate(ctx.model, ctx.test, ctx.test_triggered, target_class=ctx.target_class, device=ctx.device)
    return {k: metrics[k] for k in ("clean_accuracy", "attack_success_rate") if k in metrics}


@dataclass(frozen=True)
class Cumulative:
    """Removal over the *original* training set after a step (all data-filtering steps so far)."""

    n_train: int
    removed_poisoned: int
    removed_clean: int


@dataclass
class PipelineStep:
    """One step of a pipeline run: the metrics after it and the paper's columns (Table 6).

    Attributes
    ----------
    step : int
        Position in the pipeline, from 1.
    defence : str
        The spec token (``"fp-second"``); ``name`` is its registry name (``"fp"``).
    clean_accuracy, attack_success_rate : float or None
        Metrics of the model after the step.
    removal : Removal or None
        This step's removal columns (data filtering), of its incoming training set.
    pruning : Pruning or None
        This step's pruning (model repair).
    cumulative : Cumulative
        Removal over the original training set after this step.
    seconds : float
    report : dict
        The defence's JSON report (``DefenceResult.report``).
    """

    step: int
    defence: str
    name: str
    clean_accuracy: float | None
    attack_success_rate: float | None
    removal: Removal | None
    pruning: Pruning | None
    cumulative: Cumulative
    seconds: float
    report: dict

    def to_dict(self) -> dict:
        """The step as JSON (the keys ``defend --report``, the step cache and the cells hold)."""
        rm = self.removal
        return {
            "step": self.step, "defence": self.defence, "name": self.name,
            "clean_accuracy": self.clean_accuracy, "attack_success_rate": self.attack_success_rate,
            "removed_poisoned": None if rm is None else rm.removed_poisoned,
            "removed_poisoned_pct": None if rm is None else rm.removed_poisoned_pct,
            "removed_clean": None if rm is None else rm.removed_clean,
            "removed_clean_pct": None if rm is None else rm.removed_clean_pct,
            "neurons_pruned": self.report.get("neurons_pruned_str"),
            "cumulative": dataclasses.asdict(self.cumulative),
            "seconds": self.seconds,
            "report": self.report,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineStep":
        """A step written by :meth:`to_dict` (the step cache reads its JSON back)."""
        report = d.get("report") or {}
        return cls(step=int(d["step"]), defence=d["defence"], name=d["name"],
                   clean_accuracy=d.get("clean_accuracy"), attack_success_rate=d.get("attack_success_rate"),
                   removal=Removal.from_report(report), pruning=Pruning.from_report(report),
                   cumulative=Cumulative(**d["cumulative"]), seconds=float(d["seconds"]), report=report)


@dataclass
class PipelineReport:
    """What a pipeline did: metrics before and after every step, and each step's report.

    Attributes
    ----------
    spec : str
    initial : dict
        Metrics of the incoming model (``clean_accuracy``, ``attack_success_rate``) and the size and
        poisoned count of the incoming training set.
    steps : list of PipelineStep
        Per step: the metrics after it, the paper's columns and the removal over the original
        training set so far.
    context : DefenceContext
        The final context (model and kept training set); not serialised.
    results : list of DefenceResult
        The raw results (flags / pruned channels) of every step; not serialised.
    """

    spec: str
    initial: dict
    steps: list[PipelineStep] = field(default_factory=list)
    context: DefenceContext | None = None
    results: list[DefenceResult] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def final(self) -> dict:
        """Metrics after the last step (the initial ones for an empty pipeline)."""
        if not self.steps:
            return self.final_keys(self.initial)
        last = self.steps[-1]
        return {"clean_accuracy": last.clean_accuracy, "attack_success_rate": last.attack_success_rate}

    def table(self) -> list[dict]:
        """One row per step (row 0 = before any defence) with :data:`TABLE_COLUMNS`."""
        rows = [{c: None for c in TABLE_COLUMNS} | {"step": 0, "defence": "none", **self.final_keys(self.initial)}]
        for s in self.steps:
            as_json = s.to_dict()
            rows.append({c: as_json.get(c) for c in TABLE_COLUMNS})
        return rows

    @staticmethod
    def final_keys(d: dict) -> dict:
        return {k: d.get(k) for k in ("clean_accuracy", "attack_success_rate")}

    def to_dict(self) -> dict:
        """JSON-ready summary (no model, no per-sample arrays)."""
        return {"spec": self.spec, "config": self.config, "initial": self.initial, "final": self.final,
                "steps": [s.to_dict() for s in self.steps], "table": self.table()}

    def to_markdown(self) -> str:
        """The per-step table as Markdown (percentages for rates)."""
        head = "| step | defence | clean acc. | attack success | removed poisoned | removed clean | neurons pruned |"
        lines = [head, "|---|---|---|---|---|---|---|"]

        def pct(v):
            return "" if v is None else f"{100 * v:.2f} %"

        for r in self.table():
            rp = "" if r["removed_poisoned"] is None else f"{r['removed_poisoned']} ({r['removed_poisoned_pct']:.1f} %)"
            rc = "" if r["removed_clean"] is None else f"{r['removed_clean']} ({r['removed_clean_pct']:.1f} %)"
            lines.append(f"| {r['step']} | {r['defence']} | {pct(r['clean_accuracy'])} | "
                         f"{pct(r['attack_success_rate'])} | {rp} | {rc} | {r['neurons_pruned'] or ''} |")
        return "\n".join(lines)


class Pipeline:
    """Defences in sequence, configured once and run on a :class:`DefenceContext`.

    Parameters
    ----------
    spec : str
        ``"ac>fp"`` and the like (see :func:`parse_spec`).
    configs : dict, optional
        Keyword arguments per defence: keyed by registry name (``"fp"``: every FP step) or by the
        exact token (``"fp-second"``: that alias only; it wins over the name).

    Examples
    --------
    >>> pipe = Pipeline("ac>fp", {"ac": {"analysis": "smaller"}, "fp": {"threshold": 0.02}})
    >>> report = pipe.run(ctx)                      # doctest: +SKIP
    >>> report.final["attack_success_rate"]         # doctest: +SKIP
    """

    def __init__(self, spec: str = "ac>fp", configs: dict | None = None) -> None:
        self.spec = spec
        self.tokens = parse_spec(spec)
        configs = dict(configs or {})
        if not all(isinstance(v, dict) for v in configs.values()):
            raise TypeError("configs must map a defence name to a dict of its parameters")
        unused = set(configs) - set(self.tokens) - {canonical_name(t) for t in self.tokens}
        if unused:
            raise ValueError(f"configs given for {sorted(unused)}, which pipeline {spec!r} does not run")
        self.configs = configs
        # build (and so validate) every step now, before any training starts
        self.defences = [make_defence(t, configs) for t in self.tokens]

    def __repr__(self) -> str:
        return f"Pipeline({self.spec!r}, {self.configs!r})"

    def prefix_config(self, n_steps: int) -> dict:
        """The resolved configuration of the first ``n_steps`` steps (what makes their result)."""
        return {"tokens": self.tokens[:n_steps],
                "configs": [d.config() for d in self.defences[:n_steps]]}

    def run(self, ctx: DefenceContext, *, progress: bool = True, step_cache: Any = None) -> PipelineReport:
        """Run every step in order; metrics before and after each one.

        ``step_cache`` (optional) shares finished leading steps between pipelines that start alike
        (``ac`` and ``ac>fp``; ``fp`` and ``fp>ac``): an object with ``load(n_steps, ctx)`` returning
        ``(ctx, alive, steps)`` after the first ``n_steps`` steps (a list of :class:`PipelineStep`)
        or None, and ``save(n_steps, ctx, alive, steps)``. Steps are seeded by ``ctx.seed`` alone, so a shared
        prefix gives the same result as running it again.
        """
        is_poisoned = np.asarray(ctx.train.is_poisoned, dtype=bool)
        alive = np.arange(len(ctx.train))  # positions in the original training set still present
        initial = evaluate_context(ctx) | {"n_train": int(alive.size), "poisoned_present": int(is_poisoned.sum())}
        report = PipelineReport(spec=self.spec, initial=initial,
                                config={t: d.config() for t, d in zip(self.tokens, self.defences)})
        done = 0
        if step_cache is not None:
            for n in range(len(self.tokens), 0, -1):
                hit = step_cache.load(n, ctx)
                if hit is not None:
                    ctx, alive, steps = hit
                    report.steps.extend(steps)
                    done = n
                    if progress:
                        print(f"[1-{n}/{len(self.defences)}] {'>'.join(self.tokens[:n])}: shared with an earlier "
                              "pipeline (step cache)", flush=True)
                    break
        for i, (token, defence) in enumerate(zip(self.tokens, self.defences), start=1):
            if i <= done:
                continue
            if progress:
                print(f"[{i}/{len(self.defences)}] {token}: {defence!r}", flush=True)
            started = time.perf_counter()
            ctx, result = defence.run(ctx, progress=progress)
            seconds = time.perf_counter() - started
            if result.flags is not None:
                alive = alive[~result.flags]
            metrics = evaluate_context(ctx)
            step = PipelineStep(
                step=i, defence=token, name=result.name,
                clean_accuracy=metrics.get("clean_accuracy"), attack_success_rate=metrics.get("attack_success_rate"),
                removal=result.removal, pruning=result.pruning,
                cumulative=Cumulative(
                    n_train=int(alive.size),
                    removed_poisoned=int(is_poisoned.sum() - is_poisoned[alive].sum()),
                    removed_clean=int((~is_poisoned).sum() - (~is_poisoned[alive]).sum()),
                ),
                seconds=seconds, report=result.report,
            )
            report.steps.append(step)
            report.results.append(result)
            if step_cache is not None:
                step_cache.save(i, ctx, alive, report.steps)
            if progress:
                print(f"    clean accuracy {metrics.get('clean_accuracy', float('nan')):.4f}, "
                      f"attack success {metrics.get('attack_success_rate', float('nan')):.4f} ({seconds:.1f} s)",
                      flush=True)
        report.context = ctx
        return report


# --------------------------------------------------------------------------- the CLI's function


def load_context(data: str | os.PathLike, model: str | os.PathLike, *, train_config: Any = None,
                 device: str = "auto", seed: int = 0, verify: bool = True,
                 progress: bool = False) -> tuple[DefenceContext, dict]:
    """Open a variant file and a checkpoint as a :class:`DefenceContext`; also returns the checkpoint meta.

    The variant is checked against its manifest first (:func:`backdoorlab.data.open_variant`;
    ``verify=False`` skips the SHA-256), the checkpoint against its own digest.

    ``train_config``: a ``TrainConfig``, a preset name of ``backdoorlab.train.PRESETS``, a dict of
    ``TrainConfig`` fields, or None (the checkpoint's recorded recipe, else the preset named after
    the variant's source).
    """
    data = Path(data)
    needed = ("train", "clean", "test", "test_triggered")
    splits = open_variant(data, needed, verify=verify, progress=progress)
    missing = [s for s in needed if s not in splits]
    if missing:
        raise ValueError(f"{str(data)!r} lacks the split(s) {missing} that the defences need")
    attrs = splits["train"].attrs
    if "target_class" not in attrs:
        raise ValueError(f"{str(data)!r} has no 'target_class' attribute; is it a poisoned variant?")
    net, meta = checkpoint.load(model, device="cpu")
    if isinstance(train_config, str):
        if train_config not in PRESETS:
            raise ValueError(f"unknown training preset {train_config!r}; choose one of {sorted(PRESETS)}")
        train_config = PRESETS[train_config]
    elif isinstance(train_config, dict):
        train_config = TrainConfig(**train_config)
    elif train_config is None:
        # train_model records its recipe as meta["config"]; a defended checkpoint as meta["train_config"]
        recorded = (meta.get("train_config") or meta.get("config")) if isinstance(meta, dict) else None
        fields = set(TrainConfig.__dataclass_fields__)
        if isinstance(recorded, dict) and {"epochs", "batch_size", "optimizer", "lr"} <= set(recorded):
            train_config = TrainConfig(**{k: v for k, v in recorded.items() if k in fields})
        else:
            source = str(attrs.get("source", "gtsrb"))
            train_config = PRESETS.get(source) or PRESETS["gtsrb"]
    ctx = DefenceContext(model=net, train=splits["train"], clean=splits["clean"], test=splits["test"],
                         test_triggered=splits["test_triggered"], target_class=int(attrs["target_class"]),
                         train_config=train_config, device=device, seed=int(seed))
    return ctx, meta


def defend(data: str | os.PathLike, model: str | os.PathLike, pipeline: str, out: str | os.PathLike | None,
           report: str | os.PathLike | None, *, configs: dict | None = None, train_config: Any = None,
           device: str = "auto", seed: int = 0, progress: bool = True, verify: bool = True) -> PipelineReport:
    """Run a defence pipeline on a variant and a checkpoint; write the defended model and the report.

    Parameters
    ----------
    data : path
        HDF5 variant (splits ``train``, ``clean``, ``test``, ``test_triggered``).
    model : path
        Checkpoint of the (possibly backdoored) model (``backdoorlab.checkpoint`` format).
    pipeline : str
        Spec such as ``"ac>fp"``.
    out : path or None
        Where the defended checkpoint goes (atomic); None = do not save.
    report : path or None
        Where the JSON report goes (atomic); None = do not write.
    configs : dict, optional
        Per-defence parameters (see :class:`Pipeline`).
    train_config : TrainConfig, str, dict or None
        Recipe for retraining (see :func:`load_context`).
    verify : bool
        Check the variant's SHA-256 against its manifest first (recorded as ``data_check``).

    Returns
    -------
    PipelineReport
        What the pipeline did, read by name; its JSON form (:meth:`PipelineReport.to_dict` with the
        run's inputs, seed, device and time) is what goes to ``report``.
    """
    pipe = Pipeline(pipeline, configs)  # validate the spec before opening anything heavy
    resolve_device(device)
    ctx, meta = load_context(data, model, train_config=train_config, device=device, seed=seed, verify=verify,
                             progress=progress)
    started = time.perf_counter()
    result = pipe.run(ctx, progress=progress)
    summary = result.to_dict()
    summary.update({
        "data": str(data), "model": str(model), "out": None if out is None else str(out), "seed": int(seed),
        "device": str(device), "train_config": json_safe(_config_dict(ctx.train_config)),
        "data_check": ctx.train.verification,
        "seconds": time.perf_counter() - started,
    })
    summary = json_safe(summary)
    if out is not None:
        checkpoint.save(out, result.context.model, {
            "defended_from": str(model), "pipeline": pipeline, "seed": int(seed),
            "final": summary["final"], "source_meta": json_safe(meta),
            "train_config": summary["train_config"],
        })
    if report is not None:
        atomic_write_json(report, summary)
    return result


def _config_dict(config: Any) -> dict:
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(vars(config)) if hasattr(config, "__dict__") else {"repr": repr(config)}
