"""A task and a reward name -> the scorer of one run's final answer, built once per run.

The step loop, held-out evaluation and `neuromas eval` all score with an `AnswerScorer`;
whoever starts a run builds it (and decides whether user code may run) and passes it in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..generation.rollout import Answer
from ..tasks.registry import Example, Task
from ..tasks.rewards import RewardScores, load_reward

AnswerScorer = Callable[[Answer, Example], float]  # (a run's answer, its example) -> reward


def make_scorer(plan_reward: str, task: Task, reward: str | None = None, allow_code: bool = False) -> AnswerScorer:
    """The reward of one run's answer (the plan's first output).

    A task with its own scorer (reasoning_gym) gets the answer extracted with the
    output's `format` (its scorers compare answers exactly); a named reward (the plan's,
    or `reward` overriding it) gets the output's full text and extracts for itself.
    Raises UserError for an unknown reward, or a code reward without `allow_code`.
    """
    task_scorer = task.scorer
    if reward is None and task_scorer is not None:

        def score_extracted(answer: Answer, example: Example) -> float:
            is_text = task.is_scored_on_text or answer.answer is None  # code and choice scorers read it all
            return task_scorer(answer.text if is_text else answer.answer, example)

        return score_extracted
    function = load_reward(reward or plan_reward, allow_code=allow_code)

    def score_text(answer: Answer, example: Example) -> float:
        return function(answer.text, example.answer)

    return score_text


def merge_scores(per_rank: Sequence[RewardScores]) -> RewardScores:
    """The ranks' reward scores, in rank order, as one step's scores."""
    return RewardScores(
        rewards=[reward for scores in per_rank for reward in scores.rewards],
        failures=sum(scores.failures for scores in per_rank),
        errors=tuple(error for scores in per_rank for error in scores.errors),
    )
