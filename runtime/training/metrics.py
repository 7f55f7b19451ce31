"""A step's plain numbers (rewards, update stats, counts, timings) -> one metrics row, and the sample row.

Rows are flat JSON objects, one per step, appended to `metrics.jsonl` by the loop;
`neuromas plot` and `neuromas report` read them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..generation.rollout import Answer
from ..tasks.registry import Example
from ..tasks.rewards import RewardScores
from .update import UpdateStats

CORRECT = 1.0  # a sample whose reward reaches this counts toward accuracy
UPDATE_FIELDS = ("loss", "kl", "entropy", "clip_fraction", "ratio", "grad_norm")


def metrics_row(
    *,
    step: int,
    stage: str | None,
    data_position: int,
    scores: RewardScores,
    stats: UpdateStats | None,
    counts: Mapping[str, int],
    zero_std_fraction: float,
    is_kl_measured: bool,
    timings_s: Mapping[str, float],
) -> dict[str, Any]:
    """One flat row per step. The update's fields are null when no row had tokens,
    grad_norm is null when it was not finite (the step was skipped), and kl is null
    when it was not measured. zero_std_fraction: the share of groups whose rewards were
    all equal (no signal); rows_skipped counts the update rows left out for a zero
    advantage, and optimizer_skipped says AdamW did not step (no row had a signal).
    counts: what the rollout produced (completions,
    truncations); timings_s: seconds per phase, keyed `rollout_s`, `update_s`, ...."""
    rewards = scores.rewards
    mean = math.fsum(rewards) / len(rewards)
    row: dict[str, Any] = {
        "step": step,
        "stage": stage,  # the growth stage, None without growth
        "data_position": data_position,
        "reward_mean": mean,
        "reward_std": math.sqrt(math.fsum((r - mean) ** 2 for r in rewards) / len(rewards)),  # the batch's spread
        "accuracy": sum(r >= CORRECT for r in rewards) / len(rewards),
        **{name: (None if stats is None else _finite(getattr(stats, name))) for name in UPDATE_FIELDS},
        "tokens": 0 if stats is None else stats.tokens,
        "zero_std_fraction": zero_std_fraction,
        "rows_skipped": None if stats is None else stats.rows_skipped,
        "optimizer_skipped": None if stats is None else stats.optimizer_skipped,
        **counts,
        "reward_failures": scores.failures,
        "reward_error": scores.errors[0] if scores.errors else None,  # the first, to see what failed
        **{name: round(seconds, 4) for name, seconds in timings_s.items()},
    }
    if not is_kl_measured:
        row["kl"] = None
    return row


def sample_row(step: int, example: Example, answer: Answer, reward: float) -> dict[str, Any]:
    """The first run of a step as a JSON-ready row: inputs, reference, output, reward."""
    return {
        "step": step,
        "inputs": example.inputs,
        "reference": example.answer,
        "output": answer.text,
        "answer": answer.answer,
        "reward": reward,
    }


def mean_stats(epochs: Sequence[UpdateStats]) -> UpdateStats:
    """Average each float field over the optimisation passes of one step; counts are the first pass's."""
    first = epochs[0]
    fields = {
        name: (sum(getattr(s, name) for s in epochs) / len(epochs) if isinstance(value, float) else value)
        for name, value in first._asdict().items()
    }
    return UpdateStats(**fields)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
