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


@pytest.fixture(autouse=True, scope="session")
def _private_checksum_cache(tmp_path_factory):
    """Keep the variant checksum cache of test runs out of the user's ~/.cache (every test's
    variants live at fresh temporary paths, so their entries would only pile up there)."""
    from datasets_gen.variant_io import CACHE_ENV

    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("checksum-cache"))
    yield
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


# ---- defence tests (torch is imported only by the tests that use these: the data-generator tests
# ---- run without it, as datasets_gen itself does)


@pytest.fixture
def one_thread():
    """torch and the native core on one thread for the test (use with ``pytest.mark.usefixtures``)."""
    from _defence_helpers import single_thread

    with single_thread():
        yield


@pytest.fixture(scope="module")
def planted_splits(tmp_path_factory):
    """The variant of the planted source-agnostic backdoor (tests/_planted_helpers.py), per module."""
    from _planted_helpers import make_splits

    return make_splits(tmp_path_factory.mktemp("planted") / "toy.h5")


@pytest.fixture(scope="module")
def planted_ctx(planted_splits):
    """A context whose model learned the planted backdoor (Neural Cleanse and STRIP tests)."""
    from _defence_helpers import single_thread
    from _planted_helpers import make_context

    with single_thread():
        return make_context(planted_splits, poison=True)
