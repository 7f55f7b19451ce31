"""Held-out evaluations during a growth run -> rows of `evals.jsonl`, and the plateau decision.

Every `every` steps (and after the last step) the system being trained answers the same
`n` held-out questions with the same sampling seeds, so evaluations differ only by what
training changed. A stage whose next stage says `or plateau K evals` ends early once
its held-out reward has not beaten its best for K evaluations in a row.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from neuromas.plan import GrowthStage

from ..tasks.evaluate import evaluate
from ..tasks.registry import Task
from .scoring import AnswerScorer
from .session import TrainSession, append_row, keep_rows_until

EVALS_FILE = "evals.jsonl"


class EvalSettings(NamedTuple):
    """Held-out evaluation during training."""

    task: Task  # held-out questions: the training task loaded with another data seed
    every: int  # evaluate after every `every` steps (and after the last)
    n: int = 50  # questions per evaluation
    batch: int = 8  # questions per rollout
    seed: int = 0  # rollout seed, the same at every evaluation
    score: AnswerScorer | None = None  # the held-out task's scorer (`scoring.make_scorer`); None: the training one


def evals_since_best(rewards: Sequence[float]) -> int:
    """How many evaluations came after the best one (the first to reach the maximum);
    0 for none. Only a strictly higher reward counts as an improvement."""
    if not rewards:
        return 0
    best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
    return len(rewards) - 1 - best


def has_plateaued(rewards: Sequence[float], patience: int) -> bool:
    """True when the last `patience` evaluations (of one stage, oldest first) all failed
    to improve on the best before them. The first evaluation only sets the best."""
    if patience < 1:
        raise ValueError(f"patience must be at least 1, got {patience}")
    return evals_since_best(rewards) >= patience


def is_due(step: int, every: int, last_step: int) -> bool:
    """Whether an evaluation belongs to `step`: every `every` steps, and after the last."""
    return step > 0 and (step % every == 0 or step == last_step)


def step_trigger_only(stages: Sequence[GrowthStage]) -> str | None:
    """The warning for a run that evaluates nothing while some stage may start on a
    plateau: those stages start at their step count alone. None when nothing is lost."""
    waiting = [stage for stage in stages if stage.plateau_evals is not None]
    if not waiting:
        return None
    names = ", ".join(f"'{stage.name}' after {stage.after_steps} steps" for stage in waiting)
    return (f"this run evaluates no held-out reward, so growth ignores `or plateau K evals`: {names}; "
            "pass --eval-every N (and --eval-n M) to grow early on a plateau")


def evaluate_held_out(session: TrainSession, settings: EvalSettings, score: AnswerScorer) -> dict[str, Any]:
    """Evaluate the session's system on the held-out questions and append the row to
    `evals.jsonl`. The training RNG states are restored afterwards (the backend seeds
    torch's generator for sampling), so evaluating never changes what training does."""
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        result = evaluate(session.runtime, settings.task, score, settings.n, batch=settings.batch, seed=settings.seed)
    random.setstate(python_state)
    row = {
        "step": session.state.step,
        "stage": session.plan.stage,
        "n": result.n,
        "reward_mean": sum(result.scores) / len(result.scores),
        "accuracy": result.accuracy,
        "accuracy_low": result.accuracy_low,  # Wilson 95% interval
        "accuracy_high": result.accuracy_high,
        "tokens_per_question": result.tokens_per_question,
        "seconds": round(result.seconds_per_question * result.n, 4),
    }
    if session.is_main:
        append_row(session.out / EVALS_FILE, row)
    return row


def read_evals(out: Path, step: int) -> list[dict[str, Any]]:
    """The evaluations of a run folder up to `step`; later rows (left by a run that
    stopped after its last checkpoint) are deleted from the file, as metrics are."""
    path = Path(out) / EVALS_FILE
    keep_rows_until(path, step)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
