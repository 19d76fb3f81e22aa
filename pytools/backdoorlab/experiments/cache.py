"""The cell cache: one JSON file per finished grid cell, named by a hash of its configuration.

A cell's key is the SHA-256 of the canonical JSON (sorted keys, no whitespace) of everything that
determines its result — data source, recipe, poison share, model, training parameters, defence
pipeline and parameters, seed and the cache schema — so a re-run finds the cells it already has
and skips them, an interrupted run resumes with the cells not yet written, and changing any
parameter gives a new key rather than a stale hit. Labels (setting ids, trigger names) are not
part of the key: renaming a setting does not recompute it.

Every file is written atomically (:mod:`datasets_gen.atomic`), so an interrupted run never leaves a
half-written cell that a later run would trust, and through a temporary of its own, so two
processes writing the same cell at once (Dask workers, runs sharing a results folder) leave one
whole cell, never a mix of both.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterator, Mapping

from datasets_gen.atomic import atomic_write_json, json_default

# Bump when the meaning of a cached cell changes, so old caches are recomputed, not misread.
CACHE_SCHEMA = "backdoorlab.cell/1"
KEY_LENGTH = 16  # hex digits of the SHA-256 kept in file names (64 bits: no collisions in practice)


def canonical_json(obj: Any) -> str:
    """Deterministic JSON of ``obj``: sorted keys, no spaces, floats as Python's shortest repr.

    Raises
    ------
    ValueError
        If ``obj`` holds NaN or infinity (they have no canonical JSON form) or a type JSON
        cannot represent (the message names it).
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=json_default)
    except ValueError as exc:
        raise ValueError(f"cell configuration cannot be hashed: {exc}") from exc


def config_key(config: Mapping[str, Any]) -> str:
    """The cache key of a cell configuration: ``KEY_LENGTH`` hex digits of its SHA-256.

    The cache schema is mixed in, so keys change when :data:`CACHE_SCHEMA` does.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    payload = canonical_json({"schema": CACHE_SCHEMA, "config": config})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:KEY_LENGTH]


class CellCache:
    """Finished cells of one results folder, stored as ``<root>/cells/<key>.json``.

    Parameters
    ----------
    root : path
        The results folder (``--out``); the ``cells`` sub-folder is created on first write.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.dir = self.root / "cells"

    def path(self, key: str) -> Path:
        if not isinstance(key, str) or len(key) != KEY_LENGTH or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be {KEY_LENGTH} lower-case hex digits, got {key!r}")
        return self.dir / f"{key}.json"

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def get(self, key: str) -> dict | None:
        """The cached cell for ``key``, or None when absent or unreadable.

        A file that is not valid JSON, or whose stored key or schema does not match (e.g. an
        older schema, or a file copied under the wrong name), counts as absent: the cell is
        recomputed and the file overwritten.
        """
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            cell = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(cell, dict) or cell.get("key") != key or cell.get("schema") != CACHE_SCHEMA:
            return None
        return cell

    def put(self, key: str, cell: Mapping[str, Any]) -> Path:
        """Store a finished cell (atomically); ``cell['key']`` and ``cell['schema']`` are set here."""
        if not isinstance(cell, Mapping):
            raise TypeError(f"cell must be a mapping, got {type(cell).__name__}")
        record = dict(cell)
        record["key"] = key
        record["schema"] = CACHE_SCHEMA
        _check_finite(record, "cell")
        # A private temporary per writer: two workers (or two runs sharing --out) that finish the
        # same cell at once would otherwise write into one <key>.json.tmp and could move a mix of
        # both onto the cell. With its own temporary each rename is of a whole cell; the last wins.
        return atomic_write_json(self.path(key), record, unique=True)

    def keys(self) -> Iterator[str]:
        if not self.dir.is_dir():
            return iter(())
        return (p.stem for p in sorted(self.dir.glob("*.json")))


def _check_finite(obj: Any, where: str) -> None:
    """Refuse NaN/inf anywhere in a record, naming where (JSON cannot hold them)."""
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{where} is {obj!r}; cells must hold finite numbers or null")
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_finite(v, f"{where}[{i}]")
