"""The running state of the streaming activation statistics, shared by both kernel sets.

:class:`backdoorlab.native.ActivationStats` (the compiled core merges every batch into these
arrays in place) and :class:`backdoorlab.reference.ActivationStats` (NumPy merges them) keep the
same per-(class, channel) moments, take batch labels by the same rules and finish the statistics
the same way; this module is that one definition. NumPy only.
"""

from __future__ import annotations

import numpy as np

from backdoorlab._validate import check_groups, check_int


class RunningMoments:
    """Per-(group, channel) count, mean, M2, max and positive count, in float64 / int64.

    Parameters
    ----------
    n_channels : int
        C, the channel count every batch must have.
    n_classes : int, optional
        With it, statistics are per (class, channel) and every batch needs labels.
    """

    def __init__(self, n_channels: int, n_classes: int | None = None) -> None:
        self.n_channels = check_int(n_channels, "n_channels", 1)
        self.n_classes = None if n_classes is None else check_int(n_classes, "n_classes", 1)
        g = 1 if self.n_classes is None else self.n_classes
        self._count = np.zeros(g, dtype=np.int64)       # rows per group
        self._values = np.zeros(g, dtype=np.int64)      # values per channel per group (rows * H * W)
        self._mean = np.zeros((g, self.n_channels))
        self._m2 = np.zeros((g, self.n_channels))
        self._max = np.full((g, self.n_channels), -np.inf)
        self._npos = np.zeros((g, self.n_channels), dtype=np.int64)

    def _groups(self, shape: tuple[int, ...], labels: np.ndarray | None) -> np.ndarray:
        """int64 (B,) group of every row of a batch of ``shape`` (B, C, ...), checked."""
        if shape[1] != self.n_channels:
            raise ValueError(f"batch has {shape[1]} channels, the accumulator was made for {self.n_channels}")
        if self.n_classes is None:
            if labels is not None:
                raise ValueError("labels given to an accumulator made without n_classes")
            return np.zeros(shape[0], dtype=np.int64)
        if labels is None:
            raise ValueError(f"labels are required: the accumulator is per class (n_classes={self.n_classes})")
        groups, _ = check_groups(labels, self.n_classes, shape[0])
        return np.ascontiguousarray(groups, dtype=np.int64)

    def result(self) -> dict:
        """``mean``, ``std`` (population), ``max``, ``frac_positive``: float64 (C,) or (n_classes, C),
        NaN for a class without rows; ``count``: int64 rows, () or (n_classes,)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            denom = self._values[:, None].astype(np.float64)
            std = np.sqrt(np.maximum(self._m2, 0.0) / denom)
            frac = self._npos / denom
        empty = self._values == 0
        mean = self._mean.copy()
        maxv = self._max.copy()
        for arr in (mean, std, frac, maxv):
            arr[empty] = np.nan
        out = {"mean": mean, "std": std, "max": maxv, "frac_positive": frac, "count": self._count.copy()}
        if self.n_classes is None:
            out = {k: v[0] for k, v in out.items()}
        return out
