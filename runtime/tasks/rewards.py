"""A reward name from the plan -> a function scoring a completion against a reference answer.

Built-ins: exact_match, numeric_match, choice_letter, contains, number_answer (graded). Anything else of the
form `package.module:function` is imported and called, but only when the caller
allows running user code. A reward that raises, or returns NaN or a non-number,
scores 0: it is counted and logged, and the run goes on.
"""

from __future__ import annotations

import importlib
import logging
import math
import numbers
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

from neuromas.diagnostics import UserError, did_you_mean
from ..generation.answers import extract_answer, extract_choice, normalize_text, parse_number

logger = logging.getLogger(__name__)

RewardFn = Callable[[str, str], float]  # (completion text, reference answer) -> reward
Scored = TypeVar("Scored")
Target = TypeVar("Target")

MAX_LOGGED_FAILURES = 3  # per batch: enough to see what went wrong without flooding the log


def exact_match(completion: str, answer: str) -> float:
    """1.0 when the extracted answer equals the reference, case, markdown and a trailing
    period aside."""
    predicted = extract_answer(completion, "text")
    return float(predicted is not None and normalize_text(predicted) == normalize_text(answer))


def numeric_match(completion: str, answer: str) -> float:
    """1.0 when the extracted number equals the reference number (relative tolerance 1e-6)."""
    predicted = extract_answer(completion, "number")
    expected = parse_number(answer)
    if predicted is None or expected is None:
        return 0.0
    value = parse_number(predicted)
    return float(value is not None and math.isclose(float(value), float(expected), rel_tol=1e-6, abs_tol=1e-9))


def choice_letter(completion: str, answer: str) -> float:
    """1.0 when the chosen letter (A-E) equals the reference letter ("B", "(B)", "b) text")."""
    expected = extract_choice(answer)
    return float(expected is not None and extract_choice(completion) == expected)


def contains(completion: str, answer: str) -> float:
    """1.0 when the normalised reference occurs anywhere in the normalised completion."""
    expected = normalize_text(answer)
    return float(bool(expected) and expected in normalize_text(completion))


def number_answer(completion: str, answer: str) -> float:
    """Partial credit for answering with the right number alone: half for how much of the
    completion its first number fills, half for how close that number is to the reference
    (1 / (1 + |error|)); 0 without a number. A graded reward the bundled 135M model
    learns in a few steps (README, Training); the closeness half keeps a string of
    digits from earning full marks."""
    text = "".join(completion.split())
    found = _FIRST_NUMBER.search(text)
    if found is None:
        return 0.0
    share = len(found.group()) / len(text)
    expected = parse_number(answer)
    closeness = 0.0 if expected is None else 1.0 / (1.0 + abs(float(found.group()) - float(expected)))
    return 0.5 * share + 0.5 * closeness


_FIRST_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


BUILTIN_REWARDS: dict[str, RewardFn] = {
    "exact_match": exact_match,
    "numeric_match": numeric_match,
    "choice_letter": choice_letter,
    "contains": contains,
    "number_answer": number_answer,
}


def load_reward(name: str, *, allow_code: bool) -> RewardFn:
    """The reward called `name`: a built-in, or `package.module:function` (imported only
    when `allow_code`). Raises UserError: exit 2 for an unknown name or code without
    `allow_code`, 1 for a failed import."""
    if name in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[name]
    if ":" not in name:
        hint = did_you_mean(name, BUILTIN_REWARDS)
        raise UserError(
            f"unknown reward {name!r}: expected one of {', '.join(BUILTIN_REWARDS)} or 'package.module:function'"
            + (f"; {hint}" if hint else ""),
            exit_code=2,
        )
    if not allow_code:
        raise UserError(
            f"reward {name!r} runs code imported from your Python path; "
            "pass --allow-code (allow_code=True) to allow it",
            exit_code=2,
        )
    module_name, _, function_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import-time failure of user code is the user's to fix
        raise UserError(f"cannot import reward module {module_name!r}: {type(err).__name__}: {err}") from err
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"reward module {module_name!r} has no function {function_name!r}")
    return function


class RewardScores(NamedTuple):
    """rewards: (B,) floats, 0.0 where scoring failed; failures: how many failed;
    errors: the first few failure messages."""

    rewards: list[float]
    failures: int
    errors: tuple[str, ...]


def safe_rewards(
    score: Callable[[Scored, Target], object],
    completions: Sequence[Scored],
    targets: Sequence[Target],
    name: str = "reward",
) -> RewardScores:
    """Score every completion (a text, or whatever `score` reads) against its target; a
    call that raises or gives a non-finite or non-number result scores 0.0 and is
    counted, never raised."""
    rewards: list[float] = []
    errors: list[str] = []
    for index, (completion, target) in enumerate(zip(completions, targets, strict=True)):
        try:
            value = score(completion, target)
            problem = _not_a_reward(value)
        except Exception as err:  # user code may raise anything; the run must go on
            value, problem = None, f"raised {type(err).__name__}: {err}"
        if problem is None:
            rewards.append(float(value))  # type: ignore[arg-type]
            continue
        rewards.append(0.0)
        message = f"{name} on sample {index} {problem}; scored 0"
        if len(errors) < MAX_LOGGED_FAILURES:
            logger.warning(message)
        errors.append(message)
    return RewardScores(rewards=rewards, failures=len(errors), errors=tuple(errors[:MAX_LOGGED_FAILURES]))


def _not_a_reward(value: object) -> str | None:
    """Why `value` is not a usable reward, or None when it is one."""
    if not isinstance(value, numbers.Real):  # bools count: True is 1.0
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a 0-d tensor or numpy scalar
            return _not_a_reward(value.item())  # type: ignore[union-attr]
        return f"returned {type(value).__name__} {value!r:.40}, not a number"
    if not math.isfinite(float(value)):
        return f"returned {value}"
    return None
