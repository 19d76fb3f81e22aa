"""The HDF5 variant schema: what a variant file holds and how its attributes are stored.

The one home of the schema (docs/contracts.md section 2 describes it): the four :data:`SPLITS`,
the six row-aligned :data:`FIELDS` of every split with their stored dtypes, the root attributes
(:data:`REQUIRED_ATTRS`, JSON-encoded ones in :data:`JSON_ATTRS`), their encoding for h5py and
their decoding from it, and the checks of attributes and rows. The writer
(:mod:`datasets_gen.variant_io`) and the reader (:mod:`backdoorlab.data`) both import it, so
neither can drift from the other.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

#: The four splits every variant holds, in this order.
SPLITS: tuple[str, ...] = ("train", "test", "clean", "test_triggered")

#: Per-split datasets and their stored dtypes (images additionally must be (N, H, W, 3)).
FIELDS: dict[str, np.dtype] = {
    "images": np.dtype(np.uint8),
    "labels": np.dtype(np.int64),
    "original_labels": np.dtype(np.int64),
    "is_poisoned": np.dtype(np.bool_),
    "provenance": np.dtype(np.int32),
    "index": np.dtype(np.int64),
}

#: The per-row fields: every field but ``images`` (small arrays a reader loads whole).
ROW_FIELDS: tuple[str, ...] = tuple(f for f in FIELDS if f != "images")

#: Root attributes every variant carries.
REQUIRED_ATTRS: tuple[str, ...] = (
    "recipe",
    "trigger",
    "class_names",
    "n_classes",
    "seed",
    "generator_version",
    "source",
    "target_class",
    "source_classes",
    "image_shape",
)

#: Root attributes stored as JSON strings (decoded by :func:`read_attrs`).
JSON_ATTRS: frozenset[str] = frozenset({"recipe", "trigger", "class_names", "source_classes"})

#: Name of the root attribute listing extra (non-required) attributes that were JSON-encoded.
EXTRA_JSON_KEY = "json_attrs"


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"attribute {name!r} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def validate_attrs(attrs: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
    """Check the root attributes and return a normalised copy.

    Parameters
    ----------
    attrs : mapping
        Decoded root attributes (:func:`decode_attrs`).
    partial : bool
        Check only the attributes present (files of older versions or of other tools, read by
        :class:`backdoorlab.data.H5Split`); the writer always requires all of them.

    Raises
    ------
    KeyError
        A required attribute is missing (named).
    TypeError, ValueError
        An attribute has the wrong type or an impossible value (named, with the value).
    """
    if not isinstance(attrs, Mapping):
        raise TypeError(f"attrs must be a mapping, got {type(attrs).__name__}")
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing and not partial:
        raise KeyError(f"variant attrs missing required key(s) {missing}; required: {list(REQUIRED_ATTRS)}")
    out = dict(attrs)
    n_classes: int | None = None
    if "n_classes" in attrs:
        n_classes = _as_int(attrs["n_classes"], "n_classes")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        out["n_classes"] = n_classes
    if "class_names" in attrs:
        names = attrs["class_names"]
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"class_names must be a list of strings, got {names!r}")
        if n_classes is None:
            n_classes = len(names)
        if len(names) != n_classes:
            raise ValueError(f"class_names must be {n_classes} strings (n_classes), got {len(names)}: {list(names)[:5]!r}")
        out["class_names"] = list(names)
    if "seed" in attrs:
        out["seed"] = _as_int(attrs["seed"], "seed")
    if "target_class" in attrs:
        target = _as_int(attrs["target_class"], "target_class")
        if n_classes is not None and not 0 <= target < n_classes:
            raise ValueError(f"target_class {target} outside [0, {n_classes})")
        out["target_class"] = target
    if "source_classes" in attrs:
        if not isinstance(attrs["source_classes"], (list, tuple)):
            raise TypeError(f"attribute 'source_classes' must be a list of class ids, got {attrs['source_classes']!r}")
        sources = [_as_int(s, "source_classes[i]") for s in attrs["source_classes"]]
        bad = [s for s in sources if n_classes is not None and not 0 <= s < n_classes]
        if bad:
            raise ValueError(f"source_classes {bad} outside [0, {n_classes})")
        out["source_classes"] = sources
    if "image_shape" in attrs:
        shape = tuple(int(s) for s in np.asarray(attrs["image_shape"]).ravel())
        if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
            raise ValueError(f"image_shape must be (H, W, 3), got {shape}")
        out["image_shape"] = shape
    for key in ("source", "generator_version"):
        if key in attrs and (not isinstance(attrs[key], str) or not attrs[key]):
            raise TypeError(f"attribute {key!r} must be a non-empty string, got {attrs[key]!r}")
    for key in ("recipe", "trigger"):
        if key in attrs and not isinstance(attrs[key], (Mapping, type(None))):
            raise TypeError(f"attribute {key!r} must be a dict (stored as JSON), got {type(attrs[key]).__name__}")
    return out


def validate_rows(split: str, rows: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Check one batch of rows of ``split`` against the schema and the (validated) attrs.

    Parameters
    ----------
    split : str
        One of :data:`SPLITS`.
    rows : mapping
        The six :data:`FIELDS`, row-aligned; ``images`` uint8 of shape (n, H, W, 3).
    attrs : mapping
        Output of :func:`validate_attrs`.

    Returns
    -------
    dict
        The rows cast to the stored dtypes (lossless casts only).
    """
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; expected one of {SPLITS}")
    missing = [f for f in FIELDS if f not in rows]
    if missing:
        raise KeyError(f"split {split!r} missing field(s) {missing}")
    extra = [f for f in rows if f not in FIELDS]
    if extra:
        raise KeyError(f"split {split!r} has unknown field(s) {extra}; allowed: {list(FIELDS)}")
    images = rows["images"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(f"{split}/images must be a uint8 ndarray, got {getattr(images, 'dtype', type(images).__name__)}")
    h, w, c = attrs["image_shape"]
    if images.ndim != 4 or images.shape[1:] != (h, w, c):
        raise ValueError(f"{split}/images must have shape (N, {h}, {w}, {c}), got {images.shape}")
    n = images.shape[0]
    out: dict[str, np.ndarray] = {"images": images}
    for name, dtype in FIELDS.items():
        if name == "images":
            continue
        arr = np.asarray(rows[name])
        if arr.shape != (n,):
            raise ValueError(f"{split}/{name} must have shape ({n},) like images, got {arr.shape}")
        if dtype == np.bool_:
            if arr.dtype != np.bool_:
                raise TypeError(f"{split}/{name} must be bool, got {arr.dtype}")
        else:
            if not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(f"{split}/{name} must be an integer array, got {arr.dtype}")
            if n and (arr.min() < np.iinfo(dtype).min or arr.max() > np.iinfo(dtype).max):
                raise ValueError(f"{split}/{name} values outside the {dtype} range")
            arr = arr.astype(dtype, copy=False)
        out[name] = arr
    k = attrs["n_classes"]
    for name in ("labels", "original_labels"):
        arr = out[name]
        if n and (arr.min() < 0 or arr.max() >= k):
            bad = arr[(arr < 0) | (arr >= k)][:5].tolist()
            raise ValueError(f"{split}/{name} has class ids {bad} outside [0, {k})")
    clean_rows = ~out["is_poisoned"]
    if np.any(out["labels"][clean_rows] != out["original_labels"][clean_rows]):
        raise ValueError(f"{split}: labels differ from original_labels on rows that are not poisoned")
    if split == "test_triggered":
        if not out["is_poisoned"].all():
            raise ValueError("test_triggered: every row must have is_poisoned=True")
        if np.any(out["labels"] != attrs["target_class"]):
            raise ValueError(f"test_triggered: labels must all be the target class {attrs['target_class']}")
    elif split in ("test", "clean") and out["is_poisoned"].any():
        raise ValueError(f"split {split!r} must not contain poisoned rows")
    return out



def encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    encoded: dict[str, Any] = {}
    extra_json: list[str] = []
    for key, value in attrs.items():
        if key == EXTRA_JSON_KEY:
            continue
        if key in JSON_ATTRS:
            encoded[key] = json.dumps(value, sort_keys=True)
        elif key == "image_shape":
            encoded[key] = np.asarray(value, dtype=np.int64)
        elif isinstance(value, (str, bool, int, float, np.integer, np.floating, np.bool_)):
            encoded[key] = value
        else:  # dicts, lists, None: JSON, remembered so read_attrs can decode them
            encoded[key] = json.dumps(value, sort_keys=True)
            extra_json.append(key)
    encoded[EXTRA_JSON_KEY] = json.dumps(sorted(extra_json))
    return encoded



def decode_attrs(raw: Mapping[str, Any], where: str = "variant") -> dict[str, Any]:
    """Decode the raw root attributes of a variant (as h5py gives them): JSON ones parsed,
    ``image_shape`` as a tuple of ints, numpy scalars as Python numbers.

    Parameters
    ----------
    raw : mapping
        ``dict(h5py_file.attrs)``.
    where : str
        Names the file in error messages.

    Raises
    ------
    ValueError
        An attribute that must hold JSON does not (named, with the parser's complaint), or
        ``image_shape`` is not a list of integers.
    """
    raw = dict(raw)
    extra_json = _decode_json(raw.pop(EXTRA_JSON_KEY, "[]"), EXTRA_JSON_KEY, where)
    if not isinstance(extra_json, list):
        raise ValueError(f"{where}: attribute {EXTRA_JSON_KEY!r} must be a JSON list, got {extra_json!r}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{where}: attribute {key!r} is not UTF-8 text ({exc})") from exc
        if key in JSON_ATTRS or key in extra_json:
            value = _decode_json(value, key, where)
        elif key == "image_shape":
            arr = np.asarray(value)
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{where}: attribute 'image_shape' must hold integers, got {value!r}")
            value = tuple(int(v) for v in arr.ravel())
        elif isinstance(value, np.integer):
            value = int(value)
        elif isinstance(value, np.floating):
            value = float(value)
        elif isinstance(value, np.bool_):
            value = bool(value)
        out[key] = value
    return out


def _decode_json(value: Any, key: str, where: str) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise ValueError(f"{where}: attribute {key!r} must be a JSON string, got {type(value).__name__} {value!r}")
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: attribute {key!r} is not valid JSON ({exc}): {value[:60]!r}") from exc
