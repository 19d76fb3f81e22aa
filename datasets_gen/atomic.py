"""Atomic file writes and JSON encoding: the one home of both for datasets_gen and backdoorlab.

Every output of the project (variants' sidecars, checkpoints, cells, reports, benchmark JSON) is
written to a temporary beside its destination and moved onto it with :func:`os.replace`, so an
interrupted run never leaves a half-written file that a later run would trust. The module lives
in ``datasets_gen`` because that package may import only numpy, OpenCV and h5py while
``backdoorlab`` already imports ``datasets_gen`` (its HDF5 schema); this file needs the standard
library and NumPy alone, so both can share it.

JSON has no NaN or infinity. Two policies are kept apart on purpose:

* :func:`atomic_write_json` (and the cache's hashing) *refuse* them: a cell or key holding NaN
  is a bug upstream, and silently writing it would hide it.
* :func:`json_safe` *converts* them to ``None`` (JSON ``null``) for records that may carry a
  missing measurement (a metric with no samples, a threshold never reached). ``null`` rather than
  the strings ``"inf"``/``"-inf"``: the cells committed under ``results/`` already hold ``null``,
  and a string in a numeric field would make every reader test types before doing arithmetic.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np

__all__ = ["atomic_path", "atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "json_default",
           "json_safe"]


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp", unique: bool = False,
                tmp: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` when the block ends cleanly.

    For writers that want a file name rather than bytes (``torch.save``, ``cv2.imwrite``,
    ``np.lib.format.open_memmap``). On an exception the temporary is removed and ``path`` is left
    as it was.

    Parameters
    ----------
    path : path-like
        The destination; its folder is created if missing.
    suffix : str
        Appended to the destination's name (``out.png`` → ``out.png.tmp``). Writers that pick the
        format by extension need it to end in that extension (``".tmp.png"``).
    unique : bool
        A private name per call (``tempfile.mkstemp``) instead of the fixed ``<name><suffix>``,
        for destinations several processes may write at once; the last one to finish wins whole.
    tmp : path-like, optional
        The temporary's name, when the caller's clean-up must know it (a variant's sidecars).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is not None:
        tmp = Path(tmp)
    elif unique:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        os.close(fd)
        tmp = Path(name)
    else:
        tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike, *, unique: bool = False) -> Iterator[BinaryIO]:
    """A binary file handle on a temporary beside ``path``, moved onto ``path`` when the block ends.

    For writers that take a file object (``torch.save``, ``np.save``). The data are fsync'ed
    before the rename, so after a crash ``path`` holds the old or the new content, never an empty
    file the rename got ahead of. ``unique`` as in :func:`atomic_path`.
    """
    with atomic_path(path, unique=unique) as tmp:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, unique: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, unique=unique) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, unique: bool = False) -> Path:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"), unique=unique)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, unique: bool = False) -> Path:
    """Write ``obj`` as JSON (and a final newline) atomically.

    Raises
    ------
    ValueError
        If ``obj`` holds NaN or infinity, or a value JSON cannot represent (see
        :func:`json_default`); pass it through :func:`json_safe` first to turn those into
        ``None`` and strings.
    """
    text = json.dumps(obj, indent=indent, sort_keys=False, allow_nan=False, default=json_default)
    return atomic_write_text(path, text + "\n", unique=unique)


def json_default(o: Any) -> Any:
    """``default=`` hook for :func:`json.dumps`: paths, NumPy scalars and sets; anything else raises.

    Raising (rather than ``str(o)``) keeps hashed configurations honest: two different objects
    with the same ``str`` must not give the same cache key.
    """
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if hasattr(o, "item") and callable(o.item):  # numpy scalars
        return o.item()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise ValueError(f"value of type {type(o).__name__} is not JSON-serialisable: {o!r}")


def json_safe(obj: Any) -> Any:
    """A JSON-ready copy of ``obj``: NumPy scalars/arrays to Python, NaN/inf to None, tuples to lists,
    paths to strings, mapping keys and unknown objects to ``str``.

    Lossy by design (see the module docstring for why infinity becomes ``None``); the runner's
    cells are written through it, so its output format is part of the committed results.
    """
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)
