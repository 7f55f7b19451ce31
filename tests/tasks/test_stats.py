"""Confidence intervals, checked against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from neuromas.runtime.tasks.stats import Interval, mean_interval, wilson_interval


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # center = (p + z^2/2n) / (1 + z^2/n), half = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n), z = 1.96
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
        (1, 3, 0.0615, 0.7923),
    ],
)
def test_wilson_interval_matches_hand_computed_values(successes, n, low, high):
    interval = wilson_interval(successes, n)
    assert interval.estimate == pytest.approx(successes / n)
    assert interval.low == pytest.approx(low, abs=1e-4)
    assert interval.high == pytest.approx(high, abs=1e-4)
    assert interval.n == n


def test_wilson_interval_rejects_impossible_counts():
    for successes, n in [(1, 0), (-1, 5), (6, 5)]:
        with pytest.raises(ValueError):
            wilson_interval(successes, n)


def test_mean_interval_uses_the_sample_standard_deviation():
    # mean 3, s = sqrt(2.5), half width = 1.96 * sqrt(2.5 / 5) = 1.3859
    interval = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert interval.estimate == 3.0
    assert interval.low == pytest.approx(1.6141, abs=1e-4)
    assert interval.high == pytest.approx(4.3859, abs=1e-4)
    assert mean_interval([0.5] * 4) == Interval(0.5, 0.5, 0.5, 4)


def test_mean_interval_of_one_value_is_unbounded_and_of_none_an_error():
    assert mean_interval([2.0]) == Interval(2.0, -math.inf, math.inf, 1)
    with pytest.raises(ValueError):
        mean_interval([])


def test_interval_prints_compactly():
    assert str(wilson_interval(8, 10)) == "0.800 [0.490, 0.943] (n=10)"


def test_wilson_interval_contains_the_estimate_at_the_edges():
    for n in (1, 2, 3, 7, 50):
        none, every = wilson_interval(0, n), wilson_interval(n, n)
        assert none.low == 0.0 <= none.estimate <= none.high
        assert every.low <= every.estimate == every.high == 1.0
