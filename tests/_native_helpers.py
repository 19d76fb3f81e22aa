"""Fixtures and data builders shared by the native-core tests (tests/test_native_*.py)."""

from __future__ import annotations

import numpy as np
import pytest

from backdoorlab import native


def _cuda_skip_reason() -> str | None:
    info = native.build_info()
    if not info["cuda_built"]:
        return f"no CUDA build: {info['cuda_error']}"
    if not info["cuda"]:
        return "CUDA build present but no GPU visible"
    return None


CUDA_SKIP = _cuda_skip_reason()

#: Parametrise a test over devices: cpu always, cuda marked and skipped with the reason.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(CUDA_SKIP is not None, reason=CUDA_SKIP or "")]),
]


def relu_classes(rng: np.random.Generator, sizes: list[int], dim: int, latent: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative, sparse activations grouped by class: (X float32 (n, dim), offsets int64)."""
    A = rng.standard_normal((latent, dim))
    parts = []
    for c, m in enumerate(sizes):
        z = rng.standard_normal((m, latent)) + rng.standard_normal(latent)
        parts.append(np.maximum(z @ A + 0.2 * c - 0.3, 0.0))
    X = np.concatenate(parts).astype(np.float32)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return X, offsets


def blobs(rng: np.random.Generator, sizes: list[int], dim: int, k: int, spread: float = 0.3,
          distance: float = 20.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k well-separated Gaussian blobs in every class: (X, offsets, true cluster per row)."""
    parts, truth = [], []
    for m in sizes:
        centres = rng.standard_normal((k, dim)) * distance
        lab = np.arange(m) % k
        rng.shuffle(lab)
        parts.append(centres[lab] + spread * rng.standard_normal((m, dim)))
        truth.append(lab)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return np.concatenate(parts).astype(np.float32), offsets, np.concatenate(truth)


def mixed_sources(rng: np.random.Generator, n: int, n_sources: int) -> tuple[np.ndarray, np.ndarray]:
    """Known non-Gaussian sources (sine, square, uniform, Laplace, ...) and a random mixture of them.

    Returns (S float64 (n, n_sources), X float32 (n, n_sources)).
    """
    t = np.linspace(0, 40, n)
    pool = [
        np.sin(1.3 * t),
        np.sign(np.sin(0.7 * t + 1.0)),
        rng.uniform(-1, 1, n),
        rng.laplace(size=n),
        ((0.37 * t) % 2) - 1,          # sawtooth
        rng.exponential(size=n) - 1.0,
    ]
    S = np.stack(pool[:n_sources], axis=1)
    S = (S - S.mean(0)) / S.std(0)
    A = rng.standard_normal((n_sources, n_sources)) + 2 * np.eye(n_sources)
    return S, (S @ A.T).astype(np.float32)


def best_abs_corr(Y: np.ndarray, S: np.ndarray) -> np.ndarray:
    """For every true source, |corr| with the estimated component matched to it (greedy, one-to-one)."""
    k = S.shape[1]
    C = np.abs(np.corrcoef(np.c_[Y, S].T)[:k, k:])  # estimated x true
    out = np.zeros(k)
    for _ in range(k):
        i, j = np.unravel_index(np.argmax(C), C.shape)
        out[j] = C[i, j]
        C[i, :] = -1
        C[:, j] = -1
    return out


def assert_scores_close_per_class(ours: np.ndarray, ref: np.ndarray, offsets: np.ndarray) -> None:
    """Spectral scores equal class by class, relative to each class's largest reference score."""
    for c in range(len(offsets) - 1):
        s, r = ours[offsets[c]:offsets[c + 1]], ref[offsets[c]:offsets[c + 1]]
        if r.size:
            np.testing.assert_allclose(s, r, rtol=1e-4, atol=1e-4 * max(r.max(), 1e-12))
