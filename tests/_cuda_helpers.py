"""Locating the CUDA core for the tests of ``backdoorlab._core_cuda`` (tests/test_cuda*.py).

The module is normally imported from the installed package. ``BACKDOORLAB_CUDA_MODULE`` may name
a built ``_core_cuda*.so`` instead (e.g. from a side build directory), so that a session with a
GPU can test a fresh build without reinstalling the package. Every skip carries its reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import numpy as np
import pytest

ENV_MODULE = "BACKDOORLAB_CUDA_MODULE"


def load_cuda_module() -> tuple[ModuleType | None, str]:
    """Return ``(module, "")`` or ``(None, why it is unavailable)``."""
    path = os.environ.get(ENV_MODULE)
    if path:
        if not os.path.isfile(path):
            return None, f"{ENV_MODULE}={path!r} is not a file"
        spec = importlib.util.spec_from_file_location("backdoorlab._core_cuda", path)
        if spec is None or spec.loader is None:
            return None, f"{ENV_MODULE}={path!r} is not an extension module"
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except ImportError as exc:
            return None, f"loading {path!r} failed: {exc}"
        return module, ""
    try:
        return importlib.import_module("backdoorlab._core_cuda"), ""
    except ImportError as exc:
        return None, (f"no CUDA build: backdoorlab._core_cuda cannot be imported ({exc}); build with "
                      "nvcc on PATH (BACKDOORLAB_CUDA=AUTO or ON) or set " + ENV_MODULE)


def require_cuda_build() -> ModuleType:
    module, why = load_cuda_module()
    if module is None:
        pytest.skip(why)
    return module


def require_gpu() -> ModuleType:
    module = require_cuda_build()
    info = module.build_info()
    if int(info.get("cuda_devices", 0)) == 0:
        pytest.skip(f"CUDA build present but no GPU visible: {info.get('cuda_error')}")
    return module


def grouped(rng: np.random.Generator, sizes: list[int], d: int, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 rows grouped by class (class c shifted by c) and their offsets."""
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    X = rng.standard_normal((int(offsets[-1]), d)) * spread
    for c in range(len(sizes)):
        X[offsets[c]:offsets[c + 1]] += c
    return np.ascontiguousarray(X, dtype=np.float32), offsets
