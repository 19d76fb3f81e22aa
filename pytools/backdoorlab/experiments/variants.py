"""The poisoned variant of one study setting: built by datasets_gen, optionally cut to fewer classes.

:func:`build_setting_variant` turns a :class:`~backdoorlab.experiments.config.SettingSpec` into an
HDF5 variant: the ``datasets_gen`` preset (or the setting's own recipe) with the setting's poison
share written into it, built from the synthetic default, the toy generator (tests) or a real
folder. A data set may name ``classes``: the variant is then cut to those classes and relabelled
``0..k-1`` in the given order (the quick study uses ten of the 43 sign classes, so a small CNN can
learn them in a few epochs); the cut keeps every row of the chosen classes — poisoned ones
included — and records the mapping in the ``class_subset`` attribute.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from datasets_gen.build import build_variant
from datasets_gen.presets import PRESETS
from datasets_gen.publish import write_preview
from datasets_gen.toy import make_toy_variant
from datasets_gen.variant_io import SPLITS, read_attrs, read_split, write_variant

from .config import DatasetSpec, SettingSpec

__all__ = ["build_setting_variant", "subset_classes", "setting_recipe", "toy_arguments"]


def build_setting_variant(path: Path, s: SettingSpec, d: DatasetSpec, seed: int, *, progress: bool = True) -> Path:
    """Build the variant of setting ``s`` (data set ``d``) at ``path`` (atomically, with sidecars)."""
    path = Path(path)
    if not d.classes:
        return _build(path, s, d, seed, progress)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".full-") as tmp:
        full = _build(Path(tmp) / path.name, s, d, seed, progress)
        out = subset_classes(full, path, d.classes)
    # drawn from the cut variant itself: its class names, target and title are the study's (the
    # full build's preview showed classes the study does not use)
    if d.source != "toy":
        write_preview(out)
    return out


def _build(path: Path, s: SettingSpec, d: DatasetSpec, seed: int, progress: bool) -> Path:
    if d.source == "toy":
        return _build_toy(path, s, d, seed)
    source: Any = "synth" if d.source == "synth" else Path(d.source)
    return build_variant(setting_recipe(s), path, source=source, seed=seed, limit_per_class=d.limit_per_class,
                         progress=progress)


def setting_recipe(s: SettingSpec) -> dict:
    """The datasets_gen recipe of a setting: its preset, the overrides, and the poison share."""
    recipe: dict = {}
    if s.preset is not None:
        if s.preset not in PRESETS:
            raise ValueError(f"setting {s.id!r}: unknown datasets_gen preset {s.preset!r}; known: {sorted(PRESETS)}")
        recipe = copy.deepcopy(PRESETS[s.preset])
        recipe.setdefault("name", s.preset)
    recipe = _deep_update(recipe, copy.deepcopy(s.recipe))
    _set_share(recipe, s.poison_share, s.share_key, s.id)
    # the setting decides between the exact count (a paper row) and poisoning by share (a sweep)
    if s.count is not None or "count" in recipe:
        recipe["count"] = s.count
    return recipe


def _build_toy(path: Path, s: SettingSpec, d: DatasetSpec, seed: int) -> Path:
    return make_toy_variant(path, seed=seed, **toy_arguments(s, d))


def toy_arguments(s: SettingSpec, d: DatasetSpec) -> dict:
    """Keyword arguments of ``datasets_gen.toy.make_toy_variant`` (all but path and seed) for
    setting ``s`` on the toy data set ``d``: its ``toy`` table, the setting's recipe, the share."""
    kw = dict(d.toy)
    r = dict(s.recipe)
    if "source_classes" in r:
        src = r.pop("source_classes")
        r["source_class"] = src[0] if isinstance(src, (list, tuple)) else src
    allowed = {"trigger", "source_class", "target_class"}
    bad = set(r) - allowed
    if bad:
        raise ValueError(f"setting {s.id!r}: toy recipes take only {sorted(allowed)}, got {sorted(bad)}")
    kw.update(r)
    kw["poison_share"] = s.poison_share
    return kw


def _deep_update(base: dict, over: Mapping) -> dict:
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
    return base


def _set_share(recipe: dict, share: float, share_key: str | None, setting_id: str) -> None:
    """Write the poison share into a recipe: at ``share_key`` (dotted), else at ``share`` wherever it is."""
    if share_key:
        node = recipe
        *parents, last = share_key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = share
        return
    if "share" in recipe or not recipe.get("recipe"):
        recipe["share"] = share
    elif isinstance(recipe.get("recipe"), dict):
        recipe["recipe"]["share"] = share
    else:  # pragma: no cover - defensive
        raise ValueError(f"setting {setting_id!r}: cannot find where the recipe keeps the poison share "
                         f"(keys {sorted(recipe)}); give 'share_key' in the setting")


def subset_classes(src: str | os.PathLike, dst: str | os.PathLike, classes: Sequence[int]) -> Path:
    """Write a copy of variant ``src`` restricted to ``classes``, relabelled ``0..k-1`` in that order.

    Parameters
    ----------
    src, dst : path-like
        The full variant and the output ``.h5`` (written atomically, with its manifest).
    classes : sequence of int
        Class ids of ``src`` to keep (at least two, distinct); they must include the target and
        at least one source class.

    Raises
    ------
    ValueError
        Duplicate or unknown class ids, or a subset without the target or any source class.
    """
    attrs = read_attrs(src)
    n = int(attrs["n_classes"])
    classes = [int(c) for c in classes]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be at least two distinct class ids, got {classes}")
    bad = [c for c in classes if not 0 <= c < n]
    if bad:
        raise ValueError(f"classes {bad} outside [0, {n}) of {Path(src).name}")
    target = int(attrs["target_class"])
    sources = [int(c) for c in attrs["source_classes"]]
    if target not in classes:
        raise ValueError(f"classes {classes} must include the target class {target}")
    kept_sources = [c for c in sources if c in classes]
    if not kept_sources:
        raise ValueError(f"classes {classes} must include a source class (one of {sources})")
    remap = np.full(n, -1, dtype=np.int64)
    remap[classes] = np.arange(len(classes))
    splits = {}
    for split in SPLITS:
        rows = read_split(src, split)
        keep = remap[rows["original_labels"]] >= 0
        out = {k: v[keep] for k, v in rows.items()}
        out["labels"] = remap[out["labels"]]
        out["original_labels"] = remap[out["original_labels"]]
        splits[split] = out
    new_attrs = dict(attrs)
    new_attrs.update(n_classes=len(classes), class_names=[attrs["class_names"][c] for c in classes],
                     target_class=int(remap[target]), source_classes=[int(remap[c]) for c in kept_sources],
                     class_subset={"original_ids": classes, "of_n_classes": n})
    return write_variant(dst, splits, new_attrs)
