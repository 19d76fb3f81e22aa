"""One split of an HDF5 data-set variant as a PyTorch ``Dataset`` (the schema of ``datasets_gen``).

A variant file holds the splits ``train``, ``test``, ``clean`` and ``test_triggered``, each with
``images`` uint8 ``(N, H, W, 3)`` and the per-row arrays ``labels``, ``original_labels``,
``is_poisoned``, ``provenance`` and ``index`` (see docs/contracts.md section 2).

:class:`H5Split` reads the small per-row arrays at construction (defences need them as numpy
arrays) and the images lazily: the HDF5 file is opened on first access *in the process that
reads*, so a ``DataLoader`` with workers gives every worker its own handle (h5py handles must not
cross a ``fork``). Items are ``(float32 (3, H, W) in [0, 1], int64 label)``; the models normalise
themselves.

For small images the fastest way to feed a CPU training loop is not item by item but the whole
selection as one uint8 tensor, batched with index tensors: :meth:`H5Split.load_images` reads it
(with a memory bound) and :func:`to_float_chw` converts a batch.

Nothing read from a file is trusted: :func:`open_variant` checks a variant against its manifest
(SHA-256, through a cache keyed by the file's identity) before anything is trained, defended or
evaluated on it, and :class:`H5Split` refuses, with the file and the problem named, what the schema
of :mod:`datasets_gen.schema` does not allow (non-integer labels, class names that do not match
the class count, unreadable chunks) instead of computing on it. A variant without a manifest
(made by a test, by hand, or by an older version) is read with an :class:`UnverifiedDataWarning`.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from datasets_gen.schema import FIELDS, ROW_FIELDS, SPLITS, decode_attrs, validate_attrs
from datasets_gen.variant_io import sidecar_paths
from datasets_gen.variant_io import verify as _verify_manifest

#: Default bound on :meth:`H5Split.load_images` (bytes of uint8 pixels held in memory).
DEFAULT_MAX_MEMORY_BYTES = 1 << 30

_ZIP_MAGIC = b"PK\x03\x04"


class UnverifiedDataWarning(UserWarning):
    """A variant is used without a manifest to check its contents against."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _not_hdf5_reason(path: Path, exc: BaseException | None = None) -> str:
    """Why ``path`` cannot be opened as an HDF5 variant, in the user's terms."""
    size = path.stat().st_size
    if size == 0:
        return f"{str(path)!r} is empty (0 bytes): an interrupted copy or write?"
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == _ZIP_MAGIC:
        return (f"{str(path)!r} is a zip archive (a torch checkpoint?), not an HDF5 variant; "
                f"were --data and --model swapped?")
    text = "" if exc is None else str(exc)
    truncated = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
    if truncated:
        return (f"{str(path)!r} is truncated: {truncated.group(1)} bytes of the {truncated.group(2)} "
                f"its HDF5 header records (an interrupted copy?)")
    if exc is None or "signature" in text:
        return f"{str(path)!r} is not a readable HDF5 file (no HDF5 signature; {size} bytes)"
    return f"{str(path)!r} is not a readable HDF5 file: {_first_line(exc)}"


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:  # h5py reports every kind of damage as a bare OSError
        raise ValueError(_not_hdf5_reason(path, exc)) from exc


def _read(dataset: h5py.Dataset, selection, where: str):
    """``dataset[selection]``, with damage (a chunk that fails to decompress) named as such."""
    try:
        return dataset[selection]
    except OSError as exc:
        raise ValueError(f"{where} cannot be read ({_first_line(exc)}): the file is corrupt") from exc


def verify_variant(path: str | os.PathLike, *, verify: bool = True, progress: bool = False) -> dict:
    """Check a variant against its manifest before it is trained, defended or evaluated on.

    Parameters
    ----------
    path : path-like
        The variant ``.h5``.
    verify : bool
        False skips the check (``--no-verify``, for huge files whose hash is too slow to wait for).
    progress : bool
        tqdm bar while hashing (a cache hit hashes nothing).

    Returns
    -------
    dict
        ``{"sha256": hex or None, "verified": bool, "check": "manifest" | "no manifest" | "skipped"}``,
        JSON-ready for metadata.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not an HDF5 file; or :class:`datasets_gen.variant_io.ChecksumError` (a ``ValueError``): the
        file's size, SHA-256 or counts differ from its manifest.

    Warns
    -----
    UnverifiedDataWarning
        No manifest beside the file: it is used, but nothing vouches for its contents.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"variant file not found: {str(p)!r}")
    # The structure first: a checkpoint passed as data deserves "swapped?", not "no manifest".
    if not h5py.is_hdf5(p):
        raise ValueError(_not_hdf5_reason(p))
    if not verify:
        return {"sha256": None, "verified": False, "check": "skipped"}
    manifest = sidecar_paths(p)["manifest"]
    if not manifest.is_file():
        warnings.warn(f"{str(p)!r} has no manifest ({manifest.name}) and cannot be verified; using it as it is "
                      f"(datasets_gen.variant_io.write_manifest adds one)", UnverifiedDataWarning, stacklevel=2)
        return {"sha256": None, "verified": False, "check": "no manifest"}
    sha = _verify_manifest(p, manifest, cache=True, progress=progress)
    return {"sha256": sha, "verified": True, "check": "manifest"}


def to_float_chw(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` -> float32 ``(N, 3, H, W)`` in [0, 1] (contiguous)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 (N, H, W, C) images, got {images.dtype} {tuple(images.shape)}")
    return images.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


class H5Split(Dataset):
    """One split of a variant file; ``dataset[i] -> (float32 (3, H, W) in [0, 1], int64 label)``.

    Parameters
    ----------
    path : str or Path
        The variant ``.h5`` file.
    split : {"train", "test", "clean", "test_triggered"}
    indices : array-like of int, optional
        Rows of the split to expose (in this order); default all rows.
    verification : dict, optional
        What :func:`verify_variant` found for the file (:func:`open_variant` passes it); kept as
        the ``verification`` attribute and handed on by :meth:`subset`. This class does not hash.

    Raises
    ------
    FileNotFoundError
        No such file.
    KeyError
        No such split.
    ValueError
        Not an HDF5 file, truncated, a chunk or attribute that cannot be read, or contents the
        schema does not allow: images not uint8 (N, H, W, 3), a row field of the wrong kind
        (``labels`` must be integers, ``is_poisoned`` bool) or length, class names that do not
        match ``n_classes``, labels outside ``[0, n_classes)`` (file and field named).

    Attributes
    ----------
    labels, original_labels, is_poisoned, provenance, index : np.ndarray, shape (n,)
        Per-row arrays for the selected rows (``index`` is the row in the *source* data set).
    rows : np.ndarray of int64, shape (n,)
        The selected rows of the split in the file.
    n_classes : int
    class_names : list[str]
    attrs : dict
        Root attributes of the file, JSON-decoded.
    image_shape : tuple (H, W, C)
    """

    def __init__(self, path: str | os.PathLike, split: str, indices=None, *, verification: dict | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"variant file not found: {str(self.path)!r}")
        if not isinstance(split, str):
            raise TypeError(f"split must be a str, got {type(split).__name__}")
        self.split = split
        #: What :func:`verify_variant` found (set by :func:`open_variant`; None = not checked here).
        self.verification = verification
        where = f"{str(self.path)!r}/{split}"
        with _open_h5(self.path) as f:
            if split not in f:
                raise KeyError(f"split {split!r} not in {str(self.path)!r}; it has {sorted(f.keys())}")
            g = f[split]
            for field in ("images", "labels"):
                if field not in g:
                    raise ValueError(f"{where} lacks the {field!r} dataset (has {sorted(g.keys())})")
            images = g["images"]
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"{where}/images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
            n_total = images.shape[0]
            self.image_shape: tuple[int, int, int] = tuple(int(s) for s in images.shape[1:])
            full = {}
            for field in ROW_FIELDS:
                if field in g:
                    ds = g[field]
                    # The schema's kinds, checked before reading: float labels would be truncated
                    # and byte strings compared as garbage, silently, by everything downstream.
                    want = FIELDS[field]
                    ok = ds.dtype == np.bool_ if want == np.bool_ else np.issubdtype(ds.dtype, np.integer)
                    if not ok:
                        kind = "bool" if want == np.bool_ else f"an integer type ({want} in the schema)"
                        raise ValueError(f"{where}/{field} has dtype {ds.dtype}; it must be {kind}")
                    if ds.shape != (n_total,):
                        raise ValueError(f"{where}/{field} has shape {ds.shape}, expected ({n_total},)")
                    full[field] = _read(ds, (), f"{where}/{field}")
            try:
                raw_attrs = decode_attrs(f.attrs, repr(str(self.path)))  # names the file and the attribute
            except OSError as exc:
                raise ValueError(f"{str(self.path)!r}: root attributes cannot be read ({_first_line(exc)}): "
                                 f"the file is corrupt") from exc
        try:
            self.attrs = validate_attrs(raw_attrs, partial=True)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{str(self.path)!r}: bad root attribute: {_first_line(exc)}") from exc
        shape_attr = self.attrs.get("image_shape")
        if shape_attr is not None and tuple(shape_attr) != self.image_shape:
            raise ValueError(f"{where}/images are {self.image_shape}, but the file's image_shape says {tuple(shape_attr)}")
        # Optional row arrays get neutral defaults so older/foreign files still load.
        full.setdefault("original_labels", full["labels"])
        full.setdefault("is_poisoned", np.zeros(n_total, dtype=bool))
        full.setdefault("provenance", np.zeros(n_total, dtype=np.int32))
        full.setdefault("index", np.arange(n_total, dtype=np.int64))

        if indices is None:
            rows = np.arange(n_total, dtype=np.int64)
        else:
            rows = np.asarray(indices)
            if rows.dtype == bool:
                if rows.shape != (n_total,):
                    raise ValueError(f"boolean indices must have shape ({n_total},), got {rows.shape}")
                rows = np.flatnonzero(rows)
            if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
                raise ValueError(f"indices must be a 1-D integer array, got dtype {rows.dtype} shape {rows.shape}")
            rows = rows.astype(np.int64)
            if rows.size and (rows.min() < 0 or rows.max() >= n_total):
                raise ValueError(f"indices out of range [0, {n_total}) for split {split!r}: min {rows.min()}, max {rows.max()}")
        self.rows = rows
        self.labels = full["labels"][rows].astype(np.int64)
        self.original_labels = full["original_labels"][rows].astype(np.int64)
        self.is_poisoned = full["is_poisoned"][rows].astype(bool)
        self.provenance = full["provenance"][rows].astype(np.int32)
        self.index = full["index"][rows].astype(np.int64)

        n_classes = self.attrs.get("n_classes")
        names = self.attrs.get("class_names")
        if n_classes is None:
            n_classes = len(names) if isinstance(names, list) else int(full["labels"].max()) + 1
        self.n_classes = int(n_classes)
        self.class_names: list[str] = list(names) if isinstance(names, list) else [str(c) for c in range(self.n_classes)]
        for field in ("labels", "original_labels"):
            arr = full[field]  # the whole split: a bad row outside the selection is still a bad file
            if arr.size and (arr.min() < 0 or arr.max() >= self.n_classes):
                raise ValueError(f"{where}: {field} outside [0, {self.n_classes}) (min {arr.min()}, max {arr.max()})")
        self._file: h5py.File | None = None
        self._pid: int | None = None

    # -- Dataset protocol ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.rows.size)

    def _images(self) -> h5py.Dataset:
        # One handle per process: a handle inherited through fork is not safe to use.
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file[self.split]["images"]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self!r}")
        row = int(self.rows[i])
        img = torch.from_numpy(np.ascontiguousarray(_read(self._images(), row, f"{str(self.path)!r}/{self.split}/images row {row}")))
        return img.permute(2, 0, 1).float().div_(255.0), int(self.labels[i])

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None  # never pickle an open handle into DataLoader workers
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return f"H5Split({str(self.path)!r}, {self.split!r}, n={len(self)})"

    def close(self) -> None:
        """Close this process's file handle (reopened on next access)."""
        if self._file is not None:
            self._file.close()
        self._file = None
        self._pid = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- selections ---------------------------------------------------------------------------
    def subset(self, keep_indices) -> "H5Split":
        """A new split object over ``keep_indices`` (positions in *this* object, or a bool mask of len(self))."""
        keep = np.asarray(keep_indices)
        if keep.dtype == bool:
            if keep.shape != (len(self),):
                raise ValueError(f"boolean mask must have shape ({len(self)},), got {keep.shape}")
            keep = np.flatnonzero(keep)
        if keep.ndim != 1 or (keep.size and not np.issubdtype(keep.dtype, np.integer)):
            raise ValueError(f"keep_indices must be a 1-D integer array or bool mask, got dtype {keep.dtype} shape {keep.shape}")
        if keep.size and (keep.min() < 0 or keep.max() >= len(self)):
            raise ValueError(f"keep_indices out of range [0, {len(self)}): min {keep.min()}, max {keep.max()}")
        return H5Split(self.path, self.split, self.rows[keep.astype(np.int64)], verification=self.verification)

    @property
    def nbytes(self) -> int:
        """Bytes of uint8 pixels of the selection (what :meth:`load_images` would hold)."""
        h, w, c = self.image_shape
        return len(self) * h * w * c

    def load_images(self, max_bytes: int | None = DEFAULT_MAX_MEMORY_BYTES, progress: bool = False) -> torch.Tensor:
        """All selected images as one uint8 tensor ``(n, H, W, 3)``, in this object's row order.

        Raises
        ------
        MemoryError
            If the selection exceeds ``max_bytes`` (use streaming through a DataLoader instead).
        """
        if max_bytes is not None and self.nbytes > max_bytes:
            raise MemoryError(
                f"{self!r} needs {self.nbytes / 2**20:.1f} MiB as uint8, above the bound "
                f"{max_bytes / 2**20:.1f} MiB; stream it with a DataLoader instead"
            )
        h, w, c = self.image_shape
        out = np.empty((len(self), h, w, c), dtype=np.uint8)
        if len(self) == 0:
            return torch.from_numpy(out)
        ds = self._images()
        # h5py reads contiguous slabs fastest: read the span of rows chunk by chunk, then pick.
        order = np.argsort(self.rows, kind="stable")
        sorted_rows = self.rows[order]
        chunk = max(1, (64 << 20) // (h * w * c))
        from tqdm.auto import tqdm

        with tqdm(total=len(self), desc=f"load {self.split}", unit="img", disable=not progress, leave=False) as bar:
            pos = 0
            while pos < len(sorted_rows):
                lo = int(sorted_rows[pos])
                end = int(np.searchsorted(sorted_rows, lo + chunk, side="left"))
                hi = int(sorted_rows[end - 1]) + 1
                block = _read(ds, slice(lo, hi), f"{str(self.path)!r}/{self.split}/images rows {lo}-{hi - 1}")
                out[order[pos:end]] = block[sorted_rows[pos:end] - lo]
                bar.update(end - pos)
                pos = end
        return torch.from_numpy(out)


def row_batches(dataset: H5Split, batch_size: int, device: torch.device | str = "cpu"):
    """Yield ``(x float32 (b, 3, H, W) in [0, 1], y int64 (b,))`` on ``device``, in row order.

    The inference loops' reader (activations, defence evaluators): each batch is read as one slab
    of consecutive rows, so only ``batch_size`` images are in memory at a time (whatever the size
    of the split) and the HDF5 chunks are decompressed once per batch, not once per image. Row
    order on purpose: outputs stay aligned with the rows of ``dataset``, which per-row flags rely on.
    Gives the same batches as :class:`BatchSource` (which training uses for its shuffled orders).
    """
    if not isinstance(dataset, H5Split):
        raise TypeError(f"dataset must be an H5Split, got {type(dataset).__name__}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device)
    n = len(dataset)
    labels = torch.from_numpy(np.asarray(dataset.labels, dtype=np.int64))
    for start in range(0, n, int(batch_size)):
        stop = min(n, start + int(batch_size))
        chunk = dataset.subset(np.arange(start, stop)).load_images(max_bytes=None)
        yield to_float_chw(chunk).to(dev), labels[start:stop].to(dev)


def open_variant(path: str | os.PathLike, splits: tuple[str, ...] = SPLITS, *, verify: bool = True,
                 progress: bool = False) -> dict[str, H5Split]:
    """``{split: H5Split}`` for the splits present in the file among ``splits``, after checking the
    file against its manifest (:func:`verify_variant`; ``verify=False`` skips that).

    Each split's ``verification`` attribute holds what the check found.
    """
    path = Path(path)
    if isinstance(splits, str) or not all(isinstance(s, str) for s in splits):
        raise TypeError(f"splits must be a tuple of split names, got {splits!r}")
    verification = verify_variant(path, verify=verify, progress=progress)
    with _open_h5(path) as f:
        present = [s for s in splits if s in f]
    if not present:
        raise ValueError(f"{str(path)!r} has none of the splits {list(splits)}")
    return {s: H5Split(path, s, verification=verification) for s in present}


class BatchSource:
    """Float batches of a split on a device, from memory when it fits, else streamed.

    ``"memory"`` mode reads the selection once as a uint8 tensor (bounded by ``max_bytes``; on
    CUDA it is moved to the GPU once) and cuts batches with index tensors -- for small images
    this is several times faster than a per-item ``DataLoader``, whose per-item Python and
    collate costs dominate. ``"stream"`` mode uses a ``DataLoader`` over :class:`H5Split`
    (``num_workers`` processes, each with its own HDF5 handle). Both modes yield the same
    batches for the same order, so the choice never changes a result.

    Parameters
    ----------
    dataset : H5Split
    device : torch.device
    in_memory : {"auto", True, False}
        ``"auto"``: memory mode when the selection fits ``max_bytes``.
    max_bytes : int
        Bound on the uint8 pixels held in memory.
    num_workers : int
        DataLoader workers in stream mode.
    """

    def __init__(self, dataset: H5Split, device: torch.device, *, in_memory: bool | str = "auto",
                 max_bytes: int = DEFAULT_MAX_MEMORY_BYTES, num_workers: int = 0, progress: bool = False):
        if not isinstance(dataset, H5Split):
            raise TypeError(f"dataset must be an H5Split, got {type(dataset).__name__}")
        if in_memory not in ("auto", True, False):
            raise ValueError(f"in_memory must be 'auto', True or False, got {in_memory!r}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset = dataset
        self.device = device
        self.num_workers = int(num_workers)
        fits = dataset.nbytes <= max_bytes
        if in_memory is True and not fits:
            raise MemoryError(
                f"{dataset!r} needs {dataset.nbytes / 2**20:.1f} MiB, above max_bytes={max_bytes / 2**20:.1f} MiB; "
                f"use in_memory='auto' or False to stream it"
            )
        self.mode = "memory" if (in_memory is True or (in_memory == "auto" and fits)) else "stream"
        self.labels = torch.from_numpy(dataset.labels)
        self._images: torch.Tensor | None = None
        if self.mode == "memory":
            self._images = dataset.load_images(max_bytes=None, progress=progress).to(device)

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, batch_size: int, order: torch.Tensor | None = None):
        """Yield ``(x float32 (B, 3, H, W) on device, y int64 (B,) on device)`` in ``order`` (default 0..n-1)."""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self.dataset)
        if order is None:
            order = torch.arange(n)
        non_blocking = self.device.type == "cuda"
        if self.mode == "memory":
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                x = to_float_chw(self._images[idx.to(self._images.device)])
                yield x, self.labels[idx].to(self.device, non_blocking=non_blocking)
            return
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=batch_size, sampler=order.tolist(), num_workers=self.num_workers,
            pin_memory=non_blocking, persistent_workers=False,
            # A private generator: otherwise every new iterator draws its base seed from the
            # global torch RNG and shifts the dropout stream, so streaming would train
            # differently from the in-memory path.
            generator=torch.Generator().manual_seed(0),
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)
