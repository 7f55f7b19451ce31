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
