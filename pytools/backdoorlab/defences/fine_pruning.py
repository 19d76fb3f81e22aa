"""Fine-Pruning (Liu, Dolan-Gavitt & Garg, 2018): silence dormant channels, then fine-tune.

Backdoor behaviour tends to live in channels that clean inputs leave dormant. We measure the mean
activation of every channel of a chosen conv layer (``last_conv``, ``second_last_conv`` or any
module name) on the trusted clean set, prune channels in ascending order of that mean until
clean-set accuracy drops by more than ``threshold`` (absolute; default 0.04, the paper also uses
0.02 and 0.06), keep the *last* mask that stayed within the threshold, and fine-tune the pruned
model on the clean set. The stopping rule sees the clean (tuning) set only — BackdoorBench
evaluates it on the test set, and the original code prunes a fixed 80 % with no accuracy loop.

Fast search. The naive loop re-runs the whole network on the clean set for every channel count.
Pruning only changes what happens *after* the pruned layer, so we trace the model with
``torch.fx``, split it at that layer, run the head once over the clean set and cache every value
the tail needs (the layer's output and any earlier value a skip connection carries past it), then
evaluate each mask by running the tail only on the cached, masked values. Optionally
(``search="bisect"``) the count is bisected, which assumes accuracy falls monotonically with the
count. Models that cannot be traced fall back to the full forward (``report["search_path"]``
says which ran). ``backdoorlab bench prune`` measures the speed-up against the naive loop.

Pruning persists: victim models (:class:`backdoorlab.models.BackdoorModel`) carry a
``channel_mask`` buffer on each named block (part of the state dict, applied in ``forward``, so
it survives fine-tuning and checkpoints); other models get an equivalent ``prune_mask`` buffer and
forward hook (:func:`apply_pruning`, :func:`restore_pruning`).
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from backdoorlab import native
from backdoorlab.activations import channel_means
from backdoorlab.data import row_batches
from backdoorlab.devices import resolve_device
from backdoorlab.evaluate import predict
from backdoorlab.train import fine_tune

from .base import Defence, DefenceContext, DefenceResult
from .params import check_choice, check_fraction, check_layer, check_positive_int

__all__ = [
    "FinePruning",
    "apply_pruning",
    "restore_pruning",
    "PruningSearch",
    "TailEvaluator",
    "FullEvaluator",
    "split_at",
]

SEARCHES = ("linear", "bisect")


# --------------------------------------------------------------------------- persistent masks


def resolve_layer(model: nn.Module, layer: str) -> tuple[str, nn.Module]:
    """``(module name, module)`` for a layer role or module name, with a clear error if unknown.

    Victim models answer roles (``model.layer_name``); any other module is looked up by name, so
    :func:`apply_pruning` and the evaluators also work on models that are not ``BackdoorModel``.
    """
    if not isinstance(layer, str) or not layer:
        raise TypeError(f"layer must be a role or module name (str), got {layer!r}")
    try:
        if hasattr(model, "layer_name"):
            name = model.layer_name(layer)
            module = model.layer(layer)
        else:
            name, module = layer, dict(model.named_modules())[layer]
    except (KeyError, ValueError, AttributeError) as exc:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(
            f"unknown layer {layer!r} for {type(model).__name__}; roles: 'last_conv', "
            f"'second_last_conv', 'penultimate'; modules: {', '.join(names)}"
        ) from exc
    return name, module


def _prune_mask_hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
    # module-level (not a closure) so deepcopy/pickle of the model keep working
    mask = module.prune_mask
    return output * mask.view((1, -1) + (1,) * (output.dim() - 2))


def apply_pruning(model: nn.Module, layer: str, channels: np.ndarray) -> None:
    """Silence ``channels`` of ``layer`` in ``model`` for good (cumulative with earlier pruning).

    Victim models use their own ``channel_mask`` (``model.prune``); any other module gets a
    ``prune_mask`` buffer (saved in the state dict) and a forward hook that applies it.
    """
    channels = np.asarray(channels, dtype=np.int64)
    if hasattr(model, "prune") and hasattr(model, "layer_name"):
        model.prune(layer, channels)
        return
    _, module = resolve_layer(model, layer)
    if not hasattr(module, "prune_mask"):
        n = getattr(module, "out_channels", None) or getattr(module, "out_features", None)
        if n is None:
            raise TypeError(f"cannot tell how many channels layer {layer!r} ({type(module).__name__}) has")
        module.register_buffer("prune_mask", torch.ones(int(n), dtype=torch.float32))
        module.register_forward_hook(_prune_mask_hook)
    if channels.size and (channels.min() < 0 or channels.max() >= module.prune_mask.numel()):
        raise ValueError(f"channel index out of range [0, {module.prune_mask.numel()}) for layer {layer!r}")
    with torch.no_grad():
        module.prune_mask[torch.as_tensor(channels, dtype=torch.long, device=module.prune_mask.device)] = 0.0


def restore_pruning(model: nn.Module, state_dict: dict) -> None:
    """Re-create the ``prune_mask`` buffers and hooks named in ``state_dict`` before loading it.

    Only needed for models without their own ``channel_mask`` (victim models restore themselves).
    """
    for key, value in state_dict.items():
        if key.endswith(".prune_mask"):
            module = model.get_submodule(key[: -len(".prune_mask")])
            if not hasattr(module, "prune_mask"):
                module.register_buffer("prune_mask", torch.ones_like(value, dtype=torch.float32))
                module.register_forward_hook(_prune_mask_hook)




# --------------------------------------------------------------------------- evaluators


class _LeafTracer(torch.fx.Tracer):
    """Traces through everything except the layer to split at (kept as one call)."""

    def __init__(self, leaf_name: str) -> None:
        super().__init__()
        self.leaf_name = leaf_name

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname == self.leaf_name or super().is_leaf_module(m, qualname)


def split_at(model: nn.Module, layer_name: str) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
    """Split ``model`` at the module ``layer_name`` into ``head`` and ``tail`` graph modules.

    ``head(x)`` returns a tuple whose first item is the layer's output and the others every earlier
    value the rest of the network still needs; ``tail(*head(x)) == model(x)``. Both share the
    model's submodules (masks set on the model are seen). Raises ``RuntimeError`` if the model
    cannot be traced.
    """
    # Input checks of victim models branch on tensor shapes, which symbolic tracing cannot follow;
    # they guard the user's input and are not needed inside the split.
    shadowed = hasattr(model, "check_input")
    if shadowed:
        model.check_input = lambda *_a, **_k: None
    try:
        graph = _LeafTracer(layer_name).trace(model)
    except Exception as exc:  # any tracing failure means: use the full forward
        raise RuntimeError(f"cannot trace {type(model).__name__} with torch.fx: {exc}") from exc
    finally:
        if shadowed:
            del model.check_input
    nodes = list(graph.nodes)
    at = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == layer_name]
    if len(at) != 1:
        raise RuntimeError(f"layer {layer_name!r} is called {len(at)} times in the traced graph; expected once")
    cut = at[0]
    head_nodes, tail_nodes = nodes[: cut + 1], nodes[cut + 1 :]
    in_head = set(head_nodes)
    needed = [nodes[cut]]
    for n in tail_nodes:
        for a in n.all_input_nodes:
            if a in in_head and a.op != "get_attr" and a not in needed:
                needed.append(a)
    head_graph, env = torch.fx.Graph(), {}
    for n in head_nodes:
        env[n] = head_graph.node_copy(n, lambda a: env[a])
    head_graph.output(tuple(env[n] for n in needed))
    tail_graph, env = torch.fx.Graph(), {}
    for i, n in enumerate(needed):
        env[n] = tail_graph.placeholder(f"cached_{i}")
    for n in tail_nodes:
        for a in n.all_input_nodes:
            if a not in env and a.op == "get_attr":
                env[a] = tail_graph.node_copy(a, lambda b: env[b])
        env[n] = tail_graph.node_copy(n, lambda a: env[a])
    root = torch.fx.GraphModule(model, graph)
    return torch.fx.GraphModule(root, head_graph), torch.fx.GraphModule(root, tail_graph)


def _broadcast(mask: torch.Tensor, ndim: int) -> torch.Tensor:
    return mask.view((1, -1) + (1,) * (ndim - 2))


class TailEvaluator:
    """Clean-set accuracy under a channel mask, running only the network after the pruned layer.

    The head runs once at construction; its outputs are cached (on the evaluation device).
    """

    path = "cached-tail"

    def __init__(self, model: nn.Module, dataset: Any, layer: str, *, batch_size: int = 256,
                 device: str = "auto", progress: bool = False) -> None:
        self.device = resolve_device(device)
        name, _ = resolve_layer(model, layer)
        model.eval().to(self.device)
        self.head, self.tail = split_at(model, name)
        self.cached: list[tuple[torch.Tensor, ...]] = []
        self.labels: list[torch.Tensor] = []
        with torch.no_grad():
            for images, labels in tqdm(row_batches(dataset, batch_size, self.device), desc="caching head",
                                       disable=not progress, leave=False):
                self.cached.append(tuple(t.detach() for t in self.head(images)))
                self.labels.append(labels)
        self.n = sum(int(lab.numel()) for lab in self.labels)
        if self.n == 0:
            raise ValueError("cannot tune pruning on an empty clean set")

    @torch.no_grad()
    def accuracy(self, mask: np.ndarray) -> float:
        m = torch.as_tensor(mask, dtype=torch.float32, device=self.device)
        correct = 0
        for values, labels in zip(self.cached, self.labels):
            first = values[0] * _broadcast(m, values[0].dim())
            correct += int((self.tail(first, *values[1:]).argmax(dim=1) == labels).sum())
        return correct / self.n


class FullEvaluator:
    """Clean-set accuracy under a channel mask by re-running the whole network (the naive loop).

    The input batches are read once and kept, so the comparison with :class:`TailEvaluator`
    measures network compute, not HDF5 reads.
    """

    path = "full-forward"

    def __init__(self, model: nn.Module, dataset: Any, layer: str, *, batch_size: int = 256,
                 device: str = "auto", progress: bool = False) -> None:
        self.model = model
        self.device = resolve_device(device)
        _, self.module = resolve_layer(model, layer)
        model.eval().to(self.device)
        self.batches = list(row_batches(dataset, batch_size, self.device))
        self.n = sum(int(y.numel()) for _, y in self.batches)
        if self.n == 0:
            raise ValueError("cannot tune pruning on an empty clean set")

    @torch.no_grad()
    def accuracy(self, mask: np.ndarray) -> float:
        m = torch.as_tensor(mask, dtype=torch.float32, device=self.device)

        def hook(_mod, _inp, out):
            return out * _broadcast(m, out.dim())

        handle = self.module.register_forward_hook(hook)
        was_training = self.model.training
        self.model.eval()
        try:
            correct = sum(int((self.model(x).argmax(dim=1) == y).sum()) for x, y in self.batches)
        finally:
            handle.remove()
            self.model.train(was_training)
        return correct / self.n


# --------------------------------------------------------------------------- search


class PruningSearch:
    """The stopping rule: the largest channel count whose clean accuracy stays within the threshold.

    Parameters
    ----------
    accuracy : callable mask -> float
        Clean-set accuracy of the model with ``mask`` (float32 (C,), 0 = pruned) applied.
    order : ndarray of int64, shape (C,)
        Channels in pruning order (ascending mean activation).
    threshold : float
        Largest allowed drop of clean accuracy (absolute).
    """

    def __init__(self, accuracy: Callable[[np.ndarray], float], order: np.ndarray, threshold: float) -> None:
        self.accuracy_fn, self.order, self.threshold = accuracy, np.asarray(order, dtype=np.int64), threshold
        self.curve: dict[int, float] = {}

    def _acc(self, n: int) -> float:
        if n not in self.curve:
            self.curve[n] = float(self.accuracy_fn(native.pruning_mask(self.order, n)))
        return self.curve[n]

    def linear(self, max_pruned: int) -> int:
        """Prune one more channel at a time; stop at the first count beyond the threshold."""
        base = self._acc(0)
        for n in range(1, max_pruned + 1):
            if base - self._acc(n) > self.threshold:
                return n - 1
        return max_pruned

    def bisect(self, max_pruned: int) -> int:
        """Binary search of the count (exact when accuracy falls monotonically with the count)."""
        base = self._acc(0)
        if base - self._acc(max_pruned) <= self.threshold:
            return max_pruned
        lo, hi = 0, max_pruned  # lo within the threshold, hi beyond it
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if base - self._acc(mid) <= self.threshold:
                lo = mid
            else:
                hi = mid
        return lo


class FinePruning(Defence):
    """Fine-Pruning: prune dormant channels of one layer within an accuracy budget, then fine-tune.

    Parameters
    ----------
    layer : str
        Role (``"last_conv"``, ``"second_last_conv"``) or module name of the layer pruned.
    threshold : float in (0, 1)
        Largest allowed drop of clean-set accuracy (absolute, default 0.04).
    search : {"linear", "bisect"}
        The stopping rule's search (``"linear"`` is exact; ``"bisect"`` assumes monotone accuracy).
    fast : bool
        Cache the head and run only the tail per step (default True); False = naive full forward.
    finetune_epochs : int
        Epochs of fine-tuning on the clean set after pruning (default 10; 0 = prune only).
    finetune_lr : float or None
        Fine-tuning learning rate (default: the training recipe's, with its optimizer).
    max_prune_share : float in (0, 1]
        Never prune more than this share of the layer's channels (default: all but one).
    """

    name = "fp"

    def __init__(
        self,
        layer: str = "last_conv",
        threshold: float = 0.04,
        search: str = "linear",
        fast: bool = True,
        finetune_epochs: int = 10,
        finetune_lr: float | None = None,
        max_prune_share: float | None = None,
        batch_size: int = 256,
    ) -> None:
        self.layer = check_layer(layer)
        self.threshold = check_fraction("threshold", threshold)
        self.search = check_choice("search", search, SEARCHES)
        self.fast = bool(fast)
        self.finetune_epochs = check_positive_int("finetune_epochs", finetune_epochs, minimum=0)
        if finetune_lr is not None and not (isinstance(finetune_lr, (int, float)) and finetune_lr > 0):
            raise ValueError(f"finetune_lr must be a positive number or None, got {finetune_lr!r}")
        self.finetune_lr = None if finetune_lr is None else float(finetune_lr)
        if max_prune_share is not None:
            if not (isinstance(max_prune_share, (int, float)) and 0 < max_prune_share <= 1):
                raise ValueError(f"max_prune_share must be in (0, 1], got {max_prune_share!r}")
            max_prune_share = float(max_prune_share)
        self.max_prune_share = max_prune_share
        self.batch_size = check_positive_int("batch_size", batch_size)

    def evaluator(self, model: nn.Module, dataset: Any, device: str, progress: bool = False):
        """The fast evaluator when the model can be split, else the full-forward one."""
        if self.fast:
            try:
                return TailEvaluator(model, dataset, self.layer, batch_size=self.batch_size, device=device,
                                     progress=progress)
            except RuntimeError:
                pass
        return FullEvaluator(model, dataset, self.layer, batch_size=self.batch_size, device=device)

    def prune(self, ctx: DefenceContext, *, progress: bool = True) -> tuple[nn.Module, np.ndarray, dict]:
        """The pruning search alone: ``(pruned copy of ctx.model, pruned channel indices, report)``."""
        layer_name, _ = resolve_layer(ctx.model, self.layer)  # unknown layer -> clear error before any work
        if len(ctx.clean) == 0:
            raise ValueError("Fine-Pruning needs a non-empty clean (tuning) set")
        model = copy.deepcopy(ctx.model)
        means = channel_means(model, ctx.clean, self.layer, batch_size=self.batch_size, device=ctx.device,
                              progress=progress)
        order = np.asarray(native.pruning_order(means.astype(np.float32)), dtype=np.int64)
        n_channels = int(order.size)
        max_pruned = n_channels - 1 if self.max_prune_share is None else int(np.floor(self.max_prune_share * n_channels))
        started = time.perf_counter()
        evaluator = self.evaluator(model, ctx.clean, ctx.device, progress=progress)
        search = PruningSearch(evaluator.accuracy, order, self.threshold)
        n_pruned = search.linear(max_pruned) if self.search == "linear" else search.bisect(max_pruned)
        search_seconds = time.perf_counter() - started
        pruned = order[:n_pruned].copy()
        apply_pruning(model, self.layer, pruned)
        acc0, acc_pruned = search.curve[0], search.curve[n_pruned] if n_pruned in search.curve else None
        if acc_pruned is None:
            acc_pruned = float(evaluator.accuracy(native.pruning_mask(order, n_pruned)))
        report = {
            "layer": self.layer,
            "layer_name": layer_name,
            "n_channels": n_channels,
            "neurons_pruned": int(n_pruned),
            "neurons_pruned_str": f"{n_pruned}/{n_channels}",
            "pruned_share": n_pruned / n_channels,
            "threshold": self.threshold,
            "clean_set_accuracy_before": acc0,
            "clean_set_accuracy_pruned": acc_pruned,
            "clean_set_delta_accuracy": acc_pruned - acc0,
            "search": self.search,
            "search_path": evaluator.path,
            "search_evaluations": len(search.curve),
            "search_seconds": search_seconds,
            "curve": {str(k): v for k, v in sorted(search.curve.items())},
            "mean_activation": means.tolist(),
        }
        return model, pruned, report

    def run(self, ctx: DefenceContext, *, progress: bool = True) -> tuple[DefenceContext, DefenceResult]:
        model, pruned, report = self.prune(ctx, progress=progress)
        # attack success right after pruning (before fine-tuning): the pruning-only ablation
        if len(ctx.test_triggered):
            preds = predict(model, ctx.test_triggered, device=ctx.device)
            report["attack_success_after_pruning"] = float((preds == ctx.target_class).mean())
        if self.finetune_epochs > 0:
            lr = self.finetune_lr if self.finetune_lr is not None else float(ctx.train_config.lr)
            model = fine_tune(model, ctx.clean, self.finetune_epochs, lr, batch_size=ctx.train_config.batch_size,
                              optimizer=ctx.train_config.optimizer, seed=ctx.seed, device=ctx.device,
                              progress=progress)
            report["finetune_lr"] = lr
        report["finetune_epochs"] = self.finetune_epochs
        report["config"] = self.config()
        return ctx.replace(model=model), DefenceResult(self.name, pruned_channels=pruned, report=report)
