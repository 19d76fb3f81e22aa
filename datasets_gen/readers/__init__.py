"""Readers of the real image layouts (GTSRB, YouTube Aligned Faces, LFW) and their common base.

Open one by name with :func:`datasets_gen.sources.open_source`.
"""

from __future__ import annotations

from datasets_gen.readers.base import Source, SplitTable

__all__ = ["Source", "SplitTable"]
