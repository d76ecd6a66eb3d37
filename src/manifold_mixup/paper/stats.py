"""Statistics for paired comparisons of training methods (bootstrap, t and Wilcoxon)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import stats

__all__ = ["Interval", "mean_interval", "paired_bootstrap", "wilcoxon_p", "spearman"]


class Interval(NamedTuple):
    """A mean and its two-sided confidence interval at ``level``."""

    mean: float
    low: float
    high: float
    n: int

    def fmt(self, digits: int = 2) -> str:
        if self.n < 2 or not math.isfinite(self.low):
            return f"{self.mean:+.{digits}f}"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def mean_interval(values, level: float = 0.95) -> Interval:
    """Mean with a Student-t interval (for a handful of seeds)."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    m = float(v.mean())
    if n < 2:
        return Interval(m, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return Interval(m, m - half, m + half, n)


def paired_bootstrap(diffs, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> Interval:
    """Mean of paired differences with a percentile bootstrap interval (fixed seed)."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(resamples, n))].mean(1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(float(d.mean()), float(lo), float(hi), n)


def wilcoxon_p(diffs) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test that paired differences centre on 0."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2 or np.all(d == 0):
        return math.nan
    return float(stats.wilcoxon(d).pvalue)


def spearman(a, b) -> tuple[float, float]:
    """Spearman rank correlation and its p-value."""
    r = stats.spearmanr(np.asarray(a, float), np.asarray(b, float))
    return float(r.statistic), float(r.pvalue)
