"""The spec language's word lists are defined once, as Literals in neuromas.vocabulary,
and every user takes them from there."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

from neuromas import ir, plan, vocabulary

ROOT = Path(__file__).resolve().parent.parent
# The code, and the test strategies that write specs (other tests may list cases by hand).
SOURCES = sorted([*(p for folder in ("neuromas", "runtime", "bench") for p in (ROOT / folder).rglob("*.py")), ROOT / "tests" / "strategies.py"])
LITERALS = {name: value for name, value in vars(vocabulary).items() if typing.get_origin(value) is typing.Literal}


def test_every_tuple_is_derived_from_its_literal() -> None:
    assert set(LITERALS) >= {"AnswerFormat", "Algorithm", "PatternKind", "InitKind"}
    assert vocabulary.ANSWER_FORMATS == typing.get_args(vocabulary.AnswerFormat) == ("text", "number", "choice")
    assert vocabulary.ALGORITHMS == typing.get_args(vocabulary.Algorithm)
    assert vocabulary.PATTERNS == typing.get_args(vocabulary.PatternKind)
    assert vocabulary.INIT_KINDS == typing.get_args(vocabulary.InitKind)
    assert vocabulary.ORIGIN_KINDS == ("keep", *vocabulary.INIT_KINDS)


def test_the_ir_and_the_plan_use_the_literals() -> None:
    hints = typing.get_type_hints
    assert hints(ir.Output)["answer_format"] == vocabulary.AnswerFormat | None
    assert hints(ir.Train)["algorithm"] == vocabulary.Algorithm
    assert hints(ir.Pattern)["kind"] == vocabulary.PatternKind
    assert hints(ir.Init)["kind"] == vocabulary.InitKind
    assert hints(plan.Train)["algorithm"] == vocabulary.Algorithm
    assert hints(plan.Origin)["kind"] == vocabulary.OriginKind


def _word_lists(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    """Every tuple or list of two or more string constants in a file (a `Literal[...]`'s too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        items = node.elts if isinstance(node, (ast.Tuple, ast.List)) else []
        if len(items) >= 2 and all(isinstance(i, ast.Constant) and isinstance(i.value, str) for i in items):
            found.append((node.lineno, tuple(i.value for i in items)))
    return found


@pytest.mark.parametrize("name", sorted(set(LITERALS) - {"OriginKind"}))  # OriginKind is "keep" + InitKind
def test_each_word_list_is_written_out_once(name: str) -> None:
    words = set(typing.get_args(LITERALS[name]))
    copies = [f"{path.relative_to(ROOT)}:{line}" for path in SOURCES if path.name != "test_vocabulary.py"
              for line, items in _word_lists(path) if set(items) == words]
    assert copies == ["neuromas/vocabulary.py:" + str(_line_of(name))], f"{name} is written out again: {copies}"


def _line_of(name: str) -> int:
    source = (ROOT / "neuromas" / "vocabulary.py").read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(source, 1) if line.startswith(f"{name} = Literal["))
