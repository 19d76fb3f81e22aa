"""Shared pytest fixtures: tiny, generated inputs only (nothing is downloaded)."""

from __future__ import annotations

import os

# Spinning OpenMP waits (libgomp's default) slow torch and the native core several times over when
# the cores are shared; set before either loads libgomp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
