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
    call per plan call per batch) and score each sample's answer."""
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
