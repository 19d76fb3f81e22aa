"""``backdoorlab bench train``: training throughput of our trainer against a bare PyTorch loop.

The reference is the leanest loop one would write by hand: every image already converted to a
float32 ``(N, 3, H, W)`` tensor in memory, a ``randperm`` per epoch, index, forward, backward,
step -- no progress bar, no checkpoint, no bookkeeping. Against it we time, on the same model
(same initial weights), data, batch size and optimizer:

- ``trainer/memory``: :func:`backdoorlab.train.train_model` with the in-memory uint8 fast path
  (per-batch uint8 -> float conversion, loss/accuracy bookkeeping, the atomic epoch checkpoint);
- ``trainer/stream``: the same trainer streaming items from HDF5 through a ``DataLoader``
  (``--workers`` processes), the path taken for splits above the memory bound;
- ``bare/dataloader``: the bare loop fed by a ``DataLoader`` over the HDF5 split, i.e. what a
  per-item ``Dataset`` costs without our fast path;
- ``trainer/memory+augment`` (only with ``--augment NAME``): the in-memory trainer with that
  training-time augmentation (:mod:`backdoorlab.augment`) switched on, i.e. what augmentation costs;
- ``trainer/plain`` (only with ``--plain``): the in-memory trainer with ``TrainConfig(fast=False)``,
  i.e. without the channels-last layout and fused optimizer of :mod:`backdoorlab.fastpath`, so
  the fast path's gain is a ratio measured in one run;
- ``trainer/memory+mixed`` (only with ``--mixed``): the in-memory trainer with
  ``TrainConfig(precision="mixed")`` (bfloat16 autocast on CPU, float16 with loss scaling on CUDA) --
  another computation than the paper's float32, timed beside it.

Each variant's images/s is also given as a share of the machine's arithmetic rate measured in
the same run: the training FLOPs per image (forward and backward, counted by
``torch.utils.flop_counter``) times images/s, over the best float32 matrix-product rate
(``torch.mm`` of 1024x1024 on the same threads).

On the CPU the process's malloc is set up front as the trainer sets it on its fast path
(:func:`backdoorlab.fastpath.retain_freed_memory`, process-wide): every variant and round runs under
the same allocator, rather than the bare loop's first round alone under glibc's defaults.

Runs are interleaved one epoch at a time (A B C D, A B C D, ...) so that load from other
processes hits all of them alike; the median images/s per variant and the ratio to the bare
in-memory loop are reported. Epoch time of the trainer is measured around the whole
``train_model`` call (set-up, image loading and checkpoint included), so the ratio is not flattered.

Without ``--data`` it builds a toy variant (10 classes of coloured shapes, 32x32) with
``--n-train`` training images.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from backdoorlab import fastpath
from backdoorlab.augment import Augmentation
from backdoorlab.bench import add_run_args
from backdoorlab.data import H5Split
from backdoorlab.devices import resolve_device
from backdoorlab.models import build_model
from backdoorlab.train import TrainConfig, epoch_order, make_optimizer, train_model
from datasets_gen.atomic import atomic_write_json
from datasets_gen.toy import make_toy_variant


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backdoorlab bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="HDF5 variant (its train split); default: a generated toy variant")
    p.add_argument("--model", default="gtsrb_cnn", help="architecture (default gtsrb_cnn)")
    p.add_argument("--n-train", type=int, default=2000, help="toy training images when --data is not given (default 2000)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of one epoch per variant (default 3)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the streaming variants (default 0)")
    p.add_argument("--augment", default=None,
                   help="also time the in-memory trainer with this augmentation (e.g. gtsrb)")
    p.add_argument("--skip-stream", action="store_true", help="time only the in-memory variants")
    p.add_argument("--plain", action="store_true",
                   help="also time the trainer without its fast path (TrainConfig(fast=False))")
    p.add_argument("--mixed", action="store_true",
                   help="also time the trainer in mixed precision (TrainConfig(precision='mixed'))")
    return add_run_args(p, batch_size=32, threads=2)


def _bare_epoch(model, optimizer, batches) -> int:
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    n = 0
    for x, y in batches:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += y.shape[0]
    return n


def _sgemm_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Best float32 matrix-product rate (GFLOP/s) of ``n x n`` products on torch's current threads."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def _train_flops_per_image(model, x, y) -> float:
    """FLOPs of one training step's forward and backward pass, per image (the optimizer step is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.shape[0]


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.rounds < 1 or args.batch_size < 1 or args.threads < 1 or args.n_train < 10:
        raise ValueError("--rounds, --batch-size and --threads must be >= 1 and --n-train >= 10")
    torch.set_num_threads(args.threads)
    augmentation = Augmentation.from_spec(args.augment)  # None for no --augment or "none"

    dev = resolve_device(args.device)
    if dev.type == "cpu":
        fastpath.retain_freed_memory()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        if args.data:
            data = Path(args.data)
        else:
            per_class = max(1, args.n_train // 10)
            data = make_toy_variant(tmp / "toy.h5", n_classes=10, n_train_per_class=per_class, n_test_per_class=2,
                                    n_clean_per_class=0, seed=args.seed)
        ds = H5Split(data, "train")
        n = len(ds)
        config = TrainConfig(epochs=1, batch_size=args.batch_size, optimizer="adam", lr=1e-3,
                             num_workers=args.workers)
        init = build_model(args.model, ds.n_classes, seed=args.seed)
        models = {}
        for key in ("bare/memory", "trainer/memory", "trainer/stream", "bare/dataloader", "trainer/memory+augment",
                    "trainer/plain", "trainer/memory+mixed"):
            m = build_model(args.model, ds.n_classes, seed=args.seed)
            m.load_state_dict(init.state_dict())
            models[key] = m.to(dev)
        variants = ["bare/memory", "trainer/memory"] + ([] if args.skip_stream else ["trainer/stream", "bare/dataloader"])
        if augmentation is not None:
            variants.append("trainer/memory+augment")
        if args.plain:
            variants.append("trainer/plain")
        if args.mixed:
            variants.append("trainer/memory+mixed")
        optimizers = {k: make_optimizer(models[k].parameters(), config) for k in ("bare/memory", "bare/dataloader")}

        # The reference's data: float32 CHW in memory, converted once, outside the timing.
        t0 = time.perf_counter()
        x_all = ds.load_images().permute(0, 3, 1, 2).float().div_(255.0).contiguous().to(dev)
        y_all = torch.from_numpy(ds.labels).to(dev)
        preload_s = time.perf_counter() - t0

        def bare_memory(epoch):
            order = epoch_order(n, args.seed, epoch).to(dev)
            batches = ((x_all[idx], y_all[idx]) for idx in order.split(args.batch_size))
            return _bare_epoch(models["bare/memory"], optimizers["bare/memory"], batches)

        def bare_dataloader(epoch):
            order = epoch_order(n, args.seed, epoch).tolist()
            loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, sampler=order, num_workers=args.workers)
            batches = ((x.to(dev), y.to(dev)) for x, y in loader)
            return _bare_epoch(models["bare/dataloader"], optimizers["bare/dataloader"], batches)

        def trainer(key, in_memory, augment=None, fast=True, precision="float32"):
            def go(epoch):
                train_model(models[key], ds, config.replace(in_memory=in_memory, augment=augment, fast=fast,
                                                            precision=precision),
                            seed=args.seed + epoch, device=dev, checkpoint=tmp / f"{key.replace('/', '_')}.pt",
                            progress=False)
                return n
            return go

        fns = {"bare/memory": bare_memory, "trainer/memory": trainer("trainer/memory", True),
               "trainer/stream": trainer("trainer/stream", False), "bare/dataloader": bare_dataloader,
               "trainer/memory+augment": trainer("trainer/memory+augment", True, augmentation),
               "trainer/plain": trainer("trainer/plain", True, fast=False),
               "trainer/memory+mixed": trainer("trainer/memory+mixed", True, precision="mixed")}
        flops = _train_flops_per_image(init.to(dev), x_all[: args.batch_size], y_all[: args.batch_size])
        times: dict[str, list[float]] = {k: [] for k in variants}
        for epoch in range(args.rounds):
            for key in variants:
                t0 = time.perf_counter()
                done = fns[key](epoch)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                times[key].append(time.perf_counter() - t0)
                assert done == n
            print(f"round {epoch + 1}/{args.rounds}: " + ", ".join(f"{k} {n / times[k][-1]:.0f} img/s" for k in variants),
                  flush=True)

    ips = {k: n / statistics.median(v) for k, v in times.items()}
    ref = ips["bare/memory"]
    gflops = _sgemm_gflops() if dev.type == "cpu" else None
    result = {
        "benchmark": "train", "model": args.model, "data": str(args.data or "toy"), "n_train": n,
        "image_shape": list(ds.image_shape), "batch_size": args.batch_size, "rounds": args.rounds,
        "threads": args.threads, "workers": args.workers, "device": str(dev), "seed": args.seed,
        "augment": augmentation.to_dict() if augmentation else None,
        "torch": str(torch.__version__), "cpu": platform.processor() or platform.machine(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "reference_preload_s": round(preload_s, 3),
        "images_per_s": {k: round(v, 1) for k, v in ips.items()},
        "ratio_to_bare_memory": {k: round(v / ref, 3) for k, v in ips.items()},
        "train_gflop_per_image": round(flops / 1e9, 4),
        "sgemm_gflops": round(gflops, 1) if gflops else None,
        "share_of_sgemm": {k: round(v * flops / 1e9 / gflops, 3) for k, v in ips.items()} if gflops else None,
        "epoch_seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
    }
    print(f"\n{args.model} on {n} images {tuple(ds.image_shape)}, batch {args.batch_size}, {args.threads} threads, "
          f"{args.rounds} interleaved rounds (median):")
    for k, v in ips.items():
        share = f"   {v * flops / 1e9 / gflops:.1%} of sgemm" if gflops else ""
        print(f"  {k:22s} {v:8.0f} img/s   ratio to bare/memory {v / ref:.3f}{share}")
    if gflops:
        print(f"  ({flops / 1e6:.0f} MFLOP per training image; sgemm {gflops:.1f} GFLOP/s on {args.threads} threads)")
    if args.plain:
        print(f"  fast path: trainer/memory / trainer/plain = {ips['trainer/memory'] / ips['trainer/plain']:.3f}")
    if args.mixed:
        print(f"  mixed precision: trainer/memory+mixed / trainer/memory = "
              f"{ips['trainer/memory+mixed'] / ips['trainer/memory']:.3f}")
    if args.json:
        atomic_write_json(args.json, result)
    return 0
