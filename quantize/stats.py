"""Exact statistics for comparing two classifiers on the same test images (numpy + stdlib only)."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np


def binom_tail_ge(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), computed exactly."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(Fraction(sum(comb(n, i) for i in range(k, n + 1)), 2**n))


def mcnemar_exact(ref_correct: np.ndarray, new_correct: np.ndarray) -> dict[str, float | int]:
    """Exact McNemar test on paired correctness: is `new` worse (or different) than `ref`?

    b = images only `ref` gets right, c = images only `new` gets right. Under H0 (equal accuracy)
    b ~ Binomial(b + c, 1/2). `p_new_worse` is the one-sided p-value for "new is worse".
    """
    ref_correct, new_correct = np.asarray(ref_correct, bool), np.asarray(new_correct, bool)
    if ref_correct.shape != new_correct.shape:
        raise ValueError(f"paired arrays differ in shape: {ref_correct.shape} vs {new_correct.shape}")
    b = int((ref_correct & ~new_correct).sum())
    c = int((~ref_correct & new_correct).sum())
    n = b + c
    p_worse = binom_tail_ge(b, n)
    p_two = min(1.0, 2 * min(binom_tail_ge(b, n), binom_tail_ge(c, n))) if n else 1.0
    return {"ref_only_correct": b, "new_only_correct": c, "p_new_worse": p_worse, "p_two_sided": p_two}
