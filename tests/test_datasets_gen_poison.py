"""The poisoning recipe: share semantics, exact counts, seeded selection, validation."""

from __future__ import annotations

import numpy as np
import pytest

from datasets_gen.poison import Recipe, achieved_share, poison_count, relabel, select_poisoned


@pytest.mark.parametrize("share, of, n_src, n_train, want", [
    (0.07, "source_class", 1410, 39209, 99),      # 98.7 -> 99
    (0.5, "source_class", 5, 100, 3),             # 2.5 rounds half up
    (0.001, "source_class", 100, 1000, 1),        # at least one
    (1.0, "source_class", 17, 100, 17),
    (0.10, "training_set", 900, 1000, 100),
])
def test_poison_count(share, of, n_src, n_train, want):
    assert poison_count(share, of, n_src, n_train) == want


@pytest.mark.parametrize("share", [0, -0.1, 1.01, float("nan"), float("inf")])
def test_share_outside_unit_interval(share):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        poison_count(share, "source_class", 10, 100)


@pytest.mark.parametrize("share, n_target, want", [
    (0.02, 702, 14),    # the paper's 2 % row: 14 / (14 + 702) = 1.96 %
    (0.07, 702, 53),    # 0.07 * 702 / 0.93 = 52.8 (the paper used 52: presets give the count itself)
    (0.5, 10, 10),      # as many poisoned as clean target rows
])
def test_share_of_the_target_class(share, n_target, want):
    k = poison_count(share, "target_class", 1410, 35288, n_target)
    assert k == want
    assert achieved_share(k, "target_class", 1410, 35288, n_target) == pytest.approx(k / (k + n_target))


def test_exact_count_overrides_the_share():
    assert poison_count(0.07, "target_class", 1410, 35288, 702, count=52) == 52
    assert achieved_share(52, "target_class", 1410, 35288, 702) == pytest.approx(0.0690, abs=1e-4)
    with pytest.raises(ValueError, match="count 60 asks for more"):
        poison_count(0.07, "source_class", 50, 1000, count=60)
    with pytest.raises(ValueError, match="count must be a positive integer"):
        Recipe([1], 0, "square:2:white", 0.1, count=0)
    with pytest.raises(ValueError, match="target class must be below 1"):
        Recipe([1], 0, "square:2:white", 1.0, share_of="target_class")


def test_random_source_is_drawn_per_seed_and_never_the_target():
    labels = np.repeat(np.arange(8), 30)
    r = Recipe("random", 3, "square:2:white", 0.1)
    with pytest.raises(ValueError, match="drawn per seed"):
        select_poisoned(labels, r, seed=0)
    picks = {tuple(r.draw_source(labels, s, 8).source_classes) for s in range(12)}
    assert all(len(p) == 1 and p[0] != 3 for p in picks) and len(picks) > 1
    assert r.draw_source(labels, 5, 8).source_classes == r.draw_source(labels, 5, 8).source_classes
    drawn = r.draw_source(labels, 5, 8)
    assert select_poisoned(labels, drawn, seed=5).sum() == 3


def test_training_set_share_larger_than_source_fails():
    with pytest.raises(ValueError, match="hold only 50"):
        poison_count(0.2, "training_set", 50, 1000)


def test_select_exact_seeded_and_only_sources():
    labels = np.repeat(np.arange(5), 40)
    r = Recipe([1, 3], 0, "square:2:white", 0.25)
    a = select_poisoned(labels, r, seed=1)
    assert a.sum() == 20 and set(labels[a]) <= {1, 3}
    np.testing.assert_array_equal(a, select_poisoned(labels, r, seed=1))
    assert not np.array_equal(a, select_poisoned(labels, r, seed=2))
    new = relabel(labels, a, 0)
    assert np.all(new[a] == 0) and np.array_equal(new[~a], labels[~a])
    everyone = Recipe("all", 0, "square:2:white", 0.1, "training_set")
    b = select_poisoned(labels, everyone, seed=0, n_classes=5)
    assert b.sum() == 20 and not np.any(labels[b] == 0)


@pytest.mark.parametrize("kw, err, match", [
    (dict(source_classes=[1], target_class=1), ValueError, "also a source"),
    (dict(source_classes=[], target_class=1), ValueError, "at least one"),
    (dict(source_classes="some", target_class=1), ValueError, "'all'"),
    (dict(source_classes=[2, 2], target_class=1), ValueError, "duplicate"),
    (dict(source_classes=[2], target_class=1, share_of="class"), ValueError, "share_of"),
    (dict(source_classes=[2], target_class=1, trigger="square:0"), ValueError, "positive"),
])
def test_recipe_validation(kw, err, match):
    base = dict(trigger="square:2:white", share=0.1)
    base.update(kw)
    with pytest.raises(err, match=match):
        Recipe(**base)


def test_recipe_dict_round_trip_and_unknown_keys():
    r = Recipe([8], 14, "square:4:yellow", 0.07, name="x")
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(KeyError, match="unknown recipe key"):
        Recipe.from_dict({**r.to_dict(), "shares": 0.1})
    with pytest.raises(ValueError, match="unknown class id"):
        r.check_classes(10)
