"""Checks of defence parameters, shared so every defence refuses a bad value with the same message.

Each returns the value (converted where that is lossless) or raises naming the parameter and the
value it got; defences call them in ``__init__``, so a bad configuration fails before any work.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_fraction", "check_positive_int", "check_choice", "check_layer"]


def check_fraction(name: str, value: float) -> float:
    """``value`` as a float strictly inside (0, 1), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number in (0, 1), got {value!r}")
    value = float(value)
    if not (0.0 < value < 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be inside (0, 1), got {value!r}")
    return value


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``, else an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name: str, value: str, choices: tuple[str, ...] | list[str]) -> str:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


def check_layer(value: str) -> str:
    """``value`` if it is a non-empty string (a layer role or module name), else ``TypeError``.

    Whether the model has that layer is known only when the defence runs (the model's ``layer``
    raises ``KeyError`` naming the valid ones)."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"layer must be a non-empty string, got {value!r}")
    return value
