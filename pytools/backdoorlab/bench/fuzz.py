"""Fault campaign against :mod:`backdoorlab.native`: seeded random calls of every public function.

Each case is drawn from ``(seed, case index)`` alone (reproducible one by one) and calls one
native function — ``activation_stats``, the streaming ``ActivationStats``, ``fastica``, ``pca``,
``kmeans``, ``silhouette_samples``, ``spectral_scores``, ``pruning_order``, ``pruning_mask``,
``group_by_class``, ``set_num_threads`` — with one fault class: none (``valid``), extreme but
finite magnitudes (``scale``: 1e-45 ... 3.4e38, a single 1e38 entry, a 1e19 offset, columns
60 decades apart), wrong dtypes, wrong shapes, strided/reversed/Fortran/unaligned arrays, NaN or
Inf, bad offsets, empty classes, classes smaller than ``k``, bad parameters (ranges, types,
NaN tolerances, huge ints), bad labels, bad devices, or an absurd thread count set before the
call (0, 65, 100,000, 2^31-1, 2^63, 2.5, "2", True ...).

The native result is judged against :mod:`backdoorlab.reference` on the same arguments:

* ``agreed``: both answered, the native answer is finite (NaN only where the contract puts it:
  empty classes) and agrees — element by element for the deterministic kernels (PCA and spectral
  scores on the components the data determine: a top eigenvalue separated by 1 % of the largest;
  tolerance 1e-3 of the class's largest centred row norm), through invariants for the stochastic
  ones (FastICA: unit-variance, decorrelated sources; k-means: every row at its nearest centre,
  inertia equal to the distances' sum);
* ``refused``: the native call raised ``ValueError``/``TypeError`` where the reference refused
  too (or the case is invalid by construction: a bad device or thread count), or where the
  reference's own float32 output overflows;
* failures: ``crash`` (the worker process died: the signal is recorded), ``hang`` (no answer
  within ``--timeout``), ``nan_from_finite`` (NaN/Inf from finite input), ``disagreed``,
  ``wrong_error`` (another exception type), ``refused_where_reference_answers``,
  ``answered_invalid_call`` (the native call answered a call it must refuse).

Cases run in worker subprocesses that report each case before and after it runs, so a crash
kills one worker, is counted against the case that caused it, and the campaign goes on with a
fresh worker: a crash fails the campaign (and the test that runs it) instead of killing pytest.

Usage::

    python -m backdoorlab.bench fuzz --cases 100000 [--seed 0] [--workers 1] [--json out.json]
    python -m backdoorlab.bench fuzz --seed 0 --case 1234    # show and run one case in-process

(or ``backdoorlab bench fuzz ...``). The in-suite test (tests/test_native_fuzz.py) runs a few
thousand cases; run long campaigns under ``nice``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import selectors
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from backdoorlab import native, reference
from datasets_gen.atomic import atomic_write_json

FAILURES = ("crash", "hang", "nan_from_finite", "disagreed", "wrong_error", "refused_where_reference_answers",
            "answered_invalid_call")
OUTCOMES = ("agreed", "refused", "reference_failed") + FAILURES

#: kernel -> relative weight in the draw (the cheap kernels more often: their references are cheap)
KERNELS = {
    "activation_stats": 3, "stats_stream": 2, "fastica": 2, "pca": 3, "kmeans": 2, "silhouette_samples": 2,
    "spectral_scores": 4, "pruning_order": 1, "pruning_mask": 1, "group_by_class": 1, "set_num_threads": 1,
}
BATCHED = ("fastica", "pca", "kmeans", "silhouette_samples", "spectral_scores")
MATRIX_FAULTS = ("valid", "scale", "dtype", "shape", "strides", "nonfinite", "params", "threads", "device")
FAULTS = {
    **{k: MATRIX_FAULTS + ("offsets", "empty_class", "small_class") for k in BATCHED},
    "silhouette_samples": MATRIX_FAULTS + ("offsets", "empty_class", "labels"),
    "activation_stats": MATRIX_FAULTS + ("labels",),
    "stats_stream": ("valid", "scale", "dtype", "shape", "strides", "nonfinite", "labels", "params", "threads"),
    "pruning_order": ("valid", "scale", "dtype", "shape", "strides", "nonfinite"),
    "pruning_mask": ("valid", "dtype", "shape", "strides", "params"),
    "group_by_class": ("valid", "scale", "dtype", "shape", "strides", "labels", "params"),
    "set_num_threads": ("valid", "threads"),
}
#: absurd and ordinary thread counts (the crash of issue #16 was 100,000 and 2^31-1)
THREAD_COUNTS = (1, 2, 3, 4, 0, -1, 65, 1000, 100_000, 2**31 - 1, 2**31, 2**63, -(2**31), 2.5, "2", True,
                 None, np.int64(2), np.int32(100_000))
BAD_INTS = (0, -1, -(2**31), 2**31, 2**40, 2**64, 2.0, 1.5, "3", True, None, np.float32(2.0), float("nan"))
BAD_TOLS = (-1.0, float("nan"), float("inf"), -float("inf"), "0.1", None, True, 1e308)
BAD_SEEDS = (-1, 2**64, 2**70, 1.5, "0", None, True)
BAD_DEVICES = ("bogus", "CPU", "", 3, None, b"cpu")

# per-case size limits: small, so a long campaign runs ~100 cases/s on one core
MAX_CLASSES, MAX_ROWS, MAX_DIM = 5, 14, 9


@dataclass
class Case:
    """One fuzzed call: ``fn(*args, **kwargs)`` on the native module, ``ref`` on the reference."""

    index: int
    kernel: str
    fault: str
    note: str
    args: tuple
    kwargs: dict
    threads: Any = "keep"          # a value handed to set_num_threads before the call
    must_refuse: bool = False      # invalid by construction (a bad device)


# ---- case generation --------------------------------------------------------------------------


def _values(rng: np.random.Generator, m: int, d: int, style: str) -> np.ndarray:
    """(m, d) float64 values of one class in a named style (see the module docstring)."""
    if m == 0:
        return np.zeros((0, d))
    if style == "normal":
        return rng.standard_normal((m, d)) * 10.0 ** rng.uniform(-2, 2) + rng.standard_normal(d)
    if style == "relu":
        return np.maximum(rng.standard_normal((m, d)) + rng.standard_normal(d), 0.0)
    if style == "constant":
        return np.tile(rng.standard_normal(d), (m, 1))
    if style == "duplicate":
        rows = rng.standard_normal((max(1, m // 2), d))
        return rows[rng.integers(0, rows.shape[0], m)]
    if style == "lowrank":
        return rng.standard_normal((m, 1)) @ rng.standard_normal((1, d))
    if style == "integer":
        return rng.integers(-3, 4, (m, d)).astype(np.float64)
    if style == "huge":
        return rng.standard_normal((m, d)) * 10.0 ** rng.uniform(15, 37.5)
    if style == "tiny":
        return rng.standard_normal((m, d)) * 10.0 ** rng.uniform(-44, -15)
    if style == "outlier":  # the PCA reproducer: one entry near FLT_MAX among ordinary values
        v = rng.standard_normal((m, d))
        v[rng.integers(m), rng.integers(d)] = rng.choice([-1, 1]) * 10.0 ** rng.uniform(30, 38.5)
        return v
    if style == "offset":  # the spectral reproducer: values ~1e19 with relative spread
        return 1e19 * (1.0 + 0.5 * rng.standard_normal((m, d)) * rng.choice([1.0, 1e-3]))
    if style == "columns":  # columns many decades apart
        return rng.standard_normal((m, d)) * 10.0 ** rng.uniform(-30, 30, d)
    if style == "maxabs":  # exactly at the float32 limits
        return rng.choice([-1.0, 1.0], (m, d)) * rng.choice([np.finfo(np.float32).max, 1e38, 1.0], (m, d))
    raise ValueError(f"unknown value style {style!r}")


ORDINARY = ("normal", "relu", "constant", "duplicate", "lowrank", "integer")
EXTREME = ("huge", "tiny", "outlier", "offset", "columns", "maxabs")


def _to_f32(v: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # a value above FLT_MAX becomes Inf: then the case is not finite
        return v.astype(np.float32)


def _classes(rng: np.random.Generator, min_rows: int, allow_empty: bool) -> np.ndarray:
    G = int(rng.integers(1, MAX_CLASSES + 1))
    lo = max(min_rows, 1)
    sizes = rng.integers(lo, max(lo, MAX_ROWS) + 1, G)
    if allow_empty or rng.random() < 0.15:
        sizes[rng.random(G) < 0.3] = 0
    if sizes.sum() == 0:
        sizes[-1] = lo
    return sizes


def _matrix(rng: np.random.Generator, sizes: np.ndarray, d: int, extreme: bool) -> np.ndarray:
    parts = []
    for m in sizes:
        style = str(rng.choice(EXTREME if extreme and rng.random() < 0.8 else ORDINARY))
        parts.append(_values(rng, int(m), d, style))
    return _to_f32(np.concatenate(parts) if parts else np.zeros((0, d)))


def _join(*parts: str) -> str:
    """A case note: the non-empty parts, '; '-separated."""
    return "; ".join(q for p in parts for q in p.split("; ") if q)


def _offsets(sizes: np.ndarray) -> np.ndarray:
    off = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=off[1:])
    return off


def _bad_dtype(rng: np.random.Generator, X: np.ndarray) -> Any:
    kind = int(rng.integers(8))
    if kind == 0:
        return X.astype(np.float64)
    if kind == 1:
        return X.astype(np.float16)
    if kind == 2:
        return X.astype(np.int32)
    if kind == 3:
        return X.astype(bool)
    if kind == 4:
        return X.astype(np.complex64)
    if kind == 5:
        return X.astype(object)
    if kind == 6:
        return X.tolist()
    return X.astype(">f4")  # big-endian float32: same values, another byte order


def _bad_shape(rng: np.random.Generator, X: np.ndarray) -> np.ndarray:
    kind = int(rng.integers(6))
    if kind == 0:
        return X.reshape(-1)
    if kind == 1:
        return X[..., None]
    if kind == 2:
        return np.zeros((0,) + X.shape[1:], np.float32)
    if kind == 3:
        return np.zeros((X.shape[0], 0) + X.shape[2:], np.float32)
    if kind == 4:
        return np.float32(1.0) * np.ones((), np.float32)
    return X[None]


def _strided(rng: np.random.Generator, X: np.ndarray) -> np.ndarray:
    """The same values in another memory layout (the result must not change)."""
    kind = int(rng.integers(5))
    if kind == 0:  # every other column of a wider array
        wide = np.zeros(X.shape[:-1] + (2 * X.shape[-1],), np.float32)
        wide[..., ::2] = X
        return wide[..., ::2]
    if kind == 1:
        return np.asfortranarray(X)
    if kind == 2:  # negative strides (same values in the same order)
        return np.ascontiguousarray(X[::-1])[::-1]
    if kind == 3:  # a read-only view
        Y = X.copy()
        Y.setflags(write=False)
        return Y
    # unaligned: float32 values at an odd byte offset
    buf = np.zeros(X.nbytes + 1, np.uint8)
    Y = np.frombuffer(buf.data, dtype=np.float32, count=X.size, offset=1).reshape(X.shape)
    Y[...] = X
    return Y


def _inject_nonfinite(rng: np.random.Generator, X: np.ndarray) -> np.ndarray:
    X = X.copy()
    if X.size:
        X.reshape(-1)[rng.integers(X.size)] = rng.choice([np.nan, np.inf, -np.inf])
    return X


def make_case(seed: int, index: int) -> Case:
    """The case number ``index`` of the campaign ``seed`` (depends on nothing else)."""
    rng = np.random.default_rng([seed, index])
    names = list(KERNELS)
    weights = np.array([KERNELS[k] for k in names], dtype=float)
    kernel = str(rng.choice(names, p=weights / weights.sum()))
    fault = str(rng.choice(FAULTS[kernel]))
    maker = _MAKERS[kernel]
    case = maker(rng, fault)
    case.index = index
    if fault == "threads" and kernel != "set_num_threads":
        case.threads = THREAD_COUNTS[int(rng.integers(len(THREAD_COUNTS)))]
        case.note += f"; set_num_threads({case.threads!r}) first"
    return case


def _common_faults(rng: np.random.Generator, fault: str, X: np.ndarray) -> tuple[Any, str]:
    if fault == "dtype":
        Y = _bad_dtype(rng, X)
        return Y, f"X as {getattr(Y, 'dtype', type(Y).__name__)}"
    if fault == "shape":
        Y = _bad_shape(rng, X)
        return Y, f"X of shape {Y.shape}"
    if fault == "strides":
        Y = _strided(rng, X)
        return Y, f"X with strides {Y.strides}, aligned={Y.flags.aligned}"
    if fault == "nonfinite":
        return _inject_nonfinite(rng, X), "X with one NaN/Inf"
    return X, ""


def _batched(kernel: str) -> Callable[[np.random.Generator, str], Case]:
    def make(rng: np.random.Generator, fault: str) -> Case:
        d = int(rng.integers(1, MAX_DIM + 1))
        k = int(rng.integers(1, min(d, 4) + 1))
        min_rows = {"fastica": max(k, 2), "pca": k, "kmeans": k}.get(kernel, 1)
        sizes = _classes(rng, min_rows, fault == "empty_class")
        X = _matrix(rng, sizes, d, fault == "scale")
        off = _offsets(sizes)
        X, note = _common_faults(rng, fault, X)
        kwargs: dict[str, Any] = {}
        must_refuse = False
        if kernel == "fastica":
            kwargs = dict(n_components=k, max_iter=int(rng.integers(1, 40)), tol=float(rng.choice([1e-4, 5e-3, 0.1])),
                          seed=int(rng.integers(0, 2**64, dtype=np.uint64)))
        elif kernel == "pca":
            kwargs = dict(n_components=k)
        elif kernel == "kmeans":
            kwargs = dict(k=k, n_init=int(rng.integers(1, 3)), max_iter=int(rng.integers(1, 40)),
                          tol=float(rng.choice([0.0, 1e-4, 1.0])), seed=int(rng.integers(0, 2**64, dtype=np.uint64)))
        elif kernel == "spectral_scores":
            kwargs = dict(center=bool(rng.random() < 0.7))
        args: tuple = (X, off)
        if kernel == "silhouette_samples":
            n = sizes.sum()
            labels = rng.integers(0, int(rng.integers(1, 4)), n)
            if fault == "labels" or (fault == "params" and rng.random() < 0.5):
                labels = [labels.astype(np.float64), -labels - 1, labels[:-1], labels + 2**40,
                          labels.reshape(-1, 1)][int(rng.integers(5))]
                note += f"; labels {getattr(labels, 'dtype', '')} {np.shape(labels)}"
            args = (X, off, labels)
        if fault == "offsets":
            bad = [off.astype(np.float64), off[:-1], off[::-1].copy(), off + 1, off.reshape(1, -1), off[:1],
                   np.r_[off[:-1], 2**62], np.r_[0, -1, off[1:]], off.astype(np.uint64), off.astype(np.int8)]
            args = (args[0], bad[int(rng.integers(len(bad)))]) + args[2:]
            note += f"; offsets {args[1]!r}"
        elif fault == "small_class" and kernel in ("fastica", "pca", "kmeans"):
            key = {"fastica": "n_components", "pca": "n_components", "kmeans": "k"}[kernel]
            kwargs[key] = min(int(sizes.max()) + 1, 10**6)
            note += f"; {key}={kwargs[key]} above the largest class ({int(sizes.max())} rows)"
        elif fault == "params":
            keys = [key for key in kwargs]
            if keys:
                key = keys[int(rng.integers(len(keys)))]
                pool = {"tol": BAD_TOLS, "seed": BAD_SEEDS, "center": ("yes", 1, None, np.bool_(True))}.get(key, BAD_INTS)
                kwargs[key] = pool[int(rng.integers(len(pool)))]
                note += f"; {key}={kwargs[key]!r}"
        elif fault == "device":
            kwargs["device"] = BAD_DEVICES[int(rng.integers(len(BAD_DEVICES)))] if rng.random() < 0.7 else "auto"
            must_refuse = kwargs["device"] != "auto"
            note += f"; device={kwargs['device']!r}"
        return Case(0, kernel, fault, _join(f"{kernel} classes {sizes.tolist()} d={d}", note), args, kwargs,
                    must_refuse=must_refuse)

    return make


def _stats_case(stream: bool) -> Callable[[np.random.Generator, str], Case]:
    def make(rng: np.random.Generator, fault: str) -> Case:
        N, C = int(rng.integers(1, 20)), int(rng.integers(1, 7))
        spatial = rng.random() < 0.4
        sizes = np.array([N])
        X = _matrix(rng, sizes, C * (4 if spatial else 1), fault == "scale")
        acts: Any = X.reshape(N, C, 2, 2) if spatial else X
        acts, note = _common_faults(rng, fault, acts)
        n_classes = int(rng.integers(1, 4)) if rng.random() < 0.6 else None
        labels = None if n_classes is None else rng.integers(0, n_classes, N)
        must_refuse = False
        if fault == "labels":
            labels = [rng.integers(0, 3, N).astype(np.float32), -np.ones(N, np.int64), np.zeros(N + 1, np.int64),
                      np.full(N, 5), None][int(rng.integers(5))]
            if labels is not None and n_classes is None:
                n_classes = 2
            note += f"; labels {None if labels is None else (labels.dtype, labels.shape)}"
        elif fault == "params":
            n_classes = BAD_INTS[int(rng.integers(len(BAD_INTS)))]
            note += f"; n_classes={n_classes!r}"
        kwargs: dict[str, Any] = {"labels": labels, "n_classes": n_classes}
        if fault == "device" and not stream:
            kwargs["device"] = BAD_DEVICES[int(rng.integers(len(BAD_DEVICES)))]
            must_refuse = True
            note += f"; device={kwargs['device']!r}"
        if stream:
            kwargs["splits"] = sorted(int(s) for s in rng.integers(0, N + 1, int(rng.integers(0, 3))))
            note += f"; batches split at {kwargs['splits']}"
        name = "stats_stream" if stream else "activation_stats"
        return Case(0, name, fault, _join(f"{name} acts {np.shape(acts)} n_classes={n_classes}", note),
                    (acts,), kwargs, must_refuse=must_refuse)

    return make


def _pruning_order_case(rng: np.random.Generator, fault: str) -> Case:
    C = int(rng.integers(1, 30))
    m: Any = _matrix(rng, np.array([1]), C, fault == "scale")[0].astype(np.float64)
    if rng.random() < 0.3:
        m = np.round(m)  # ties: the stable order must match
    note = ""
    if fault == "dtype":
        m = [m.astype(np.int64), m.astype(np.float32), m.astype(np.float16), m.astype(object), m.tolist()][
            int(rng.integers(5))]
        note = f"mean as {getattr(m, 'dtype', type(m).__name__)}"
    elif fault == "shape":
        m = [m.reshape(1, -1), np.zeros(0), np.float64(1.0)][int(rng.integers(3))]
        note = f"mean of shape {np.shape(m)}"
    elif fault == "strides":
        wide = np.zeros(2 * C)
        wide[::2] = m
        m = wide[::2] if rng.random() < 0.5 else np.ascontiguousarray(m[::-1])[::-1]
        note = f"mean strides {m.strides}"
    elif fault == "nonfinite":
        m = m.copy()
        m[rng.integers(C)] = rng.choice([np.nan, np.inf, -np.inf])
        note = "mean with one NaN/Inf"
    return Case(0, "pruning_order", fault, _join(f"pruning_order C={C}", note), (m,), {})


def _pruning_mask_case(rng: np.random.Generator, fault: str) -> Case:
    C = int(rng.integers(1, 30))
    order: Any = rng.permutation(C)
    n_pruned: Any = int(rng.integers(0, C + 1))
    note = ""
    if fault == "dtype":
        order = [order.astype(np.float64), order.astype(np.uint8) if C < 256 else order.astype(np.int16),
                 order.tolist()][int(rng.integers(3))]
        note = f"order {type(order).__name__} {getattr(order, 'dtype', '')}"
    elif fault == "shape":
        order = [order.reshape(1, -1), np.zeros(0, np.int64), np.r_[order, 0], np.r_[order[:-1], C]][int(rng.integers(4))]
        note = f"order {order!r}"
    elif fault == "strides":
        wide = np.zeros(2 * C, np.int64)
        wide[::2] = order
        order = wide[::2] if rng.random() < 0.5 else order[::-1]
        note = f"order strides {order.strides}"
    elif fault == "params":
        n_pruned = [C + 1, -1, 2**63, 1.0, None, "1", True][int(rng.integers(7))]
        note = f"n_pruned={n_pruned!r}"
    return Case(0, "pruning_mask", fault, _join(f"pruning_mask C={C}", note), (order, n_pruned), {})


def _group_case(rng: np.random.Generator, fault: str) -> Case:
    n, d = int(rng.integers(1, 30)), int(rng.integers(1, 6))
    X = _matrix(rng, np.array([n]), d, fault == "scale")
    n_classes: Any = int(rng.integers(1, 6))
    labels: Any = rng.integers(0, n_classes, n)
    X, note = _common_faults(rng, fault, X)
    if fault == "labels":
        labels = [labels.astype(np.float64), labels - 1, labels[:-1], labels + n_classes][int(rng.integers(4))]
        note += f"; labels {labels!r}"
    elif fault == "params":
        n_classes = BAD_INTS[int(rng.integers(len(BAD_INTS)))]
        note += f"; n_classes={n_classes!r}"
    if rng.random() < 0.3 and fault != "params":
        n_classes = None
    return Case(0, "group_by_class", fault, _join(f"group_by_class n={n} d={d}", note), (X, labels),
                {"n_classes": n_classes})


def _threads_case(rng: np.random.Generator, fault: str) -> Case:
    if fault == "valid":
        value: Any = int(rng.integers(1, 5))
    else:
        value = THREAD_COUNTS[int(rng.integers(len(THREAD_COUNTS)))]
    return Case(0, "set_num_threads", fault, f"set_num_threads({value!r})", (value,), {})


_MAKERS: dict[str, Callable[[np.random.Generator, str], Case]] = {
    **{k: _batched(k) for k in BATCHED},
    "activation_stats": _stats_case(False),
    "stats_stream": _stats_case(True),
    "pruning_order": _pruning_order_case,
    "pruning_mask": _pruning_mask_case,
    "group_by_class": _group_case,
    "set_num_threads": _threads_case,
}


# ---- running and judging one case -------------------------------------------------------------


def _valid_thread_count(value: Any) -> bool:
    """The documented rule (native.set_num_threads): an int (not bool) in [1, thread_ceiling]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return False
    return 1 <= int(value) <= int(native.build_info()["thread_ceiling"])


def _stream(mod: Any, acts: Any, labels: Any, n_classes: Any, splits: list[int], device: str | None = None) -> dict:
    """ActivationStats fed in batches cut at ``splits`` (invalid input reaches update())."""
    n_ch = np.shape(acts)[1] if np.ndim(acts) >= 2 else 1
    kw = {} if device is None else {"device": device}
    acc = mod.ActivationStats(n_ch, n_classes, **kw)
    if np.ndim(acts) < 1:  # nothing to cut: the bad input goes to update() as it is
        acc.update(acts, labels)
        return acc.result()
    N = np.shape(acts)[0]
    cuts = [0] + [s for s in splits if 0 < s < N] + [N]
    for a, b in zip(cuts[:-1], cuts[1:]):
        part = acts[a:b]
        acc.update(part, None if labels is None or np.ndim(labels) != 1 or len(labels) != N else labels[a:b])
    if labels is not None and (np.ndim(labels) != 1 or len(labels) != N):
        acc.update(acts, labels)  # a labels array of the wrong shape must be refused, not skipped
    return acc.result()


def _call(mod: Any, case: Case, *, ref: bool) -> Any:
    kwargs = dict(case.kwargs)
    if ref:
        kwargs.pop("device", None)
    if case.kernel == "stats_stream":
        return _stream(mod, case.args[0], kwargs["labels"], kwargs["n_classes"], kwargs["splits"])
    if case.kernel == "set_num_threads":
        if ref:
            if not _valid_thread_count(case.args[0]):
                raise ValueError("invalid thread count (the documented rule)")
            return int(case.args[0])
        mod.set_num_threads(*case.args)
        return mod.get_num_threads()
    return getattr(mod, case.kernel)(*case.args, **kwargs)


def _refused_by_checks(exc: BaseException) -> bool:
    """True when ``exc`` is a ValueError/TypeError raised by the reference module itself (its
    input checks, shared with native), not by scikit-learn or NumPy failing inside it."""
    if not isinstance(exc, (ValueError, TypeError)):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.basename(tb.tb_frame.f_code.co_filename) in ("reference.py", "fuzz.py")


def _all_finite(obj: Any) -> bool:
    """Every float in the (nested) input is finite (non-float arrays count as finite)."""
    if isinstance(obj, np.ndarray):
        return obj.dtype.kind not in "fc" or bool(np.isfinite(obj).all())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(v) for v in obj)
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def _ref_finite(res: Any, case: Case) -> bool:
    """The reference's answer is finite where the contract does not put NaN (empty classes)."""
    return _nan_free(res, case) is None


def _class_ranges(case: Case) -> list[tuple[int, int, int]]:
    off = np.asarray(case.args[1], dtype=np.int64)
    return [(c, int(off[c]), int(off[c + 1])) for c in range(off.size - 1)]


def _nan_free(res: Any, case: Case) -> str | None:
    """None when ``res`` holds NaN/Inf only where the contract allows it; else what is wrong."""
    k = case.kernel
    if k in ("activation_stats", "stats_stream"):
        empty = np.asarray(res["count"]) == 0
        for key in ("mean", "std", "max", "frac_positive"):
            v = np.asarray(res[key])
            ok = np.isfinite(v) | (empty[..., None] if v.ndim == 2 else empty)
            if not ok.all():
                return f"{key} has NaN/Inf in a class with rows"
        return None
    if k == "kmeans":
        for c, a, b in _class_ranges(case):
            if b > a and not (np.isfinite(res.centers[c]).all() and np.isfinite(res.inertia[c])):
                return f"class {c}: centres or inertia not finite"
        return None
    if k == "group_by_class":
        return None if np.isfinite(res[0]).all() else "X_sorted not finite"
    if k == "set_num_threads":
        return None
    arr = res[0] if isinstance(res, tuple) else res
    return None if np.isfinite(np.asarray(arr, dtype=np.float64)).all() else "result has NaN/Inf"


def _tol_per_row(X: np.ndarray, a: int, b: int, center: bool, rel: float) -> float:
    rows = X[a:b].astype(np.float64)
    if center:
        rows = rows - rows.mean(0)
    return rel * float(np.linalg.norm(rows, axis=1).max()) if b > a else 0.0


def _spectrum(X: np.ndarray, a: int, b: int, center: bool) -> np.ndarray:
    rows = X[a:b].astype(np.float64)
    if center:
        rows = rows - rows.mean(0)
    s = np.linalg.svd(rows, compute_uv=False)
    return s**2


_F32_TINY = float(np.finfo(np.float32).smallest_subnormal)


def _agree(case: Case, got: Any, want: Any) -> str | None:
    """None when the native answer agrees with the reference's; else what differs."""
    k = case.kernel
    if k in ("activation_stats", "stats_stream"):
        a = np.asarray(case.args[0], dtype=np.float64)
        scale = float(np.abs(a).max()) if a.size else 0.0
        if not np.array_equal(got["count"], want["count"]):
            return "count differs"
        for key in ("mean", "std", "max", "frac_positive"):
            g, w = np.asarray(got[key]), np.asarray(want[key])
            if not np.array_equal(np.isnan(g), np.isnan(w)):
                return f"{key}: NaN in different places"
            m = ~np.isnan(w)
            tol = 1e-6 * np.abs(w[m]) + (1e-6 if key == "frac_positive" else 1e-6 * scale)
            if (np.abs(g[m] - w[m]) > tol).any():
                return f"{key} differs: max |diff| {np.abs(g[m] - w[m]).max():.3g}"
        return None
    if k in ("pruning_order", "pruning_mask", "set_num_threads"):
        return None if np.array_equal(np.asarray(got), np.asarray(want)) else f"{got!r} != {want!r}"
    if k == "group_by_class":
        ok = all(np.array_equal(g, w) for g, w in zip(got, want))
        return None if ok else "group_by_class differs"
    X = np.ascontiguousarray(case.args[0], dtype=np.float32)
    if k == "silhouette_samples":
        want = np.array(want, np.float64)
        off = np.asarray(case.args[1])
        for c0, c1 in zip(off[:-1], off[1:]):
            # Rows all equal: every distance is 0, so the silhouette is 0/0, which scikit-learn
            # (and the reference) define as 0. scikit-learn's distances are |x|^2 + |y|^2 - 2 x.y,
            # which for equal rows is rounding noise of the BLAS at hand (1e-8), and the ratio of
            # two such noises is anything in [-1, 1]: the exact answer is 0, not the reference's.
            if c1 - c0 > 1 and (X[c0:c1] == X[c0]).all():
                want[c0:c1] = 0.0
        diff = np.abs(np.asarray(got, np.float64) - want)
        return None if (diff <= 1e-4).all() else f"silhouette differs by up to {diff.max():.3g}"
    if k in ("pca", "spectral_scores"):
        center = k == "pca" or bool(case.kwargs.get("center", True))
        G = np.asarray(got, np.float64).reshape(X.shape[0], -1)
        W = np.asarray(want, np.float64).reshape(X.shape[0], -1)
        for c, a, b in _class_ranges(case):
            if b <= a:
                continue
            lam = _spectrum(X, a, b, center)
            tol = _tol_per_row(X, a, b, center, 1e-3)
            norm = tol / 1e-3
            if (np.abs(G[a:b]) > norm * (1 + 1e-3) + 1e-30).any():
                return f"class {c}: a projection exceeds the row norm"
            for i in range(G.shape[1]):
                lo = lam[i + 1] if i + 1 < lam.size else 0.0
                hi = lam[i - 1] if i > 0 else np.inf
                if min(lam[i] - lo, hi - lam[i]) <= 1e-2 * lam[0]:
                    continue  # not determined by the data at float32 precision: bound only
                g, w = G[a:b, i], W[a:b, i]
                err = min(np.abs(g - w).max(), np.abs(g + w).max()) if k == "pca" else np.abs(g - w).max()
                tol = max(tol, 2 * _F32_TINY)  # the float32 output's resolution near 0 (subnormals)
                if err > tol:
                    return f"class {c} component {i}: max |diff| {err:.3g} > {tol:.3g}"
        return None
    if k == "fastica":
        S = np.asarray(got, np.float64)
        for c, a, b in _class_ranges(case):
            if b <= a:
                continue
            s = S[a:b]
            var = s.var(axis=0)
            if not (np.isclose(var, 1.0, atol=2e-3) | (var == 0)).all():
                return f"class {c}: source variances {var}"
            lam = _spectrum(X, a, b, True)
            n_comp = s.shape[1]
            if lam.size >= n_comp and lam[n_comp - 1] > 1e-3 * lam[0] and (var > 0).all():
                cov = np.cov(s.T, bias=True).reshape(n_comp, n_comp)
                if np.abs(cov - np.eye(n_comp)).max() > 1e-2:
                    return f"class {c}: sources not decorrelated (max |cov - I| {np.abs(cov - np.eye(n_comp)).max():.3g})"
        return None
    if k == "kmeans":
        for c, a, b in _class_ranges(case):
            if b <= a:
                if not (np.isnan(got.centers[c]).all() and np.isnan(got.inertia[c])):
                    return f"empty class {c}: centres/inertia not NaN"
                continue
            x = X[a:b].astype(np.float64)
            lab = got.labels[a:b]
            kk = got.centers.shape[1]
            if lab.min() < 0 or lab.max() >= kk:
                return f"class {c}: labels outside [0, {kk})"
            cen = got.centers[c].astype(np.float64)
            d2 = ((x[:, None, :] - cen[None]) ** 2).sum(-1)
            spread = float(((x - x.mean(0)) ** 2).sum()) + float((x**2).sum()) * 1e-12
            own = d2[np.arange(b - a), lab]
            # the core's centres are float64, the output's float32: distances to the rounded
            # centres differ by up to 2 |x - c| delta + delta^2 (delta: the rounding, which is
            # coarse for subnormal centres)
            delta = np.sqrt(x.shape[1]) * (float(np.abs(cen).max()) * 2.0**-24 + _F32_TINY)
            slack = 2 * np.sqrt(d2) * delta + delta**2
            if (own > d2.min(axis=1) + 1e-5 * spread + slack.max(axis=1) + 1e-300).any():
                return f"class {c}: a row is not at its nearest centre"
            if abs(own.sum() - got.inertia[c]) > 1e-4 * spread + slack[np.arange(b - a), lab].sum() + 1e-300:
                return f"class {c}: inertia {got.inertia[c]:.6g} != sum of distances {own.sum():.6g}"
        return None
    raise ValueError(f"no agreement rule for {k!r}")


def run_case(case: Case, on_reference: Callable[[dict], None] | None = None) -> dict:
    """Run one case in this process and judge it (a crash here kills the caller: use workers).

    Native runs first; ``on_reference`` then gets the verdict that stands if the reference never
    answers (scikit-learn can hang or crash on extreme input), before the reference is called.
    """
    out: dict[str, Any] = {"i": case.index, "kernel": case.kernel, "fault": case.fault}
    default = native.get_num_threads()
    try:
        # 1. the thread count set first, when the case has one
        if case.threads != "keep":
            try:
                native.set_num_threads(case.threads)
                set_ok = True
            except (ValueError, TypeError):
                set_ok = False
            except Exception as exc:  # noqa: BLE001 - any other type is the finding
                out.update(outcome="wrong_error", detail=f"set_num_threads({case.threads!r}): {type(exc).__name__}: {exc}")
                return out
            if set_ok != _valid_thread_count(case.threads):
                out.update(outcome="answered_invalid_call" if set_ok else "refused_where_reference_answers",
                           detail=f"set_num_threads({case.threads!r}) {'accepted' if set_ok else 'refused'}")
                return out
        # 2. native, with the verdict that needs no reference
        got, refused, verdict = None, None, None
        try:
            got = _call(native, case, ref=False)
        except (ValueError, TypeError) as exc:
            refused = f"{type(exc).__name__}: {exc}"
        except RuntimeError as exc:
            # documented: device='cuda' without a usable GPU names the reason
            ok = case.kwargs.get("device") in ("cuda", "auto") and "not available" in str(exc)
            verdict = ("refused" if ok else "wrong_error", f"RuntimeError: {exc}")
        except Exception as exc:  # noqa: BLE001 - any other type is the finding
            verdict = ("wrong_error", f"{type(exc).__name__}: {exc}")
        if verdict is None and refused is None:
            bad = _nan_free(got, case)
            if case.must_refuse:
                verdict = ("answered_invalid_call", "answered a call it must refuse")
            elif bad is not None and _all_finite(case.args):
                verdict = ("nan_from_finite", bad)
        if verdict is not None or (refused is not None and case.must_refuse):
            out.update(outcome=verdict[0] if verdict else "refused", detail=verdict[1] if verdict else refused)
            return out
        if on_reference is not None:
            on_reference({"outcome": "refused" if refused else "reference_failed",
                          "detail": refused or "native answered finite"})
        # 3. the reference
        ref_ok, ref_refused, want, ref_err = False, False, None, ""
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            try:
                want = _call(reference, case, ref=True)
                ref_ok = True
            except Exception as exc:  # noqa: BLE001 - judged below
                ref_err = f"{type(exc).__name__}: {exc}"
                ref_refused = _refused_by_checks(exc)
        if refused is not None:
            answered = ref_ok and _ref_finite(want, case)
            out.update(outcome="refused_where_reference_answers" if answered else "refused", detail=refused)
            return out
        if ref_refused:  # the shared input checks refused the call, native answered it
            out.update(outcome="answered_invalid_call", detail=f"reference refused ({ref_err})")
            return out
        if not ref_ok or not _ref_finite(want, case):
            # the reference broke on valid input (scikit-learn's FastICA on a degenerate class,
            # float32 overflow of its output): no answer to agree with; the invariants of the
            # stochastic kernels still apply
            why = _agree(case, got, None) if case.kernel in ("fastica", "kmeans") else None
            out.update(outcome="reference_failed" if why is None else "disagreed",
                       detail=why or (ref_err or "reference result not finite") + "; native finite")
            return out
        why = _agree(case, got, want)
        out.update(outcome="agreed" if why is None else "disagreed", detail=why or "")
        return out
    finally:
        native.set_num_threads(default)


# ---- the worker process and the campaign ------------------------------------------------------


def _worker_main(argv: list[str]) -> int:
    """Worker: run cases first..last-1, writing 'S i' before each, 'P {verdict}' before its
    reference call (the verdict if the reference never returns) and 'R {json}' after it to the
    protocol pipe (the original stdout; stray output of libraries goes to stderr)."""
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--last", type=int, required=True)
    p.add_argument("--crash-at", type=int, nargs="*", default=[])
    p.add_argument("--hang-at", type=int, nargs="*", default=[])
    a = p.parse_args(argv)
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import sklearn.cluster  # noqa: F401  (threadpoolctl limits only the pools already loaded)
    import sklearn.decomposition  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        for i in range(a.first, a.last):
            proto.write(f"S {i}\n")
            if i in a.crash_at:  # harness self-tests: a worker that dies or hangs mid-case
                os.abort()
            if i in a.hang_at:
                time.sleep(3600)
            res = run_case(make_case(a.seed, i),
                           on_reference=lambda v: proto.write("P " + json.dumps(v, default=str) + "\n"))
            proto.write("R " + json.dumps(res, default=str) + "\n")
    proto.close()
    return 0


@dataclass
class _Worker:
    next_case: int
    last: int
    proc: subprocess.Popen | None = None
    buf: bytes = b""
    current: int | None = None
    provisional: dict | None = None  # set once native has answered: the reference runs
    last_seen: float = 0.0
    stderr: Any = None


def campaign(cases: int, seed: int = 0, *, first: int = 0, workers: int = 1, timeout: float = 60.0,
             crash_at: tuple[int, ...] = (), hang_at: tuple[int, ...] = (), progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Run cases ``first .. first+cases-1`` of campaign ``seed`` in worker subprocesses.

    ``crash_at``/``hang_at``: case indices at which the worker aborts / sleeps instead (self-tests
    of the harness: the campaign must count them and go on).

    Returns the summary: ``counts`` per outcome, ``by_kernel``/``by_fault`` (outcome counts),
    ``failures`` (the first 100 failing cases with their detail), ``elapsed_s``.

    Raises
    ------
    ValueError
        ``cases``, ``workers`` or ``timeout`` out of range.
    """
    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
        raise ValueError(f"cases must be an int >= 1, got {cases!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
        raise ValueError(f"workers must be an int in [1, 64], got {workers!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    t0 = time.time()
    bounds = np.linspace(first, first + cases, workers + 1).astype(int)
    pool = [_Worker(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    results: list[dict] = []
    sel = selectors.DefaultSelector()
    tmpdir = tempfile.TemporaryDirectory(prefix="bdl-fuzz-")

    def start(w: _Worker) -> None:
        w.stderr = tempfile.TemporaryFile(dir=tmpdir.name)
        cmd = [sys.executable, "-c", "import sys; from backdoorlab.bench.fuzz import _worker_main; "
               "sys.exit(_worker_main(sys.argv[1:]))", "--seed", str(seed), "--first", str(w.next_case),
               "--last", str(w.last)]
        for flag, where in (("--crash-at", crash_at), ("--hang-at", hang_at)):
            todo = [c for c in where if w.next_case <= c < w.last]
            if todo:
                cmd += [flag, *map(str, todo)]
        w.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=w.stderr, stdin=subprocess.DEVNULL)
        w.buf, w.current, w.provisional, w.last_seen = b"", None, None, time.time()
        sel.register(w.proc.stdout, selectors.EVENT_READ, w)

    def stderr_tail(w: _Worker) -> str:
        w.stderr.seek(0)
        return w.stderr.read().decode(errors="replace")[-400:].strip()

    def finish(w: _Worker, outcome: str, why: str) -> None:
        """The worker died or hung in case w.current: record it, restart after it."""
        sel.unregister(w.proc.stdout)
        w.proc.stdout.close()
        if w.current is not None:
            case = make_case(seed, w.current)
            if w.provisional is not None:  # native had answered: the reference hung or died
                outcome, why = w.provisional["outcome"], f"reference {outcome} ({why}); native: {w.provisional['detail']}"
            results.append({"i": w.current, "kernel": case.kernel, "fault": case.fault, "outcome": outcome,
                            "detail": f"{why}; case: {case.note}; stderr: {stderr_tail(w)}",
                            "reference_incident": w.provisional is not None})
            w.next_case = w.current + 1
        w.stderr.close()
        if w.next_case < w.last:
            start(w)

    for w in pool:
        start(w)
    last_report = time.time()
    try:
        while sel.get_map():
            for key, _ in sel.select(timeout=1.0):
                w: _Worker = key.data
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:  # EOF: finished or died
                    rc = w.proc.wait()
                    if w.current is None and rc == 0:
                        sel.unregister(w.proc.stdout)
                        w.proc.stdout.close()
                        w.stderr.close()
                        continue
                    sig = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
                    if w.current is None:  # died between cases (e.g. at import): stop, do not loop
                        raise RuntimeError(f"fuzz worker died outside a case ({sig}): {stderr_tail(w)}")
                    finish(w, "crash", f"worker died ({sig})")
                    continue
                w.buf += chunk
                w.last_seen = time.time()
                *lines, w.buf = w.buf.split(b"\n")
                for line in lines:
                    if line.startswith(b"S "):
                        w.current, w.provisional = int(line[2:]), None
                    elif line.startswith(b"P "):
                        w.provisional = json.loads(line[2:])
                    elif line.startswith(b"R "):
                        results.append(json.loads(line[2:]))
                        w.next_case, w.current, w.provisional = results[-1]["i"] + 1, None, None
            now = time.time()
            for w in pool:
                if w.proc is None or w.proc.poll() is not None:
                    continue
                if w.current is not None and now - w.last_seen > timeout:
                    w.proc.kill()  # our own child, by its handle
                    w.proc.wait()
                    finish(w, "hang", f"no answer within {timeout:g} s")
                elif w.current is None and now - w.last_seen > max(timeout, 300.0):
                    raise RuntimeError(f"fuzz worker silent for {now - w.last_seen:.0f} s outside a case "
                                       f"(stuck while starting?): {stderr_tail(w)}")
            if progress and now - last_report > 10:
                last_report = now
                log(f"  {len(results)}/{cases} cases, {now - t0:.0f} s")
    finally:
        for w in pool:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
        tmpdir.cleanup()
    return summarize(results, seed=seed, first=first, cases=cases, elapsed=time.time() - t0)


def summarize(results: list[dict], *, seed: int, first: int, cases: int, elapsed: float) -> dict:
    """Counts per outcome, kernel and fault of judged cases (see the module docstring)."""
    counts = Counter(r["outcome"] for r in results)
    by_kernel: dict[str, Counter] = {}
    by_fault: dict[str, Counter] = {}
    for r in results:
        by_kernel.setdefault(r["kernel"], Counter())[r["outcome"]] += 1
        by_fault.setdefault(r["fault"], Counter())[r["outcome"]] += 1
    failures = sorted((r for r in results if r["outcome"] in FAILURES), key=lambda r: r["i"])
    return {
        "seed": seed, "first": first, "cases": cases, "judged": len(results),
        "counts": {o: counts.get(o, 0) for o in OUTCOMES},
        "failed": sum(counts.get(o, 0) for o in FAILURES),
        "by_kernel": {k: dict(v) for k, v in sorted(by_kernel.items())},
        "by_fault": {k: dict(v) for k, v in sorted(by_fault.items())},
        "failures": failures[:100],
        # the reference hung or died on these (native had answered; its verdict stands)
        "reference_incidents": [r for r in results if r.get("reference_incident")][:100],
        "elapsed_s": round(elapsed, 2),
    }


def format_summary(s: dict) -> str:
    c = s["counts"]
    lines = [f"fuzz seed {s['seed']}: {s['judged']}/{s['cases']} cases in {s['elapsed_s']:.1f} s — "
             f"crashes {c['crash']}, hangs {c['hang']}, NaN from finite {c['nan_from_finite']}, "
             f"refused {c['refused']}, agreed {c['agreed']}, reference failed {c['reference_failed']}, other failures "
             f"{s['failed'] - c['crash'] - c['hang'] - c['nan_from_finite']}"]
    if s["reference_incidents"]:
        lines.append(f"  the reference hung or died on {len(s['reference_incidents'])} case(s) after native answered: "
                     + ", ".join(str(r["i"]) for r in s["reference_incidents"][:10]))
    for k, v in s["by_kernel"].items():
        lines.append(f"  {k:<18} " + ", ".join(f"{o} {n}" for o, n in sorted(v.items())))
    for f in s["failures"][:20]:
        lines.append(f"  FAIL case {f['i']} ({f['kernel']}, {f['fault']}): {f['outcome']} — {f['detail']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backdoorlab bench fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=2000, help="number of cases (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    p.add_argument("--first", type=int, default=0, help="index of the first case (default 0)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without an answer that make a hang")
    p.add_argument("--case", type=int, default=None, help="show and run this one case in this process")
    p.add_argument("--json", default=None, help="also write the summary to this JSON file")
    return p


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.case is not None:
        case = make_case(args.seed, args.case)
        print(f"case {args.case} of seed {args.seed}: {case.kernel}, fault {case.fault}: {case.note}")
        print(json.dumps(run_case(case), default=str))
        return 0
    info = native.build_info()
    print(f"backdoorlab {info.get('version')} native core, {native.get_num_threads()} threads "
          f"(ceiling {info.get('thread_ceiling')}), SIMD {info.get('simd_selected')}; {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}; workers {args.workers}", flush=True)
    summary = campaign(args.cases, args.seed, first=args.first, workers=args.workers, timeout=args.timeout,
                       log=lambda m: print(m, flush=True))
    print(format_summary(summary), flush=True)
    if args.json:
        atomic_write_json(args.json, summary)
        print(f"wrote {args.json}")
    return 1 if summary["failed"] or summary["judged"] != summary["cases"] else 0


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
