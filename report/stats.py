"""Statistics for the report: t intervals, the paired t-test, and (re-exported) exact McNemar.

Small-sample statistics for a handful of seeds: the t distribution, not the normal one. Every
function returns plain floats so results go straight into JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lenet_edge.quantize.stats import mcnemar_exact

__all__ = ["binomial_se_pp", "mcnemar_exact", "paired_t", "summary", "wilcoxon_exact"]


def summary(values: Sequence[float], conf: float = 0.95) -> dict[str, float | int]:
    """Mean, sample sd, and the t-based confidence interval of the mean."""
    from scipy import stats as sps  # here, not at import: `--help` stays instant

    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "sd": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    sd = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + conf / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def paired_t(a: Sequence[float], b: Sequence[float], conf: float = 0.95) -> dict[str, float | int]:
    """Paired t-test of mean(a - b) = 0 (two-sided) with the interval of the mean difference."""
    from scipy import stats as sps  # here, not at import: `--help` stays instant

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be 1-d and equal length: {a.shape} vs {b.shape}")
    d = a - b
    n = int(d.size)
    if n < 2:
        raise ValueError("a paired t-test needs at least 2 pairs")
    s = summary(d, conf)
    sd = s["sd"]
    if sd == 0:
        t = math.copysign(math.inf, s["mean"]) if s["mean"] else 0.0
        p = 0.0 if s["mean"] else 1.0
    else:
        t = s["mean"] / (sd / math.sqrt(n))
        p = float(2 * sps.t.sf(abs(t), n - 1))
    return {
        "n": n,
        "mean_diff": s["mean"],
        "sd_diff": sd,
        "ci_low": s["ci_low"],
        "ci_high": s["ci_high"],
        "t": float(t),
        "df": n - 1,
        "p_two_sided": p,
    }


def wilcoxon_exact(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int]:
    """Exact two-sided Wilcoxon signed-rank test (zero differences dropped), for few pairs.

    With n pairs the smallest attainable p-value is 2 / 2**n (0.0625 for 5 seeds): reported so a
    reader sees how much 5 seeds can show without assuming normality.
    """
    from scipy import stats as sps  # here, not at import: `--help` stays instant

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[d != 0]
    n = int(d.size)
    if n == 0:
        return {"n": 0, "w_plus": 0.0, "p_two_sided": 1.0}
    ranks = sps.rankdata(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    # exact null distribution of W+ over all 2**n sign patterns (ties keep their mid-ranks)
    dist = np.ones(1)
    for r in np.rint(ranks * 2).astype(int):  # doubled ranks are integers even with mid-ranks
        new = np.zeros(dist.size + r)
        new[: dist.size] += dist
        new[r:] += dist
        dist = new
    dist = dist / dist.sum()
    w2 = int(round(2 * w_plus))
    lower = float(dist[: w2 + 1].sum())
    upper = float(dist[w2:].sum())
    return {"n": n, "w_plus": w_plus, "p_two_sided": min(1.0, 2 * min(lower, upper))}


def binomial_se_pp(p: float, n: int) -> float:
    """Standard error of an accuracy p on n images, in percentage points."""
    return 100 * math.sqrt(p * (1 - p) / n)
