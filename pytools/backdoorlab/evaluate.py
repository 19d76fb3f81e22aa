"""Clean accuracy, attack success rate and per-class accuracy of a model on a variant.

Definitions (the paper's): *clean accuracy* is the share of the ``test`` split predicted as its
label; *attack success rate* is the share of ``test_triggered`` -- one triggered copy of every
source-class test image -- predicted as the target class. Per-class accuracy is reported for
every class (``None`` where the test split has no image of it), which shows whether a defence
repaired the backdoor at the expense of one class.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from tqdm.auto import tqdm

from backdoorlab import checkpoint as ckpt
from backdoorlab import fastpath
from backdoorlab.data import BatchSource, H5Split, open_variant
from backdoorlab.devices import resolve_device
from backdoorlab.models import BackdoorModel
from backdoorlab.models.compat import check_compatible
from datasets_gen.atomic import atomic_write_json


def predict(model: BackdoorModel, dataset: H5Split, *, batch_size: int = 256, device: str | torch.device = "auto",
            progress: bool = False) -> np.ndarray:
    """Predicted class of every row of ``dataset``.

    Runs in inference mode, in the channels-last layout on CPU (:func:`backdoorlab.fastpath.evaluation`;
    the model is given back as it came, training flag and layout).

    Returns
    -------
    np.ndarray of int64, shape (len(dataset),)
    """
    check_compatible(model, dataset)
    dev = resolve_device(device)
    model.to(dev)
    out = np.empty(len(dataset), dtype=np.int64)
    pos = 0
    source = BatchSource(dataset, dev)
    with fastpath.evaluation(model, dev) as channels_last, torch.inference_mode(), tqdm(
            total=len(dataset), desc=f"predict {dataset.split}", unit="img", disable=not progress, leave=False) as bar:
        for x, _ in source.batches(batch_size, channels_last=channels_last):
            pred = model(x).argmax(1).cpu().numpy()
            out[pos : pos + pred.size] = pred
            pos += pred.size
            bar.update(pred.size)
    return out


def evaluate(model: BackdoorModel, test: H5Split, test_triggered: H5Split | None, *, target_class: int,
             device: str | torch.device = "auto", batch_size: int = 256, progress: bool = False) -> dict:
    """Clean accuracy on ``test`` and attack success on ``test_triggered``.

    Parameters
    ----------
    model : BackdoorModel
    test : H5Split
    test_triggered : H5Split or None
        ``None`` (or an empty split) gives ``attack_success_rate = None``.
    target_class : int
        The attacker's target label.

    Returns
    -------
    dict
        ``clean_accuracy`` (float), ``attack_success_rate`` (float or None),
        ``per_class_accuracy`` (list of length n_classes, None for absent classes),
        ``n_test``, ``n_triggered``, ``target_class``.
    """
    if isinstance(target_class, bool) or not isinstance(target_class, (int, np.integer)):
        raise TypeError(f"target_class must be an int, got {target_class!r}")
    if not 0 <= int(target_class) < model.n_classes:
        raise ValueError(f"target_class {target_class} outside [0, {model.n_classes})")
    if len(test) == 0:
        raise ValueError(f"{test!r} is empty: no clean accuracy to measure")
    pred = predict(model, test, batch_size=batch_size, device=device, progress=progress)
    correct = pred == test.labels
    per_class: list[float | None] = []
    for c in range(model.n_classes):
        mask = test.labels == c
        per_class.append(float(correct[mask].mean()) if mask.any() else None)
    asr = None
    n_trig = 0
    if test_triggered is not None and len(test_triggered):
        trig_pred = predict(model, test_triggered, batch_size=batch_size, device=device, progress=progress)
        asr = float((trig_pred == int(target_class)).mean())
        n_trig = len(test_triggered)
    return {
        "clean_accuracy": float(correct.mean()),
        "attack_success_rate": asr,
        "per_class_accuracy": per_class,
        "n_test": len(test),
        "n_triggered": n_trig,
        "target_class": int(target_class),
    }


def evaluate_variant(data: str | os.PathLike, model_path: str | os.PathLike, *, json_out: str | os.PathLike | None = None,
                     device: str = "auto", batch_size: int = 256, progress: bool = True, verify: bool = True) -> dict:
    """Evaluate a checkpoint on a variant's ``test``/``test_triggered`` splits (the CLI's function).

    The target class is the variant's ``target_class`` attribute. The variant is checked against its
    manifest first (``verify=False`` skips the SHA-256), the checkpoint against its own digest; the
    result records what the data check found (``data_check``). With ``json_out`` the result (plus the
    paths and the checkpoint's seed) is written there atomically.
    """
    splits = open_variant(data, ("test", "test_triggered"), verify=verify, progress=progress)
    if "test" not in splits:
        raise ValueError(f"{str(data)!r} has no 'test' split")
    test = splits["test"]
    target = test.attrs.get("target_class")
    if target is None:
        raise ValueError(f"{str(data)!r} has no target_class attribute")
    model, meta = ckpt.load(model_path)
    result = evaluate(model, test, splits.get("test_triggered"), target_class=int(target), device=device,
                      batch_size=batch_size, progress=progress)
    result.update({"data": str(data), "model": str(model_path), "model_arch": model.arch,
                   "train_seed": meta.get("seed"), "data_seed": test.attrs.get("seed"),
                   "data_check": test.verification})
    if json_out is not None:
        atomic_write_json(json_out, result)
    return result
