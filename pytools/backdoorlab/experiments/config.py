"""Study configuration: what the study runs, loaded from presets, TOML or YAML and validated.

A study is a grid: **settings** (one poisoned variant each: a data set, a trigger, a poison share)
× **defences** (a pipeline spec such as ``"ac"``, ``"fp"`` or ``"ac>fp"`` with its parameters) ×
**seeds**. Each point of that grid is a *cell* whose result is cached by a hash of its resolved
configuration (see :mod:`backdoorlab.experiments.cache`), so this module turns a loose mapping
(from a preset, a TOML file read with :mod:`tomllib` or a YAML file read with PyYAML) into frozen,
fully resolved dataclasses and rejects anything it does not understand with a message naming the
bad key or value. Relative paths in a file are resolved against that file's folder, so a config
can say ``source = "../shared/data/gtsrb-32"`` and work from any working directory.

File layout (TOML shown; YAML has the same keys)::

    name = "gtsrb-real"
    seeds = [0]
    device = "auto"
    defences = ["none", "ac", "ss", "dp", "fp-last", "fp-second-last", "ac>fp", "fp>ac"]
    fp_thresholds = [0.02, 0.04, 0.06]   # Fig. 3 sweep (on the settings named by threshold_sweep)
    threshold_sweep = "first"            # "first" | "all" | [setting ids]

    [datasets.gtsrb]
    source = "../shared/data/gtsrb-32"   # "synth", "toy" or a folder in the official layout
    model = "gtsrb_cnn"
    train = { preset = "gtsrb" }         # a backdoorlab.train preset plus overrides (epochs = 2, ...)
    limit_per_class = 200                # optional

    [[settings]]
    dataset = "gtsrb"
    preset = "gtsrb-ours-yellow-square-7"     # a datasets_gen preset (its recipe may be overridden)
    trigger = "yellow square 4x4"        # label used in tables and plots
    shares = [0.03, 0.07, 0.10]          # one setting per share

    [quick]                              # what --quick changes (defaults shown in QUICK_DEFAULTS)
    limit_per_class = 30
    epochs = 2
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from datasets_gen.build import resolve_recipe, resolve_source
from datasets_gen.presets import DATASETS, PRESETS
from datasets_gen.toy import check_toy_arguments

# Defence ids every study may name without defining them. Each maps to the pipeline spec of
# backdoorlab.defences.pipeline and the per-step parameters passed as ``configs``. "none" is the
# undefended poisoned model (the attack itself, Fig. 1) and "clean" the model trained without
# the poisoned rows (the baseline the attack is measured against).
#
# AC is named by its analysis: the paper ran the size metric ("smaller": the smaller cluster of
# every class is flagged); "silhouette-scores" is our default analysis. The paper's
# combinations use the size metric and Fine-Pruning on the data set's own layer
# (DatasetSpec.fp_layer: the last conv for GTSRB, the second-to-last for the faces); an FP step
# without a "layer" gets that layer when the cell is planned.
_AC_SIZE = {"analysis": "smaller"}
_AC_SILHOUETTE = {"analysis": "silhouette-scores"}
DEFENCE_CATALOG: dict[str, dict[str, Any]] = {
    "clean": {"pipeline": "", "configs": {}, "kind": "clean"},
    "none": {"pipeline": "", "configs": {}, "kind": "attack"},
    "ac-size": {"pipeline": "ac", "configs": {"ac": _AC_SIZE}, "kind": "filter"},
    "ac-silhouette": {"pipeline": "ac", "configs": {"ac": _AC_SILHOUETTE}, "kind": "filter"},
    "ac": {"pipeline": "ac", "configs": {}, "kind": "filter"},  # the defence's default analysis (silhouette)
    "ac-smaller": {"pipeline": "ac", "configs": {"ac": _AC_SIZE}, "kind": "filter"},  # older name of ac-size
    "ss": {"pipeline": "ss", "configs": {}, "kind": "filter"},
    "ss-art": {"pipeline": "ss", "configs": {"ss": {"scoring": "art-compatible"}}, "kind": "filter"},
    "dp": {"pipeline": "dp", "configs": {}, "kind": "filter"},
    "fp-last": {"pipeline": "fp", "configs": {"fp": {"layer": "last_conv", "threshold": 0.04}}, "kind": "repair"},
    "fp-second-last": {"pipeline": "fp", "configs": {"fp": {"layer": "second_last_conv", "threshold": 0.04}},
                       "kind": "repair"},
    "fp": {"pipeline": "fp", "configs": {"fp": {"threshold": 0.04}}, "kind": "repair"},  # the data set's layer
    "ac>fp": {"pipeline": "ac>fp", "configs": {"ac": _AC_SIZE, "fp": {"threshold": 0.04}}, "kind": "combination"},
    "fp>ac": {"pipeline": "fp>ac", "configs": {"ac": _AC_SIZE, "fp": {"threshold": 0.04}}, "kind": "combination"},
    "ac-silhouette>fp": {"pipeline": "ac>fp", "configs": {"ac": _AC_SILHOUETTE, "fp": {"threshold": 0.04}},
                         "kind": "combination"},
    "fp>ac-silhouette": {"pipeline": "fp>ac", "configs": {"ac": _AC_SILHOUETTE, "fp": {"threshold": 0.04}},
                         "kind": "combination"},
    "ss>fp": {"pipeline": "ss>fp", "configs": {"fp": {"threshold": 0.04}}, "kind": "combination"},
    "fp>ss": {"pipeline": "fp>ss", "configs": {"fp": {"threshold": 0.04}}, "kind": "combination"},
    "nc": {"pipeline": "nc", "configs": {}, "kind": "repair"},  # Neural Cleanse, unlearning repair
    "nc-prune": {"pipeline": "nc", "configs": {"nc": {"repair": "prune"}}, "kind": "repair"},
    "strip": {"pipeline": "strip", "configs": {}, "kind": "filter"},
    "nc>fp": {"pipeline": "nc>fp", "configs": {"fp": {"threshold": 0.04}}, "kind": "combination"},
    "ac>nc": {"pipeline": "ac>nc", "configs": {"ac": _AC_SIZE}, "kind": "combination"},
    "strip>fp": {"pipeline": "strip>fp", "configs": {"fp": {"threshold": 0.04}}, "kind": "combination"},
}
#: Labels of the AC analyses in tables (the paper's is said to be the paper's).
AC_ANALYSIS_LABELS = {"smaller": "size metric, paper", "silhouette-scores": "silhouette, ours",
                      "relative-size": "relative size", "distance": "distance"}
AC_DEFAULT_ANALYSIS = "silhouette-scores"
#: The layer Fine-Pruning prunes when a step does not say, per data-set family (paper, Table 5/6).
FAMILY_FP_LAYER = {"gtsrb": "last_conv", "ytaf": "second_last_conv", "lfw": "second_last_conv"}
DEFENCE_KINDS = ("clean", "attack", "filter", "repair", "combination")
KNOWN_STEPS = ("ac", "ss", "dp", "fp", "nc", "strip")
#: Steps that repair the model rather than filter the data (a bare one-step spec's kind).
REPAIR_STEPS = ("fp", "nc")
DEFAULT_FP_THRESHOLD = 0.04

# Model and training preset per data-set family, as in the paper.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "gtsrb": {"model": "gtsrb_cnn", "train": {"preset": "gtsrb"}},
    "ytaf": {"model": "deepid", "train": {"preset": "ytaf"}},
    "lfw": {"model": "vgg16_face", "train": {"preset": "lfw"}},
}

# What --quick changes when the config has no [quick] table of its own.
QUICK_DEFAULTS: dict[str, Any] = {
    "limit_per_class": 30,  # images per class and split handed to build_variant
    "epochs": 2,  # cap on training epochs (and Fine-Pruning's fine-tuning epochs)
    "max_settings": None,  # keep only the first N settings (None: all)
    "threshold_sweep": "first",
    "classes": None,  # keep only these class ids in every data set (None: all)
    "max_clean_per_class": None,  # cap on the trusted clean rows per class (None: as the data set says)
}

_TOP_KEYS = {"name", "seeds", "seed", "device", "datasets", "settings", "defences", "fp_thresholds",
             "threshold_sweep", "quick", "description", "eval_batch_size", "ss_grid"}
#: The value of an ``ss_grid`` share that stands for each setting's own poison share.
TRUE_SHARE = "true"
_DATASET_KEYS = {"source", "model", "model_kw", "train", "limit_per_class", "max_clean_per_class", "classes",
                 "weights", "toy", "note", "fp_layer"}
_SETTING_KEYS = {"id", "dataset", "preset", "recipe", "trigger", "share", "shares", "share_key", "note", "count",
                 "paper_row"}
_DEFENCE_KEYS = {"id", "pipeline", "configs", "kind", "settings", "label"}


@dataclass(frozen=True)
class DatasetSpec:
    """One data-set family of the study (e.g. ``gtsrb``) and how its models are built and trained.

    Attributes
    ----------
    name : str
        Family name used by settings (``"gtsrb"``, ``"ytaf"``, ``"lfw"`` or any other).
    source : str
        ``"synth"`` (the embedded synthetic data), ``"toy"`` (``datasets_gen.toy``, for tests) or
        an absolute folder in the official layout of the real data set.
    model : str
        Name for ``backdoorlab.models.build_model``.
    model_kw : dict
        Extra keyword arguments for ``build_model`` (``weights`` is added from :attr:`weights`).
    train : dict
        ``{"preset": name, **overrides}`` for ``backdoorlab.train.TrainConfig``.
    limit_per_class : int or None
        Cap on images per class handed to ``build_variant``.
    max_clean_per_class : int or None
        Use at most this many rows per class of the variant's trusted ``clean`` split (the first
        ones, in file order). ``limit_per_class`` caps every split alike, which makes the clean
        set as large as the training set; this restores a small trusted set as in the paper.
    classes : tuple of int or None
        Keep only these classes of every variant, relabelled 0..k-1 in this order (must include
        the target and a source class); None keeps all.
    weights : str or None
        Absolute path of pre-trained weights (VGG-Face), or None.
    toy : dict
        Keyword arguments for ``datasets_gen.toy.make_toy_variant`` when ``source == "toy"``.
    fp_layer : str
        The layer Fine-Pruning prunes in steps that do not name one (combinations, the Fig. 3
        sweep): the family's paper layer (:data:`FAMILY_FP_LAYER`) unless the file says.
    """

    name: str
    source: str
    model: str
    model_kw: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    limit_per_class: int | None = None
    max_clean_per_class: int | None = None
    classes: tuple[int, ...] | None = None
    weights: str | None = None
    toy: dict = field(default_factory=dict)
    note: str = ""
    fp_layer: str = "last_conv"


@dataclass(frozen=True)
class SettingSpec:
    """One poisoned variant: a data set, a trigger recipe and a poison share.

    ``recipe`` holds overrides applied on top of the datasets_gen preset ``preset`` (or the whole
    recipe when there is no preset); the poison share is written under ``share_key``.
    ``count`` is the exact number of poisoned rows (the paper's tables give counts): taken from
    the preset when the setting gives no share of its own, or from the setting's ``count``; a
    setting with explicit ``shares`` (a sweep) poisons by share instead. ``paper_row`` is the row
    label in the paper's tables (from the preset, or given), None when the paper has no such row.
    """

    id: str
    dataset: str
    trigger: str
    poison_share: float
    preset: str | None = None
    recipe: dict = field(default_factory=dict)
    share_key: str | None = None
    note: str = ""
    count: int | None = None
    paper_row: str | None = None


@dataclass(frozen=True)
class DefenceSpec:
    """One column of the grid: a pipeline spec (``""`` for no defence) and its step parameters."""

    id: str
    pipeline: str
    kind: str
    configs: dict = field(default_factory=dict)
    settings: tuple[str, ...] | None = None  # restrict to these setting ids (None: every setting)
    label: str = ""
    sweep: bool = False  # a point of the Fig. 3 threshold sweep (kept out of the main table)

    def applies_to(self, setting_id: str) -> bool:
        return self.settings is None or setting_id in self.settings

    @property
    def ac_analysis(self) -> str | None:
        """The analysis of this defence's AC step (None without one)."""
        if "ac" not in self.pipeline.split(">"):
            return None
        return self.configs.get("ac", {}).get("analysis", AC_DEFAULT_ANALYSIS)

    def display_label(self) -> str:
        """Human label for tables: 'AC (size metric, paper)', 'FP (last conv, 2%)', 'AC(size)→FP', ..."""
        if self.label:
            return self.label
        if self.kind == "clean":
            return "clean model"
        if self.kind == "attack":
            return "no defence"
        steps = self.pipeline.split(">")
        fp = self.configs.get("fp", {})
        layer = {"last_conv": "last conv", "second_last_conv": "2nd-last conv", None: "data set's layer"}.get(
            fp.get("layer"), str(fp.get("layer")))
        thr = fp.get("threshold")
        thr_txt = "" if thr in (None, DEFAULT_FP_THRESHOLD) else f", {_pct(thr)}"
        if steps == ["ac"]:
            label = f"AC ({AC_ANALYSIS_LABELS.get(self.ac_analysis, self.ac_analysis)})"
        elif steps == ["fp"]:
            label = f"FP ({layer}{thr_txt})"
        else:
            short = {"smaller": "size", "silhouette-scores": "silhouette"}
            names = [f"AC({short.get(self.ac_analysis, self.ac_analysis)})" if t == "ac" else t.upper() for t in steps]
            label = "→".join(names) + (f" ({layer}{thr_txt})" if "fp" in steps and fp.get("layer") else "")
        for step, cfg in self.configs.items():
            if step == "fp":  # layer and threshold are in the label; fine-tuning details are not
                continue
            shown = {k: v for k, v in cfg.items() if not (step == "ac" and k == "analysis")}
            if shown:
                label += " [" + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) + "]"
        return label


@dataclass(frozen=True)
class StudyConfig:
    """The resolved study: every setting, defence and seed; see the module docstring for the file layout."""

    name: str
    seeds: tuple[int, ...]
    device: str
    datasets: dict[str, DatasetSpec]
    settings: tuple[SettingSpec, ...]
    defences: tuple[DefenceSpec, ...]
    quick: bool = False
    eval_batch_size: int = 256
    description: str = ""
    source_file: str | None = None

    def to_dict(self) -> dict:
        """A JSON-serialisable copy (written as ``study.json`` beside the results)."""
        return json.loads(json.dumps(asdict(self)))

    def with_seed(self, seed: int) -> "StudyConfig":
        """The same study with one seed (the CLI's ``--seed``)."""
        return replace(self, seeds=(_check_seed("seed", seed),))

    def setting(self, setting_id: str) -> SettingSpec:
        for s in self.settings:
            if s.id == setting_id:
                return s
        raise KeyError(f"unknown setting {setting_id!r}; known: {[s.id for s in self.settings]}")


# ----------------------------------------------------------------------------------------------
# loading


def load_config(path: str | Path, *, quick: bool = False) -> StudyConfig:
    """Read a study from a ``.toml``, ``.yaml`` or ``.yml`` file and validate it.

    Parameters
    ----------
    path : str or Path
        The config file. Relative paths inside it (``source``, ``weights``) are resolved against
        the file's folder.
    quick : bool
        Apply the file's ``[quick]`` table (or :data:`QUICK_DEFAULTS`) to shrink the study.

    Raises
    ------
    FileNotFoundError
        When the file does not exist.
    ValueError
        When the file cannot be parsed or a key or value is invalid (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    suffix = path.suffix.lower()
    text = path.read_bytes()
    if suffix == ".toml":
        try:
            raw = tomllib.loads(text.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot parse TOML config {path}: {exc}") from exc
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            raw = yaml.safe_load(text.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot parse YAML config {path}: {exc}") from exc
    else:
        raise ValueError(f"config file must end in .toml, .yaml or .yml, got {path.name!r}")
    if not isinstance(raw, Mapping):
        raise ValueError(f"config file {path} must hold a mapping at the top, got {type(raw).__name__}")
    return study_from_dict(raw, base_dir=path.resolve().parent, quick=quick, source_file=str(path.resolve()))


def study_from_dict(raw: Mapping[str, Any], *, base_dir: str | Path | None = None, quick: bool = False,
                    source_file: str | None = None) -> StudyConfig:
    """Validate a study mapping (as in a config file) and resolve it into a :class:`StudyConfig`.

    Parameters
    ----------
    raw : mapping
        Keys as described in the module docstring.
    base_dir : path, optional
        Folder that relative paths are resolved against (default: the current directory).
    quick : bool
        Shrink the study with ``raw["quick"]`` merged over :data:`QUICK_DEFAULTS`.
    """
    if not isinstance(raw, Mapping):
        raise TypeError(f"study config must be a mapping, got {type(raw).__name__}")
    raw = copy.deepcopy(dict(raw))
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ValueError(f"unknown top-level config key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    base = Path(base_dir) if base_dir is not None else Path.cwd()

    name = raw.get("name", "study")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"'name' must be a non-empty string, got {name!r}")

    if "seed" in raw and "seeds" in raw:
        raise ValueError("give either 'seed' or 'seeds', not both")
    seeds_raw = raw.get("seeds", [raw.get("seed", 0)])
    if isinstance(seeds_raw, int) and not isinstance(seeds_raw, bool):
        seeds_raw = [seeds_raw]
    if not isinstance(seeds_raw, Sequence) or isinstance(seeds_raw, str) or not seeds_raw:
        raise ValueError(f"'seeds' must be a non-empty list of integers, got {seeds_raw!r}")
    seeds = tuple(_check_seed("seeds[]", s) for s in seeds_raw)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"'seeds' has duplicates: {list(seeds)}")

    device = raw.get("device", "auto")
    if device not in ("auto", "cpu", "cuda") and not (isinstance(device, str) and device.startswith("cuda:")):
        raise ValueError(f"'device' must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    eval_batch_size = _check_int("eval_batch_size", raw.get("eval_batch_size", 256), minimum=1)

    quick_opts = dict(QUICK_DEFAULTS)
    if "quick" in raw:
        q = raw["quick"]
        if not isinstance(q, Mapping):
            raise ValueError(f"'quick' must be a table/mapping, got {q!r}")
        _check_keys(q, QUICK_DEFAULTS, "[quick]")
        quick_opts.update(q)

    # -- datasets
    ds_raw = raw.get("datasets")
    if not isinstance(ds_raw, Mapping) or not ds_raw:
        raise ValueError("'datasets' must be a non-empty table of data-set families (e.g. [datasets.gtsrb])")
    datasets = {str(k): _parse_dataset(str(k), v, base) for k, v in ds_raw.items()}
    if quick:
        datasets = {k: _quicken_dataset(v, quick_opts) for k, v in datasets.items()}

    # -- settings
    st_raw = raw.get("settings")
    if not isinstance(st_raw, Sequence) or isinstance(st_raw, str) or not st_raw:
        raise ValueError("'settings' must be a non-empty list of [[settings]] tables")
    settings: list[SettingSpec] = []
    origin: dict[str, str] = {}  # setting id -> "settings[i]", for messages of the whole-study check
    for i, s in enumerate(st_raw):
        parsed = _parse_setting(i, s, datasets)
        origin.update((p.id, f"settings[{i}]") for p in parsed)
        settings.extend(parsed)
    _check_unique([s.id for s in settings], "setting", hint=": give each [[settings]] entry a distinct 'id'")
    if quick and quick_opts.get("max_settings") is not None:
        n = _check_int("quick.max_settings", quick_opts["max_settings"], minimum=1)
        settings = settings[:n]

    # -- defences
    df_raw = raw.get("defences", ["none", "ac", "ss", "dp", "fp-last", "fp-second-last", "ac>fp", "fp>ac"])
    if not isinstance(df_raw, Sequence) or isinstance(df_raw, str) or not df_raw:
        raise ValueError(f"'defences' must be a non-empty list, got {df_raw!r}")
    defences = [_parse_defence(d) for d in df_raw]
    # The clean baseline and the undefended model are what every delta is measured against.
    present = {d.id for d in defences}
    for must in ("none", "clean"):
        if must not in present:
            defences.insert(0 if must == "clean" else 1, _parse_defence(must))
            present.add(must)
    thresholds = raw.get("fp_thresholds", [])
    if not isinstance(thresholds, Sequence) or isinstance(thresholds, str):
        raise ValueError(f"'fp_thresholds' must be a list of fractions, got {thresholds!r}")
    sweep = quick_opts["threshold_sweep"] if quick else raw.get("threshold_sweep", "all")
    sweep_ids = _resolve_sweep(sweep, [s.id for s in settings])
    # The Fig. 3 sweep: FP on the last conv at each threshold. A threshold that an FP defence of
    # the grid already runs on every sweep setting is not run twice (the report finds it there).
    plain_fp = {(d.configs.get("fp", {}).get("layer"), d.configs.get("fp", {}).get("threshold"))
                for d in defences if d.pipeline == "fp"
                and (d.settings is None or (sweep_ids is not None and set(sweep_ids) <= set(d.settings)))}
    # Fig. 3 prunes each data set's own layer (GTSRB the last conv, faces the second-to-last): one
    # sweep column per layer, restricted to the sweep settings whose data set prunes it.
    sweep_settings = [st for st in settings if sweep_ids is None or st.id in sweep_ids]
    by_layer: dict[str, list[str]] = {}
    for st in sweep_settings:
        by_layer.setdefault(datasets[st.dataset].fp_layer, []).append(st.id)
    for t in thresholds:
        t = _check_fraction("fp_thresholds[]", t)
        for layer, layer_settings in by_layer.items():
            short = {"last_conv": "last", "second_last_conv": "second-last"}.get(layer, layer)
            did = f"fp-{short}@{_pct(t)}"
            restrict = None if sweep_ids is None and len(by_layer) == 1 else tuple(layer_settings)
            if did in present or (layer, t) in plain_fp:
                continue
            defences.append(DefenceSpec(id=did, pipeline="fp", kind="repair",
                                        configs={"fp": {"layer": layer, "threshold": t}},
                                        settings=restrict, label=f"FP ({short.replace('-', ' ')} conv, {_pct(t)})",
                                        sweep=True))
            present.add(did)
    if "ss_grid" in raw:
        for d in _ss_grid(raw["ss_grid"]):
            if d.id not in present:
                defences.append(d)
                present.add(d.id)
    _check_unique([d.id for d in defences], "defence")
    if quick and quick_opts.get("epochs") is not None:
        # Fine-Pruning fine-tunes for 10 epochs by default: cap it like training.
        cap = _check_int("quick.epochs", quick_opts["epochs"], minimum=1)
        capped = []
        for d in defences:
            if "fp" in d.pipeline.split(">"):
                configs = copy.deepcopy(d.configs)
                fp = configs.setdefault("fp", {})
                fp["finetune_epochs"] = min(int(fp.get("finetune_epochs", cap)), cap)
                d = replace(d, configs=configs)
            capped.append(d)
        defences = capped
    known_settings = {s.id for s in settings}
    for d in defences:
        if d.settings is not None:
            missing = [s for s in d.settings if s not in known_settings]
            if missing and not quick:  # quick mode may have cut those settings away
                raise ValueError(f"defence {d.id!r} names unknown setting(s) {missing}; known: {sorted(known_settings)}")
    _check_study(datasets, settings, origin)

    return StudyConfig(name=name, seeds=seeds, device=device, datasets=datasets, settings=tuple(settings),
                       defences=tuple(defences), quick=quick, eval_batch_size=eval_batch_size,
                       description=str(raw.get("description", "")), source_file=source_file)


# ----------------------------------------------------------------------------------------------
# pieces


def _parse_dataset(name: str, v: Any, base: Path) -> DatasetSpec:
    if not isinstance(v, Mapping):
        raise ValueError(f"datasets.{name} must be a table, got {v!r}")
    _check_keys(v, _DATASET_KEYS, f"datasets.{name}")
    family = FAMILY_DEFAULTS.get(name, {})
    source = v.get("source", "synth")
    if not isinstance(source, str) or not source:
        raise ValueError(f"datasets.{name}.source must be 'synth', 'toy' or a folder path, got {source!r}")
    if source not in ("synth", "toy"):
        p = Path(source).expanduser()
        p = p if p.is_absolute() else (base / p)
        p = p.resolve()
        if not p.is_dir():
            raise FileNotFoundError(f"datasets.{name}.source folder not found: {p} (from {source!r})")
        source = str(p)
    model = v.get("model", family.get("model"))
    if not isinstance(model, str) or not model:
        raise ValueError(f"datasets.{name}.model must name a model (e.g. 'gtsrb_cnn'), got {model!r}")
    model_kw = v.get("model_kw", {})
    if not isinstance(model_kw, Mapping):
        raise ValueError(f"datasets.{name}.model_kw must be a table, got {model_kw!r}")
    train = v.get("train", family.get("train", {}))
    if isinstance(train, str):
        train = {"preset": train}
    if not isinstance(train, Mapping):
        raise ValueError(f"datasets.{name}.train must be a preset name or a table, got {train!r}")
    train = dict(train)
    if "epochs" in train:
        _check_int(f"datasets.{name}.train.epochs", train["epochs"], minimum=1)
    limit = v.get("limit_per_class")
    if limit is not None:
        limit = _check_int(f"datasets.{name}.limit_per_class", limit, minimum=1)
    max_clean = v.get("max_clean_per_class")
    if max_clean is not None:
        max_clean = _check_int(f"datasets.{name}.max_clean_per_class", max_clean, minimum=1)
    classes = v.get("classes")
    if classes is not None:
        if isinstance(classes, str) or not isinstance(classes, Sequence) or len(classes) < 2:
            raise ValueError(f"datasets.{name}.classes must be a list of at least two class ids, got {classes!r}")
        classes = tuple(_check_int(f"datasets.{name}.classes[]", c, minimum=0) for c in classes)
        if len(set(classes)) != len(classes):
            raise ValueError(f"datasets.{name}.classes has duplicates: {list(classes)}")
    weights = v.get("weights")
    if weights is not None:
        if not isinstance(weights, str) or not weights:
            raise ValueError(f"datasets.{name}.weights must be a file path, got {weights!r}")
        w = Path(weights).expanduser()
        w = (w if w.is_absolute() else base / w).resolve()
        if not w.is_file():
            raise FileNotFoundError(f"datasets.{name}.weights file not found: {w} (from {weights!r})")
        weights = str(w)
    toy = v.get("toy", {})
    if not isinstance(toy, Mapping):
        raise ValueError(f"datasets.{name}.toy must be a table, got {toy!r}")
    fp_layer = v.get("fp_layer", FAMILY_FP_LAYER.get(name, "last_conv"))
    if not isinstance(fp_layer, str) or not fp_layer:
        raise ValueError(f"datasets.{name}.fp_layer must name a layer (e.g. 'last_conv'), got {fp_layer!r}")
    return DatasetSpec(name=name, source=source, model=model, model_kw=dict(model_kw), train=train,
                       limit_per_class=limit, max_clean_per_class=max_clean, classes=classes, weights=weights,
                       toy=dict(toy), note=str(v.get("note", "")), fp_layer=fp_layer)


def _quicken_dataset(d: DatasetSpec, q: Mapping[str, Any]) -> DatasetSpec:
    train = dict(d.train)
    if q.get("epochs") is not None:
        cap = _check_int("quick.epochs", q["epochs"], minimum=1)
        train["epochs"] = min(int(train.get("epochs", cap)), cap)
    limit = d.limit_per_class
    if q.get("limit_per_class") is not None:
        cap = _check_int("quick.limit_per_class", q["limit_per_class"], minimum=1)
        limit = cap if limit is None else min(limit, cap)
    classes = d.classes
    if q.get("classes") is not None and classes is None:
        classes = _parse_dataset(d.name, {"classes": q["classes"]}, Path.cwd()).classes
    max_clean = d.max_clean_per_class
    if q.get("max_clean_per_class") is not None:
        cap = _check_int("quick.max_clean_per_class", q["max_clean_per_class"], minimum=1)
        max_clean = cap if max_clean is None else min(max_clean, cap)
    return replace(d, train=train, limit_per_class=limit, classes=classes, max_clean_per_class=max_clean)


def _parse_setting(i: int, s: Any, datasets: Mapping[str, DatasetSpec]) -> list[SettingSpec]:
    where = f"settings[{i}]"
    if not isinstance(s, Mapping):
        raise ValueError(f"{where} must be a table, got {s!r}")
    _check_keys(s, _SETTING_KEYS, where)
    preset = s.get("preset")
    recipe = s.get("recipe", {})
    if preset is None and not recipe:
        raise ValueError(f"{where} needs a datasets_gen 'preset' or a 'recipe'")
    if preset is not None and (not isinstance(preset, str) or not preset):
        raise ValueError(f"{where}.preset must be a preset name, got {preset!r}")
    if not isinstance(recipe, Mapping):
        raise ValueError(f"{where}.recipe must be a table, got {recipe!r}")
    dataset = s.get("dataset")
    if dataset is None and preset:
        dataset = preset.split("-", 1)[0]
    if dataset not in datasets:
        raise ValueError(f"{where}.dataset {dataset!r} is not one of the [datasets] tables {sorted(datasets)}")
    if "share" in s and "shares" in s:
        raise ValueError(f"{where}: give 'share' or 'shares', not both")
    preset_recipe = _preset_recipe(preset) if preset else {}
    count = s.get("count")
    if count is not None:
        count = _check_int(f"{where}.count", count, minimum=1)
    shares = s.get("shares", [s["share"]] if "share" in s else None)
    if shares is None and "share" in preset_recipe:
        # no share of its own: the preset's setting as it stands (the paper's rows: with its count)
        shares = [preset_recipe["share"]]
        if count is None and preset_recipe.get("count") is not None:
            count = int(preset_recipe["count"])
    if shares is None:
        raise ValueError(f"{where} needs 'share' or 'shares' (poison share(s) in (0, 1])")
    if not isinstance(shares, Sequence) or isinstance(shares, str) or not shares:
        raise ValueError(f"{where}.shares must be a non-empty list, got {shares!r}")
    if count is not None and len(shares) != 1:
        raise ValueError(f"{where}: 'count' fixes one poisoned count; give at most one share beside it")
    shares = [_check_fraction(f"{where}.shares[]", x) for x in shares]
    # The paper's row applies only while the setting is the preset's own (same count, or same
    # share where the preset has no count); a sweep point of another share is ours.
    as_preset = (count == preset_recipe.get("count") if preset_recipe.get("count") is not None
                 else len(shares) == 1 and shares[0] == preset_recipe.get("share"))
    paper_row = s.get("paper_row", preset_recipe.get("extra", {}).get("paper_row") if as_preset else None)
    if paper_row is not None and (not isinstance(paper_row, str) or not paper_row):
        raise ValueError(f"{where}.paper_row must be the row label of the paper's tables, got {paper_row!r}")
    trigger = s.get("trigger", preset or "trigger")
    if not isinstance(trigger, str) or not trigger:
        raise ValueError(f"{where}.trigger must be a label string, got {trigger!r}")
    base_id = s.get("id", preset or f"{dataset}-{trigger}".replace(" ", "-"))
    share_key = s.get("share_key")
    out = []
    for x in shares:
        sid = base_id if (len(shares) == 1 and "id" in s) else f"{base_id}@{_pct(x)}"
        out.append(SettingSpec(id=sid, dataset=dataset, trigger=trigger, poison_share=x, preset=preset,
                               recipe=dict(recipe), share_key=share_key, note=str(s.get("note", "")),
                               count=count, paper_row=paper_row))
    return out


def _preset_recipe(preset: str) -> dict:
    """The datasets_gen preset ``preset`` (a copy; empty for a name it does not know, which the
    toy source of the tests accepts and the variant build refuses with the known names)."""
    return copy.deepcopy(PRESETS.get(preset, {}))


def _parse_defence(d: Any) -> DefenceSpec:
    if isinstance(d, str):
        if d in DEFENCE_CATALOG:
            e = DEFENCE_CATALOG[d]
            return DefenceSpec(id=d, pipeline=e["pipeline"], kind=e["kind"], configs=copy.deepcopy(e["configs"]))
        # a bare pipeline spec such as "ac>ss>fp"
        steps = _check_pipeline(d, where=f"defence {d!r}")
        kind = "combination" if len(steps) > 1 else ("repair" if steps[0] in REPAIR_STEPS else "filter")
        configs = {"fp": {"layer": "last_conv", "threshold": DEFAULT_FP_THRESHOLD}} if "fp" in steps else {}
        return DefenceSpec(id=d, pipeline=d, kind=kind, configs=configs)
    if not isinstance(d, Mapping):
        raise ValueError(f"a defence must be a name or a table, got {d!r}")
    _check_keys(d, _DEFENCE_KEYS, f"defence {d!r}")
    did = d.get("id")
    if not isinstance(did, str) or not did:
        raise ValueError(f"a defence table needs an 'id' string, got {d!r}")
    pipeline = d.get("pipeline", did)
    steps = _check_pipeline(pipeline, where=f"defence {did!r}") if pipeline else []
    kind = d.get("kind") or ("attack" if not steps else "combination" if len(steps) > 1
                             else "repair" if steps[0] in REPAIR_STEPS else "filter")
    if kind not in DEFENCE_KINDS:
        raise ValueError(f"defence {did!r}: kind must be one of {DEFENCE_KINDS}, got {kind!r}")
    configs = d.get("configs", {})
    if not isinstance(configs, Mapping) or not all(isinstance(v, Mapping) for v in configs.values()):
        raise ValueError(f"defence {did!r}: configs must map step names to tables, got {configs!r}")
    unknown_steps = set(configs) - set(steps)
    if unknown_steps:
        raise ValueError(f"defence {did!r}: configs for step(s) {sorted(unknown_steps)} not in pipeline {pipeline!r}")
    settings = d.get("settings")
    if settings is not None:
        if isinstance(settings, str) or not isinstance(settings, Sequence):
            raise ValueError(f"defence {did!r}: settings must be a list of setting ids, got {settings!r}")
        settings = tuple(str(x) for x in settings)
    return DefenceSpec(id=did, pipeline=pipeline, kind=kind, configs=copy.deepcopy(dict(configs)),
                       settings=settings, label=str(d.get("label", "")))


def _ss_grid(grid: Any) -> list[DefenceSpec]:
    """Spectral Signatures over the paper's grid: every expected poison share (``"true"`` = each
    setting's own share, resolved when the cell is planned) × every multiplier of the removal."""
    if not isinstance(grid, Mapping):
        raise ValueError(f"'ss_grid' must be a table of expected_poison_share = [...], eps_multiplier = [...], "
                         f"got {grid!r}")
    _check_keys(grid, ("expected_poison_share", "eps_multiplier", "retrain"), "ss_grid")
    shares, mults = grid.get("expected_poison_share"), grid.get("eps_multiplier", [1.5])
    for name, values in (("expected_poison_share", shares), ("eps_multiplier", mults)):
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"ss_grid.{name} must be a non-empty list, got {values!r}")
    shares = [x if x == TRUE_SHARE else _check_fraction("ss_grid.expected_poison_share[]", x) for x in shares]
    for m in mults:
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m <= 0:
            raise ValueError(f"ss_grid.eps_multiplier[] must be positive numbers, got {m!r}")
    extra = {}
    if "retrain" in grid:
        extra["retrain"] = grid["retrain"]
    out = []
    for share in shares:
        for m in mults:
            shown = "true share" if share == TRUE_SHARE else f"expected {_pct(share)}"
            did = f"ss@{'true' if share == TRUE_SHARE else _pct(share)}x{m:g}"
            out.append(DefenceSpec(id=did, pipeline="ss", kind="filter",
                                   configs={"ss": {"expected_poison_share": share, "eps_multiplier": float(m), **extra}},
                                   label=f"SS ({shown}, ×{m:g})"))
    return out


def _check_pipeline(spec: Any, *, where: str) -> list[str]:
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{where}: pipeline must be a spec such as 'ac>fp', got {spec!r}")
    steps = [p.strip() for p in spec.lower().split(">")]
    bad = [p for p in steps if p not in KNOWN_STEPS]
    if bad:
        raise ValueError(f"{where}: unknown defence step(s) {bad} in {spec!r}; known: {list(KNOWN_STEPS)} "
                         f"or a name from {sorted(DEFENCE_CATALOG)}")
    return steps


def _resolve_sweep(sweep: Any, setting_ids: list[str]) -> tuple[str, ...] | None:
    if sweep == "all":
        return None
    if sweep == "first":
        return tuple(setting_ids[:1])
    if isinstance(sweep, Sequence) and not isinstance(sweep, str):
        return tuple(str(x) for x in sweep)
    raise ValueError(f"'threshold_sweep' must be 'all', 'first' or a list of setting ids, got {sweep!r}")


def _check_keys(table: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse keys of ``table`` not in ``allowed`` (a typo must not be silently ignored), naming
    them, ``where`` the table is and the keys it takes."""
    bad = set(table) - set(allowed)
    if bad:
        raise ValueError(f"unknown key(s) {sorted(bad)} in {where}; allowed: {sorted(allowed)}")


def _check_unique(ids: Sequence[str], what: str, *, hint: str = "") -> None:
    """Refuse ids given twice, naming them (sorted) and ``what`` they identify."""
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"duplicate {what} id(s) {dup}{hint}")


def _check_int(name: str, v: Any, *, minimum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def _check_fraction(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or not 0.0 < float(v) <= 1.0:
        raise ValueError(f"{name} must be a fraction in (0, 1], got {v!r}")
    return float(v)


def _check_seed(name: str, v: Any) -> int:
    from backdoorlab.seeding import check_seed  # the one home of the seed range

    try:
        return check_seed(v, name)
    except TypeError as exc:  # config mistakes are ValueErrors here, whatever their kind
        raise ValueError(str(exc)) from None


def _check_study(datasets: Mapping[str, DatasetSpec], settings: Sequence[SettingSpec],
                 origin: Mapping[str, str]) -> None:
    """The whole-study check: what the run will build, tried without building it.

    Parsing checks each key on its own; a run also needs the keys to fit together (a training
    preset with its overrides, a model that exists and takes the data set's image size, class ids
    of the data set, a trigger that fits its images). Without this step such a mistake surfaces
    in every cell after the variants are built ("every cell failed"); here it stops the study
    before any work, naming the key. Data sets are checked after ``--quick`` shrank them (its
    epoch cap, say, can make ``average_last`` too long).
    """
    for d in datasets.values():
        _check_dataset_build(d)
    synth: dict[str, Any] = {}  # family -> opened synthetic source (cheap, but once is enough)
    for s in settings:
        _check_setting_data(s, datasets[s.dataset], origin.get(s.id, f"setting {s.id!r}"), synth)


def _check_dataset_build(d: DatasetSpec) -> None:
    """Model name and keyword arguments, and the training config, of data set ``d``."""
    from backdoorlab.models import MODELS
    from backdoorlab.train import TrainConfig

    if d.model not in MODELS:
        raise ValueError(f"datasets.{d.name}.model must be one of {sorted(MODELS)}, got {d.model!r}")
    kw = dict(d.model_kw, **({"weights": d.weights} if d.weights else {}))
    try:  # the constructor's own signature says which options a model takes (n_classes is positional)
        inspect.signature(MODELS[d.model]).bind(2, **kw)
    except TypeError as exc:
        raise ValueError(f"datasets.{d.name}.model_kw (or weights): {d.model} does not take them: {exc}") from None
    TrainConfig.from_spec(d.train, where=f"datasets.{d.name}.train")


def _check_setting_data(s: SettingSpec, d: DatasetSpec, where: str, synth: dict[str, Any]) -> None:
    """Recipe, class ids, trigger size and model input size of setting ``s`` on data set ``d``.

    The class count is known for the synthetic and toy data (from their generators); for a real
    folder it is known only after scanning it, so there the ids are checked to be >= 0 and, with
    ``classes``, to be among the kept classes.
    """
    from backdoorlab.models import MODELS

    from .variants import setting_recipe, toy_arguments

    n_classes: int | None = None
    hw: tuple[int, int] | None = None
    try:
        if d.source == "toy":
            toy = check_toy_arguments(**toy_arguments(s, d))
            n_classes, hw = toy["n_classes"], toy["image_size"]
            sources: list[int] | str = [toy["source_class"]]
            target = toy["target_class"]
        else:
            if s.preset is not None and s.preset not in PRESETS:
                raise ValueError(f"preset {s.preset!r} is not a datasets_gen preset; known: {sorted(PRESETS)}")
            recipe, family = resolve_recipe(setting_recipe(s))
            if d.source == "synth":
                if family is None:
                    raise ValueError(f"source 'synth' needs the recipe's 'dataset' (one of {sorted(DATASETS)})")
                if family not in synth:
                    synth[family] = resolve_source("synth", family, seed=0, strict=False, image_size=None,
                                                   source_kwargs=None)[0]
                n_classes, hw = synth[family].n_classes, tuple(synth[family].image_size)
            elif family in DATASETS:  # a real folder is resized to its family's model input
                hw = tuple(DATASETS[family]["reader_kwargs"]["image_size"])
            sources, target = recipe.source_classes, recipe.target_class
            for key, ids in (("target_class", [target]), ("source_classes", [] if sources == "all" else sources)):
                bad = [c for c in ids if c < 0 or (n_classes is not None and c >= n_classes)]
                if bad:
                    known = f"classes 0..{n_classes - 1}" if n_classes is not None else "class ids are >= 0"
                    raise ValueError(f"{key} {bad[0] if key == 'target_class' else bad} is not a class of "
                                     f"datasets.{d.name} ({known})")
            if hw is not None:
                recipe.build_trigger().check_fits(hw)
    except (KeyError, TypeError, ValueError) as exc:  # datasets_gen names recipe keys in KeyErrors
        # toy arguments come from the data set's toy table and the setting's recipe together
        label = f"datasets.{d.name}.toy / {where}.recipe" if d.source == "toy" else where
        raise ValueError(f"{label}: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}") from None
    model_hw = tuple(MODELS[d.model].input_size)
    if hw is not None and tuple(hw) != model_hw:
        raise ValueError(f"{where}: datasets.{d.name}.model {d.model} takes {model_hw[0]}x{model_hw[1]} "
                         f"images, but the data set's are {hw[0]}x{hw[1]}")
    if d.classes is not None:
        if n_classes is not None and any(c >= n_classes for c in d.classes):
            raise ValueError(f"datasets.{d.name}.classes {[c for c in d.classes if c >= n_classes]} are not "
                             f"classes of the data (0..{n_classes - 1})")
        if target not in d.classes:
            raise ValueError(f"datasets.{d.name}.classes {list(d.classes)} must include the target class {target} "
                             f"of {where} ({s.id!r})")
        if sources != "all" and not set(sources) & set(d.classes):
            raise ValueError(f"datasets.{d.name}.classes {list(d.classes)} must include a source class "
                             f"(one of {list(sources)}) of {where} ({s.id!r})")


def _pct(x: float) -> str:
    """0.07 -> '7%', 0.025 -> '2.5%' (used in ids, so stable and short)."""
    return f"{round(x * 100, 4):g}%"
