"""Tests of defence pipelines (``Pipeline("ac>fp")``), their reports and the ``backdoorlab defend`` CLI.

A backdoored TinyNet is trained once per module on the toy variant; pipelines retrain with the
same tiny recipe, so a two-step pipeline runs in a few seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from _defence_helpers import TinyNet, fresh, make_context, make_variant, single_thread
from backdoorlab.defences import ALIASES, DEFENCES, FinePruning, Pipeline, make_defence
from backdoorlab.defences.pipeline import parse_spec


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    return make_variant(tmp_path_factory.mktemp("toy") / "toy.h5", n_clean_per_class=30)


@pytest.fixture(scope="module")
def ctx(variant):
    with single_thread():
        return make_context(variant)


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def test_parse_spec_and_registry():
    assert parse_spec("ac>fp") == ["ac", "fp"]
    assert parse_spec(" AC > ss > fp ") == ["ac", "ss", "fp"]
    assert parse_spec("none") == [] and parse_spec("") == []
    assert set(DEFENCES) == {"ac", "ss", "dp", "fp", "nc", "strip"}
    assert make_defence("fp-second").layer == "second_last_conv"
    assert make_defence("fp-last", {"fp": {"threshold": 0.02}}).threshold == 0.02
    # the alias's own table wins over the name's
    assert make_defence("fp-second", {"fp": {"layer": "x"}, "fp-second": {"threshold": 0.06}}).layer == "second_last_conv"
    assert make_defence("ss-art").removal_share == pytest.approx(0.495)
    assert all(name in DEFENCES for name, _ in ALIASES.values())


@pytest.mark.parametrize("spec, configs, match", [
    ("ac>xx", None, "unknown defence 'xx'"),
    ("ac>>fp", None, "unknown defence ''"),
    ("fp", {"fp": {"threshold": 1.5}}, "threshold must be inside"),
    ("fp", {"ac": {"analysis": "smaller"}}, "configs given for \\['ac'\\]"),
    ("fp", {"fp": {"thresold": 0.02}}, "unexpected keyword"),
])
def test_bad_pipelines_fail_before_any_work(spec, configs, match):
    with pytest.raises(ValueError, match=match):
        Pipeline(spec, configs)


def _run(ctx, spec, configs=None):
    return Pipeline(spec, configs).run(fresh(ctx), progress=False)


@pytest.fixture(scope="module")
def ac_fp(ctx):
    with single_thread():
        return _run(ctx, "ac>fp", {"fp": {"finetune_epochs": 3}})


def test_pipeline_runs_steps_in_order_and_reports_each(ctx, ac_fp):
    rep = ac_fp
    assert [s.defence for s in rep.steps] == ["ac", "fp"]
    assert [r.name for r in rep.results] == ["ac", "fp"]
    assert rep.initial["attack_success_rate"] > 0.9
    for s in rep.steps:
        assert 0.0 <= s.clean_accuracy <= 1.0 and 0.0 <= s.attack_success_rate <= 1.0
    ac_step, fp_step = rep.steps
    assert ac_step.removal is not None and ac_step.pruning is None
    assert fp_step.removal is None and fp_step.pruning.label.endswith("/32")
    # FP ran on what AC returned: the training set AC kept
    assert len(rep.context.train) == len(ctx.train) - ac_step.removal.removed_poisoned - ac_step.removal.removed_clean
    assert fp_step.cumulative == ac_step.cumulative
    # the backdoor is gone after AC retrained on the filtered set
    assert ac_step.attack_success_rate < 0.3
    table = rep.table()
    assert [row["step"] for row in table] == [0, 1, 2] and table[0]["defence"] == "none"
    json.dumps(rep.to_dict())  # JSON-ready
    assert "| 2 | fp |" in rep.to_markdown()


def test_reversed_pipeline_runs_in_the_other_order(ctx, ac_fp):
    rep = _run(ctx, "fp>ac", {"fp": {"finetune_epochs": 3}})
    assert [s.defence for s in rep.steps] == ["fp", "ac"]
    # FP first: the training set is untouched until AC
    assert rep.steps[0].cumulative.n_train == len(ctx.train)
    assert rep.steps[1].cumulative.n_train < len(ctx.train)
    # AC worked on the pruned model, and the pruning survived AC's retraining
    assert rep.context.model.pruned_channels("last_conv").size == rep.results[0].pruned_channels.size


def test_three_step_pipeline_cumulates_removals(ctx):
    rep = _run(ctx, "ac>ss>fp", {"fp": {"finetune_epochs": 1}, "ss": {"retrain": "none"}})
    assert [s.defence for s in rep.steps] == ["ac", "ss", "fp"]
    ac_s, ss_s = (s.removal for s in rep.steps[:2])
    cum = rep.steps[1].cumulative
    assert cum.removed_poisoned == ac_s.removed_poisoned + ss_s.removed_poisoned
    assert cum.removed_clean == ac_s.removed_clean + ss_s.removed_clean
    # SS's flags refer to the rows AC kept
    assert rep.results[1].flags.shape == (len(ctx.train) - ac_s.removed_poisoned - ac_s.removed_clean,)


def test_empty_pipeline_only_measures(ctx):
    rep = _run(ctx, "none")
    assert rep.steps == [] and rep.final == {k: rep.initial[k] for k in ("clean_accuracy", "attack_success_rate")}


def test_defend_cli_writes_checkpoint_and_report(variant, ctx, tmp_path, monkeypatch):
    from backdoorlab import checkpoint
    from backdoorlab.cli import main
    from backdoorlab.models import MODELS

    monkeypatch.setitem(MODELS, TinyNet.arch, TinyNet)
    model_path = tmp_path / "model.pt"
    checkpoint.save(model_path, fresh(ctx).model, {"config": ctx.train_config.to_dict(), "seed": 1})
    out, report = tmp_path / "defended.pt", tmp_path / "report.json"
    rc = main(["defend", "--data", str(variant), "--model", str(model_path), "--pipeline", "fp",
               "--out", str(out), "--report", str(report), "--set", "fp.finetune_epochs=2",
               "--set", "fp.threshold=0.02", "--seed", "1", "--device", "cpu", "--no-progress"])
    assert rc == 0
    data = json.loads(report.read_text())
    assert data["spec"] == "fp" and data["seed"] == 1
    assert data["steps"][0]["report"]["threshold"] == 0.02
    assert data["train_config"]["lr"] == ctx.train_config.lr  # the recipe recorded in the checkpoint
    defended, meta = checkpoint.load(out)
    assert meta["pipeline"] == "fp"
    assert defended.pruned_channels("last_conv").size == data["steps"][0]["report"]["neurons_pruned"]
    assert not list(tmp_path.glob("*.tmp"))


def test_defend_cli_errors_are_one_line(variant, tmp_path, capsys):
    from backdoorlab.cli import main

    rc = main(["defend", "--data", str(variant), "--model", str(tmp_path / "missing.pt"), "--pipeline", "ac>zz",
               "--report", str(tmp_path / "r.json")])
    assert rc == 2
    assert "unknown defence 'zz'" in capsys.readouterr().err
    rc = main(["defend", "--data", str(variant), "--model", str(tmp_path / "missing.pt"), "--pipeline", "fp",
               "--report", str(tmp_path / "r.json")])
    assert rc == 2
    assert "checkpoint not found" in capsys.readouterr().err
    rc = main(["defend", "--data", str(variant), "--model", "m.pt", "--set", "threshold=0.1", "--report", "r.json"])
    assert rc == 2
    assert "NAME.PARAM=VALUE" in capsys.readouterr().err


def test_fp_alias_in_pipeline_prunes_the_second_last_conv(ctx):
    rep = _run(ctx, "fp-second", {"fp-second": {"finetune_epochs": 1}})
    assert rep.steps[0].report["layer_name"] == "conv1"
    assert isinstance(rep.config["fp-second"], dict) and rep.config["fp-second"]["layer"] == "second_last_conv"
    assert isinstance(FinePruning().config(), dict)
    assert np.all(np.isfinite([rep.final["clean_accuracy"]]))
