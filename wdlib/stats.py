"""Small statistics used by verdicts: rank correlation and log-log slopes."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["rankdata", "spearman", "loglog_slope", "t_interval", "two_proportion_p", "welch_interval"]


def rankdata(x: Any) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as ``scipy.stats.rankdata``)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    ranks = np.empty(a.size, dtype=np.float64)
    # average the ranks of each run of equal values
    boundaries = np.flatnonzero(np.diff(sorted_a) != 0) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [a.size]])
    avg = (starts + ends + 1) / 2.0  # mean of (start+1 .. end)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation; NaN when either input is constant (no ranking to correlate)."""
    rx, ry = rankdata(x), rankdata(y)
    if rx.size != ry.size or rx.size < 2:
        raise ValueError("x and y must have the same length >= 2")
    if np.all(rx == rx[0]) or np.all(ry == ry[0]):
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def t_interval(values: Any, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` and the two-sided Student-t confidence interval ``(mean, low, high)``.

    ``mean +- t_{(1+level)/2, n-1} * std(ddof=1)/sqrt(n)``; with 3 seeds the t factor is 4.30, not 2.
    """
    from scipy import stats as sps

    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size < 2:
        raise ValueError("t_interval needs at least 2 values")
    half = float(sps.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    m = float(v.mean())
    return m, m - half, m + half


def welch_interval(a: Any, b: Any, level: float = 0.95) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` and its two-sided Welch confidence interval ``(diff, low, high)``.

    Standard error ``sqrt(s_a^2/n_a + s_b^2/n_b)`` (unequal variances), degrees of freedom by
    Welch-Satterthwaite. Two groups of independent runs, not paired (use :func:`t_interval` on the
    differences when the runs pair up, e.g. by seed). When both groups are constant the interval is
    the point itself.
    """
    from scipy import stats as sps

    x, y = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b))
    if x.size < 2 or y.size < 2:
        raise ValueError("welch_interval needs at least 2 values in each group")
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    diff = float(x.mean() - y.mean())
    if va + vb == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    half = float(sps.t.ppf((1 + level) / 2, df) * np.sqrt(va + vb))
    return diff, diff - half, diff + half


def two_proportion_p(p1: float, p2: float, n: int) -> float:
    """Two-sided p-value of a difference between two error rates measured on ``n`` points each (pooled
    z-test). On one shared test set the two errors are positively correlated, so this treats them as
    independent and is conservative (it overstates the standard error of the difference)."""
    from scipy import stats as sps

    pooled = (p1 + p2) / 2
    se = np.sqrt(2 * pooled * (1 - pooled) / n)
    if se == 0:
        return 1.0 if p1 == p2 else 0.0
    return float(2 * sps.norm.sf(abs(p1 - p2) / se))


def loglog_slope(x: Any, y: Any) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    return float(np.polyfit(lx, ly, 1)[0])
