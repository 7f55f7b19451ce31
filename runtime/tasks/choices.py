"""A multiple-choice record (question, options, answer) -> a question with lettered options and the answer's letter.

Options come as a list (`["Paris", "Rome"]`), as a JSON or Python list in a text
field (CSV files), or as `{"text": [...], "label": [...]}` (the ARC and CommonsenseQA layout).
The reference answer may be a 0-based index (MMLU), one of the labels ("1", "C"), a
letter A-E, or the text of an option; it becomes the option's letter, which the
`choice_letter` reward and `answers.extract_choice` read back from the model's text.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from neuromas.diagnostics import UserError
from ..generation.answers import CHOICE_LETTERS, normalize_text


class Choices(NamedTuple):
    """The options of one question and the labels the data gave them (None when unlabelled)."""

    options: list[str]
    labels: list[str] | None


def read_choices(value: Any, where: str) -> Choices:
    """The options in a record's choices field; raises UserError for anything else, or for
    fewer than 2 or more options than there are letters."""
    if isinstance(value, str):  # a CSV cell: a JSON list, or a Python one as pandas writes it
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise UserError(f"{where}: the choices field is text, not a list of options "
                                '(expected ["option 1", "option 2", ...])') from None
    labels = None
    if isinstance(value, dict):
        if "text" not in value:
            raise UserError(f"{where}: choices given as an object need a 'text' list (keys: {', '.join(value)})")
        labels = value.get("label")
        value = value["text"]
        if labels is not None and (not isinstance(labels, list) or len(labels) != len(value)):
            raise UserError(f"{where}: the choices' 'label' list must match its 'text' list, one label per option")
    if not isinstance(value, list) or not all(isinstance(option, (str, int, float)) for option in value):
        raise UserError(f"{where}: choices must be a list of texts, got {type(value).__name__}")
    if not 2 <= len(value) <= len(CHOICE_LETTERS):
        raise UserError(f"{where}: {len(value)} options; a multiple-choice question needs 2 to "
                        f"{len(CHOICE_LETTERS)} (answers are read as the letters {CHOICE_LETTERS})")
    return Choices([str(option) for option in value], None if labels is None else [str(label) for label in labels])


def render_question(question: str, options: Sequence[str]) -> str:
    """The question followed by its options on lines of their own: "A. ...", "B. ..."."""
    lines = [f"{letter}. {option}" for letter, option in zip(CHOICE_LETTERS, options)]
    return question.rstrip() + "\n\n" + "\n".join(lines)


def answer_letter(answer: Any, choices: Choices, where: str) -> str:
    """The letter of the option that `answer` names: one of the labels, a 0-based index, a
    letter, or an option's text, tried in that order; raises UserError when it names none."""
    letters = CHOICE_LETTERS[: len(choices.options)]
    text = str(answer).strip()
    if choices.labels is not None and text in choices.labels:
        return letters[choices.labels.index(text)]
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < len(letters):
            return letters[answer]
        raise UserError(f"{where}: answer index {answer} is out of range for {len(letters)} options (0-based)")
    if len(text) == 1 and text.upper() in letters:
        return text.upper()
    normalized = [normalize_text(option) for option in choices.options]
    if normalize_text(text) in normalized:
        return letters[normalized.index(normalize_text(text))]
    shown = ", ".join(f"{letter}. {option}" for letter, option in zip(letters, choices.options))
    raise UserError(f"{where}: answer {text!r} is not an option's index, label, letter or text (options: {shown})")
