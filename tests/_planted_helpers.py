"""A toy model with a *source-agnostic* planted backdoor, for the defences that assume one (NC, STRIP).

Neural Cleanse searches for a patch that flips inputs of every class, and STRIP for inputs whose
prediction survives superimposition; both presuppose that the trigger works on any input. The HDF5
toy variants poison one source class only (the model then needs the source's features as well as the
trigger, and both defences miss it, as the literature reports), so these tests plant the trigger
themselves: a yellow 4x4 square in a fixed corner on a fifth of the training images of every class,
relabelled to the target. Eight classes, so statistics over classes (NC's MAD) mean something.
"""

from __future__ import annotations

import torch
from torch import nn

from _defence_helpers import IMAGE_SIZE, TinyNet, single_thread, train_config

K, TARGET = 8, 4
TRIGGER_PIXELS = 16


def plant(images: torch.Tensor) -> torch.Tensor:
    """The known trigger: a yellow 4x4 square in the bottom-right corner (rows and columns 11-14)."""
    out = images.clone()
    out[:, :, 11:15, 11:15] = torch.tensor([1.0, 1.0, 0.0])[:, None, None]
    return out


def make_splits(path):
    from backdoorlab.data import H5Split
    from datasets_gen.toy import make_toy_variant

    # the variant's own (source-specific) poisoning is dropped by make_context; one row is the least it allows
    make_toy_variant(path, n_classes=K, n_train_per_class=80, n_test_per_class=20, n_clean_per_class=20,
                     image_size=IMAGE_SIZE, source_class=0, target_class=TARGET, poison_share=0.01, seed=3)
    return {s: H5Split(path, s) for s in ("train", "clean", "test", "test_triggered")}


def make_context(splits, poison: bool):
    """A DefenceContext with a TinyNet trained (on one thread) on the variant's clean rows (+ planted
    rows if ``poison``)."""
    from backdoorlab.data import to_float_chw
    from backdoorlab.defences import DefenceContext

    train = splits["train"].subset(~splits["train"].is_poisoned)
    x, y = to_float_chw(train.load_images()), torch.from_numpy(train.labels)
    g = torch.Generator().manual_seed(0)
    if poison:
        rows = torch.randperm(len(x), generator=g)[: len(x) // 5]
        x[rows], y[rows] = plant(x[rows]), TARGET
    torch.manual_seed(0)
    model = TinyNet(K)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    with single_thread():
        for _ in range(12):
            for b in torch.randperm(len(x), generator=g).split(32):
                loss = nn.functional.cross_entropy(model(x[b]), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return DefenceContext(model=model.eval(), train=train, clean=splits["clean"], test=splits["test"],
                          test_triggered=splits["test_triggered"], target_class=TARGET,
                          train_config=train_config(12), device="cpu", seed=0)


def rates(ctx) -> tuple[float, float]:
    """(clean accuracy, attack success of the planted trigger on the non-target test images)."""
    from backdoorlab.data import to_float_chw

    x = to_float_chw(ctx.test.load_images())
    y = torch.from_numpy(ctx.test.labels)
    with torch.no_grad():
        acc = (ctx.model(x).argmax(1) == y).float().mean().item()
        asr = (ctx.model(plant(x[y != TARGET])).argmax(1) == TARGET).float().mean().item()
    return acc, asr
