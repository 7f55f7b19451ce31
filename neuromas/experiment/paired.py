"""Paired comparisons of two systems scored on the same questions: McNemar's exact test,
a paired bootstrap interval of the accuracy difference, and the spread over seeds."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import NamedTuple


class Discordant(NamedTuple):
    """Questions where exactly one system is right: `only_a` right by A alone, `only_b` by B alone."""

    only_a: int
    only_b: int


def discordant(a: Sequence[bool], b: Sequence[bool]) -> Discordant:
    """Count the questions each system alone gets right; raises ValueError unless both
    score the same questions."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same questions, got {len(a)} and {len(b)}")
    return Discordant(sum(x and not y for x, y in zip(a, b)), sum(y and not x for x, y in zip(a, b)))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference" each discordant question is a
    fair coin, so p = min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)]). No discordant
    questions give p = 1."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = math.fsum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


class Difference(NamedTuple):
    """Accuracy of A minus accuracy of B with a paired bootstrap 95% interval."""

    estimate: float
    low: float
    high: float


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0) -> Difference:
    """Resample questions with replacement (the same indices for both systems, which keeps
    their pairing) and take the 2.5th and 97.5th percentiles of mean(a) - mean(b)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired scores need the same, non-empty questions, got {len(a)} and {len(b)}")
    n = len(a)
    diffs = [x - y for x, y in zip(a, b)]
    rng = random.Random(seed)
    means = sorted(math.fsum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    low = means[int(0.025 * (resamples - 1))]
    high = means[math.ceil(0.975 * (resamples - 1))]
    return Difference(math.fsum(diffs) / n, low, high)


class Spread(NamedTuple):
    """The mean over seeds and the sample standard deviation (0 for one seed)."""

    mean: float
    std: float
    seeds: int


def seed_spread(values: Sequence[float]) -> Spread:
    if not values:
        raise ValueError("no seeds to summarise")
    mean = math.fsum(values) / len(values)
    if len(values) == 1:
        return Spread(mean, 0.0, 1)
    return Spread(mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)), len(values))
