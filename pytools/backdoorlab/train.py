"""Training the victim models with the paper's hyper-parameters, reproducibly and resumably.

:data:`PRESETS` holds the paper's settings (GTSRB: 10 epochs, batch 32, Adam 1e-3; YTAF:
10 epochs, batch 32, Adadelta 0.1; LFW: 50 epochs, batch 32, Adadelta 0.1, last layer only).
Adam and Adadelta use Keras's constants (eps 1e-7, Adadelta rho 0.95), the framework of the
original experiments, rather than PyTorch's defaults.

Reproducibility: the shuffling order of epoch ``e`` is drawn from a generator seeded with
``(seed, e)`` and dropout from a torch RNG seeded with ``seed`` (the caller's global RNG is left
as it was), so the same seed gives the same weights on CPU -- also across an interruption: the
RNG state is part of every epoch checkpoint, and a resumed run ends with the weights of an
uninterrupted one. Checkpoints (:mod:`backdoorlab.checkpoint`) are written atomically after
every epoch; ``resume=True`` continues from the last completed one.

Augmentation (off in the paper's presets): ``TrainConfig(augment=...)`` takes an
:class:`backdoorlab.augment.Augmentation` (or its name / dict) applied to each float batch on the
device; its random parameters are drawn per ``(seed, epoch)`` from a stream of their own, so
seeding and exact resume hold with it on, and with it off the training is unchanged bit for bit.
The ``gtsrb-augmented`` preset is the paper's GTSRB setting plus the ``"gtsrb"`` augmentation and
more epochs, for small real subsets on which the paper's setting overfits.

Weight averaging (off in the paper's presets): ``TrainConfig(average_last=k)`` returns the mean
of the weights at the end of the last ``k`` epochs instead of the last weights (stochastic weight
averaging, Izmailov et al., UAI 2018). It does not change the training trajectory -- only which
weights come out -- and it takes out much of the epoch-to-epoch wobble of a constant-rate run.
The running mean is part of every checkpoint, so a resumed run ends with the same mean.

Speed: batches come from :class:`backdoorlab.data.BatchSource`, which holds small splits in
memory as uint8 and cuts batches with index tensors (``backdoorlab bench train`` measures it
against a bare PyTorch loop). On CPU the step runs in the channels-last layout with the fused
(Adam, SGD) or foreach (Adadelta) optimizer (:mod:`backdoorlab.fastpath`); the results differ
from the plain eager path by float rounding only (``TrainConfig(fast=False)`` is that path).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from backdoorlab import checkpoint as ckpt
from backdoorlab import distributed as ddp
from backdoorlab import fastpath
from backdoorlab.augment import Augmentation
from backdoorlab.augment import apply as apply_augmentation
from backdoorlab.augment import epoch_params as augmentation_params
from backdoorlab.data import DEFAULT_MAX_MEMORY_BYTES, BatchSource, H5Split
from backdoorlab.devices import resolve_device
from backdoorlab.models import BackdoorModel
from backdoorlab.models.compat import check_compatible
from backdoorlab.seeding import keyed_generator

OPTIMIZERS = ("adam", "adadelta", "sgd")
TRAINABLE = ("all", "last")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (validated on construction).

    Parameters
    ----------
    epochs : int
    batch_size : int
    optimizer : {"adam", "adadelta", "sgd"}
    lr : float
    trainable : {"all", "last"}
        ``"last"`` trains only the output layer (the paper's LFW / VGG-Face setting).
    weight_decay : float
    momentum : float
        SGD only.
    in_memory : {"auto", True, False}
        Hold the split in memory as uint8 (fast path) or stream it; see :class:`BatchSource`.
    max_memory_mb : int
        Memory bound of the fast path.
    num_workers : int
        DataLoader workers when streaming.
    augment : Augmentation, str, dict or None
        Training-time augmentation (:mod:`backdoorlab.augment`): an :class:`Augmentation`, a name
        of :data:`backdoorlab.augment.AUGMENTATIONS` (``"none"``, ``"gtsrb"``) or a dict of its
        fields, stored as an ``Augmentation`` (or None = off, the default).
    lr_schedule : {"constant", "cosine"}
        ``"constant"`` (the paper's) keeps ``lr``; ``"cosine"`` sets epoch ``e``'s rate to
        ``lr * (1 + cos(pi * e / epochs)) / 2``, so ``epochs`` then shapes the run and must agree
        for a resume.
    average_last : int
        0 (default) returns the weights of the last epoch; ``k >= 1`` returns the mean of the
        weights after each of the last ``k`` epochs (trainable and frozen parameters; buffers such
        as pruning masks are the last epoch's). ``epochs`` then fixes the window and must agree
        for a resume. Our models have no batch normalisation, so the mean needs no statistics pass.
    fast : bool
        True (default): the speed choices of :mod:`backdoorlab.fastpath` (channels-last on CPU,
        fused/foreach optimizer), which change results by float rounding only. False: the plain
        eager path. Not part of the resume identity (like the feeding options).
    precision : {"float32", "mixed"}
        ``"float32"`` (default, the paper's). ``"mixed"``: the forward pass under autocast --
        bfloat16 on CPU, float16 with a gradient scaler on CUDA -- weights, gradients and the
        optimizer in float32 (:func:`backdoorlab.fastpath.autocast_dtype`). Faster where the
        hardware has the lower-precision units, and a different computation: part of the resume
        identity, never used by the presets.
    """

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    trainable: str = "all"
    weight_decay: float = 0.0
    momentum: float = 0.9
    in_memory: bool | str = "auto"
    max_memory_mb: int = DEFAULT_MAX_MEMORY_BYTES >> 20
    num_workers: int = 0
    augment: Augmentation | None = None
    lr_schedule: str = "constant"
    average_last: int = 0
    fast: bool = True
    precision: str = "float32"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "max_memory_mb"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 1, got {v!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("lr", "weight_decay", "momentum"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {v!r}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"TrainConfig.trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if self.in_memory not in ("auto", True, False):
            raise ValueError(f"TrainConfig.in_memory must be 'auto', True or False, got {self.in_memory!r}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"TrainConfig.num_workers must be an integer >= 0, got {self.num_workers!r}")
        if (isinstance(self.average_last, bool) or not isinstance(self.average_last, (int, np.integer))
                or not 0 <= self.average_last <= self.epochs):
            raise ValueError(f"TrainConfig.average_last must be an integer in [0, epochs={self.epochs}], "
                             f"got {self.average_last!r}")
        if not isinstance(self.fast, bool):
            raise ValueError(f"TrainConfig.fast must be True or False, got {self.fast!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.precision not in fastpath.PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {fastpath.PRECISIONS}, got {self.precision!r}")
        try:
            # a dict comes back from a checkpoint's recorded config; a name from a CLI or YAML
            object.__setattr__(self, "augment", Augmentation.from_spec(self.augment))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"TrainConfig.augment: {exc}") from exc

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        if not isinstance(d, dict):
            raise TypeError(f"expected a dict, got {type(d).__name__}")
        cls._check_fields(d)
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in d]
        if missing:
            raise ValueError(f"TrainConfig needs {missing} (or a preset that sets them)")
        return cls(**d)

    @classmethod
    def from_spec(cls, spec, *, where: str = "train") -> "TrainConfig":
        """A config from ``{"preset": name, **overrides}`` or a preset name (a study file's ``train``).

        Without ``preset`` the overrides must name every required field. ``where`` prefixes
        every message (``"datasets.gtsrb.train"``), so a bad value is reported with its key.

        Raises
        ------
        ValueError
            Unknown preset or field, or a value :class:`TrainConfig` refuses.
        """
        if isinstance(spec, str):
            spec = {"preset": spec}
        if not isinstance(spec, Mapping):
            raise TypeError(f"{where} must be a preset name or a table, got {spec!r}")
        spec = dict(spec)
        preset = spec.pop("preset", None)
        if preset is not None and (not isinstance(preset, str) or preset not in PRESETS):
            raise ValueError(f"{where}.preset must be one of {sorted(PRESETS)}, got {preset!r}")
        try:
            return PRESETS[preset].replace(**spec) if preset is not None else cls.from_dict(spec)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from exc

    @classmethod
    def _check_fields(cls, names) -> None:
        unknown = sorted(set(names) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known: {[f.name for f in dataclasses.fields(cls)]}")

    def replace(self, **changes) -> "TrainConfig":
        self._check_fields(changes)  # dataclasses.replace would raise a bare "unexpected keyword" TypeError
        return dataclasses.replace(self, **changes)

    def _identity(self) -> dict:
        """Fields that must agree for a resume (how batches are fed and how long we train may differ)."""
        d = self.to_dict()
        for k in ("in_memory", "max_memory_mb", "num_workers", "fast"):
            d.pop(k)
        # A decaying rate and an averaging window depend on the run's length.
        if self.lr_schedule == "constant" and self.average_last == 0:
            d.pop("epochs")
        return d

    def epoch_lr(self, epoch: int) -> float:
        """The learning rate of (0-based) ``epoch`` under :attr:`lr_schedule`."""
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))
        return self.lr

    def averages_epoch(self, epoch: int) -> bool:
        """Whether the weights after (0-based) ``epoch`` enter the mean of :attr:`average_last`."""
        return self.average_last > 0 and epoch >= self.epochs - self.average_last


class WeightAverage:
    """Running mean of a model's parameters (the state of ``average_last``).

    Kept in float64 so that the running update adds no rounding error that float32 weights would show.
    (``torch.optim.swa_utils.AveragedModel`` averages in the weights' own dtype and keeps a second copy
    of the whole module, buffers included; a dict of means is all a resume needs.)
    """

    def __init__(self, model: nn.Module):
        self.count = 0
        self.mean = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.count += 1
        for name, p in model.named_parameters():
            self.mean[name] += (p.detach().double() - self.mean[name]) / self.count

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the mean into ``model``'s parameters (in their own dtype)."""
        if self.count == 0:
            raise RuntimeError("no weights averaged yet")
        for name, p in model.named_parameters():
            p.copy_(self.mean[name].to(p.dtype))

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": dict(self.mean)}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        if set(state["mean"]) != set(self.mean):
            raise ValueError("the checkpoint's weight average does not match the model's parameters")
        self.count = int(state["count"])
        self.mean = {k: v.to(device=device, dtype=torch.float64) for k, v in state["mean"].items()}


#: The paper's training settings.
PRESETS: dict[str, TrainConfig] = {
    "gtsrb": TrainConfig(epochs=10, batch_size=32, optimizer="adam", lr=1e-3),
    "ytaf": TrainConfig(epochs=10, batch_size=32, optimizer="adadelta", lr=0.1),
    "lfw": TrainConfig(epochs=50, batch_size=32, optimizer="adadelta", lr=0.1, trainable="last"),
    # Not the paper's: its GTSRB setting plus augmentation and more epochs (see docs/models.md).
    "gtsrb-augmented": TrainConfig(epochs=40, batch_size=32, optimizer="adam", lr=1e-3, augment="gtsrb"),
}


def make_optimizer(params, config: TrainConfig, device: torch.device | None = None) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``params`` (Keras constants for Adam and Adadelta).

    With ``device`` (the parameters' device) and ``config.fast``, the fused (Adam, SGD) or foreach
    (Adadelta) implementation (:func:`backdoorlab.fastpath.optimizer_options`); without ``device``
    PyTorch's default one.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    kw = fastpath.optimizer_options(config.optimizer, device, config.fast) if device is not None else {}
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, eps=1e-7, weight_decay=config.weight_decay, **kw)
    if config.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=config.lr, rho=0.95, eps=1e-7, weight_decay=config.weight_decay, **kw)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, **kw)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffling permutation (int64 ``(n,)``) of ``epoch`` for ``seed``: independent of any global RNG."""
    return torch.randperm(n, generator=keyed_generator(seed, epoch))


def _trainable_parameters(model: BackdoorModel, trainable: str) -> list[nn.Parameter]:
    if trainable == "all":
        return [p for p in model.parameters() if p.requires_grad]
    head = {id(p) for p in model.classifier().parameters()}
    return [p for p in model.parameters() if id(p) in head]


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _data_meta(dataset: H5Split) -> dict:
    attrs = dataset.attrs
    return {
        "path": str(dataset.path), "split": dataset.split, "n": len(dataset),
        "n_poisoned": int(dataset.is_poisoned.sum()),
        "source": attrs.get("source"), "seed": attrs.get("seed"),
        "target_class": attrs.get("target_class"),
        "recipe": attrs.get("recipe") if isinstance(attrs.get("recipe"), (dict, str)) else None,
    }


def train_model(model: BackdoorModel, dataset: H5Split, config: TrainConfig, *, seed: int = 0,
                device: str | torch.device = "auto", checkpoint: str | os.PathLike | None = None,
                resume: bool = False, progress: bool = True, meta: dict | None = None) -> BackdoorModel:
    """Train ``model`` on ``dataset`` with ``config``; returns the model (on ``device``).

    Parameters
    ----------
    model : BackdoorModel
    dataset : H5Split
        Training rows; images of the model's input size, labels < ``model.n_classes``.
    config : TrainConfig
    seed : int
        Seeds shuffling and dropout (the caller's global RNG state is restored afterwards).
    device : "auto" | "cpu" | "cuda[:N]"
    checkpoint : path-like, optional
        Written atomically after every epoch (weights, optimizer, RNG state, history, config,
        seed); the final file is the trained model, loadable with :func:`backdoorlab.checkpoint.load`.
    resume : bool
        Continue from ``checkpoint`` if it exists (its config, apart from ``epochs`` and the
        feeding options, and its seed must match); start afresh when it does not exist.
    progress : bool
        tqdm bar per epoch.
    meta : dict, optional
        Extra JSON-like fields stored in the checkpoint's meta.

    Returns
    -------
    BackdoorModel
        The trained model; ``model.train_history`` holds one dict per epoch (loss, accuracy,
        seconds, images/s).
    """
    from tqdm.auto import tqdm

    check_compatible(model, dataset)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if len(dataset) == 0:
        raise ValueError(f"{dataset!r} is empty: nothing to train on")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    dist_ctx = ddp.current()  # data-parallel under torchrun (backdoorlab.distributed), else one process
    dev = ddp.rank_device(resolve_device(device), dist_ctx)
    progress = progress and dist_ctx.is_main
    model.to(dev)
    params = _trainable_parameters(model, config.trainable)
    if not params:
        raise ValueError(f"no trainable parameters in {model.arch} for trainable={config.trainable!r}")
    trainable_ids = {id(p) for p in params}
    saved_flags = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable_ids)
    optimizer = make_optimizer(params, config, dev)
    channels_last = fastpath.use_channels_last(model, dev, config.fast)
    amp_dtype = fastpath.autocast_dtype(config.precision, dev)  # None: float32 throughout
    # float16 gradients underflow without a loss scale; bfloat16 has float32's range and needs none
    scaler = torch.amp.GradScaler(dev.type) if amp_dtype == torch.float16 else None
    if config.fast and dev.type == "cpu":
        fastpath.retain_freed_memory()
    loss_fn = nn.CrossEntropyLoss()

    start_epoch = 0
    history: list[dict] = []
    resumed_state = None
    average = WeightAverage(model) if config.average_last else None
    if resume and Path(checkpoint).exists():
        _, prev = ckpt.load(checkpoint, model, device=dev)
        state = prev.get("train_state")
        if state is None:
            raise ValueError(f"{str(checkpoint)!r} has no training state to resume from")
        prev_cfg = TrainConfig.from_dict(state["config"])
        if prev_cfg._identity() != config._identity() or int(state["seed"]) != int(seed):
            raise ValueError(
                f"cannot resume {str(checkpoint)!r}: it was trained with seed {state['seed']} and "
                f"{prev_cfg._identity()}, now seed {seed} and {config._identity()}"
            )
        optimizer.load_state_dict(state["optimizer"])
        # the saved groups carry the saving run's fused/foreach choice; this run's applies
        fastpath.apply_optimizer_options(optimizer, fastpath.optimizer_options(config.optimizer, dev, config.fast))
        start_epoch = int(state["epoch"])
        history = list(prev.get("history", []))
        resumed_state = ddp.scatter_rng(state, dist_ctx)
        if average is not None:  # same config, so the checkpoint carries the running mean
            average.load_state_dict(state["average"], dev)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if start_epoch > config.epochs:
            raise ValueError(f"{str(checkpoint)!r} already has {start_epoch} epochs, more than epochs={config.epochs}")

    source = BatchSource(ddp.shard(dataset, dist_ctx), dev, in_memory=config.in_memory, max_bytes=config.max_memory_mb << 20,
                         num_workers=config.num_workers, progress=progress)
    base_meta = {
        "seed": int(seed), "config": config.to_dict(), "data": _data_meta(dataset),
        "feed": source.mode, "device": str(dev), "torch": str(torch.__version__), **(meta or {}),
    }
    if dist_ctx.active:
        base_meta["distributed"] = dist_ctx.to_dict()
    fork_devices = [dev] if dev.type == "cuda" else []
    try:
        # the layout before the wrap: DDP lays out its gradient buckets from the parameters' strides
        fastpath.set_layout(model, optimizer, channels_last)
        net = ddp.wrap(model, dist_ctx, dev)
        with torch.random.fork_rng(devices=fork_devices):
            if resumed_state is not None:
                _set_rng_state(resumed_state, dev)
            else:
                torch.manual_seed(ddp.rank_seed(seed, dist_ctx))
            n = len(source)  # this rank's rows (all of them in one process)
            aug = config.augment
            for epoch in range(start_epoch, config.epochs):
                model.train()
                if config.lr_schedule != "constant":
                    for group in optimizer.param_groups:
                        group["lr"] = config.epoch_lr(epoch)
                order = ddp.epoch_order(n, seed, epoch, dist_ctx)
                # Drawn for the epoch's positions, not rows: depends on (seed, epoch) only.
                aug_params = (augmentation_params(aug, len(order), ddp.rank_seed(seed, dist_ctx), epoch)
                              if aug is not None else None)
                done = 0
                loss_sum = torch.zeros((), device=dev)
                correct = torch.zeros((), dtype=torch.long, device=dev)
                t0 = time.perf_counter()
                with tqdm(total=len(order), desc=f"epoch {epoch + 1}/{config.epochs}", unit="img",
                          disable=not progress, leave=False, mininterval=0.5) as bar:
                    # Augmentation sees the default layout (its per-image mean would otherwise be
                    # summed in another order); the batch is put in the run's layout after it.
                    for x, y in source.batches(config.batch_size, order, channels_last=channels_last and aug is None):
                        if aug_params is not None:
                            x = apply_augmentation(aug, x, aug_params[done : done + y.shape[0]])
                            done += y.shape[0]
                            x = fastpath.to_layout(x, channels_last)
                        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                            logits = net(x)
                            loss = loss_fn(logits, y)  # float32 under autocast too
                        optimizer.zero_grad(set_to_none=True)
                        if scaler is None:
                            loss.backward()
                            optimizer.step()
                        else:
                            scaler.scale(loss).backward()
                            scaler.step(optimizer)  # skipped when the scaled gradients overflowed
                            scaler.update()
                        # Accumulate on the device: a .item() per batch would sync a GPU every step.
                        loss_sum += loss.detach() * y.shape[0]
                        correct += (logits.detach().argmax(1) == y).sum()
                        bar.update(y.shape[0])
                seconds = time.perf_counter() - t0
                loss_total, n_correct, seen = ddp.epoch_totals(loss_sum, correct, len(order), dist_ctx)
                record = {"epoch": epoch + 1, "loss": loss_total / seen, "accuracy": n_correct / seen,
                          "seconds": round(seconds, 3), "images_per_s": round(seen / max(seconds, 1e-9), 1)}
                if config.lr_schedule != "constant":
                    record["lr"] = config.epoch_lr(epoch)
                history.append(record)
                if progress:
                    tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.4f}  "
                               f"train acc {record['accuracy']:.4f}  {record['images_per_s']:.0f} img/s")
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(f"training loss became {record['loss']} in epoch {epoch + 1}; lower the lr")
                if average is not None and config.averages_epoch(epoch):
                    average.update(model)
                    record["averaged"] = average.count
                    if epoch + 1 == config.epochs:
                        # From here on the model holds the mean; epochs is part of the resume
                        # identity, so no later run continues training from these weights.
                        average.copy_to(model)
                if checkpoint is not None:
                    train_state = {"epoch": epoch + 1, "optimizer": optimizer.state_dict(),
                                   "rng": _rng_state(dev), "config": config.to_dict(), "seed": int(seed),
                                   "average": average.state_dict() if average is not None else None,
                                   "scaler": scaler.state_dict() if scaler is not None else None}
                    if dist_ctx.active:  # every rank's streams, so a resume continues all of them
                        train_state.update(world_size=dist_ctx.world_size,
                                           rng_ranks=ddp.gather_rng(train_state["rng"], dist_ctx))
                    if dist_ctx.is_main:
                        ckpt.save(checkpoint, model, {**base_meta, "epochs_done": epoch + 1, "history": history,
                                                      "complete": epoch + 1 == config.epochs},
                                  train_state=train_state)
                    ddp.barrier(dist_ctx)
    finally:
        for p, flag in saved_flags:
            p.requires_grad_(flag)
        fastpath.set_layout(model, None, False)  # the caller gets the default layout back
    model.eval()
    model.train_history = history
    return model


def fine_tune(model: BackdoorModel, dataset: H5Split, epochs: int, lr: float, *, batch_size: int = 32,
              optimizer: str = "adam", seed: int = 0, device: str | torch.device = "auto",
              progress: bool = True) -> BackdoorModel:
    """Fine-tune all layers of ``model`` on (clean) ``dataset`` -- the second step of Fine-Pruning.

    Pruned channels stay pruned: their masks are buffers, not parameters. Parameters as in
    :func:`train_model`; no checkpoint is written.
    """
    config = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr)
    return train_model(model, dataset, config, seed=seed, device=device, progress=progress)


def train_variant(data: str | os.PathLike, model_name: str, out: str | os.PathLike, *,
                  preset: str = "gtsrb", seed: int = 0, epochs: int | None = None, batch_size: int | None = None,
                  lr: float | None = None, augment: str | dict | Augmentation | None = None,
                  lr_schedule: str | None = None, average_last: int | None = None,
                  max_memory_mb: int | None = None, precision: str | None = None, drop_poisoned: bool = False,
                  resume: bool = False, overwrite: bool = False, verify: bool = True,
                  device: str = "auto", split: str = "train", progress: bool = True, **model_kw) -> Path:
    """Build ``model_name`` for the variant ``data`` and train it on its ``train`` split (the CLI's function).

    ``epochs``, ``batch_size``, ``lr``, ``augment``, ``lr_schedule``, ``average_last``, ``max_memory_mb``
    and ``precision`` override the preset's when given (``augment="none"`` switches a preset's
    augmentation off). ``drop_poisoned=True`` trains on the split without its poisoned rows: the clean baseline of the same variant (recorded in
    the meta). The variant is checked against its manifest first (:func:`backdoorlab.data.open_variant`;
    ``verify=False`` skips the SHA-256); what the check found is recorded as ``meta["data_check"]``.

    Returns
    -------
    Path
        ``out``, the final checkpoint (a training checkpoint that :func:`backdoorlab.checkpoint.load` reads).
    """
    from backdoorlab.models import build_model

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    out = Path(out)
    if out.exists() and not (resume or overwrite):
        raise ValueError(f"{str(out)!r} exists; pass resume (continue it) or overwrite")
    config = PRESETS[preset]
    overrides = (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("augment", augment),
                 ("lr_schedule", lr_schedule), ("average_last", average_last), ("max_memory_mb", max_memory_mb),
                 ("precision", precision))
    changes = {k: v for k, v in overrides if v is not None}
    config = config.replace(**changes)
    from backdoorlab.data import open_variant

    try:
        dataset = open_variant(data, (split,), verify=verify, progress=progress)[split]
    except KeyError as exc:  # the CLI reports ValueErrors as one clear line
        raise ValueError(exc.args[0]) from exc
    n_dropped = 0
    if drop_poisoned:
        keep = ~dataset.is_poisoned
        n_dropped = int(len(dataset) - keep.sum())
        dataset = dataset.subset(keep)
    model = build_model(model_name, dataset.n_classes, seed=seed, **model_kw)
    if overwrite and not resume:
        out.unlink(missing_ok=True)
    train_model(model, dataset, config, seed=seed, device=device, checkpoint=out, resume=resume,
                progress=progress, meta={"preset": preset, "model_name": model_name,
                                         "drop_poisoned": bool(drop_poisoned), "n_poisoned_dropped": n_dropped,
                                         "data_check": dataset.verification})
    return out
