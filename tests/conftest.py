"""Shared pytest fixtures: tiny, generated inputs only (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
