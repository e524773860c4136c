"""Statistics over seeds: t-intervals, paired gains, frontiers at matched accuracy, claim status.

Every number the report compares is computed per seed first and summarised over seeds with a
Student t interval, so that differences between methods are paired by seed (same baseline
weights, same data order). Accuracies and sparsities are percentages; gains are points (pp).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean over ``n`` seeds with its two-sided t interval (nan bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def spans_zero(self) -> bool:
        return not (self.low > 0 or self.high < 0)


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean ± t_{(1+c)/2, n-1} · s / √n of the finite ``values`` (sample std, ddof = 1).

    One value gives nan bounds (no interval from one seed); none gives a nan mean.
    """
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def bootstrap_interval(values: Iterable[float], confidence: float = CONFIDENCE,
                       resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of the mean of the finite ``values``: seeds
    resampled with replacement, as rliable's stratified bootstrap does within one task. Exact
    (all n^n resamples, equally likely) when n^n <= ``resamples``, else ``resamples`` draws
    seeded by ``seed``; quantiles by the inverted CDF. (nan, nan) for fewer than 2 values."""
    x = np.array([v for v in values if math.isfinite(v)], dtype=float)
    n = len(x)
    if n < 2:
        return math.nan, math.nan
    if n ** n <= resamples:
        index = np.array(list(itertools.product(range(n), repeat=n)))
    else:
        index = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    means = x[index].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)


def stratified_bootstrap_interval(groups: Sequence[Iterable[float]],
                                  confidence: float = CONFIDENCE, resamples: int = 10_000,
                                  seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean over groups of each group's mean, seeds resampled with
    replacement within each group (rliable's stratified bootstrap: groups = tasks, here
    architectures). Exact (every resample of every group, equally likely) when their count is
    at most ``resamples``, else ``resamples`` seeded draws. (nan, nan) for fewer than 2 groups
    or a group with no finite value."""
    xs = [np.array([v for v in g if math.isfinite(v)], dtype=float) for g in groups]
    if len(xs) < 2 or any(len(x) == 0 for x in xs):
        return math.nan, math.nan
    total = math.prod(len(x) ** len(x) for x in xs)
    if total <= resamples:
        per_group = [x[np.array(list(itertools.product(range(len(x)), repeat=len(x))))]
                     .mean(axis=1) for x in xs]
        means = np.array([sum(c) / len(c) for c in itertools.product(*per_group)])
    else:
        rng = np.random.default_rng(seed)
        means = np.mean([x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
                         for x in xs], axis=0)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)


def sign_test_p(values: Iterable[float]) -> float:
    """One-sided sign test: P(at least k of the n non-zero ``values`` are > 0) when each is
    positive with probability 1/2 (zeros and non-finite values dropped); nan for none."""
    x = [v for v in values if math.isfinite(v) and v != 0]
    if not x:
        return math.nan
    k = sum(v > 0 for v in x)
    return float(scipy_stats.binom.sf(k - 1, len(x), 0.5))


def t_test_p(values: Iterable[float]) -> float:
    """Two-sided one-sample t test of mean 0 over the finite ``values`` (nan for fewer than 2
    or no spread)."""
    x = np.array([v for v in values if math.isfinite(v)], dtype=float)
    if len(x) < 2 or x.std(ddof=1) == 0:
        return math.nan
    t = x.mean() / (x.std(ddof=1) / math.sqrt(len(x)))
    return float(2 * scipy_stats.t.sf(abs(t), len(x) - 1))


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> dict[int, float]:
    """Per-seed differences a - b over the seeds both have (finite values only)."""
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))
            if math.isfinite(a[s]) and math.isfinite(b[s])}


def relative(gain: Mapping[int, float], reference: Mapping[int, float]) -> dict[int, float]:
    """Per-seed relative gain in percent: gain / reference × 100 (reference > 0 only)."""
    return {s: 100.0 * gain[s] / reference[s] for s in sorted(set(gain) & set(reference))
            if reference[s] > 0 and math.isfinite(gain[s])}


def interpolate_at(accuracy: Sequence[float], sparsity: Sequence[float], target: float
                   ) -> float:
    """Sparsity where the piecewise-linear curve through (accuracy, sparsity) points, taken in
    λ order, meets ``target`` accuracy; nan when no segment reaches it on both sides.

    A segment brackets the target when its end accuracies lie on opposite sides of it (or one
    equals it). When the curve crosses the target more than once (noise makes accuracy
    non-monotone in λ), the largest sparsity of the crossings is the frontier's value.
    """
    best = math.nan
    for i in range(len(accuracy) - 1):
        a0, a1, s0, s1 = accuracy[i], accuracy[i + 1], sparsity[i], sparsity[i + 1]
        if (a0 - target) * (a1 - target) > 0:
            continue
        value = max(s0, s1) if a0 == a1 else s0 + (target - a0) / (a1 - a0) * (s1 - s0)
        best = value if math.isnan(best) else max(best, value)
    if len(accuracy) == 1 and accuracy[0] == target:
        best = sparsity[0]
    return best


def claim_status(paper_value: float, interval: Interval) -> str:
    """``reproduced`` when the interval contains the paper's value or lies above it, ``not
    reproduced`` when it lies entirely below. With one seed the mean stands in for the interval."""
    if interval.n == 0 or math.isnan(interval.mean):
        return "not run"
    high = interval.high if interval.n > 1 else interval.mean
    return "reproduced" if high >= paper_value else "not reproduced"


def ordering_status(difference: Interval) -> str:
    """``holds`` when the paired interval of (TL1 − best other) lies above 0, ``does not hold``
    below 0, ``undecided`` when it spans 0 (or there is no interval)."""
    if difference.n < 2:
        return "undecided"
    if difference.low > 0:
        return "holds"
    if difference.high < 0:
        return "does not hold"
    return "undecided"


def t_power(effect: float, n: int, alpha: float = 1 - CONFIDENCE) -> float:
    """Power of the two-sided one-sample (paired) t test at level ``alpha`` with ``n`` seeds
    when the true mean over the spread is ``effect`` (Cohen's d_z): P(|T| > t_crit) with T
    noncentral t, n - 1 degrees of freedom, noncentrality effect·√n."""
    if n < 2:
        return 0.0
    df, nc = n - 1, abs(effect) * math.sqrt(n)
    crit = scipy_stats.t.ppf(1 - alpha / 2, df)
    upper = float(scipy_stats.nct.sf(crit, df, nc))
    if not math.isfinite(upper):  # scipy's nct returns nan where a tail underflows
        upper = 1.0 - float(scipy_stats.nct.cdf(crit, df, nc))
        upper = upper if math.isfinite(upper) else float(nc > crit)
    lower = float(scipy_stats.nct.cdf(-crit, df, nc))  # below alpha / 2 for nc >= 0
    return min(1.0, upper + (lower if math.isfinite(lower) else 0.0))


def seeds_needed(interval: Interval, power: float = 0.8, confidence: float = CONFIDENCE,
                 most: int = 10_000) -> int | None:
    """The fewest seeds whose paired t interval would exclude 0 with probability ``power``
    if the per-seed differences had ``interval``'s mean and spread (the spread recovered from
    its half-width: s = half · √n / t). None when it cannot be told (fewer than 2 seeds, no
    spread, a zero mean) or more than ``most`` would be needed."""
    n = interval.n
    if n < 2 or not math.isfinite(interval.low) or interval.mean == 0:
        return None
    half = (interval.high - interval.low) / 2
    sd = half * math.sqrt(n) / scipy_stats.t.ppf((1 + confidence) / 2, n - 1)
    if sd <= 0:
        return None
    effect = abs(interval.mean) / sd
    k = 2
    while k <= most and t_power(effect, k, 1 - confidence) < power:
        k = k + 1 if k < 64 else int(k * 1.05) + 1
    if k > most:
        return None
    while k > 2 and t_power(effect, k - 1, 1 - confidence) >= power:  # back from a coarse step
        k -= 1
    return k

