"""Tests of Neural Cleanse on toy models where the trigger is known (a 4x4 yellow square, 16 pixels).

NC looks for a trigger that flips inputs of *every* class, so the planted backdoor is source-agnostic
(:mod:`_planted_helpers`). A backdoored and a clean TinyNet are trained once per module (a few
seconds each). NC must flag the target with a mask near the trigger's size on the first and flag
nothing on the second.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _defence_helpers import IMAGE_SIZE, single_thread
from _planted_helpers import K, TARGET, TRIGGER_PIXELS, make_context, rates
from backdoorlab.defences import NeuralCleanse, Pipeline, make_defence
from backdoorlab.defences.neural_cleanse import anomaly_index, reverse_triggers, save_masks, stamp

# a short search: enough on 16x16 toys, keeps each NC run to a few seconds
FAST = {"epochs": 60, "epoch_steps": 5, "batch_size": 16, "unlearn_epochs": 20}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clean_ctx(planted_splits):
    with single_thread():
        return make_context(planted_splits, poison=False)


@pytest.fixture(scope="module")
def poisoned_run(planted_ctx, tmp_path_factory):
    out = tmp_path_factory.mktemp("masks")
    with single_thread():
        ctx, result = NeuralCleanse(**FAST, mask_dir=str(out)).run(planted_ctx, progress=False)
    return ctx, result, out


def test_fixture_models(planted_ctx, clean_ctx):
    (acc_bad, asr_bad), (acc_good, asr_good) = rates(planted_ctx), rates(clean_ctx)
    assert asr_bad > 0.9 and acc_bad > 0.85
    assert asr_good < 0.3 and acc_good > 0.85


def test_names_the_target_with_a_mask_near_the_trigger_size(poisoned_run, planted_ctx):
    _, result, _ = poisoned_run
    rep = result.report
    # the target is flagged and the most anomalous class (the white cross, bright like the yellow
    # square, can be flagged beside it: a false positive the unlearning repair tolerates)
    assert TARGET in rep["flagged_classes"] and rep["target_detected"]
    assert rep["anomaly_index"][TARGET] == max(rep["anomaly_index"]) > 2
    l1 = np.asarray(rep["mask_l1"])
    assert l1[TARGET] == l1.min()
    # the reversed trigger may be a little smaller than the planted one (part of the square suffices)
    assert TRIGGER_PIXELS / 4 <= l1[TARGET] <= 2 * TRIGGER_PIXELS, l1.tolist()


def test_unlearning_removes_the_backdoor(poisoned_run, planted_ctx):
    ctx, _, _ = poisoned_run
    (acc0, asr0), (acc1, asr1) = rates(planted_ctx), rates(ctx)
    assert asr1 < 0.2 < asr0
    assert acc1 >= acc0 - 0.05
    assert ctx.model is not planted_ctx.model  # repaired on a copy, input context untouched


def test_masks_written_as_pngs(poisoned_run):
    import cv2

    _, result, out = poisoned_run
    paths = result.report["mask_pngs"]
    assert len(paths) == K and (out / f"trigger_class_{TARGET}.png").is_file()
    img = cv2.imread(paths[TARGET], cv2.IMREAD_GRAYSCALE)
    assert img.shape == IMAGE_SIZE
    np.testing.assert_array_equal(img, np.asarray(result.report["masks"][TARGET], dtype=np.uint8))


def test_clean_model_is_not_flagged(clean_ctx):
    ctx, result = NeuralCleanse(**FAST).run(clean_ctx, progress=False)
    rep = result.report
    assert rep["flagged_classes"] == [] and not rep["detected"]
    assert max(i for i, l, m in zip(rep["anomaly_index"], rep["mask_l1"], [rep["median_l1"]] * K) if l < m) <= 2
    assert ctx.model is clean_ctx.model  # nothing flagged, nothing repaired


def test_prune_repair_prunes_channels_within_budget(planted_ctx):
    ctx, result = make_defence("nc-prune", {"nc": {**FAST, "prune_threshold": 0.1}}).run(planted_ctx, progress=False)
    rep = result.report
    assert result.pruned_channels is not None and rep["neurons_pruned"] == result.pruned_channels.size > 0
    curve = {int(k): v for k, v in rep["curve"].items()}
    assert curve[0] - curve[rep["neurons_pruned"]] <= 0.1 + 1e-9
    # the most excited channels go first (on this toy the backdoor also lives in the dense layers, so
    # pruning the last conv alone does not remove it: unlearning is the repair that does)
    excitation = np.asarray(rep["excitation"])
    assert excitation[result.pruned_channels].min() >= np.delete(excitation, result.pruned_channels).max()


def test_batched_search_is_reproducible(planted_ctx):
    from backdoorlab.data import to_float_chw

    images = to_float_chw(planted_ctx.clean.load_images())
    a = reverse_triggers(planted_ctx.model, images, epochs=4, epoch_steps=5, batch_size=8, classes=[1, TARGET], seed=5, progress=False)
    b = reverse_triggers(planted_ctx.model, images, epochs=4, epoch_steps=5, batch_size=8, classes=[1, TARGET], seed=5, progress=False)
    np.testing.assert_array_equal(a["masks"], b["masks"])
    assert a["masks"].shape == (2, *IMAGE_SIZE) and a["patterns"].shape == (2, 3, *IMAGE_SIZE)
    assert ((a["masks"] >= 0) & (a["masks"] <= 1)).all()


def test_anomaly_index_and_stamp():
    idx = anomaly_index(np.array([10.0, 11, 9, 10, 2]))
    assert idx[4] > 2 > idx[:4].max()
    with pytest.raises(ValueError, match="at least 3"):
        anomaly_index(np.array([1.0, 2.0]))
    x = torch.zeros(2, 3, 4, 4)
    m = torch.zeros(4, 4)
    m[0, 0] = 1
    out = stamp(x, m, torch.ones(3, 4, 4))
    assert out[:, :, 0, 0].eq(1).all() and out.sum() == 6
    with pytest.raises(ValueError, match="do not fit"):
        stamp(x, torch.zeros(5, 5), torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="K = len"):
        save_masks(np.zeros((2, 4, 4)), [0], "unused")


@pytest.mark.parametrize("params, match", [
    ({"epochs": 0}, "epochs"), ({"epoch_steps": 0}, "epoch_steps"), ({"repair": "retrain"}, "repair"), ({"threshold": -1}, "threshold"),
    ({"unlearn_share": 1.5}, "unlearn_share"), ({"lr": float("nan")}, "lr"), ({"bogus": 1}, "unexpected"),
])
def test_bad_parameters_fail_before_any_work(params, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Pipeline("nc>fp", {"nc": params})


def test_class_mix_weights_give_the_reference_mix():
    from backdoorlab.defences.base import class_mix_weights

    ref = np.array([0] * 6 + [1] * 3 + [2])  # 60 / 30 / 10 %
    lab = np.array([0, 0, 1, 1, 2, 2])  # flat
    w = class_mix_weights(ref, lab, 4)
    np.testing.assert_allclose(w, [1.8, 1.8, 0.9, 0.9, 0.3, 0.3])
    for c, share in ((0, 0.6), (1, 0.3), (2, 0.1)):  # a weighted share is the reference's share
        assert np.isclose((w * (lab == c)).sum() / w.sum(), share)
    np.testing.assert_allclose(class_mix_weights(lab, lab, 3), 1.0)  # same mix: all ones
    assert class_mix_weights(np.array([0, 0]), np.array([0, 1]), 2)[1] == 0  # absent from the reference
    with pytest.raises(ValueError, match="labels must lie in"):
        class_mix_weights(ref, np.array([0, 5]), 4)
    with pytest.raises(ValueError, match="reference_labels must be a non-empty"):
        class_mix_weights(np.array([]), lab, 4)
    with pytest.raises(ValueError, match="n_classes"):
        class_mix_weights(ref, lab, 0)


def test_unlearning_class_weight_follows_the_training_mix(planted_ctx):
    """Regression guard of the weighted unlearning loss: with the clean split's own class mix as the
    training mix every weight is 1 and the weighted loss is the plain mean (same fine-tune, to float
    rounding); with another mix the fine-tune differs."""
    from types import SimpleNamespace

    from backdoorlab.data import to_float_chw

    x = to_float_chw(planted_ctx.clean.load_images())
    y = torch.from_numpy(np.asarray(planted_ctx.clean.labels, dtype=np.int64))
    mask, pattern = torch.zeros(1, *IMAGE_SIZE), torch.ones(1, 3, *IMAGE_SIZE)
    mask[0, 11:15, 11:15] = 1

    def params(cw, train_labels):
        ctx = planted_ctx.replace(train=SimpleNamespace(labels=train_labels))
        model, _ = NeuralCleanse(unlearn_class_weight=cw)._unlearn(ctx, x, y, mask, pattern, progress=False)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    plain = params("none", planted_ctx.train.labels)
    same_mix = params("train", y.numpy())
    skewed = params("train", np.r_[y.numpy(), np.zeros(5 * len(y), dtype=np.int64)])  # class 0 six times as common
    torch.testing.assert_close(same_mix, plain, rtol=1e-4, atol=1e-5)
    assert (skewed - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="unlearn_class_weight"):
        NeuralCleanse(unlearn_class_weight="test")
