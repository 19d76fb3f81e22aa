"""Opening a source of images by name: the readers for the real layouts and the embedded synthetic sets.

:func:`open_source` turns a name or a ``kind:path`` string into a :class:`~datasets_gen.readers.base.Source`:

* ``gtsrb:/data/GTSRB``, ``ytaf:/data/YouTubeFaces``, ``lfw:/data/lfw`` — the real readers;
* ``synth-signs``, ``synth-faces`` — the synthetic defaults (no download needed).

It lives beside, not inside, ``datasets_gen.readers``: the synthetic sources subclass
``readers.base``, so a factory in ``readers/__init__`` importing them would run in a circle.
"""

from __future__ import annotations

import os
from typing import Any

from datasets_gen.readers.base import Source
from datasets_gen.readers.gtsrb import GTSRBSource
from datasets_gen.readers.lfw import LFWSource
from datasets_gen.readers.ytaf import YTAFSource
from datasets_gen.synthetic.faces import SynthFacesSource
from datasets_gen.synthetic.signs import SynthSignsSource

__all__ = ["open_source", "REAL_KINDS", "SYNTHETIC_KINDS"]

REAL_KINDS = ("gtsrb", "ytaf", "lfw")
SYNTHETIC_KINDS = ("synth-signs", "synth-faces")


def open_source(spec: str | os.PathLike, **kwargs: Any) -> Source:
    """Open a source by spec.

    Parameters
    ----------
    spec : str
        ``gtsrb:PATH``, ``ytaf:PATH``, ``lfw:PATH``, ``synth-signs`` or ``synth-faces``.
    **kwargs
        Passed to the source's constructor (``image_size``, ``seed``, ``strict``, sizes ...).

    Raises
    ------
    ValueError
        Unknown kind.
    FileNotFoundError
        The path does not hold the expected layout.
    """
    text = os.fspath(spec)
    kind, sep, path = text.partition(":")
    kind = kind.lower()
    if kind in SYNTHETIC_KINDS:
        if sep:
            raise ValueError(f"synthetic source {kind!r} takes no path, got {text!r}")
        if kind == "synth-signs":
            return SynthSignsSource(**kwargs)
        return SynthFacesSource(**kwargs)
    if kind in REAL_KINDS:
        if not path:
            raise ValueError(f"source {kind!r} needs a path: {kind}:/path/to/data")
        if kind == "gtsrb":
            return GTSRBSource(path, **kwargs)
        if kind == "ytaf":
            return YTAFSource(path, **kwargs)
        return LFWSource(path, **kwargs)
    raise ValueError(f"unknown source {text!r}: use one of {[k + ':PATH' for k in REAL_KINDS] + list(SYNTHETIC_KINDS)}")
