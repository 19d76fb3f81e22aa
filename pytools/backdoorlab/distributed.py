"""Data-parallel training: ``torchrun --nproc_per_node N -m backdoorlab train ...``.

``torchrun`` starts N processes and tells each its place through the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). :func:`init_from_env` joins
them into one ``torch.distributed`` process group -- ``gloo`` on CPU, ``nccl`` on CUDA (one GPU
per process, ``cuda:LOCAL_RANK``) -- and :func:`backdoorlab.train.train_model` then trains one
model with ``DistributedDataParallel`` through the small hooks of this module. Without
``torchrun`` (``WORLD_SIZE`` unset or 1) every hook is the identity and training is exactly the
single-process training.

How the rows are shared. The training split is cut into ``world_size`` contiguous shards of
HDF5 rows (sizes differ by at most one); rank ``r`` opens, reads and holds only shard ``r``
(:func:`shard`), so N processes together hold the split once and each reads a contiguous part of
the file. Each epoch every rank shuffles its own shard with a generator keyed by
``(seed, epoch, rank)``; a shorter shard is padded with the start of its own order so every rank
runs the same number of steps (as ``torch.utils.data.DistributedSampler`` pads). One step
averages the gradients of the ranks' batches, so the step's batch is the union of one batch of
every shard: a stratified sample of the split rather than a uniform one, which is an unbiased
estimate of the same gradient.

The global batch size rule. ``--batch-size`` (and a preset's ``batch_size``) is the batch of ONE
process; a step of N processes sees ``batch_size x N`` images, and an epoch has ``1/N`` as many
steps. The learning rate is not rescaled: the paper's presets (batch 32) keep their meaning only
with one process; with N processes, pass ``--batch-size 32/N`` (e.g. 16 on 2) to keep the
paper's global batch of 32, or keep 32 per process and accept a global batch of ``32 N``.

Reproducibility. With the same seed and the same number of processes, a run gives the same
weights (gloo's all-reduce adds in a fixed order; NCCL may not); a different number of processes
is a different run (other shards, other batches), so a resume must use the same number, which is
checked. Dropout and augmentation draw from per-rank streams (:func:`rank_seed`), so the ranks
do not drop the same units. Only rank 0 writes the checkpoint (atomically, the usual format); it
also carries every rank's RNG state, so a resumed run continues every rank's streams.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from backdoorlab.seeding import keyed_generator

#: Salt of the per-rank streams (dropout, augmentation), apart from the shuffling's keys.
_RANK_STREAM = 0xD1D9


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run (``world_size == 1``: no such run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend}


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by ``torchrun`` (1 when unset)."""
    n = _env_int("WORLD_SIZE", 1)
    if n < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {n}")
    return n


def init_from_env(device: torch.device, timeout: timedelta | None = None) -> tuple[DistContext, torch.device]:
    """Join the process group ``torchrun`` described; returns (context, this rank's device).

    Without ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing is started and ``device`` comes back
    unchanged. On CUDA each process takes ``cuda:LOCAL_RANK`` and the ``nccl`` backend; on CPU
    the ``gloo`` backend.

    Raises
    ------
    ValueError
        Inconsistent ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``, or more CUDA processes on this machine
        than GPUs.
    """
    world = env_world_size()
    if world == 1:
        return DistContext(), device
    rank, local = _env_int("RANK", -1), _env_int("LOCAL_RANK", -1)
    if not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK={rank} and LOCAL_RANK={local} must be in [0, WORLD_SIZE={world}); "
                         "start the processes with torchrun")
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPU(s): "
                             "start at most one process per GPU (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, **({"timeout": timeout} if timeout is not None else {}))
    return DistContext(rank, world, local, dist.get_backend()), device


def shutdown() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


#: Depth of :func:`local_only` blocks: inside one, :func:`current` reports a single process.
_local_depth = 0


def group() -> DistContext:
    """The context of the initialised process group (even inside :func:`local_only`), or the
    single-process one."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), dist.get_backend())


def current() -> DistContext:
    """The context training runs in: the process group's (:func:`group`), or the single-process
    one without a group or inside :func:`local_only`."""
    if _local_depth:
        return DistContext()
    return group()


@contextmanager
def local_only() -> Iterator[None]:
    """Work that one rank does alone (under ``torchrun``, ``reproduce`` evaluates and defends on
    rank 0 only): inside the block :func:`current` reports one process, so a training called there
    (a defence's retraining) trains in this process alone instead of waiting in a collective for
    ranks that are not there."""
    global _local_depth
    _local_depth += 1
    try:
        yield
    finally:
        _local_depth -= 1


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (a collective; ``obj`` itself in one process): the ranks
    take one decision, e.g. whether a model is already trained, from one look at the files."""
    if not ctx.active:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_rows(n: int, ctx: DistContext) -> np.ndarray:
    """Positions ``[lo, hi)`` of rank ``ctx.rank``'s contiguous shard of ``n`` rows (sizes differ by <= 1)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if n < ctx.world_size:
        raise ValueError(f"{n} training rows cannot be shared by {ctx.world_size} processes: "
                         "every process needs at least one row")
    bounds = np.linspace(0, n, ctx.world_size + 1).round().astype(np.int64)
    return np.arange(bounds[ctx.rank], bounds[ctx.rank + 1], dtype=np.int64)


def shard(dataset, ctx: DistContext):
    """This rank's part of ``dataset`` (an :class:`~backdoorlab.data.H5Split`): itself when not distributed."""
    if not ctx.active:
        return dataset
    return dataset.subset(shard_rows(len(dataset), ctx))


def epoch_order(n_local: int, seed: int, epoch: int, ctx: DistContext) -> torch.Tensor:
    """The order (int64, positions in this rank's shard) of ``epoch``.

    Single process: the permutation keyed by ``(seed, epoch)`` (:func:`backdoorlab.train.epoch_order`).
    Distributed: a permutation keyed by ``(seed, epoch, rank)``, padded by repeating its start to
    the largest shard's length, so every rank runs the same number of steps.
    """
    if not ctx.active:
        return torch.randperm(n_local, generator=keyed_generator(seed, epoch))
    longest = int(_all_reduce([n_local], ctx, dist.ReduceOp.MAX)[0])
    order = torch.randperm(n_local, generator=keyed_generator(seed, epoch, ctx.rank))
    if longest > n_local:
        order = order.repeat(-(-longest // n_local))[:longest]
    return order


def _all_reduce(values, ctx: DistContext, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduce a few numbers (float64 on the CPU for gloo; NCCL needs them on this rank's GPU)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if ctx.backend == "nccl":
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(t, op=op)
    return t.cpu()


def rank_seed(seed: int, ctx: DistContext) -> int:
    """The seed of this rank's dropout and augmentation streams (``seed`` itself in one process)."""
    if not ctx.active:
        return int(seed)
    state = np.random.SeedSequence([int(seed), _RANK_STREAM, ctx.rank]).generate_state(1, np.uint64)[0]
    return int(state >> 1)


def wrap(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """The module to call in the training step: ``DistributedDataParallel(model)`` or ``model``.

    The checkpoint is written from ``model`` itself (the wrapper shares its parameters), so its
    state-dict keys are the single-process ones.
    """
    if not ctx.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def epoch_totals(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, ctx: DistContext) -> tuple[float, int, int]:
    """(summed loss, correct predictions, images seen) of an epoch over all ranks (padding included)."""
    if not ctx.active:
        return float(loss_sum), int(correct), int(seen)
    t = _all_reduce([float(loss_sum), float(correct), seen], ctx)
    return float(t[0]), int(round(float(t[1]))), int(round(float(t[2])))


def gather_rng(state: dict, ctx: DistContext) -> list[dict] | None:
    """Every rank's RNG state, in rank order (a collective: every rank calls it); None in one process."""
    if not ctx.active:
        return None
    everything: list = [None] * ctx.world_size
    dist.all_gather_object(everything, {k: v.cpu() for k, v in state.items()})
    return everything


def scatter_rng(state: dict, ctx: DistContext) -> dict:
    """The RNG state this rank resumes from: its own entry of the checkpoint's per-rank states.

    Raises
    ------
    ValueError
        The checkpoint was written by another number of processes (its shards and batches differ).
    """
    saved = int(state.get("world_size", 1))
    if saved != ctx.world_size:
        raise ValueError(f"the checkpoint was trained by {saved} process(es), this run has {ctx.world_size}: "
                         "resume with the same number (--nproc_per_node), or start afresh")
    if not ctx.active:
        return state["rng"]
    return state["rng_ranks"][ctx.rank]


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (e.g. until rank 0 has written the checkpoint)."""
    if ctx.active:
        dist.barrier()


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` for a CUDA run under torchrun, else ``device``."""
    if ctx.active and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device
