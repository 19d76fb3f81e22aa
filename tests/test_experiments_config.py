"""Study configuration (TOML/YAML, validation, quick mode), the cell cache and the cell plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backdoorlab.experiments.cache import CACHE_SCHEMA, CellCache, canonical_json, config_key
from backdoorlab.experiments.config import load_config, study_from_dict
from backdoorlab.experiments.runner import plan_cells
from datasets_gen.atomic import atomic_write_json

REPO = Path(__file__).resolve().parents[1]

TOML = """
name = "t"
seeds = [0, 1]
defences = ["none", "ac", "fp-last", "ac>fp", "fp>ac"]
fp_thresholds = [0.02, 0.04, 0.06]
threshold_sweep = "first"

[datasets.gtsrb]
source = "data"
train = { preset = "gtsrb", epochs = 3 }

[[settings]]
dataset = "gtsrb"
preset = "gtsrb-ours-yellow-square-7"
trigger = "yellow square"
shares = [0.03, 0.07]

[quick]
limit_per_class = 5
epochs = 1
max_settings = 1
"""


def _minimal(**over):
    d = {"datasets": {"gtsrb": {"source": "synth"}},
         "settings": [{"preset": "gtsrb-ours-yellow-square-7", "share": 0.07}]}
    d.update(over)
    return d


def test_toml_resolves_relative_paths_against_the_file(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "data").mkdir()
    cfg = tmp_path / "conf" / "study.toml"
    cfg.write_text(TOML)
    monkeypatch.chdir(tmp_path)  # a different working directory must not matter
    study = load_config(cfg)
    assert study.datasets["gtsrb"].source == str((tmp_path / "conf" / "data").resolve())
    assert study.datasets["gtsrb"].model == "gtsrb_cnn"  # family default
    assert study.datasets["gtsrb"].train == {"preset": "gtsrb", "epochs": 3}
    assert [s.id for s in study.settings] == ["gtsrb-ours-yellow-square-7@3%", "gtsrb-ours-yellow-square-7@7%"]
    ids = [d.id for d in study.defences]
    assert ids[:2] == ["clean", "none"]  # the baselines are always there
    # 4 % is FP's default, already run by fp-last on every setting: not duplicated
    assert "fp-last@2%" in ids and "fp-last@6%" in ids and "fp-last@4%" not in ids
    sweep = next(d for d in study.defences if d.id == "fp-last@2%")
    assert sweep.settings == ("gtsrb-ours-yellow-square-7@3%",)
    assert sweep.configs == {"fp": {"layer": "last_conv", "threshold": 0.02}}


def test_yaml_gives_the_same_study_as_toml(tmp_path):
    import tomllib

    import yaml

    (tmp_path / "data").mkdir()
    (tmp_path / "s.toml").write_text(TOML)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(tomllib.loads(TOML)))
    a, b = load_config(tmp_path / "s.toml"), load_config(tmp_path / "s.yaml")
    assert a.to_dict() | {"source_file": None} == b.to_dict() | {"source_file": None}


def test_quick_shrinks_data_epochs_settings_and_finetuning(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "s.toml").write_text(TOML)
    q = load_config(tmp_path / "s.toml", quick=True)
    assert q.quick and len(q.settings) == 1
    assert q.datasets["gtsrb"].limit_per_class == 5 and q.datasets["gtsrb"].train["epochs"] == 1
    for d in q.defences:
        if "fp" in d.configs:
            assert d.configs["fp"]["finetune_epochs"] == 1


def test_example_config_for_real_gtsrb_loads():
    path = REPO / "configs" / "gtsrb-real.toml"
    if not (REPO.parent / "shared" / "data" / "gtsrb-32").is_dir():
        pytest.skip("the real GTSRB subset is not beside the repository")
    study = load_config(path)
    assert Path(study.datasets["gtsrb"].source).name == "gtsrb-32"
    assert study.settings and all(s.dataset == "gtsrb" for s in study.settings)
    quick = load_config(path, quick=True)
    assert len(quick.settings) == 1 and quick.datasets["gtsrb"].classes is not None
    assert 8 in quick.datasets["gtsrb"].classes and 14 in quick.datasets["gtsrb"].classes  # source and target
    assert quick.datasets["gtsrb"].max_clean_per_class == 10


def test_quick_table_may_cut_classes_and_clean_rows():
    raw = _minimal(quick={"classes": [8, 14, 1], "max_clean_per_class": 5})
    q = study_from_dict(raw, quick=True)
    assert q.datasets["gtsrb"].classes == (8, 14, 1) and q.datasets["gtsrb"].max_clean_per_class == 5
    assert study_from_dict(raw).datasets["gtsrb"].classes is None  # only with --quick
    with pytest.raises(ValueError, match="duplicates"):
        study_from_dict(_minimal(quick={"classes": [8, 8]}), quick=True)


@pytest.mark.parametrize("raw,match", [
    (_minimal(bogus=1), "unknown top-level config key"),
    (_minimal(seeds=[0, 0]), "duplicates"),
    (_minimal(seeds=[-1]), "seeds\\[\\] must be in \\[0, 2\\*\\*64 - 1\\]"),
    (_minimal(device="tpu"), "'device' must be"),
    (_minimal(datasets={}), "non-empty table"),
    (_minimal(datasets={"gtsrb": {"source": "synth", "colour": 1}}), "unknown key\\(s\\) \\['colour'\\]"),
    (_minimal(settings=[{"preset": "gtsrb-p", "share": 1.5}]), "fraction in \\(0, 1\\]"),
    (_minimal(settings=[{"preset": "gtsrb-p", "share": 0}]), "fraction in \\(0, 1\\]"),
    (_minimal(settings=[{"preset": "gtsrb-p"}]), "needs 'share' or 'shares'"),
    (_minimal(settings=[{"share": 0.1, "dataset": "gtsrb"}]), "needs a datasets_gen 'preset' or a 'recipe'"),
    (_minimal(settings=[{"preset": "ytaf-x", "share": 0.1}]), "is not one of the \\[datasets\\] tables"),
    (_minimal(defences=["ac>xx"]), "unknown defence step"),
    (_minimal(defences=[{"id": "a", "pipeline": "ac", "configs": {"fp": {}}}]), "not in pipeline"),
    (_minimal(fp_thresholds=[0.0]), "fraction in \\(0, 1\\]"),
    (_minimal(threshold_sweep="some"), "'threshold_sweep' must be"),
    (_minimal(settings=[{"preset": "p", "share": 0.1, "dataset": "gtsrb"},
                        {"preset": "p", "share": 0.1, "dataset": "gtsrb"}]), "duplicate setting id"),
])
def test_bad_configs_name_the_problem(raw, match):
    with pytest.raises(ValueError, match=match):
        study_from_dict(raw)


def test_missing_paths_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="source folder not found"):
        study_from_dict(_minimal(datasets={"gtsrb": {"source": "no/such/dir"}}), base_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        study_from_dict(_minimal(datasets={"gtsrb": {"source": "synth", "weights": "w.pth"}}), base_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("name = [")
    with pytest.raises(ValueError, match="cannot parse TOML"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="must end in .toml, .yaml or .yml"):
        load_config(tmp_path / "x.json")


# -- cache


def test_config_key_is_stable_and_sensitive():
    a = {"x": 1, "y": [1, 2], "z": {"b": 0.07, "a": "s"}}
    b = {"z": {"a": "s", "b": 0.07}, "y": [1, 2], "x": 1}
    assert config_key(a) == config_key(b)  # key order does not matter
    assert config_key(a) != config_key({**a, "x": 2})
    assert config_key(a) != config_key({**a, "z": {"a": "s", "b": 0.0700001}})
    assert len(config_key(a)) == 16
    with pytest.raises(ValueError, match="cannot be hashed"):
        canonical_json({"x": float("nan")})


def test_cell_cache_round_trip_and_bad_files(tmp_path):
    cache = CellCache(tmp_path)
    key = config_key({"a": 1})
    assert cache.get(key) is None
    cache.put(key, {"v": 1.5})
    assert cache.get(key) == {"v": 1.5, "key": key, "schema": CACHE_SCHEMA}
    assert list(cache.keys()) == [key]
    assert not list(tmp_path.rglob("*.tmp"))
    cache.path(key).write_text("{ truncated")  # an interrupted foreign write: recomputed, not trusted
    assert cache.get(key) is None
    cache.path(key).write_text(json.dumps({"key": key, "schema": "backdoorlab.cell/0"}))
    assert cache.get(key) is None  # old schema
    with pytest.raises(ValueError, match="cells must hold finite numbers"):
        cache.put(key, {"acc": float("inf")})
    with pytest.raises(ValueError, match="hex digits"):
        cache.path("../../etc")


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_json(p, {"a": 1})
    with pytest.raises(ValueError):
        atomic_write_json(p, {"a": float("nan")})
    assert json.loads(p.read_text()) == {"a": 1}
    assert not list(tmp_path.glob("*.tmp"))


# -- plan


def test_plan_covers_the_grid_with_distinct_keys(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "s.toml").write_text(TOML)
    study = load_config(tmp_path / "s.toml")
    plans = plan_cells(study)
    # 2 settings x 2 seeds x (clean, none, ac, fp-last, ac>fp, fp>ac) + sweep (2 thresholds x 1 setting x 2 seeds)
    assert len(plans) == 2 * 2 * 6 + 2 * 2
    assert len({p.key for p in plans}) == len(plans)
    again = plan_cells(load_config(tmp_path / "s.toml"))
    assert [p.key for p in again] == [p.key for p in plans]  # same config, same keys (resume)
    one = plan_cells(study.with_seed(1))
    assert {p.key for p in one} < {p.key for p in plans}


# -- the built-in studies


def test_full_synthetic_study_covers_the_paper_grid(tmp_path, monkeypatch):
    from backdoorlab.experiments.presets import VGGFACE_ENV, full_study, quick_study

    monkeypatch.delenv(VGGFACE_ENV, raising=False)
    full = full_study()
    assert not full.quick and set(full.datasets) == {"gtsrb", "ytaf"}  # LFW needs VGG-Face weights
    assert any("LFW settings left out" in d.note for d in full.datasets.values())
    ids = {d.id for d in full.defences}
    assert {"clean", "none", "ac-size", "ac-silhouette", "ss", "dp", "fp-last", "fp-second-last", "ac>fp", "fp>ac",
            "fp-last@2%", "fp-last@6%"} <= ids
    by_id = {d.id: d for d in full.defences}
    # the paper's AC column is the size metric, and its combinations run AC with it
    for did in ("ac-size", "ac>fp", "fp>ac"):
        assert by_id[did].configs["ac"] == {"analysis": "smaller"}, did
    assert by_id["ac-silhouette"].configs["ac"] == {"analysis": "silhouette-scores"}
    shares = sorted(s.poison_share for s in full.settings if s.trigger == "yellow square 4x4")
    assert shares == [0.03, 0.07, 0.15, 0.33]  # Fig. 1 sweep
    sweep = next(d for d in full.defences if d.id == "fp-last@2%")
    assert sweep.sweep and set(sweep.settings) == {s.id for s in full.settings if s.id.endswith("@7%")}
    weights = tmp_path / "vgg_face_dag.pth"
    weights.write_bytes(b"not read here")
    with_lfw = full_study(vgg_face_weights=str(weights))
    assert with_lfw.datasets["lfw"].model == "vgg16_face" and with_lfw.datasets["lfw"].weights == str(weights)
    assert any(s.dataset == "lfw" for s in with_lfw.settings)

    quick = quick_study()
    assert quick.quick and len(quick.settings) == 2
    assert len(quick.seeds) >= 3  # the report states a direction only when every seed shows it
    assert quick.datasets["gtsrb"].classes and 8 in quick.datasets["gtsrb"].classes
    plans = plan_cells(quick)
    main = quick.settings[-1].id
    per_setting = {s.id: {p.defence.id for p in plans if p.setting.id == s.id} for s in quick.settings}
    assert per_setting[quick.settings[0].id] == {"clean", "none", "ac-size"}  # Figs. 1 and 2 need every share
    assert per_setting[main] >= {"ac-silhouette", "ss", "dp", "fp-last", "fp-second-last", "ac>fp", "fp>ac",
                                 "fp-last@2%", "fp-last@6%"}


def test_ss_grid_expands_to_one_column_per_share_and_multiplier():
    """The paper ran Spectral Signatures over expected share × multiplier, the true share included."""
    grid_spec = {"expected_poison_share": [0.05, "true"], "eps_multiplier": [1.0, 1.5], "retrain": "none"}
    study = study_from_dict(_minimal(ss_grid=grid_spec))
    grid = [d for d in study.defences if d.id.startswith("ss@")]
    assert [d.id for d in grid] == ["ss@5%x1", "ss@5%x1.5", "ss@truex1", "ss@truex1.5"]
    assert grid[-1].display_label() == "SS (true share, ×1.5)"
    plans = [p for p in plan_cells(study) if p.defence.id == "ss@truex1.5"]
    assert len(plans) == 1 and plans[0].defence.configs["ss"] == {
        "expected_poison_share": 0.07, "eps_multiplier": 1.5, "retrain": "none"}
    for bad, match in (({"expected_poison_share": [2.0]}, "fraction"), ({"eps_multiplier": [1.5]}, "non-empty list"),
                       ({"expected_poison_share": [0.1], "eps_multiplier": [0]}, "positive"),
                       ({"expected_poison_share": [0.1], "k": 1}, "unknown key")):
        with pytest.raises(ValueError, match=match):
            study_from_dict(_minimal(ss_grid=bad))
