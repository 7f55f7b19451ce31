"""A runtime and a task -> accuracy with a 95% interval, and the cost of each question."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from neuromas.plan import Plan

from ..generation.rollout import Answer, Runtime
from .stats import Interval, wilson_interval
from .registry import Example, Task

CORRECT = 1.0  # a score that reaches this counts as a correct answer
HELD_OUT_SEED = 1_000  # the data seed of evaluations: examples other than training's (seed 0)

AnswerScorer = Callable[[Answer, Example], float]


class EvalResult(msgspec.Struct, frozen=True, kw_only=True):
    """One system evaluated on one task; written as JSON by `neuromas eval`."""

    system: str
    stage: str | None
    plan_hash: str
    task: str
    adapters: str | None  # where trained adapters came from; None = untrained
    n: int
    group: int  # samples per question; accuracy counts every sample
    correct: int
    accuracy: float
    accuracy_low: float  # Wilson 95% interval
    accuracy_high: float
    tokens_per_question: float  # generated tokens, every node, per sample
    calls_per_question: float  # backend calls, level-batched over `batch` questions
    calls_per_rollout: int  # the plan's calls: its levels when settings are uniform
    seconds_per_question: float
    seed: int
    scores: list[float]

    def __post_init__(self) -> None:
        """Refuse numbers no evaluation gives (a result file edited or written by something
        else): msgspec reports the ValueError as a ValidationError of the file."""
        problems = [f"{name} must be at least {low}, got {value}" for name, value, low in (
            ("n", self.n, 1), ("group", self.group, 1), ("correct", self.correct, 0),
            ("tokens_per_question", self.tokens_per_question, 0), ("calls_per_question", self.calls_per_question, 0),
            ("calls_per_rollout", self.calls_per_rollout, 0), ("seconds_per_question", self.seconds_per_question, 0),
        ) if not value >= low]
        problems += [f"{name} must be from 0 to 1, got {value}" for name, value in (
            ("accuracy", self.accuracy), ("accuracy_low", self.accuracy_low), ("accuracy_high", self.accuracy_high),
        ) if not 0.0 <= value <= 1.0]
        if not problems:
            samples = self.n * self.group
            if self.correct > samples:
                problems.append(f"correct ({self.correct}) is more than n x group ({samples})")
            elif abs(self.accuracy - self.correct / samples) > 1e-6:
                problems.append(f"accuracy {self.accuracy} is not correct / (n x group) = {self.correct / samples:.6f}")
            if not self.accuracy_low <= self.accuracy <= self.accuracy_high:
                problems.append("the interval [accuracy_low, accuracy_high] does not hold the accuracy")
            if len(self.scores) != samples:
                problems.append(f"{len(self.scores)} scores for n x group = {samples} samples")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def interval(self) -> Interval:
        return Interval(self.accuracy, self.accuracy_low, self.accuracy_high, self.n * self.group)


def evaluate(
    runtime: Runtime,
    task: Task,
    score: AnswerScorer,
    n: int,
    *,
    group: int = 1,
    batch: int = 8,
    seed: int = 0,
    adapters: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Run the first `n` examples of `task` in batches of `batch` questions (one backend
    call per plan call per batch) and score each sample's answer. Raises ValueError for
    an `n` above the task's size: a question counted twice is not another sample."""
    if not 1 <= n <= len(task):
        raise ValueError(f"n must be from 1 to the task's {len(task)} questions, got {n}")
    plan: Plan = runtime.plan
    calls_before = runtime.backend.stats.calls
    tokens, scores = 0, []
    started = time.perf_counter()
    for start in range(0, n, batch):
        examples = task.batch(start, min(batch, n - start))
        rollout = runtime.rollout([example.inputs for example in examples], group=group, seed=seed + start)
        tokens += rollout.completion_tokens
        for i, example in enumerate(examples):
            scores += [score(rollout.answer(i, j), example) for j in range(group)]
        if on_batch is not None:
            on_batch(len(examples))
    seconds = time.perf_counter() - started
    correct = sum(value >= CORRECT for value in scores)
    interval = wilson_interval(correct, len(scores))
    return EvalResult(
        system=plan.system,
        stage=plan.stage,
        plan_hash=plan.content_hash,
        task=task.name,
        adapters=adapters,
        n=n,
        group=group,
        correct=correct,
        accuracy=interval.estimate,
        accuracy_low=interval.low,
        accuracy_high=interval.high,
        tokens_per_question=tokens / len(scores),
        calls_per_question=(runtime.backend.stats.calls - calls_before) / n,
        calls_per_rollout=len(plan.calls),
        seconds_per_question=seconds / n,
        seed=seed,
        scores=scores,
    )


def read_result(path: Any) -> EvalResult:
    """An eval JSON file; raises msgspec errors for anything else."""
    with open(path, "rb") as handle:
        return msgspec.json.decode(handle.read(), type=EvalResult)


def comparison_table(results: list[tuple[str, EvalResult]]) -> str:
    """Several evaluations side by side: one row per run."""
    header = ("run", "task", "n", "accuracy [95% CI]", "tokens/q", "calls/q", "calls/rollout", "s/q")
    rows = [header]
    for name, r in results:
        rows.append((
            name,
            r.task,
            str(r.n * r.group),
            f"{r.accuracy:.3f} [{r.accuracy_low:.3f}, {r.accuracy_high:.3f}]",
            f"{r.tokens_per_question:.1f}",
            f"{r.calls_per_question:.2f}",
            str(r.calls_per_rollout),
            f"{r.seconds_per_question:.2f}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines) + "\n"
