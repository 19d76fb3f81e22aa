"""Study variants: the setting's recipe and the class subset used by the quick study."""

from __future__ import annotations

import numpy as np
import pytest

from backdoorlab.experiments.config import SettingSpec, study_from_dict
from backdoorlab.experiments.runner import first_per_class
from backdoorlab.experiments.variants import setting_recipe, subset_classes


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from datasets_gen.toy import make_toy_variant

    return make_toy_variant(tmp_path_factory.mktemp("toy") / "toy.h5", n_classes=5, n_train_per_class=20,
                            n_test_per_class=6, n_clean_per_class=4, source_class=1, target_class=3,
                            poison_share=0.5, seed=0)


def test_subset_keeps_and_relabels_the_chosen_classes(toy, tmp_path):
    from datasets_gen.variant_io import SPLITS, read_attrs, read_split

    out = subset_classes(toy, tmp_path / "sub.h5", [3, 1, 4])  # target 3 -> 0, source 1 -> 1, 4 -> 2
    attrs = read_attrs(out)
    assert attrs["n_classes"] == 3 and attrs["target_class"] == 0 and attrs["source_classes"] == [1]
    assert attrs["class_subset"] == {"original_ids": [3, 1, 4], "of_n_classes": 5}
    full_names = read_attrs(toy)["class_names"]
    assert attrs["class_names"] == [full_names[3], full_names[1], full_names[4]]
    remap = {3: 0, 1: 1, 4: 2}
    for split in SPLITS:
        a, b = read_split(toy, split), read_split(out, split)
        keep = np.isin(a["original_labels"], [3, 1, 4])
        assert b["images"].shape[0] == int(keep.sum())
        np.testing.assert_array_equal(b["images"], a["images"][keep])
        np.testing.assert_array_equal(b["is_poisoned"], a["is_poisoned"][keep])
        np.testing.assert_array_equal(b["provenance"], a["provenance"][keep])
        np.testing.assert_array_equal(b["original_labels"], [remap[x] for x in a["original_labels"][keep]])
        np.testing.assert_array_equal(b["labels"], [remap[x] for x in a["labels"][keep]])
    train = read_split(out, "train")
    assert train["is_poisoned"].sum() == read_split(toy, "train")["is_poisoned"].sum() == 10
    assert (train["labels"][train["is_poisoned"]] == 0).all()  # relabelled to the (new) target


@pytest.mark.parametrize("classes,match", [
    ([1, 2], "must include the target class 3"),
    ([3, 4], "must include a source class"),
    ([3, 3, 1], "distinct"),
    ([3, 1, 9], "outside \\[0, 5\\)"),
])
def test_subset_refuses_bad_class_lists(toy, tmp_path, classes, match):
    with pytest.raises(ValueError, match=match):
        subset_classes(toy, tmp_path / "bad.h5", classes)
    assert not (tmp_path / "bad.h5").exists()


def test_setting_recipe_overrides_the_preset_share():
    study = study_from_dict({"datasets": {"gtsrb": {"source": "synth"}},
                             "settings": [{"preset": "gtsrb-ours-yellow-square-7", "shares": [0.15],
                                           "recipe": {"target_class": 2}}]})
    recipe = setting_recipe(study.settings[0])
    assert recipe["share"] == 0.15 and recipe["target_class"] == 2 and recipe["dataset"] == "gtsrb"
    from datasets_gen.presets import PRESETS

    assert PRESETS["gtsrb-ours-yellow-square-7"]["share"] == 0.07  # the preset itself is untouched


def test_unknown_preset_is_named():
    # the config refuses it when loaded (before any variant is built) ...
    raw = {"datasets": {"gtsrb": {"source": "synth"}}, "settings": [{"preset": "gtsrb-no-such", "share": 0.1}]}
    with pytest.raises(ValueError, match="settings\\[0\\]: preset 'gtsrb-no-such' is not a datasets_gen preset"):
        study_from_dict(raw)
    # ... and the builder still refuses a setting made by hand
    setting = SettingSpec(id="s", dataset="gtsrb", trigger="t", poison_share=0.1, preset="gtsrb-no-such")
    with pytest.raises(ValueError, match="unknown datasets_gen preset 'gtsrb-no-such'"):
        setting_recipe(setting)


def test_first_per_class():
    labels = np.array([2, 0, 2, 1, 0, 2, 0])
    np.testing.assert_array_equal(first_per_class(labels, 2), [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="k must be >= 1"):
        first_per_class(labels, 0)
