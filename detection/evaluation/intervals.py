"""Seed-level intervals: Student's t quantiles, the paired t-interval over seeds and Welch's unpaired one.

The bootstrap over test images (``bootstrap.py``) says how much a difference could move with another test
set of the same kind; it says nothing about another seed. With a handful of seeds per cell, the interval
over seeds is the wider one and the one a claim about a method has to clear. The t quantile is computed
here (no SciPy): the CDF is Simpson's rule on the density from 0, and the quantile a bisection on it.
"""
from __future__ import annotations

import math
import statistics
from typing import Optional, Sequence, Tuple


def t_cdf(x: float, df: float, steps: int = 4000) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom (not necessarily an integer: Welch's)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    pdf = lambda t: math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))  # noqa: E731
    a, h = abs(x), abs(x) / steps
    half = h / 3 * (pdf(0) + pdf(a) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps)))
    return 0.5 + math.copysign(half, x)


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (0 < p < 1), to about 1e-9."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def paired_t_interval(diffs: Sequence[float], level: float = 0.95) -> Optional[Tuple[float, float, float]]:
    """Mean of per-seed differences (B - A of the same seed) and its ``level`` t-interval over seeds
    (n - 1 degrees of freedom): ``(mean, low, high)``, or None for fewer than two seeds."""
    if len(diffs) < 2:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t_quantile(0.5 + level / 2, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def welch_t_interval(a: Sequence[float], b: Sequence[float],
                     level: float = 0.95) -> Optional[Tuple[float, float, float, float]]:
    """Difference of means B - A of two independent groups of runs (e.g. other seeds, or another layout whose
    runs share no seed with A) and its ``level`` Welch t-interval: ``(diff, low, high, df)`` with the
    Welch-Satterthwaite degrees of freedom, or None when a group has fewer than two runs."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(b) - statistics.fmean(a)
    if va + vb == 0:
        return diff, diff, diff, float(len(a) + len(b) - 2)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_quantile(0.5 + level / 2, df) * math.sqrt(va + vb)
    return diff, diff - half, diff + half, df
