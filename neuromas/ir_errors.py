"""Pydantic's errors on IR data -> Diagnostics in the spec's words, at the span of each `loc`."""

from __future__ import annotations

import typing
from typing import Any

import annotated_types
import pydantic
from pydantic.fields import FieldInfo

from neuromas import ir
from neuromas.diagnostics import Diagnostic
from neuromas.spans import SpanIndex

_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")

_PHRASES = {
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_parsing": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string or a name",
    "tuple_type": "must be a [list]",
    "bool_type": "must be true or false",
    "literal_error": "must be one of {expected}",
    "too_short": "must not be empty",
    "union_tag_invalid": "is not a known operation",
    "model_type": "must be a block",
}


# IR field names that read differently in a spec: `after 300 steps or plateau 3 evals`.
_FIELD_WORDS = {"after_steps": "steps", "plateau_evals": "evals"}


def diagnostic_from_pydantic(error: Any, spans: SpanIndex) -> Diagnostic:
    """One pydantic error on the IR data, worded as a spec writer reads it, at its span."""
    loc = tuple(error["loc"])
    field_names = [part for part in loc if isinstance(part, str) and part not in ("generation",) and not part.startswith("_")]
    field = _FIELD_WORDS.get(field_names[-1], field_names[-1]) if field_names else "value"
    template = _PHRASES.get(error["type"])
    context = {key: _number(value) for key, value in (error.get("ctx") or {}).items()}
    phrase = template.format(**context) if template else error["msg"].lower()
    if error["type"] in _BOUND_ERRORS:
        phrase = _allowed_range(loc) or phrase
    found = error.get("input")
    message = f"{field} {phrase}"
    if not isinstance(found, (dict, list, tuple)) and found is not None:
        message += f", found {found!r}" if isinstance(found, str) else f", found {found}"
    hint = None
    if error["type"] in ("int_type", "int_from_float") and isinstance(found, float) and found.is_integer():
        hint = f"write it without a fraction, like {field} {int(found)}"
    return Diagnostic(spans.find(loc), message, hint)


def _number(value: Any) -> Any:
    """A bound as a spec writes it: `at least 0`, not `at least 0.0`."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _allowed_range(loc: tuple[Any, ...]) -> str | None:
    """Both bounds of the IR field at `loc` ("must be between 1 and 1048576"), so that
    every out-of-range message says what is allowed."""
    field = _field_at(loc)
    if field is None:
        return None
    low = high = None
    for bound in _bounds(field):
        if isinstance(bound, annotated_types.Ge):
            low = f"at least {_number(bound.ge)}", _number(bound.ge)
        elif isinstance(bound, annotated_types.Gt):
            low = f"greater than {_number(bound.gt)}", None
        elif isinstance(bound, annotated_types.Le):
            high = f"at most {_number(bound.le)}", _number(bound.le)
        elif isinstance(bound, annotated_types.Lt):
            high = f"less than {_number(bound.lt)}", None
    if low is None or high is None:
        return f"must be {(low or high)[0]}" if low or high else None
    if low[1] is not None and high[1] is not None:
        return f"must be between {low[1]} and {high[1]}"
    return f"must be {low[0]} and {high[0]}"


def _field_at(loc: tuple[Any, ...]) -> FieldInfo | None:
    """The IR field that `loc` (a path into `ir.System` data) ends at."""
    models: list[type[pydantic.BaseModel]] = [ir.System]
    field = None
    for part in loc:
        if isinstance(part, int):
            continue
        owner = next((m for m in models if part in m.model_fields), None)
        if owner is None:  # a tag of a discriminated union (`widen`): it picks the member
            models = [m for m in models if "op" in m.model_fields and part in typing.get_args(m.model_fields["op"].annotation)]
            if not models:
                return None
            continue
        field = owner.model_fields[part]
        models = _models_in(field.annotation)
    return field


def _models_in(annotation: Any) -> list[type[pydantic.BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _bounds(field: FieldInfo) -> list[Any]:
    """The field's own bounds and those of its annotated type (`TokenCount | None`)."""
    found = list(field.metadata)
    pending = [field.annotation]
    while pending:
        annotation = pending.pop()
        for arg in typing.get_args(annotation):  # Annotated's metadata, a union's members
            if isinstance(arg, FieldInfo):
                found += arg.metadata
            elif isinstance(arg, annotated_types.BaseMetadata):
                found.append(arg)
            else:
                pending.append(arg)
    return found
