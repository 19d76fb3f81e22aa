"""Model checkpoints: one self-describing ``.pt`` file, written atomically, read with ``weights_only``.

A checkpoint is a plain dict of tensors and JSON-like values, so ``torch.load(...,
weights_only=True)`` can read it without unpickling arbitrary objects::

    {"format": "backdoorlab-checkpoint", "version": 1,
     "model": {"name": "gtsrb_cnn", "n_classes": 43, ...},   # BackdoorModel.spec: rebuilds it
     "state_dict": {...},                                     # weights, buffers (pruning masks)
     "meta": {...},                                           # seed, config, metrics, provenance
     "train_state": None | {"epoch": k, "optimizer": ..., ...},   # present while training runs
     "sha256": "..."}                                         # of everything above (see below)

Writing goes to ``<path>.tmp`` and is ``os.replace``d onto ``path``: an interrupted save never
leaves a half-written checkpoint. Reading distinguishes the failures a user meets: no file,
a truncated file, a file that is not a torch file (a data-set variant given by mistake), a torch
file that is not ours, and a checkpoint of another architecture than the model passed in.

Torch's zip container does not check its members, so flipped bytes inside a tensor load without
a word as wrong weights. Every checkpoint therefore records ``sha256``, a digest of all its other
entries in a canonical form (:func:`payload_sha256`: tensors by dtype, shape and raw bytes, dicts
by sorted key), checked on every load; a checkpoint of an older version without one loads with an
:class:`UnverifiedCheckpointWarning`. Independently, weights that are not finite (NaN, inf) are
refused on load: a digest only proves the file is what was saved, not that it is usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from backdoorlab.models import MODELS, BackdoorModel, build_model
from datasets_gen.atomic import atomic_open

FORMAT = "backdoorlab-checkpoint"
# The digest is an added key, not a new version: older readers still load these files.
VERSION = 1

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint without a recorded digest (written before checkpoints carried one) was loaded."""


def _feed(h, obj) -> None:
    # Every item is tagged and length-prefixed, so different structures never hash alike.
    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes, any dtype, no copy
    elif isinstance(obj, dict):
        h.update(b"D%d|" % len(obj))
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d|" % len(obj))
        for item in obj:
            _feed(h, item)
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        text = json.dumps(obj).encode()  # repr-exact floats; true/1/"1" stay distinct
        h.update(b"S%d|" % len(text) + text)
    else:  # torch.dtype, torch.device, ...: what weights_only may hand back, by a stable repr
        text = f"{type(obj).__module__}.{type(obj).__qualname__}:{obj!r}".encode()
        h.update(b"O%d|" % len(text) + text)


def payload_sha256(payload: dict) -> str:
    """SHA-256 of a checkpoint dict's entries other than ``sha256`` itself, in a canonical form.

    Parameters
    ----------
    payload : dict
        A checkpoint dict (see the module docstring).

    Returns
    -------
    str
        64 hex digits.
    """
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}")
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != "sha256"})
    return h.hexdigest()


def _check_finite(path: Path, state_dict: dict) -> None:
    bad = []
    for name, t in state_dict.items():
        if torch.is_tensor(t) and (t.is_floating_point() or t.is_complex()):
            # NumPy, single-threaded: torch's isfinite wakes its thread pool for every small tensor,
            # which cost ~0.4 s per load of the GTSRB CNN on the shared 2-core machine.
            a = (t.float() if t.dtype == torch.bfloat16 else t).detach().cpu().numpy()
            if not np.isfinite(a).all():
                bad.append(f"{name} ({int((~np.isfinite(a)).sum())} of {a.size})")
    if bad:
        more = f" and {len(bad) - 3} more tensors" if len(bad) > 3 else ""
        raise ValueError(f"checkpoint {str(path)!r} holds non-finite weights (NaN/inf): {', '.join(bad[:3])}{more}; "
                         f"the model it would give cannot predict anything")


def save(path: str | os.PathLike, model: BackdoorModel, meta: dict | None = None, *, train_state: dict | None = None) -> Path:
    """Write ``model`` (weights, buffers, constructor spec) and ``meta`` to ``path`` atomically.

    Parameters
    ----------
    path : path-like
        Destination ``.pt``.
    model : BackdoorModel
    meta : dict, optional
        JSON-like values only (str, numbers, bool, None, lists, dicts): seed, config, metrics.
    train_state : dict, optional
        Optimizer state and epoch, for resuming (:mod:`backdoorlab.train` fills it).

    Returns
    -------
    Path
    """
    if not isinstance(model, BackdoorModel):
        raise TypeError(f"model must be a BackdoorModel, got {type(model).__name__}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": dict(model.spec),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
        "train_state": train_state,
    }
    payload["sha256"] = payload_sha256(payload)
    path = Path(path)
    with atomic_open(path) as fh:
        torch.save(payload, fh)
    return path


def read(path: str | os.PathLike) -> dict:
    """The raw checkpoint dict (validated), loaded on CPU with ``weights_only=True``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Truncated/corrupt file, not a torch file (e.g. a data-set variant), not a backdoorlab
        checkpoint, contents that no longer match the recorded digest, or non-finite weights.

    Warns
    -----
    UnverifiedCheckpointWarning
        The file records no digest (an older checkpoint): it is loaded, the finite check still runs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {str(path)!r} is empty (0 bytes): an interrupted copy?")
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic == _HDF5_MAGIC:
        raise ValueError(f"{str(path)!r} is an HDF5 file (a data-set variant?), not a checkpoint; "
                         f"were --data and --model swapped?")
    magic = magic[:4]
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types (KeyError, EOFError, RuntimeError, ...)
        text = str(exc)
        first = text.splitlines()[0] if text else type(exc).__name__
        if "Weights only load failed" in text and "Unsupported global" in text:
            refused = next(ln.strip() for ln in text.splitlines() if "Unsupported global" in ln)
            raise ValueError(
                f"{str(path)!r} holds Python objects that torch.load(weights_only=True) refuses "
                f"({refused}); it is not a backdoorlab checkpoint"
            ) from exc
        if magic == b"PK\x03\x04":  # a torch zip archive that cannot be read to the end
            raise ValueError(
                f"checkpoint {str(path)!r} ({path.stat().st_size} bytes) is truncated or corrupt "
                f"({type(exc).__name__}: {first})"
            ) from exc
        raise ValueError(
            f"{str(path)!r} is not a readable torch checkpoint (not a torch zip archive; "
            f"{type(exc).__name__}: {first})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        kind = type(payload).__name__
        hint = ""
        if isinstance(payload, dict):
            keys = sorted(map(str, payload))[:8]
            hint = f" with keys {keys}"
            if payload and all(torch.is_tensor(v) for v in payload.values()):
                hint += " (a bare state dict: load it with model.load_state_dict instead)"
        raise ValueError(f"{str(path)!r} is not a backdoorlab checkpoint: it holds a {kind}{hint}")
    if payload.get("version") != VERSION:
        raise ValueError(f"{str(path)!r}: checkpoint version {payload.get('version')!r} is not supported (expected {VERSION})")
    recorded = payload.get("sha256")
    if recorded is None:
        warnings.warn(f"checkpoint {str(path)!r} records no checksum (written by an older backdoorlab): its "
                      f"contents cannot be verified; checkpoint.save adds one", UnverifiedCheckpointWarning,
                      stacklevel=3)
    else:
        actual = payload_sha256(payload)
        if not isinstance(recorded, str) or actual != recorded:
            raise ValueError(f"checkpoint {str(path)!r} is corrupt: its contents no longer match the SHA-256 "
                             f"recorded when it was saved ({str(recorded)[:16]}..., now {actual[:16]}...); it was "
                             f"altered after writing")
    spec = payload.get("model")
    if not isinstance(spec, dict) or spec.get("name") not in MODELS:
        raise ValueError(f"{str(path)!r}: unknown model spec {spec!r}; known models {sorted(MODELS)}")
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r}: 'state_dict' must be a dict of tensors, got {type(state).__name__}")
    _check_finite(path, state)
    return payload


def load(path: str | os.PathLike, model: BackdoorModel | None = None, *, device: str | torch.device = "cpu") -> tuple[BackdoorModel, dict]:
    """Load a checkpoint written by :func:`save`.

    Parameters
    ----------
    path : path-like
    model : BackdoorModel, optional
        Load into this model (it must have the checkpoint's architecture and class count);
        default: build one from the stored spec.
    device : str or torch.device
        Where the returned model lives.

    Returns
    -------
    (model, meta)
        ``meta`` also carries ``"train_state"`` when the file was a training checkpoint.
    """
    payload = read(path)
    spec = dict(payload["model"])
    if model is None:
        name = spec.pop("name")
        n_classes = spec.pop("n_classes")
        spec.pop("init_seed", None)
        # Pre-trained weights are already in the state dict: do not ask for the weights file again.
        spec.pop("weights", None)
        model = build_model(name, n_classes, **spec)
    else:
        if not isinstance(model, BackdoorModel):
            raise TypeError(f"model must be a BackdoorModel, got {type(model).__name__}")
        if model.arch != spec["name"] or model.n_classes != spec["n_classes"]:
            raise ValueError(
                f"{str(path)!r} holds a {spec['name']} with {spec['n_classes']} classes; "
                f"the model passed is a {model.arch} with {model.n_classes} classes"
            )
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{str(path)!r}: weights do not fit the {model.arch} model: {exc}") from exc
    model.spec.update({k: v for k, v in payload["model"].items() if k not in ("name", "n_classes")})
    meta = dict(payload.get("meta") or {})
    if payload.get("train_state") is not None:
        meta["train_state"] = payload["train_state"]
    return model.to(device), meta
