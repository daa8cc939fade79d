"""NaN-safe comparisons: every check in lenet-edge treats a non-finite number as a failure.

`x > limit` is False for NaN, so a check written that way passes a model full of NaN; these
helpers are written the other way round, and `max_abs_diff` is inf whenever either side holds
NaN or inf or the shapes differ.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|; inf if the shapes differ, either array is empty or holds NaN/inf."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.size == 0 or a.dtype.kind not in "fiu" or b.dtype.kind not in "fiu":
        return math.inf
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.inf
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def finite(x: object) -> bool:
    """A real, finite number (bools, non-numbers and integers beyond float range are not)."""
    if not isinstance(x, int | float) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer with hundreds of digits
        return False


def exceeds(value: object, limit: float) -> bool:
    """value > limit, or value is not a finite number (so NaN fails the check)."""
    return not (finite(value) and value <= limit)  # type: ignore[operator]


def falls_below(value: object, limit: float) -> bool:
    """value < limit, or value is not a finite number."""
    return not (finite(value) and value >= limit)  # type: ignore[operator]


def non_finite_at(x: Any, where: str = "") -> str | None:
    """The JSON path of the first NaN or infinite number in x ("rows[2].p50"; None if there is none):
    no command writes one into a result, and one there would become a verdict ("+nan pp")."""
    if isinstance(x, float) and not math.isfinite(x):
        return where.lstrip(".") or "the top level"
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    for k, v in items:
        found = non_finite_at(v, f"{where}.{k}" if isinstance(k, str) else f"{where}[{k}]")
        if found:
            return found
    return None
