"""Neural Cleanse (Wang et al., IEEE S&P 2019): reverse-engineer a trigger per class, flag outliers, repair.

A backdoored class is one that a *small* patch flips every input to. For every class ``k`` we look
for the smallest mask ``m`` (H x W, in [0, 1]) and pattern ``p`` (3 x H x W, in [0, 1]) such that
``(1 - m) * x + m * p`` is classified as ``k`` for clean ``x``: minimise
``CE(f(x'), k) + cost_k * |m|_1`` with Adam (lr 0.1, betas 0.5/0.9), the mask and pattern kept in range
through ``(tanh(w) + 1) / 2``. The cost follows the paper's schedule, counted in *epochs* of
``epoch_steps`` mini-batches and judged on an epoch's mean attack success: 0 until an epoch reaches
``attack_threshold`` (0.99), then ``init_cost`` (1e-3); raised (x ``cost_up`` = 1.5) after ``patience``
(5) epochs in a row that reach the threshold, lowered (/ ``cost_down`` = 1.5^1.5) after ``patience``
epochs in a row that miss it. The best trigger of a class is the smallest mask at the end of an epoch
that reached the threshold. A class stops early, as in the paper, once its cost has been both raised
and lowered and its best mask norm has not shrunk by ``early_stop_gain`` (1 %) for
``early_stop_patience`` epochs. Where we differ from the paper's code (1,000 clean images per epoch,
31 mini-batches of 32, up to 1,000 epochs, early-stop patience 25): ``epoch_steps`` (default 8 mini-batches)
and ``early_stop_patience`` (10) are smaller so that 43 classes fit a CPU budget; both are parameters.

All classes are optimised *at once*: the masks live in one ``(K, H, W)`` tensor and each step runs one
clean mini-batch stamped with every still-active class's trigger (``K x B`` images) through the model,
so one forward/backward serves all classes; finished classes leave the batch. The defender's data is
the trusted clean split of the :class:`DefenceContext`.

Detection: the anomaly index of class ``k`` is ``|L1_k - median| / (1.4826 * MAD)`` over the best mask
norms; a class is flagged when its norm is *below* the median and its index exceeds ``threshold``
(2, the paper's). Repairs (``repair=``): ``"unlearn"`` is the paper's unlearning: fine-tune for one
epoch (``unlearn_epochs``) on the clean split (our variants hold out 10 % of the training pool as it,
the paper's "10 % of the training data"), ``unlearn_share`` (20 %) of the images stamped with a flagged
class's reversed trigger and kept at their *true* labels, with the training recipe's optimizer;
``"prune"`` silences the channels of one layer that the reversed trigger excites most (largest rise of
mean activation from clean to stamped images), as many as the clean-set accuracy budget allows,
reusing Fine-Pruning's search; ``"none"`` only detects. A model with no flagged class is returned
unchanged.

The reversed masks are returned in ``report["masks"]`` (uint8 H x W per class, 255 = fully on) and,
when ``mask_dir`` is set, written as PNGs there (:func:`save_masks`; paths in ``report["mask_pngs"]``).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from backdoorlab.activations import image_channel_means
from backdoorlab.data import to_float_chw
from backdoorlab.devices import resolve_device
from backdoorlab.seeding import keyed_generator
from backdoorlab.train import TrainConfig, epoch_order, make_optimizer

from .base import Defence, DefenceContext, DefenceResult, class_mix_weights
from .fine_pruning import FinePruning, PruningSearch, apply_pruning, resolve_layer
from .params import check_choice, check_fraction, check_positive_int

__all__ = ["NeuralCleanse", "reverse_triggers", "anomaly_index", "stamp", "save_masks", "REPAIRS"]

REPAIRS = ("unlearn", "prune", "none")
CLASS_WEIGHTS = ("train", "none")
#: Salts of the keyed random streams, so batches, unlearning order and stamping are independent.
_SALT_BATCHES, _SALT_UNLEARN = 0x4E43, 0x554E


def _check_positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def stamp(images: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """``(1 - mask) * images + mask * pattern``: images with a (reversed) trigger applied.

    Parameters
    ----------
    images : Tensor of shape (N, 3, H, W), values in [0, 1]
    mask : Tensor of shape (H, W) or (N, H, W), values in [0, 1]
    pattern : Tensor of shape (3, H, W) or (N, 3, H, W), values in [0, 1]
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    if mask.shape[-2:] != images.shape[-2:] or pattern.shape[-3:] != images.shape[-3:]:
        raise ValueError(f"mask {tuple(mask.shape)} / pattern {tuple(pattern.shape)} do not fit images "
                         f"{tuple(images.shape)}")
    m = mask.unsqueeze(-3)  # broadcast over the colour channels
    return (1 - m) * images + m * pattern


def anomaly_index(norms: np.ndarray) -> np.ndarray:
    """Anomaly index of every class from its reversed mask's L1 norm (median absolute deviation).

    ``|norm - median| / (1.4826 * MAD)``; the constant makes the MAD a consistent estimate of the
    standard deviation under a normal distribution, which is what makes 2 a meaningful cut. If the MAD
    is 0 (all norms but outliers equal), a tiny floor avoids a division by zero.

    Parameters
    ----------
    norms : ndarray of shape (n_classes,), at least 3 finite values
    """
    norms = np.asarray(norms, dtype=np.float64)
    if norms.ndim != 1 or norms.size < 3:
        raise ValueError(f"anomaly_index needs a 1-D array of at least 3 norms, got shape {norms.shape}")
    if not np.isfinite(norms).all():
        raise ValueError(f"mask norms must be finite, got {norms.tolist()}")
    median = np.median(norms)
    mad = 1.4826 * np.median(np.abs(norms - median))
    return np.abs(norms - median) / max(mad, 1e-12)


def reverse_triggers(model: nn.Module, images: torch.Tensor, *, epochs: int = 100, epoch_steps: int = 8,
                     batch_size: int = 32, lr: float = 0.1, init_cost: float = 1e-3, attack_threshold: float = 0.99,
                     patience: int = 5, cost_up: float = 1.5, cost_down: float = 1.5 ** 1.5,
                     early_stop_patience: int = 10, early_stop_gain: float = 0.01, classes: list[int] | None = None,
                     seed: int = 0, device: str | torch.device = "auto", progress: bool = True) -> dict:
    """Reverse-engineer a trigger for every class, all classes in one batched optimisation.

    Parameters
    ----------
    model : nn.Module
        Classifier taking float ``(N, 3, H, W)`` images in [0, 1]; ``model.n_classes`` or the width of
        its output gives the classes.
    images : Tensor of shape (n, 3, H, W) in [0, 1]
        Clean images (the defender's trusted data); mini-batches are drawn from them.
    epochs : int
        Most schedule epochs per class.
    epoch_steps : int
        Mini-batches per epoch (one step runs one mini-batch for all active classes). The cost schedule,
        the best-trigger record and the early stop look at an epoch's *mean* attack success, as the paper's.
    batch_size : int
        Clean images per class per step.
    lr, init_cost, attack_threshold, patience, cost_up, cost_down
        Adam's learning rate and the paper's cost schedule (see the module docstring); ``patience`` counts
        epochs.
    early_stop_patience, early_stop_gain
        A class stops once its cost has been both raised and lowered and its best mask norm has not
        shrunk by ``early_stop_gain`` (relative) for ``early_stop_patience`` epochs.
    classes : list of int, optional
        Classes to reverse (default: all).
    seed : int
        Seeds the initial masks and the mini-batches.

    Returns
    -------
    dict
        ``masks`` float32 (K, H, W) and ``patterns`` float32 (K, 3, H, W) (the best found per class:
        smallest L1 norm at the end of an epoch whose mean attack success reached ``attack_threshold``,
        else the last), ``l1`` (K,), ``attack_success`` (K,) mean of the last epoch, ``reached`` (K,) bool,
        ``epochs_run`` (K,), ``cost`` (K,) final cost, ``classes`` (K,).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a float tensor (n, 3, H, W), got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    if images.shape[0] == 0:
        raise ValueError("reverse_triggers needs at least one clean image")
    epochs = check_positive_int("epochs", epochs)
    epoch_steps = check_positive_int("epoch_steps", epoch_steps)
    batch_size = check_positive_int("batch_size", batch_size)
    patience = check_positive_int("patience", patience)
    early_stop_patience = check_positive_int("early_stop_patience", early_stop_patience)
    early_stop_gain = check_fraction("early_stop_gain", early_stop_gain)
    lr, init_cost = _check_positive_float("lr", lr), _check_positive_float("init_cost", init_cost)
    if not (_check_positive_float("cost_up", cost_up) > 1 and _check_positive_float("cost_down", cost_down) > 1):
        raise ValueError(f"cost_up and cost_down must be > 1, got {cost_up!r} and {cost_down!r}")
    attack_threshold = check_fraction("attack_threshold", attack_threshold)
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev).eval()
    n_classes = int(getattr(model, "n_classes", 0)) or int(model(images[:1].to(dev)).shape[1])
    classes = list(range(n_classes)) if classes is None else [int(c) for c in classes]
    if not classes or min(classes) < 0 or max(classes) >= n_classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct ids in [0, {n_classes}), got {classes}")
    k = len(classes)
    _, _, h, w = images.shape
    gen = keyed_generator(int(seed), _SALT_BATCHES)
    # tanh-space parameters; a random start (not all-zero) so the classes do not move in lockstep
    mask_w = (torch.rand(k, h, w, generator=gen) * 2 - 1).mul_(2).to(dev).requires_grad_(True)
    pattern_w = (torch.rand(k, 3, h, w, generator=gen) * 2 - 1).mul_(2).to(dev).requires_grad_(True)
    optimizer = torch.optim.Adam([mask_w, pattern_w], lr=lr, betas=(0.5, 0.9))
    targets = torch.tensor(classes, device=dev)

    cost = np.zeros(k)  # 0 until the first successful epoch: find a working trigger first, then shrink it
    cost_set = np.zeros(k, dtype=bool)
    raised, lowered = np.zeros(k, dtype=bool), np.zeros(k, dtype=bool)
    up_count, down_count = np.zeros(k, dtype=int), np.zeros(k, dtype=int)
    best_l1 = np.full(k, np.inf)
    best_mask, best_pattern = torch.zeros(k, h, w), torch.zeros(k, 3, h, w)
    last_asr = np.zeros(k)
    no_gain = np.zeros(k, dtype=int)
    anchor = np.full(k, np.inf)
    active = np.ones(k, dtype=bool)
    epochs_run = np.zeros(k, dtype=int)
    n = images.shape[0]
    # only the trigger is optimised; the flags are restored as they were (some models freeze layers)
    saved_flags = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with tqdm(total=epochs, desc=f"neural cleanse ({k} classes)", unit="epoch", disable=not progress,
                  leave=False) as bar:
            for _epoch in range(epochs):
                act = np.flatnonzero(active)
                if act.size == 0:
                    break
                idx = torch.as_tensor(act, device=dev)
                y = targets[idx].repeat_interleave(batch_size)
                asr_sum = np.zeros(act.size)
                for _ in range(epoch_steps):
                    x = images[torch.randint(0, n, (batch_size,), generator=gen)].to(dev)
                    m = (torch.tanh(mask_w[idx]) + 1) / 2  # (a, H, W)
                    pat = (torch.tanh(pattern_w[idx]) + 1) / 2  # (a, 3, H, W)
                    # (a, B, 3, H, W): every active class's trigger on the same clean batch
                    x_adv = (1 - m[:, None, None]) * x[None] + m[:, None, None] * pat[:, None]
                    logits = model(x_adv.reshape(-1, 3, h, w))
                    ce = nn.functional.cross_entropy(logits, y, reduction="none").reshape(act.size, batch_size).mean(1)
                    l1 = m.flatten(1).sum(1)
                    c = torch.as_tensor(cost[act], dtype=l1.dtype, device=dev)
                    loss = (ce + c * l1).sum()  # the classes' parameters are disjoint: one backward serves all
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        hits = logits.argmax(1).reshape(act.size, batch_size) == targets[idx][:, None]
                        asr_sum += hits.float().mean(1).cpu().numpy()
                # the trigger as the epoch left it, and the epoch's mean attack success
                with torch.no_grad():
                    m_end = ((torch.tanh(mask_w[idx]) + 1) / 2).cpu()
                    pat_end = ((torch.tanh(pattern_w[idx]) + 1) / 2).cpu()
                asr = asr_sum / epoch_steps
                epochs_run[act] += 1
                for j, cls in enumerate(act):
                    last_asr[cls] = asr[j]
                    ok = asr[j] >= attack_threshold
                    l1_end = float(m_end[j].sum())
                    if ok and l1_end < best_l1[cls]:
                        best_l1[cls], best_mask[cls], best_pattern[cls] = l1_end, m_end[j], pat_end[j]
                    if not cost_set[cls]:
                        if ok:
                            cost[cls], cost_set[cls] = init_cost, True
                            anchor[cls], no_gain[cls] = best_l1[cls], 0
                        continue
                    # early stop (the paper's): the cost has gone both ways and the best norm stalls
                    if best_l1[cls] < (1 - early_stop_gain) * anchor[cls]:
                        anchor[cls], no_gain[cls] = best_l1[cls], 0
                    else:
                        no_gain[cls] += 1
                    if raised[cls] and lowered[cls] and no_gain[cls] >= early_stop_patience:
                        active[cls] = False
                        continue
                    up_count[cls], down_count[cls] = (up_count[cls] + 1, 0) if ok else (0, down_count[cls] + 1)
                    if up_count[cls] >= patience:
                        cost[cls], up_count[cls], raised[cls] = cost[cls] * cost_up, 0, True
                    elif down_count[cls] >= patience:
                        cost[cls], down_count[cls], lowered[cls] = cost[cls] / cost_down, 0, True
                bar.update(1)
                bar.set_postfix(active=int(active.sum()))
    finally:
        for p, flag in saved_flags:
            p.requires_grad_(flag)
        model.train(was_training)
    reached = np.isfinite(best_l1)
    with torch.no_grad():
        # a class that never reached the threshold keeps its last trigger (and its larger norm)
        for cls in np.flatnonzero(~reached):
            best_mask[cls] = ((torch.tanh(mask_w[cls]) + 1) / 2).cpu()
            best_pattern[cls] = ((torch.tanh(pattern_w[cls]) + 1) / 2).cpu()
            best_l1[cls] = float(best_mask[cls].sum())
    return {"masks": best_mask.numpy(), "patterns": best_pattern.numpy(), "l1": best_l1,
            "attack_success": last_asr, "reached": reached, "epochs_run": epochs_run, "cost": cost,
            "classes": np.asarray(classes, dtype=np.int64)}


def save_masks(masks: np.ndarray, classes, out_dir: str | Path, *, patterns: np.ndarray | None = None) -> list[str]:
    """Write each reversed mask as ``mask_class_<k>.png`` (and ``trigger_class_<k>.png``, mask x pattern).

    Parameters
    ----------
    masks : ndarray of shape (K, H, W) in [0, 1]
    classes : sequence of K class ids
    out_dir : path (created)
    patterns : ndarray of shape (K, 3, H, W) in [0, 1], optional

    Returns
    -------
    list of str
        The written mask PNG paths, in class order.
    """
    import cv2

    masks = np.asarray(masks)
    classes = [int(c) for c in classes]
    if masks.ndim != 3 or masks.shape[0] != len(classes):
        raise ValueError(f"masks must be (K, H, W) with K = len(classes) = {len(classes)}, got {masks.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, c in enumerate(classes):
        path = out / f"mask_class_{c}.png"
        cv2.imwrite(str(path), np.clip(masks[i] * 255 + 0.5, 0, 255).astype(np.uint8))
        paths.append(str(path))
        if patterns is not None:
            rgb = np.clip(patterns[i] * masks[i][None] * 255 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
            cv2.imwrite(str(out / f"trigger_class_{c}.png"), rgb[:, :, ::-1])  # OpenCV writes BGR
    return paths


class NeuralCleanse(Defence):
    """Neural Cleanse: reverse triggers on the clean split, flag outlier classes, repair the model.

    Parameters
    ----------
    epochs : int
        Most epochs of the batched trigger search (default 100).
    epoch_steps : int
        Mini-batches per epoch of the cost schedule (default 8; the paper: 31, i.e. 1,000 images).
    batch_size : int
        Clean images per class per mini-batch (default 32; the paper's).
    lr : float
        Adam learning rate of the mask and pattern (default 0.1).
    init_cost : float
        First weight of the mask's L1 norm (default 1e-3; the paper's).
    attack_threshold : float in (0, 1)
        Share of a batch a trigger must flip to count as working (default 0.99; the paper's).
    patience : int
        Epochs in a row that reach (miss) the threshold before the cost is raised (lowered) (default 5; the paper's).
    early_stop_patience : int
        Epochs without a gain of ``early_stop_gain`` in the best mask norm before a class stops, once its
        cost went both ways (default 10; the paper's: 25).
    early_stop_gain : float in (0, 1)
        Relative shrink of the best mask norm that counts as a gain (default 0.01).
    threshold : float
        Anomaly index above which a class with a small norm is flagged (default 2.0; the paper's).
    repair : {"unlearn", "prune", "none"}
        What to do with a flagged class (default ``"unlearn"``).
    unlearn_epochs : int
        Fine-tuning epochs of the unlearning repair (default 1; the paper's).
    unlearn_share : float in (0, 1)
        Share of the clean images stamped with a reversed trigger while unlearning (default 0.2; the paper's).
    unlearn_lr : float or None
        Learning rate of unlearning (default: the training recipe's, with its optimizer).
    unlearn_class_weight : {"train", "none"}
        ``"train"``: weight the unlearning loss of each clean image by its class's share of the training
        split over its share of the clean split (:func:`~backdoorlab.defences.base.class_mix_weights`), so
        the fine-tune keeps the class mix the model was trained on; ``"none"`` (default): the plain mean
        (measured in results/nc-strip-full: the weighting did not remove the repair's cost).
    layer : str
        Layer the pruning repair prunes (default ``"last_conv"``).
    prune_threshold : float in (0, 1)
        Clean-set accuracy budget of the pruning repair (absolute drop, default 0.04).
    max_prune_share : float in (0, 1)
        Never prune more than this share of the layer (default 0.5).
    mask_dir : str or None
        Where to write the reversed masks as PNGs (default: nowhere; the report carries them).
    """

    name = "nc"

    def __init__(self, epochs: int = 100, epoch_steps: int = 8, batch_size: int = 32, lr: float = 0.1,
                 init_cost: float = 1e-3, attack_threshold: float = 0.99, patience: int = 5,
                 early_stop_patience: int = 10, early_stop_gain: float = 0.01,
                 threshold: float = 2.0, repair: str = "unlearn", unlearn_epochs: int = 1,
                 unlearn_share: float = 0.2, unlearn_lr: float | None = None, unlearn_class_weight: str = "none",
                 layer: str = "last_conv",
                 prune_threshold: float = 0.04, max_prune_share: float = 0.5, mask_dir: str | None = None) -> None:
        self.epochs = check_positive_int("epochs", epochs)
        self.epoch_steps = check_positive_int("epoch_steps", epoch_steps)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.lr = _check_positive_float("lr", lr)
        self.init_cost = _check_positive_float("init_cost", init_cost)
        self.attack_threshold = check_fraction("attack_threshold", attack_threshold)
        self.patience = check_positive_int("patience", patience)
        self.early_stop_patience = check_positive_int("early_stop_patience", early_stop_patience)
        self.early_stop_gain = check_fraction("early_stop_gain", early_stop_gain)
        self.threshold = _check_positive_float("threshold", threshold)
        self.repair = check_choice("repair", repair, REPAIRS)
        self.unlearn_epochs = check_positive_int("unlearn_epochs", unlearn_epochs)
        self.unlearn_share = check_fraction("unlearn_share", unlearn_share)
        self.unlearn_lr = None if unlearn_lr is None else _check_positive_float("unlearn_lr", unlearn_lr)
        self.unlearn_class_weight = check_choice("unlearn_class_weight", unlearn_class_weight, CLASS_WEIGHTS)
        if not isinstance(layer, str) or not layer:
            raise TypeError(f"layer must be a non-empty string, got {layer!r}")
        self.layer = layer
        self.prune_threshold = check_fraction("prune_threshold", prune_threshold)
        self.max_prune_share = check_fraction("max_prune_share", max_prune_share)
        if mask_dir is not None and not isinstance(mask_dir, (str, Path)):
            raise TypeError(f"mask_dir must be a path or None, got {mask_dir!r}")
        self.mask_dir = None if mask_dir is None else str(mask_dir)

    def config(self) -> dict:
        """The parameters, less ``mask_dir``: where the PNGs go does not change the result, so it must not
        change the keys that cache a step's result (a study gives every cell its own folder)."""
        return {k: v for k, v in super().config().items() if k != "mask_dir"}

    # ---------------------------------------------------------------- detection

    def detect(self, ctx: DefenceContext, *, progress: bool = True) -> dict:
        """Reverse every class's trigger on ``ctx.clean`` and compute the anomaly indices (no repair)."""
        if len(ctx.clean) == 0:
            raise ValueError("Neural Cleanse needs a non-empty clean split (the defender's data)")
        images = to_float_chw(ctx.clean.load_images())
        started = time.perf_counter()
        rev = reverse_triggers(ctx.model, images, epochs=self.epochs, epoch_steps=self.epoch_steps,
                               batch_size=self.batch_size, lr=self.lr, init_cost=self.init_cost,
                               attack_threshold=self.attack_threshold, patience=self.patience,
                               early_stop_patience=self.early_stop_patience, early_stop_gain=self.early_stop_gain,
                               seed=ctx.seed, device=ctx.device, progress=progress)
        index = anomaly_index(rev["l1"])
        median = float(np.median(rev["l1"]))
        flagged = [int(c) for c in rev["classes"][(index > self.threshold) & (rev["l1"] < median)]]
        return {"rev": rev, "index": index, "flagged": flagged, "median_l1": median,
                "search_seconds": time.perf_counter() - started, "images": images}

    # ---------------------------------------------------------------- repairs

    def _unlearn(self, ctx: DefenceContext, images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor,
                 patterns: torch.Tensor, progress: bool) -> tuple[nn.Module, float]:
        """Fine-tune a copy of the model on the clean images, ``unlearn_share`` of them stamped with a
        reversed trigger (drawn among the flagged classes' per image) and kept at their true label."""
        lr = self.unlearn_lr if self.unlearn_lr is not None else float(ctx.train_config.lr)
        bs = int(ctx.train_config.batch_size)
        config = TrainConfig(epochs=self.unlearn_epochs, batch_size=bs, optimizer=ctx.train_config.optimizer, lr=lr)
        dev = resolve_device(ctx.device)
        model = copy.deepcopy(ctx.model).to(dev)
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
        n = images.shape[0]
        gen = keyed_generator(int(ctx.seed), _SALT_UNLEARN)
        # which images carry a trigger, and which flagged class's, fixed per run (seeded)
        stamped = torch.rand(n, generator=gen) < self.unlearn_share
        which = torch.randint(0, masks.shape[0], (n,), generator=gen)
        x_all = images.clone()
        sel = torch.nonzero(stamped).flatten()
        if sel.numel():
            x_all[sel] = stamp(images[sel], masks[which[sel]], patterns[which[sel]])
        x_all, y_all = x_all.to(dev), labels.to(dev)
        weight = None
        if self.unlearn_class_weight == "train":
            n_classes = int(getattr(model, "n_classes", 0)) or int(labels.max()) + 1
            w = class_mix_weights(np.asarray(ctx.train.labels), labels.numpy(), n_classes)
            weight = torch.as_tensor(w, dtype=torch.float32, device=dev)
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(int(ctx.seed))
            for epoch in tqdm(range(self.unlearn_epochs), desc="unlearning", disable=not progress, leave=False):
                model.train()
                order = epoch_order(n, int(ctx.seed), epoch).to(dev)
                for start in range(0, n, bs):
                    b = order[start:start + bs]
                    if weight is None:
                        loss = nn.functional.cross_entropy(model(x_all[b]), y_all[b])
                    else:  # the weighted mean: the batch as if drawn with the training class mix
                        per_row = nn.functional.cross_entropy(model(x_all[b]), y_all[b], reduction="none")
                        loss = (per_row * weight[b]).sum() / weight[b].sum().clamp_min(1e-12)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        model.eval()
        return model, lr

    def _prune(self, ctx: DefenceContext, images: torch.Tensor, masks: torch.Tensor, patterns: torch.Tensor,
               progress: bool) -> tuple[nn.Module, np.ndarray, dict]:
        """Prune the channels of ``self.layer`` the reversed triggers excite most, within the clean-set
        accuracy budget (Fine-Pruning's search and masks, a different order)."""
        dev = resolve_device(ctx.device)
        model = copy.deepcopy(ctx.model).to(dev).eval()
        layer_name, _ = resolve_layer(model, self.layer)  # the clear error for an unknown layer
        n = images.shape[0]

        def clean():
            for start in range(0, n, 256):
                yield images[start:start + 256]

        def stamped():  # image i carries the reversed trigger of flagged class i mod (number flagged)
            for start in range(0, n, 256):
                x = images[start:start + 256]
                j = torch.arange(start, start + x.shape[0]) % masks.shape[0]
                yield stamp(x, masks[j], patterns[j])

        excitation = (image_channel_means(model, stamped(), layer_name, device=dev)
                      - image_channel_means(model, clean(), layer_name, device=dev))
        order = np.argsort(-excitation, kind="stable").astype(np.int64)  # most excited first
        evaluator = FinePruning(layer=self.layer).evaluator(model, ctx.clean, ctx.device, progress=progress)
        search = PruningSearch(evaluator.accuracy, order, self.prune_threshold)
        n_pruned = search.linear(int(np.floor(self.max_prune_share * order.size)))
        pruned = order[:n_pruned].copy()
        apply_pruning(model, self.layer, pruned)
        return model, pruned, {"layer": self.layer, "layer_name": layer_name, "n_channels": int(order.size),
                               "neurons_pruned": int(n_pruned), "neurons_pruned_str": f"{n_pruned}/{order.size}",
                               "excitation": excitation.tolist(),
                               "curve": {str(k): v for k, v in sorted(search.curve.items())}}

    # ---------------------------------------------------------------- the step

    def run(self, ctx: DefenceContext, *, progress: bool = True) -> tuple[DefenceContext, DefenceResult]:
        found = self.detect(ctx, progress=progress)
        rev, index, flagged = found["rev"], found["index"], found["flagged"]
        masks_u8 = np.clip(rev["masks"] * 255 + 0.5, 0, 255).astype(np.uint8)
        report: dict[str, Any] = {
            "classes": rev["classes"].tolist(),
            "mask_l1": rev["l1"].tolist(),
            "anomaly_index": index.tolist(),
            "median_l1": found["median_l1"],
            "flagged_classes": flagged,
            "detected": bool(flagged),
            "target_detected": ctx.target_class in flagged,
            "reached": rev["reached"].tolist(),
            "trigger_attack_success": rev["attack_success"].tolist(),
            "epochs_run": rev["epochs_run"].tolist(),
            "final_cost": rev["cost"].tolist(),
            "search_seconds": found["search_seconds"],
            "masks": masks_u8.tolist(),
            "repair": self.repair,
        }
        if self.mask_dir is not None:
            report["mask_pngs"] = save_masks(rev["masks"], rev["classes"], self.mask_dir, patterns=rev["patterns"])
        model, pruned = ctx.model, None
        if flagged and self.repair != "none":
            pos = [int(np.flatnonzero(rev["classes"] == c)[0]) for c in flagged]
            masks = torch.from_numpy(rev["masks"][pos])
            patterns = torch.from_numpy(rev["patterns"][pos])
            if self.repair == "unlearn":
                labels = torch.from_numpy(np.asarray(ctx.clean.labels, dtype=np.int64))
                model, lr = self._unlearn(ctx, found["images"], labels, masks, patterns, progress)
                report.update(unlearn_epochs=self.unlearn_epochs, unlearn_lr=lr, unlearn_share=self.unlearn_share,
                              unlearn_class_weight=self.unlearn_class_weight)
            else:
                model, pruned, prune_report = self._prune(ctx, found["images"], masks, patterns, progress)
                report.update(prune_report)
        report["config"] = self.config()
        return ctx.replace(model=model), DefenceResult(self.name, pruned_channels=pruned, report=report)
