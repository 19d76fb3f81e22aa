"""A study config is checked as a whole when it is loaded, before any variant is built.

Regression tests for issue #16 items 6 and 7: each config below used to pass ``load_config`` and
fail only in the cells ("every cell failed") or with a message that did not name the key. Now
each fails in ``study_from_dict`` / ``load_config`` with the offending key in the message. The
helpers the check is built from (seed range, training spec, toy arguments, trigger fit) are tested
at the bottom.
"""

from __future__ import annotations

import numpy as np
import pytest

from backdoorlab.experiments.config import load_config, study_from_dict


def _study(dataset=None, setting=None, **top):
    d = {"source": "synth", **(dataset or {})}
    s = {"preset": "gtsrb-ours-yellow-square-7", "share": 0.07, **(setting or {})}
    return {"datasets": {"gtsrb": d}, "settings": [s], **top}


def _toy_study(toy=None, recipe=None, **dataset):
    return {"datasets": {"toy": {"source": "toy", "model": "gtsrb_cnn", "train": "gtsrb", "toy": toy or {}, **dataset}},
            "settings": [{"dataset": "toy", "share": 0.3, "recipe": {"trigger": "square:4:yellow", **(recipe or {})}}]}


@pytest.mark.parametrize("raw,match", [
    # training: the TrainConfig is built at load time
    (_study({"train": {"preset": "gtsrb", "batch_size": 0}}), r"datasets\.gtsrb\.train: TrainConfig\.batch_size must be"),
    (_study({"train": {"preset": "gtsrb", "lr": -1}}), r"datasets\.gtsrb\.train: TrainConfig\.lr must be"),
    (_study({"train": {"preset": "gtsrb", "lr": float("nan")}}), r"datasets\.gtsrb\.train: TrainConfig\.lr .* got nan"),
    (_study({"train": {"preset": "gtsrb", "learning_rate": 0.1}}), r"datasets\.gtsrb\.train: unknown TrainConfig field\(s\) \['learning_rate'\]"),
    (_study({"train": {"preset": "gtsrbb"}}), r"datasets\.gtsrb\.train\.preset must be one of"),
    (_study({"train": {"epochs": 2}}), r"datasets\.gtsrb\.train: TrainConfig needs \['batch_size', 'optimizer', 'lr'\]"),
    # models
    (_study({"model": "resnet50"}), r"datasets\.gtsrb\.model must be one of \['deepid', 'gtsrb_cnn', 'vgg16_face'\], got 'resnet50'"),
    (_study({"model_kw": {"depth": 3}}), r"datasets\.gtsrb\.model_kw .*unexpected keyword argument 'depth'"),
    (_study({"model": "deepid"}), r"settings\[0\]: datasets\.gtsrb\.model deepid takes 55x47 images, but the data set's are 32x32"),
    # datasets_gen presets and recipes
    (_study(setting={"preset": "gtsrb-no-such"}), r"settings\[0\]: preset 'gtsrb-no-such' is not a datasets_gen preset"),
    (_study(setting={"recipe": {"colour": "red"}}), r"settings\[0\]: unknown recipe key\(s\) \['colour'\]"),
    # class ids against the synthetic data's 43 classes
    (_study(setting={"recipe": {"target_class": 99}}), r"settings\[0\]: target_class 99 is not a class of datasets\.gtsrb \(classes 0\.\.42\)"),
    (_study(setting={"recipe": {"source_classes": [3, 43]}}), r"settings\[0\]: source_classes \[43\] is not a class"),
    (_study({"classes": [8, 14, 99]}), r"datasets\.gtsrb\.classes \[99\] are not classes of the data \(0\.\.42\)"),
    (_study({"classes": [8, 1]}), r"datasets\.gtsrb\.classes \[8, 1\] must include the target class 14"),
    (_study({"classes": [14, 1]}), r"datasets\.gtsrb\.classes \[14, 1\] must include a source class \(one of \[8\]\)"),
    # triggers against the image size
    (_study(setting={"recipe": {"trigger": "square:40:yellow"}}), r"settings\[0\]: trigger 'square:40:yellow' of 40x40 px is larger than the 32x32 image"),
    (_study(setting={"recipe": {"trigger": "square:4@xy:30:2"}}), r"settings\[0\]: trigger 'square:4@xy:30:2' at x=30, y=2 .* does not fit a 32x32 image"),
    # seeds: what every RNG consumer takes
    (_study(seeds=[2**64]), r"seeds\[\] must be in \[0, 2\*\*64 - 1\], got 18446744073709551616"),
    (_study(seeds=[2**70]), r"seeds\[\] must be in \[0, 2\*\*64 - 1\]"),
    (_study(seeds=[1.5]), r"seeds\[\] must be an integer, got 1\.5"),
    # toy data: its generator knows the class count and image size
    (_toy_study({"n_classes": "many"}), r"datasets\.toy\.toy / settings\[0\]\.recipe: n_classes must be an integer, got 'many'"),
    (_toy_study({"n_klasses": 3}), r"datasets\.toy\.toy / settings\[0\]\.recipe: .*unexpected keyword argument 'n_klasses'"),
    (_toy_study({"n_classes": 3}, {"target_class": 99}), r"datasets\.toy\.toy / settings\[0\]\.recipe: unknown class id\(s\) \[99\]"),
    (_toy_study({"n_classes": 3}, {"trigger": "square:33"}), r"larger than the 32x32 image"),
    (_toy_study({"image_size": [40, 40]}), r"gtsrb_cnn takes 32x32 images, but the data set's are 40x40"),
    (_toy_study({"n_classes": 3}, classes=[0, 2]), r"datasets\.toy\.classes \[0, 2\] must include the target class 1"),
])
def test_bad_study_fails_at_load_naming_the_key(raw, match):
    with pytest.raises(ValueError, match=match):
        study_from_dict(raw)


def test_quick_epoch_cap_is_checked_against_the_training_spec():
    # average_last=5 is fine for the preset's 40 epochs, not for --quick's 2
    raw = _study({"train": {"preset": "gtsrb-augmented", "average_last": 5}})
    assert study_from_dict(raw).datasets["gtsrb"].train["average_last"] == 5
    with pytest.raises(ValueError, match=r"datasets\.gtsrb\.train: TrainConfig\.average_last .* \[0, epochs=2\]"):
        study_from_dict(raw, quick=True)


def test_real_folder_ids_are_checked_without_scanning_it(tmp_path):
    (tmp_path / "gtsrb").mkdir()
    ok = study_from_dict(_study({"source": "gtsrb", "classes": [1, 8, 14]}), base_dir=tmp_path)
    assert ok.datasets["gtsrb"].classes == (1, 8, 14)
    with pytest.raises(ValueError, match=r"settings\[0\]: target_class -1 is not a class of datasets\.gtsrb \(class ids are >= 0\)"):
        study_from_dict(_study({"source": "gtsrb"}, {"recipe": {"target_class": -1}}), base_dir=tmp_path)
    with pytest.raises(ValueError, match=r"datasets\.gtsrb\.classes \[1, 8\] must include the target class 14"):
        study_from_dict(_study({"source": "gtsrb", "classes": [1, 8]}), base_dir=tmp_path)


def test_toml_reproducers_fail_in_load_config(tmp_path):
    base = ('[datasets.gtsrb]\nsource = "synth"\ntrain = {{ preset = "gtsrb"{train} }}\n'
            '[[settings]]\npreset = "gtsrb-ours-yellow-square-7"\nshare = 0.07\n{setting}')
    cases = [({"train": ", lr = nan", "setting": ""}, r"TrainConfig\.lr .* got nan"),
             ({"train": "", "setting": "recipe = { target_class = 99 }\n"}, r"target_class 99"),
             ({"train": ", batch_size = 0", "setting": ""}, r"batch_size")]
    for i, (fmt, match) in enumerate(cases):
        path = tmp_path / f"s{i}.toml"
        path.write_text(base.format(**fmt))
        with pytest.raises(ValueError, match=match):
            load_config(path)


def test_valid_studies_still_load():
    from backdoorlab.experiments.presets import full_study, quick_study

    assert quick_study().datasets["gtsrb"].classes is not None
    assert {s.dataset for s in full_study().settings} >= {"gtsrb", "ytaf"}
    good = study_from_dict(_toy_study({"n_classes": 3}, {"source_class": 2, "target_class": 0}))
    assert good.settings[0].recipe["target_class"] == 0


# -- the pieces


def test_check_seed_range_and_types():
    from backdoorlab.seeding import SEED_MAX, check_seed

    assert check_seed(0) == 0 and check_seed(SEED_MAX) == 2**64 - 1
    assert check_seed(np.uint64(7)) == 7 and type(check_seed(np.int32(3))) is int
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match=r"--seed must be in \[0, 2\*\*64 - 1\]"):
            check_seed(bad, "--seed")
    for bad in (True, 1.0, "3", None):
        with pytest.raises(TypeError, match="seed must be an integer"):
            check_seed(bad)


def test_train_config_from_spec():
    from backdoorlab.train import PRESETS, TrainConfig

    assert TrainConfig.from_spec("ytaf") == PRESETS["ytaf"]
    assert TrainConfig.from_spec({"preset": "gtsrb", "epochs": 3}) == PRESETS["gtsrb"].replace(epochs=3)
    full = {"epochs": 1, "batch_size": 8, "optimizer": "sgd", "lr": 0.01}
    assert TrainConfig.from_spec(full).optimizer == "sgd"
    with pytest.raises(ValueError, match=r"^here\.preset must be one of"):
        TrainConfig.from_spec({"preset": 3}, where="here")
    with pytest.raises(TypeError, match="must be a preset name or a table"):
        TrainConfig.from_spec(7)
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['bogus'\]"):
        PRESETS["gtsrb"].replace(bogus=1)
    with pytest.raises(ValueError, match="TrainConfig.lr must be a finite number"):
        PRESETS["gtsrb"].replace(lr=True)  # a bool is not a learning rate


def test_check_toy_arguments_matches_the_builder(tmp_path):
    from datasets_gen.toy import check_toy_arguments, make_toy_variant

    assert check_toy_arguments() == {"n_classes": 4, "image_size": (32, 32), "source_class": 0, "target_class": 1}
    assert check_toy_arguments(n_classes=3, image_size=(20, 24), target_class=2)["image_size"] == (20, 24)
    for kw, match in (({"n_classes": "many"}, "n_classes must be an integer, got 'many'"),
                      ({"n_classes": 2.5}, "n_classes must be an integer"),
                      ({"image_size": (8, 32)}, r"image_size\[0\] must be >= 12"),
                      ({"target_class": 9}, r"unknown class id\(s\) \[9\]")):
        with pytest.raises(ValueError, match=match):
            check_toy_arguments(**kw)
        with pytest.raises(ValueError, match=match):  # the builder refuses the same, before writing
            make_toy_variant(tmp_path / "x.h5", **kw)
        assert not (tmp_path / "x.h5").exists()


def test_trigger_check_fits():
    from datasets_gen.triggers import parse_trigger

    parse_trigger("square:4:yellow@bottom-right").check_fits((32, 32))
    parse_trigger("glasses:green@eyes").check_fits((55, 47))  # resized to the image: always fits
    with pytest.raises(ValueError, match="larger than the 3x3 image"):
        parse_trigger("square:4").check_fits((3, 3))
    with pytest.raises(ValueError, match="does not fit a 32x32 image"):
        parse_trigger("square:4@xy:29:0").check_fits((32, 32))
