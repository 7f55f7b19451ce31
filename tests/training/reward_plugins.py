"""Reward functions imported by name in the reward tests (`tests.training.reward_plugins:...`)."""

import math


def length_bonus(completion: str, answer: str) -> float:
    return min(len(completion), 10) / 10


def explodes(completion: str, answer: str) -> float:
    if "boom" in completion:
        raise RuntimeError("boom")
    return 1.0


def not_a_number(completion: str, answer: str):
    return {"nan": math.nan, "inf": math.inf, "text": "yes", "none": None}.get(completion, 0.5)


def vowel_share(completion: str, answer: str) -> float:
    """A reward that varies from sample to sample, so that advantages are never all zero."""
    letters = [c for c in completion.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


_calls = {"count": 0}


def flaky_vowel_share(completion: str, answer: str) -> float:
    """vowel_share, but every third call raises: a run must count it and go on."""
    _calls["count"] += 1
    if _calls["count"] % 3 == 0:
        raise ValueError("flaky reward")
    return vowel_share(completion, answer)
