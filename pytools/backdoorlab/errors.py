"""Exception types of the package that are not Python's own (torch-free, so any module may raise them).

Expected failures are otherwise Python's: ``ValueError``/``TypeError`` for bad input, ``OSError``
for files. The command line's error boundary (:mod:`backdoorlab.cli`) reports these types in one
line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DeviceUnavailableError(RuntimeError):
    """A device was asked for that this machine cannot give (CUDA without a GPU or a CUDA build).

    A ``RuntimeError`` (what callers caught before it existed), but a type of its own so that the
    command line can tell this expected failure -- the user's to fix -- from a bug.
    """
