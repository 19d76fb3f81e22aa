"""The embedded synthetic sources: synth-signs (GTSRB-like) and synth-faces (known eyes)."""

from __future__ import annotations

import numpy as np
import pytest

from datasets_gen.synthetic.faces import SynthFacesSource
from datasets_gen.synthetic.signs import (GTSRB_TEST_COUNTS, GTSRB_TRAIN_COUNTS, SynthSignsSource, class_counts,
                                          render_examples)
from datasets_gen.synthetic.templates import N_SIGN_CLASSES, template


def test_default_sizes_follow_gtsrb():
    src = SynthSignsSource()
    assert sum(GTSRB_TRAIN_COUNTS) == 39209 and sum(GTSRB_TEST_COUNTS) == 12630
    assert len(src.tables["train"]) + len(src.tables["clean"]) == 39209 and len(src.tables["test"]) == 12630
    held = len(src.tables["clean"]) / 39209
    assert 0.09 <= held <= 0.11
    assert not set(src.tables["clean"].provenance) & set(src.tables["train"].provenance)
    counts = class_counts(4300, GTSRB_TRAIN_COUNTS)
    assert counts.sum() == 4300 and counts.min() >= 1 and np.argmax(counts) == 2


def test_templates_are_43_distinct_signs():
    assert N_SIGN_CLASSES == 43
    t = np.stack([template(c, 32) for c in range(43)])
    assert t.shape == (43, 32, 32, 4) and np.all(t[:, 16, 16, 3] > 0.99)  # opaque centre
    flat = t.reshape(43, -1)
    d = np.sqrt(((flat[:, None] - flat[None]) ** 2).mean(-1))
    np.fill_diagonal(d, np.inf)
    assert d.min() > 0.02  # no two classes drawn alike (closest: the speed limits)


def test_rendering_is_a_pure_function_of_the_row():
    src = SynthSignsSource(n_train=43 * 30, n_test=43 * 8, seed=5)
    rows = np.array([3, 40, 41, 200, 7])
    a, ok = src.load("train", rows)
    b, _ = src.load("train", rows[::-1])
    assert ok.all() and a.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(a, b[::-1])
    full, _ = src.load("test", np.arange(len(src.tables["test"])))
    part, _ = src.load("test", [100, 5])
    np.testing.assert_array_equal(part, full[[100, 5]])
    other = SynthSignsSource(n_train=43 * 30, n_test=43 * 8, seed=6)
    assert not np.array_equal(other.load("train", rows)[0], a)


def test_tracks_are_near_duplicates_and_classes_differ():
    src = SynthSignsSource(n_train=43 * 30, n_test=43 * 4, track_length=10)
    t = src.tables["train"]
    rows = np.flatnonzero(t.provenance == t.provenance[0])
    imgs = src.load("train", rows)[0].astype(np.float32)
    within = np.abs(imgs[1:] - imgs[:-1]).mean()
    others = src.load("train", np.flatnonzero(t.labels == 20)[:5])[0].astype(np.float32)
    between = np.abs(imgs[:5] - others).mean()
    assert within < between
    # varied: brightness and backgrounds spread
    many = src.load("test", np.arange(0, len(src.tables["test"]), 3))[0]
    assert np.std(many.reshape(len(many), -1).mean(1)) > 15


def test_limit_per_class_keeps_whole_tracks():
    src = SynthSignsSource(n_train=43 * 60, n_test=43 * 4, track_length=10)
    full = dict(zip(*np.unique(src.tables["train"].provenance, return_counts=True)))
    src.limit_per_class(20, seed=0)
    t = src.tables["train"]
    assert np.bincount(t.labels, minlength=43).max() <= 20
    for c in range(43):
        groups, counts = np.unique(t.provenance[t.labels == c], return_counts=True)
        cut = [g for g, n in zip(groups, counts) if n < full[g]]
        assert len(cut) <= 1, (c, cut)  # whole tracks, only the last one cut to fit


def test_render_examples_and_bad_class():
    imgs = render_examples([0, 14, 42], (48, 48))
    assert imgs.shape == (3, 48, 48, 3) and imgs.dtype == np.uint8
    with pytest.raises(ValueError, match="unknown sign class"):
        render_examples([43])


def test_synth_faces_eyes_splits_and_sessions():
    src = SynthFacesSource(n_identities=5, images_per_identity=40, session_length=10, image_size=(55, 47))
    sizes = {s: np.bincount(t.labels, minlength=5) for s, t in src.tables.items()}
    np.testing.assert_array_equal(sizes["train"], [30] * 5)
    np.testing.assert_array_equal(sizes["test"], [8] * 5)
    np.testing.assert_array_equal(sizes["clean"], [2] * 5)
    assert np.unique(np.concatenate([t.provenance for t in src.tables.values()])).size == 20  # sessions
    rows = np.arange(12)
    imgs, ok = src.load("train", rows)
    eyes = src.eye_landmarks("train", rows)
    assert ok.all() and imgs.shape == (12, 55, 47, 3) and eyes.shape == (12, 2, 2)
    assert np.all(eyes[:, 0, 0] < eyes[:, 1, 0])  # left eye left of right eye
    assert np.all((eyes[..., 0] > 5) & (eyes[..., 0] < 42) & (eyes[..., 1] > 12) & (eyes[..., 1] < 35))
    # pupils are dark: the known eye positions really are on the eyes
    for img, e in zip(imgs, eyes):
        for x, y in e:
            patch = img[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].astype(int).sum(-1)
            assert patch.min() < img.astype(int).sum(-1).mean()
    # identities differ more than frames of one identity
    ids = src.tables["train"].labels
    a = src.load("train", np.flatnonzero(ids == 0)[:6])[0].astype(np.float32).mean(0)
    b = src.load("train", np.flatnonzero(ids == 1)[:6])[0].astype(np.float32).mean(0)
    assert np.abs(a - b).mean() > 5
    with pytest.raises(ValueError, match="n_identities"):
        SynthFacesSource(n_identities=1)
