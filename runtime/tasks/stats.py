"""Successes out of n, or per-example scores -> an estimate with a 95% confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


class Interval(NamedTuple):
    """A point estimate, the bounds of its confidence interval, and the sample size."""

    estimate: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def wilson_interval(successes: int, n: int, *, z: float = Z95) -> Interval:
    """Accuracy `successes / n` with its Wilson score interval (sound near 0 and 1 and for
    small n, unlike the normal approximation). Raises ValueError unless 0 <= successes <= n, n > 0."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # rounding can put a bound a hair past the estimate at p = 0 or 1: the interval holds p
    return Interval(p, min(p, max(0.0, center - half)), max(p, min(1.0, center + half)), n)


def mean_interval(values: Sequence[float], *, z: float = Z95) -> Interval:
    """The mean of `values` with a normal-approximation interval, mean +- z * s / sqrt(n)
    (s: sample standard deviation); fine for n of about 30 or more. One value gives an
    unbounded interval. Raises ValueError for no values."""
    n = len(values)
    if n == 0:
        raise ValueError("the mean of no values is undefined")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1)
    variance = math.fsum((value - mean) ** 2 for value in values) / (n - 1)
    half = z * math.sqrt(variance / n)
    return Interval(mean, mean - half, mean + half, n)
