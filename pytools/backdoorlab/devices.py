"""Device selection shared by training, evaluation and activation extraction.

``"auto"`` means CUDA when PyTorch sees a GPU, else CPU; asking for ``"cuda"`` without one is an
error that says why (no silent fallback), so a run never quietly takes hours on the CPU.
"""

from __future__ import annotations

import torch

from backdoorlab.errors import DeviceUnavailableError  # noqa: F401  (raised here; imported from here by callers)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto" | "cpu" | "cuda" | "cuda:N"`` (or a ``torch.device``) -> ``torch.device``.

    Raises
    ------
    DeviceUnavailableError
        CUDA asked for but not available (CPU-only torch build or no visible GPU); a
        ``RuntimeError``.
    ValueError
        Anything else.
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}") from exc
    else:
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise DeviceUnavailableError(f"device {str(dev)!r} requested but CUDA is unavailable: {why}; "
                                         "ask for 'cpu' or 'auto' instead")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(dev)!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return dev


def native_device(device: str | torch.device = "auto") -> str:
    """The native core's device for a torch device: ``"cuda"`` only where the core was built with it.

    The defences run the model on ``device`` and their numerical kernels on the matching native
    device; a CPU-only native build on a GPU machine keeps the kernels on the CPU.
    """
    if resolve_device(device).type != "cuda":
        return "cpu"
    from backdoorlab import native  # the compiled core is optional until a kernel is needed

    return "cuda" if native.build_info().get("cuda") else "cpu"
