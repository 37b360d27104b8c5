"""Small statistics used by verdicts: rank correlation and log-log slopes."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["rankdata", "spearman", "loglog_slope"]


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


def loglog_slope(x: Any, y: Any) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    return float(np.polyfit(lx, ly, 1)[0])
