"""Paired statistics on hand-computed tables."""

import math

import pytest

from neuromas.experiment.paired import discordant, mcnemar_exact, paired_bootstrap, seed_spread


def test_discordant_counts_the_questions_one_system_alone_gets_right():
    a = [True, True, False, False, True]
    b = [True, False, True, False, False]
    assert discordant(a, b) == (2, 1)


def test_discordant_refuses_unpaired_scores():
    with pytest.raises(ValueError, match="same questions"):
        discordant([True], [True, False])


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 0, 1.0),  # no discordant question: no evidence either way
        (5, 0, 2 / 32),  # 2 * P[X <= 0], X ~ Bin(5, 1/2) = 2/32
        (0, 5, 2 / 32),  # symmetric
        (6, 2, 2 * (1 + 8 + 28) / 256),  # 2 * P[X <= 2], X ~ Bin(8, 1/2) = 74/256
        (3, 3, 1.0),  # 2 * P[X <= 3] > 1 is capped
        (10, 1, 2 * (1 + 11) / 2048),
    ],
)
def test_mcnemar_exact_against_hand_computed_binomial_tails(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_paired_bootstrap_of_identical_systems_is_exactly_zero():
    scores = [1.0, 0.0, 1.0, 1.0, 0.0]
    assert paired_bootstrap(scores, scores) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_interval_holds_the_difference_and_narrows_with_pairing():
    a = [1.0] * 30 + [0.0] * 10
    b = [1.0] * 20 + [0.0] * 20  # b right only where a is: the difference is always >= 0
    diff = paired_bootstrap(a, b, seed=3)
    assert diff.estimate == pytest.approx(0.25)
    assert 0.0 < diff.low <= 0.25 <= diff.high < 0.5


def test_seed_spread_is_the_sample_standard_deviation():
    spread = seed_spread([0.2, 0.4, 0.6])
    assert spread.mean == pytest.approx(0.4)
    assert spread.std == pytest.approx(0.2)
    assert seed_spread([0.5]) == (0.5, 0.0, 1)
    assert not math.isnan(seed_spread([0.1, 0.1]).std)
