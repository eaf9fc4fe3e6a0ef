"""95% intervals for every number the project reports.

A score without its uncertainty invites over-reading small differences between
methods, so every table cell carries an :class:`Interval`. Everything here is
pure numpy and deterministic (seeded ``numpy.random.Generator``), so reruns of a
report reproduce the same intervals digit for digit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "wilson", "bootstrap_mean", "paired_bootstrap_diff", "verdict", "z_value"]

# Upper bound on resample indices held in memory at once (~8 MB of int32), so a
# large bootstrap stays fast without allocating reps x n in one go.
_MAX_DRAWS_PER_CHUNK = 2_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval and the sample count behind it."""

    estimate: float
    lo: float
    hi: float
    n: int

    def covers(self, value: float = 0.0) -> bool:
        """True when ``value`` lies inside the interval (ends included); used for 'no difference'."""
        return self.lo <= value <= self.hi

    def fmt(self, scale: float = 1.0, digits: int = 1) -> str:
        """Table-cell text, e.g. ``53.1 [46.2, 60.0] (n=208)`` with ``scale=100``."""
        est, lo, hi = (f"{x * scale:.{digits}f}" for x in (self.estimate, self.lo, self.hi))
        return f"{est} [{lo}, {hi}] (n={self.n})"

    def as_dict(self) -> dict:
        """Plain floats/int so results files can be written with ``json.dump``."""
        return {"estimate": float(self.estimate), "lo": float(self.lo), "hi": float(self.hi), "n": int(self.n)}


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be strictly between 0 and 1, got {level}")
    return level


def z_value(level: float) -> float:
    """Two-sided standard-normal quantile (1.959964 for 0.95), by bisection on ``math.erfc``.

    Bisection avoids a scipy dependency; solving on the tail probability with
    ``erfc`` keeps full precision even for levels close to 1.
    """
    tail = 1.0 - _check_level(level)  # P(|Z| > z) = erfc(z / sqrt 2)
    below, above = 0.0, 40.0
    for _ in range(200):
        mid = 0.5 * (below + above)
        if mid in (below, above):
            break
        if math.erfc(mid / math.sqrt(2.0)) > tail:
            below = mid
        else:
            above = mid
    return 0.5 * (below + above)


def wilson(successes: float, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval of a proportion.

    Preferred over the normal (Wald) interval because it stays inside [0, 1] and
    keeps sensible width at 0/n and n/n, which are common for easy or hopeless
    needle tasks.
    """
    if n <= 0:
        raise ValueError(f"wilson needs n > 0 trials, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson needs 0 <= successes <= n, got successes={successes}, n={n}")
    z = z_value(level)
    p = float(successes) / int(n)
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    # Exact ends at the boundaries (the formula gives them only up to rounding).
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(estimate=p, lo=lo, hi=hi, n=int(n))


def _as_scores(values, name: str) -> np.ndarray:
    scores = np.asarray(values, dtype=float)
    if scores.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of per-sample scores, got shape {scores.shape}")
    if scores.size == 0:
        raise ValueError(f"{name} is empty: an interval needs at least one sample")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name} contains NaN or infinite scores")
    return scores


def _split_by_group(scores: np.ndarray, groups) -> list[np.ndarray]:
    """Per-group score arrays (one group when ``groups`` is None), in sorted label order."""
    if groups is None:
        return [scores]
    labels = np.asarray(groups)
    if labels.shape != scores.shape:
        raise ValueError(f"groups has length {labels.size} but scores has length {scores.size}")
    _, group_index = np.unique(labels, return_inverse=True)
    group_index = group_index.ravel()
    return [scores[group_index == g] for g in range(int(group_index.max()) + 1)]


def _mean_of_group_means(by_group: list[np.ndarray]) -> float:
    """RULER-style task average: every group counts equally, whatever its size."""
    return float(np.mean([g.mean() for g in by_group]))


def _bootstrap_interval(
    by_group: list[np.ndarray], estimate: float, n: int, reps: int, seed: int, level: float
) -> Interval:
    """Percentile interval of the mean of group means, resampling within each group."""
    level = _check_level(level)
    if int(reps) < 1:
        raise ValueError(f"reps must be a positive number of bootstrap replicates, got {reps}")
    reps = int(reps)
    if all(np.ptp(g) == 0 for g in by_group):
        # Every replicate would equal the estimate; return it exactly instead of up to rounding.
        return Interval(estimate=estimate, lo=estimate, hi=estimate, n=n)
    rng = np.random.default_rng(seed)
    replicate_sums = np.zeros(reps)
    for values in by_group:
        size = values.size
        rows = max(1, _MAX_DRAWS_PER_CHUNK // size)
        for start in range(0, reps, rows):
            stop = min(reps, start + rows)
            # Scalar upper bound + int32 is markedly faster than per-element bounds.
            draws = rng.integers(0, size, size=(stop - start, size), dtype=np.int32)
            replicate_sums[start:stop] += values[draws].mean(axis=1)
    replicates = replicate_sums / len(by_group)
    alpha = 1.0 - level
    lo, hi = np.quantile(replicates, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(estimate=estimate, lo=float(lo), hi=float(hi), n=n)


def bootstrap_mean(scores, *, groups=None, reps: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Percentile-bootstrap interval of a mean score.

    With ``groups`` (e.g. RULER task names) the estimate is the mean of per-group
    means, matching how RULER averages tasks, and each replicate resamples within
    each group so group sizes stay fixed as in the real benchmark.
    """
    values = _as_scores(scores, "scores")
    by_group = _split_by_group(values, groups)
    return _bootstrap_interval(by_group, _mean_of_group_means(by_group), values.size, reps, seed, level)


def paired_bootstrap_diff(a, b, *, groups=None, reps: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Interval of statistic(a) - statistic(b) for two methods scored on the same samples.

    Resampling the same indices for both methods removes the per-sample
    difficulty they share, so the interval is much tighter than comparing two
    separate intervals. Because the statistic is linear, resampling the
    per-sample differences ``a - b`` is exactly the paired bootstrap.
    """
    a_values, b_values = _as_scores(a, "a"), _as_scores(b, "b")
    if a_values.size != b_values.size:
        raise ValueError(f"paired scores must align sample by sample: len(a)={a_values.size}, len(b)={b_values.size}")
    a_groups = _split_by_group(a_values, groups)
    b_groups = _split_by_group(b_values, groups)
    estimate = _mean_of_group_means(a_groups) - _mean_of_group_means(b_groups)
    diff_groups = [ga - gb for ga, gb in zip(a_groups, b_groups)]
    return _bootstrap_interval(diff_groups, estimate, a_values.size, reps, seed, level)


def paired_bootstrap_ratio(a, b, *, groups=None, reps: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Interval of statistic(a) / statistic(b) on the same samples (retention: after / before), resampling
    the same indices for both. A zero denominator is an error: a ratio to nothing retains nothing."""
    a_values, b_values = _as_scores(a, "a"), _as_scores(b, "b")
    if a_values.size != b_values.size:
        raise ValueError(f"paired scores must align sample by sample: len(a)={a_values.size}, len(b)={b_values.size}")
    a_groups, b_groups = _split_by_group(a_values, groups), _split_by_group(b_values, groups)
    denominator = _mean_of_group_means(b_groups)
    if denominator <= 0:
        raise ValueError("ratio to a statistic of 0 or less (the reference scores nothing)")
    estimate = _mean_of_group_means(a_groups) / denominator
    level, reps = _check_level(level), int(reps)
    rng = np.random.default_rng(seed)
    sums_a, sums_b = np.zeros(reps), np.zeros(reps)
    for ga, gb in zip(a_groups, b_groups):
        draws = rng.integers(0, ga.size, size=(reps, ga.size), dtype=np.int32)
        sums_a += ga[draws].mean(axis=1)
        sums_b += gb[draws].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        replicates = np.where(sums_b > 0, sums_a / np.where(sums_b > 0, sums_b, 1.0), np.inf)
    alpha = 1.0 - level
    lo, hi = np.quantile(replicates, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(estimate=estimate, lo=float(lo), hi=float(hi), n=a_values.size)


def verdict(diff: Interval) -> str:
    """Plain-words reading of a paired difference: only claim a winner when 0 is excluded."""
    if diff.covers(0.0):
        return "no difference"
    return "higher" if diff.lo > 0 else "lower"
