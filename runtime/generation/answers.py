"""A final node's free text -> the answer it gives (a number, a choice letter or a short text).

Models format answers many ways: `\\boxed{42}`, "The answer is 1,234.", "#### 7",
"Answer: (C)", "**B**". Extraction looks for an explicit answer marker first and
falls back to the last line (text), the last number (numbers) or a lone letter (choices).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from neuromas.vocabulary import ANSWER_FORMATS

CHOICE_LETTERS = "ABCDE"

# "The answer is X", "final answer: X", "Answer - X": X runs to the end of its line.
_MARKER = re.compile(
    r"\b(?:final\s+)?answer\b(?:\s*(?:is|was|would\s+be|will\s+be)\b\s*[:=]?|\s*[:=]|\s+-)\s*(?P<rest>[^\n]*)",
    re.IGNORECASE,
)
_HASHES = re.compile(r"####\s*(?P<rest>[^\n]*)")
_NUMBER = re.compile(
    r"(?<![\w.])[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?:[eE][-+]?\d+)?(?!\w)"
    r"|(?<![\w.])[-+\u2212]?\.\d+(?!\w)"
)
_WRAPPERS = "*_`$\"' \t"


def extract_answer(text: str, answer_format: str | None = None) -> str | None:
    """The answer in `text` for `answer_format` (None means "text"); None when there is none.

    text: the span after the last answer marker or in the last \\boxed{}, else the last
        non-empty line, stripped of markdown, quotes and a trailing period.
    number: a canonical number string ("1234", "-0.5", "3/4") from that span, else the
        last number anywhere.
    choice: an upper-case letter A-E.
    Raises ValueError for an unknown format.
    """
    answer_format = answer_format or "text"
    if answer_format == "text":
        return extract_text(text)
    if answer_format == "number":
        return extract_number(text)
    if answer_format == "choice":
        return extract_choice(text)
    raise ValueError(f"unknown answer format {answer_format!r} (expected one of: {', '.join(ANSWER_FORMATS)})")


def extract_text(text: str) -> str | None:
    span = _answer_span(text)
    if span is None:
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            return None
        span = lines[-1]
    cleaned = _clean(span)
    return cleaned or None


def extract_number(text: str) -> str | None:
    span = _answer_span(text)
    if span is not None:
        # After a marker the first number is the answer ("The answer is 12 apples, not 10").
        match = _NUMBER.search(span)
        if match:
            return canonical_number(match.group())
    matches = _NUMBER.findall(text)
    return canonical_number(matches[-1]) if matches else None


def extract_choice(text: str, letters: str = CHOICE_LETTERS) -> str | None:
    letter_class = f"[{letters}{letters.lower()}]"
    span = _answer_span(text)
    if span is not None:
        match = re.match(rf"[\s*_(\[{{]*(?:option|choice)?\s*[(\[]?({letter_class})(?![A-Za-z])", _clean_start(span))
        if match:
            return match.group(1).upper()
    stripped = _clean(text)
    if re.fullmatch(rf"[(\[]?([{letters}])[)\].:]?", stripped):
        return stripped.strip("()[].:")
    for pattern in (
        rf"(?:option|choice)\s+(?:is\s+)?[(\[]?([{letters}])(?![A-Za-z])",
        rf"\(([{letters}])\)",
        rf"(?:^|\n)\s*[*_]*([{letters}])[*_]*\s*[).:]?\s*$",
    ):
        matches = re.findall(pattern, text, re.IGNORECASE if "option" in pattern else 0)
        if matches:
            return matches[-1].upper()
    return None


def canonical_number(token: str) -> str | None:
    """A number token as one canonical string: no commas, no '+', no trailing zeros."""
    value = parse_number(token)
    if value is None:
        return None
    if isinstance(value, Fraction):
        return f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def parse_number(text: str) -> float | Fraction | None:
    """A float (or an exact Fraction for `a/b`) from a number written with commas, a sign,
    a unit sign ($, %) or a trailing period; None for anything else (and for NaN/inf)."""
    cleaned = text.strip().strip(_WRAPPERS).rstrip(".").replace("\u2212", "-").replace(",", "")
    cleaned = cleaned.removeprefix("$").removesuffix("%").strip()
    if cleaned.startswith("+"):
        cleaned = cleaned[1:]
    if "/" in cleaned:
        numerator, _, denominator = cleaned.partition("/")
        try:
            value = Fraction(int(numerator), int(denominator))
        except (ValueError, ZeroDivisionError):
            return None
        return value
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def normalize_text(text: str) -> str:
    """Lower-case, markdown emphasis and outer quotes stripped, spaces collapsed, no trailing
    period, and thousands separators dropped from numbers ("1,234" -> "1234")."""
    text = _clean(text.replace("**", "").replace("__", "")).lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _answer_span(text: str) -> str | None:
    """What follows the strongest answer marker: the last \\boxed{}, else the last
    "answer ..." marker, else the last '####'."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    for pattern in (_MARKER, _HASHES):
        matches = [m for m in pattern.finditer(text) if m.group("rest").strip(_WRAPPERS + ".:")]
        if matches:
            return matches[-1].group("rest")
    return None


def _last_boxed(text: str) -> str | None:
    """The contents of the last \\boxed{...} (or \\fbox{...}), nested braces included."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    index = text.index("{", start) + 1
    depth = 1
    for position in range(index, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[index:position]
    return None  # unclosed: a truncated completion


def _clean_start(text: str) -> str:
    return text.lstrip(_WRAPPERS + ":")


def _clean(text: str) -> str:
    """Strip markdown emphasis, quotes, TeX dollars, spaces and trailing sentence punctuation."""
    text = text.strip()
    text = re.sub(r"^\\\(|\\\)$", "", text).strip()
    previous = None
    while previous != text:
        previous = text
        text = text.strip(_WRAPPERS).rstrip(".!;,").strip()
    return text
