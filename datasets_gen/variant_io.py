"""The HDF5 variant file: atomic writing, reading and checksum verification.

A *variant* is one poisoned (or clean) version of a data set in one HDF5 file; what it holds (the
splits, the row-aligned fields, the root attributes and their encoding) is the schema of
:mod:`datasets_gen.schema`, which this writer and the reader :mod:`backdoorlab.data` both import
(its names are re-exported here for callers that know the file by this module).

Writing is atomic: rows go to ``<path>.tmp`` and the file is ``os.replace``d onto ``path`` only
after every split was written and checked, so an interrupted or failing run never leaves a partial
``.h5`` behind. :class:`VariantWriter` streams rows in chunks (the builder never holds a whole
data set in memory); :func:`write_variant` is the one-shot form for arrays already in memory.

Beside ``<stem>.h5`` live ``<stem>.manifest.json`` (SHA-256 of the file, counts per split and
class), ``<stem>.CARD.md`` and ``<stem>.preview.png``. All of them are written to temporaries first
and moved in by :func:`commit_variant`, the ``.h5`` last, so a reader never finds a file beside a
manifest of another build. :func:`verify` checks a file against its manifest; with ``cache=True``
it hashes a file once and remembers the digest by the file's identity (device, inode, size, mtime,
ctime) in a per-user cache, so opening the same unchanged variant again costs a ``stat``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import h5py
import numpy as np
from tqdm.auto import tqdm

from datasets_gen import __version__ as GENERATOR_VERSION
from datasets_gen.atomic import atomic_write_json
from datasets_gen.schema import (  # noqa: F401  (FIELDS, ROW_FIELDS, ...: re-exported)
    FIELDS,
    JSON_ATTRS,
    REQUIRED_ATTRS,
    ROW_FIELDS,
    SPLITS,
    decode_attrs,
    encode_attrs,
    validate_attrs,
    validate_rows,
)


#: gzip level: on noisy 32x32 images levels 1, 4 and 6 all give ~84 % of the raw size while level 1
#: compresses ~20 % faster (measured on synth-signs), and writing is the builder's bottleneck.
GZIP_LEVEL = 1
#: How the ``images`` datasets may be stored: ``"gzip"`` (level :data:`GZIP_LEVEL`, the default) or
#: ``"none"`` (chunked, uncompressed). Sensor-noisy images gain little from gzip (synth-faces at
#: 55x47: 87 % of the raw size) at ~155 us of CPU per image — on a 2-core machine that one filter
#: caps a face build near 6,000 images/s before anything is rendered. Readers see no difference.
IMAGE_COMPRESSIONS = ("gzip", "none")
#: Target bytes per image chunk: large enough to compress well, small enough for random access.
CHUNK_BYTES = 1 << 18


def sidecar_paths(path: str | os.PathLike) -> dict[str, Path]:
    """Paths of the files published beside a variant.

    Parameters
    ----------
    path : path-like
        The variant, e.g. ``out/gtsrb-ours-yellow-square-7.h5``.

    Returns
    -------
    dict
        ``manifest`` (``<stem>.manifest.json``), ``card`` (``<stem>.CARD.md``) and ``preview``
        (``<stem>.preview.png``). Prefixing the stem lets several variants share one folder.
    """
    p = Path(path)
    stem = p.name[:-3] if p.name.endswith(".h5") else p.stem
    return {
        "manifest": p.with_name(f"{stem}.manifest.json"),
        "card": p.with_name(f"{stem}.CARD.md"),
        "preview": p.with_name(f"{stem}.preview.png"),
    }


def sidecar_tmp_paths(path: str | os.PathLike) -> dict[str, Path]:
    """Temporaries the sidecars are written to before :func:`commit_variant` moves them into place.

    Same keys as :func:`sidecar_paths`; the preview's temporary keeps the ``.png`` ending because
    OpenCV picks the encoder from the extension.
    """
    final = sidecar_paths(path)
    return {
        "manifest": final["manifest"].with_name(final["manifest"].name + ".tmp"),
        "card": final["card"].with_name(final["card"].name + ".tmp"),
        "preview": final["preview"].with_name(final["preview"].name[: -len(".png")] + ".tmp.png"),
    }


def check_destination(path: str | os.PathLike) -> Path:
    """Refuse, before any work is done, a variant path that the finished files could not be moved onto.

    Parameters
    ----------
    path : path-like
        The ``.h5`` to publish.

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        ``path`` does not end in ``.h5``, or it, its temporary or a sidecar path exists and is not a
        regular file (e.g. a directory named ``out.h5``): ``os.replace`` would fail only after the
        whole build.
    FileNotFoundError
        The output folder does not exist.
    PermissionError
        The output folder is not writable.
    """
    p = Path(path)
    if p.suffix != ".h5":
        raise ValueError(f"variant path must end in .h5, got {p}")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"output folder {p.parent} does not exist")
    targets = [p, p.with_name(p.name + ".tmp"), *sidecar_paths(p).values(), *sidecar_tmp_paths(p).values()]
    for q in targets:
        if q.exists() and not q.is_file():
            kind = "a directory" if q.is_dir() else "not a regular file"
            raise ValueError(f"cannot publish the variant {p}: {q} exists and is {kind}")
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {p.parent} is not writable")
    return p



# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------



def _chunk_rows(h: int, w: int, c: int) -> int:
    return max(1, CHUNK_BYTES // (h * w * c))


class VariantWriter:
    """Stream a variant into ``<path>.tmp`` and move it onto ``path`` when complete.

    Use as a context manager; leaving the block with an exception (including
    ``KeyboardInterrupt``) deletes the temporary file and leaves ``path`` untouched.

    Parameters
    ----------
    path : path-like
        Destination ``.h5`` file; its folder must exist.
    attrs : mapping
        Root attributes (see :data:`REQUIRED_ATTRS`); validated at once.
    on_complete : callable, optional
        ``on_complete(tmp_path, final_path)`` runs after the file is complete and closed but before
        it is moved into place. It writes the sidecars from the finished file to their temporaries
        (:func:`sidecar_tmp_paths`) and returns them as ``{kind: temporary}`` (or None for none);
        :func:`commit_variant` then moves them in together with the file. If it raises, nothing
        is moved and every temporary is deleted.
    image_compression : {"gzip", "none"}
        Filter of the ``images`` datasets (:data:`IMAGE_COMPRESSIONS`); the small per-row fields
        are always gzip-compressed.

    Examples
    --------
    >>> with VariantWriter("v.h5", attrs) as w:          # doctest: +SKIP
    ...     for batch in batches:
    ...         w.append("train", batch)
    """

    def __init__(self, path: str | os.PathLike, attrs: Mapping[str, Any],
                 on_complete: Callable[[Path, Path], Mapping[str, Path] | None] | None = None,
                 image_compression: str = "gzip"):
        if image_compression not in IMAGE_COMPRESSIONS:
            raise ValueError(f"image_compression must be one of {IMAGE_COMPRESSIONS}, got {image_compression!r}")
        self.image_compression = image_compression
        self.path = check_destination(path)
        self.on_complete = on_complete
        self.attrs = validate_attrs(attrs)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self._file: h5py.File | None = None
        self.counts: dict[str, int] = {s: 0 for s in SPLITS}

    def __enter__(self) -> "VariantWriter":
        self._file = h5py.File(self.tmp_path, "w", track_order=False)
        for key, value in encode_attrs(self.attrs).items():
            self._file.attrs[key] = value
        h, w, c = self.attrs["image_shape"]
        for split in SPLITS:
            g = self._file.create_group(split, track_order=False)
            rows = _chunk_rows(h, w, c)
            g.create_dataset(
                "images", shape=(0, h, w, c), maxshape=(None, h, w, c), dtype=np.uint8,
                chunks=(rows, h, w, c), shuffle=False,
                **({"compression": "gzip", "compression_opts": GZIP_LEVEL} if self.image_compression == "gzip" else {}),
                track_times=False,  # no timestamps: the same build gives the same bytes (same SHA-256)
            )
            for name, dtype in FIELDS.items():
                if name != "images":
                    g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,),
                                     compression="gzip", compression_opts=GZIP_LEVEL, track_times=False)
        return self

    def append(self, split: str, rows: Mapping[str, np.ndarray]) -> None:
        """Validate and append a batch of rows to ``split``."""
        if self._file is None:
            raise RuntimeError("VariantWriter.append called outside its `with` block")
        checked = validate_rows(split, rows, self.attrs)
        n = checked["images"].shape[0]
        if n == 0:
            return
        g = self._file[split]
        start = self.counts[split]
        for name, arr in checked.items():
            ds = g[name]
            ds.resize(start + n, axis=0)
            ds[start:start + n] = arr
        self.counts[split] = start + n

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add or change root attributes before the file is closed (e.g. build statistics)."""
        if self._file is None:
            raise RuntimeError("VariantWriter.set_attrs called outside its `with` block")
        merged = validate_attrs({**self.attrs, **attrs})
        self.attrs = merged
        for key in list(self._file.attrs):
            del self._file.attrs[key]
        for key, value in encode_attrs(merged).items():
            self._file.attrs[key] = value

    def _discard(self) -> None:
        self.tmp_path.unlink(missing_ok=True)
        for tmp in sidecar_tmp_paths(self.path).values():
            tmp.unlink(missing_ok=True)

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._file is not None
        try:
            self._file.close()
        finally:
            self._file = None
            if exc_type is not None:
                self._discard()
        if exc_type is None:
            try:
                empty = [s for s in ("train", "test") if self.counts[s] == 0]
                if empty:
                    raise ValueError(f"variant {self.path.name}: split(s) {empty} received no rows")
                sidecars = self.on_complete(self.tmp_path, self.path) if self.on_complete is not None else None
                commit_variant(self.tmp_path, self.path, sidecars or {})
            except BaseException:
                self._discard()
                raise
            if sidecars and "manifest" in sidecars:
                # The manifest was hashed from these very bytes: seed the checksum cache so the
                # first training run on a fresh variant does not hash it again.
                remember_sha256(self.path, json.loads(sidecar_paths(self.path)["manifest"].read_text("utf-8"))["sha256"])
        return False


def commit_variant(tmp_path: str | os.PathLike, path: str | os.PathLike,
                   sidecars: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Move a complete variant and its sidecar temporaries into place as one set, the ``.h5`` last.

    Four renames cannot be one atomic step, so the order is chosen to make every moment safe for a
    reader that checks the manifest: the old ``path`` is removed first, so from then until the last
    rename there is no variant under that name (a reader gets "not found", never the old file
    beside the new manifest); then sidecars of the old set that the new one lacks (an old card
    must not describe a new file), then the new sidecars, and the ``.h5`` last. A kill inside that
    window (microseconds) leaves the new sidecars and the complete ``<path>.tmp``, no ``path``.

    Parameters
    ----------
    tmp_path : path-like
        The finished variant (``<path>.tmp``).
    path : path-like
        Its destination.
    sidecars : mapping, optional
        ``{kind: temporary}`` with kinds of :func:`sidecar_paths`; missing kinds are removed.

    Returns
    -------
    Path
        ``path``.
    """
    tmp, final = Path(tmp_path), check_destination(path)
    dest = sidecar_paths(final)
    moves = dict(sidecars or {})
    unknown = [k for k in moves if k not in dest]
    if unknown:
        raise KeyError(f"unknown sidecar kind(s) {unknown}; expected some of {list(dest)}")
    for kind, src in moves.items():
        if not Path(src).is_file():
            raise FileNotFoundError(f"sidecar temporary {src} ({kind}) of {final.name} does not exist")
    if not tmp.is_file():
        raise FileNotFoundError(f"finished variant {tmp} does not exist")
    final.unlink(missing_ok=True)
    for kind, target in dest.items():
        if kind not in moves:
            target.unlink(missing_ok=True)
    for kind in ("preview", "card", "manifest"):  # the manifest last among them: it describes the set
        if kind in moves:
            os.replace(moves[kind], dest[kind])
    os.replace(tmp, final)
    return final


def write_variant(path: str | os.PathLike, splits: Mapping[str, Mapping[str, np.ndarray]],
                  attrs: Mapping[str, Any], *, manifest: bool = True) -> Path:
    """Write a whole variant held in memory, atomically.

    Parameters
    ----------
    path : path-like
        Destination ``.h5``.
    splits : mapping
        ``{split: {field: array}}`` for all four :data:`SPLITS` (a split may have zero rows,
        except ``train`` and ``test``); fields as in :data:`FIELDS`.
    attrs : mapping
        Root attributes (:data:`REQUIRED_ATTRS`).
    manifest : bool
        Also write ``<stem>.manifest.json`` (SHA-256 and counts) beside the file, published with
        it; without one, an older manifest at that name is removed (it would describe another file).

    Returns
    -------
    Path
        ``path``.
    """
    if not isinstance(splits, Mapping):
        raise TypeError(f"splits must be a mapping of split -> fields, got {type(splits).__name__}")
    missing = [s for s in SPLITS if s not in splits]
    unknown = [s for s in splits if s not in SPLITS]
    if missing or unknown:
        raise KeyError(f"splits must be exactly {SPLITS}; missing {missing}, unknown {unknown}")
    def finish(tmp: Path, final: Path) -> dict[str, Path] | None:
        if not manifest:
            return None
        return {"manifest": write_manifest(final, data_path=tmp, dest=sidecar_tmp_paths(final)["manifest"])}

    with VariantWriter(path, attrs, on_complete=finish) as writer:
        for split in SPLITS:
            writer.append(split, splits[split])
    return Path(path)


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _require_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"variant file {p} not found")
    return p



def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes of a variant, JSON ones decoded, ``image_shape`` as a tuple of ints."""
    p = _require_file(path)
    with h5py.File(p, "r") as f:
        raw = dict(f.attrs)
    out = decode_attrs(raw, str(p))
    missing = [k for k in REQUIRED_ATTRS if k not in out]
    if missing:
        raise ValueError(f"{p} is not a backdoorlab variant: root attrs missing {missing}")
    return out


def read_split(path: str | os.PathLike, split: str, *, fields: Iterable[str] | None = None,
               verify_checksum: bool = False) -> dict[str, np.ndarray]:
    """Load one split into memory (small variants, tests, previews).

    Parameters
    ----------
    path : path-like
        The variant.
    split : str
        One of :data:`SPLITS`.
    fields : iterable of str, optional
        Subset of :data:`FIELDS` to load (default: all).
    verify_checksum : bool
        Check the file against its manifest first (:func:`verify`).

    Returns
    -------
    dict
        ``{field: ndarray}``; ``images`` of shape (N, H, W, 3) uint8.
    """
    p = _require_file(path)
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
    names = list(FIELDS) if fields is None else list(fields)
    unknown = [f for f in names if f not in FIELDS]
    if unknown:
        raise KeyError(f"unknown field(s) {unknown}; expected some of {list(FIELDS)}")
    if verify_checksum:
        verify(p)
    with h5py.File(p, "r") as f:
        if split not in f:
            raise ValueError(f"{p} has no split {split!r}")
        return {name: f[split][name][()] for name in names}


def split_counts(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Rows, poisoned rows and rows per original class for every split (used by the manifest)."""
    p = _require_file(path)
    n_classes = read_attrs(p)["n_classes"]
    out: dict[str, dict[str, Any]] = {}
    with h5py.File(p, "r") as f:
        for split in SPLITS:
            g = f[split]
            original = g["original_labels"][()]
            labels = g["labels"][()]
            out[split] = {
                "n": int(original.shape[0]),
                "n_poisoned": int(g["is_poisoned"][()].sum()),
                "per_class": np.bincount(original, minlength=n_classes).astype(int).tolist(),
                "per_label": np.bincount(labels, minlength=n_classes).astype(int).tolist(),
                "n_provenance": int(np.unique(g["provenance"][()]).size),
            }
    return out


def sha256_file(path: str | os.PathLike, block: int = 1 << 20, *, progress: bool = False) -> str:
    """Hex SHA-256 of a file, read in blocks (a tqdm bar over the bytes with ``progress``)."""
    h = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {Path(path).name}",
                                     disable=not progress, leave=False) as bar:
        while chunk := f.read(block):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# the checksum cache
# --------------------------------------------------------------------------------------------

#: Environment variable naming the checksum cache's folder; default ``$XDG_CACHE_HOME/backdoorlab``
#: (``~/.cache/backdoorlab``). Digests go to its ``sha256/`` subfolder.
CACHE_ENV = "BACKDOORLAB_CACHE_DIR"


def checksum_cache_dir() -> Path:
    """The folder of the checksum cache (one small JSON file per hashed path)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "backdoorlab"
    return Path(root) / "sha256"


def _identity(st: os.stat_result) -> list[int]:
    # Size and mtime alone miss an edit that restores the mtime (``touch -r``, ``cp -p``); the
    # ctime cannot be set back by ordinary tools and the inode changes when a file is replaced.
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _cache_entry(resolved: Path) -> Path:
    # One entry per absolute path: a rewritten file replaces its entry, so the cache cannot grow
    # beyond the number of distinct paths ever opened.
    name = hashlib.sha256(os.fsencode(resolved)).hexdigest()[:40]
    return checksum_cache_dir() / f"{name}.json"


def _write_cache_entry(resolved: Path, st: os.stat_result, digest: str) -> None:
    folder = checksum_cache_dir()
    try:
        # A private temporary per writer: two processes caching the same file at once each
        # replace the entry whole (the last one wins; both are right).
        atomic_write_json(_cache_entry(resolved), {"path": str(resolved), "identity": _identity(st), "sha256": digest},
                          indent=None, unique=True)
    except OSError as exc:
        # The cache only saves time: a read-only home must not stop a run, but it should be known.
        warnings.warn(f"checksum cache {folder} is not writable ({exc}); {resolved.name} will be hashed "
                      f"again on every open (set {CACHE_ENV} to a writable folder)", stacklevel=3)


def cached_sha256(path: str | os.PathLike, *, progress: bool = False) -> tuple[str, bool]:
    """SHA-256 of a file, from the cache when the file is unchanged since it was last hashed.

    Parameters
    ----------
    path : path-like
    progress : bool
        tqdm bar while hashing (not shown on a cache hit).

    Returns
    -------
    (str, bool)
        The hex digest and whether it came from the cache.

    Notes
    -----
    An entry is used only when the file's device, inode, size, mtime and ctime all equal those
    recorded when it was hashed. It guards against accidents and edits by ordinary tools, not
    against someone who can write to the cache folder (they could write the manifest too).
    """
    resolved = _require_file(path).resolve()
    st = resolved.stat()
    entry = _cache_entry(resolved)
    try:
        record = json.loads(entry.read_text(encoding="utf-8"))
        if (isinstance(record, dict) and record.get("path") == str(resolved)
                and record.get("identity") == _identity(st) and isinstance(record.get("sha256"), str)):
            return record["sha256"], True
    except (OSError, ValueError):
        pass  # no entry, or a damaged one: hash afresh and rewrite it
    digest = sha256_file(resolved, progress=progress)
    if _identity(resolved.stat()) == _identity(st):  # not changed while it was being read
        _write_cache_entry(resolved, st, digest)
    return digest, False


def remember_sha256(path: str | os.PathLike, digest: str) -> None:
    """Record ``digest`` as the SHA-256 of ``path`` as it is now (a writer that just hashed the bytes)."""
    if not isinstance(digest, str) or len(digest) != 64:
        raise ValueError(f"digest must be a 64-character hex SHA-256, got {digest!r}")
    resolved = _require_file(path).resolve()
    _write_cache_entry(resolved, resolved.stat(), digest)


def write_manifest(path: str | os.PathLike, *, data_path: str | os.PathLike | None = None,
                   extra: Mapping[str, Any] | None = None, dest: str | os.PathLike | None = None) -> Path:
    """Write ``<stem>.manifest.json`` beside a variant: SHA-256, size, attrs and counts.

    Parameters
    ----------
    path : path-like
        The variant's (final) path: names the manifest and its ``file`` entry.
    data_path : path-like, optional
        The file to hash and count, when it is not yet at ``path`` (the builder's temporary file).
    extra : mapping, optional
        More entries (e.g. build statistics).
    dest : path-like, optional
        Write here instead of ``<stem>.manifest.json`` (the temporary that :func:`commit_variant`
        publishes with the file).

    Returns
    -------
    Path
        The manifest path (``dest`` when given).
    """
    final = Path(path)
    p = _require_file(data_path if data_path is not None else path)
    attrs = read_attrs(p)
    manifest = {
        "file": final.name,
        "sha256": sha256_file(p),
        "bytes": p.stat().st_size,
        "generator_version": attrs["generator_version"],
        "source": attrs["source"],
        "seed": attrs["seed"],
        "n_classes": attrs["n_classes"],
        "class_names": attrs["class_names"],
        "image_shape": list(attrs["image_shape"]),
        "target_class": attrs["target_class"],
        "source_classes": attrs["source_classes"],
        "recipe": attrs["recipe"],
        "trigger": attrs["trigger"],
        "splits": split_counts(p),
        **dict(extra or {}),
    }
    out = Path(dest) if dest is not None else sidecar_paths(final)["manifest"]
    atomic_write_json(out, manifest)
    return out


class ChecksumError(ValueError):
    """A file's bytes differ from what its manifest records: altered or truncated after publishing."""


def verify(path: str | os.PathLike, manifest: str | os.PathLike | None = None, *, cache: bool = False,
           progress: bool = False) -> str:
    """Check a variant against its manifest.

    Parameters
    ----------
    path : path-like
        The variant.
    manifest : path-like, optional
        Default ``<stem>.manifest.json`` beside it.
    cache : bool
        Take the file's SHA-256 from the checksum cache when the file is unchanged since it was
        last hashed (:func:`cached_sha256`); default: hash it now.
    progress : bool
        tqdm bar while hashing.

    Returns
    -------
    str
        The verified SHA-256 (hex).

    Raises
    ------
    FileNotFoundError
        The variant or its manifest is missing.
    ChecksumError
        Size, SHA-256 or the counts per split differ from the manifest (the difference is named).
    ValueError
        The manifest is not a readable manifest.
    """
    p = _require_file(path)
    m = Path(manifest) if manifest is not None else sidecar_paths(p)["manifest"]
    if not m.is_file():
        raise FileNotFoundError(f"manifest {m} for {p.name} not found")
    try:
        expected = json.loads(m.read_text(encoding="utf-8"))
        want_sha = expected["sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"manifest {m} is corrupt: {type(exc).__name__}: {exc}") from exc
    if not isinstance(want_sha, str) or len(want_sha) != 64:
        raise ValueError(f"manifest {m} is corrupt: 'sha256' must be 64 hex digits, got {want_sha!r}")
    want_bytes = expected.get("bytes")
    size = p.stat().st_size
    if isinstance(want_bytes, int) and size != want_bytes:
        # Cheaper and clearer than a digest mismatch: the usual case is an interrupted copy.
        raise ChecksumError(f"{p}: {size} bytes, but its manifest {m.name} records {want_bytes} "
                            f"(truncated or altered after publishing)")
    got_sha = cached_sha256(p, progress=progress)[0] if cache else sha256_file(p, progress=progress)
    if got_sha != want_sha:
        raise ChecksumError(f"{p}: SHA-256 {got_sha} does not match its manifest {m.name} ({want_sha}); "
                            f"the file was altered after publishing")
    if "splits" in expected:
        got = split_counts(p)
        for split, counts in expected["splits"].items():
            if got.get(split) != counts:
                raise ChecksumError(f"{p}: counts of split {split!r} {got.get(split)} differ from manifest {counts}")
    return got_sha
