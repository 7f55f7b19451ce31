"""A JSONL data file -> input records for a plan, with errors that name the file and line.

Each non-blank line is a JSON object whose fields include the plan's input names. A
plan with one input also accepts the field `question`, `prompt` or `input` for it.
Other fields (an answer, an id) are kept in `DataRecord.fields` for rewards and traces.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from neuromas.diagnostics import UserError

SINGLE_INPUT_ALIASES = ("question", "prompt", "input")
# Inputs longer than this are refused: no plan's prompt holds them (they are cut to its
# max_prompt_tokens), and tokenizing megabytes takes minutes.
MAX_INPUT_CHARS = 100_000
MAX_LINE_CHARS = 1_000_000  # a data line: its inputs, answer and other fields


class DataRecord(NamedTuple):
    """One line of a data file: its 1-based line number, the plan's inputs, every field."""

    line: int
    inputs: dict[str, str]
    fields: dict[str, Any]


def read_records(path: str | Path, input_names: Sequence[str], *, aliases: bool = True) -> list[DataRecord]:
    """Read every record of `path`; raises UserError for an unreadable file, a bad line
    (invalid JSON, not an object, a missing or non-text input field, a line or input
    above MAX_LINE_CHARS or MAX_INPUT_CHARS), a truncated last line or no records. Lines
    end at "\n" (or "\r\n"). aliases: a one-input plan also reads SINGLE_INPUT_ALIASES."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UserError(f"cannot read data file '{path}': {reason}") from None
    # JSON text may hold U+2028 and other characters str.splitlines() breaks at: split at "\n" only.
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        if len(line) > MAX_LINE_CHARS:
            raise UserError(f"{where}: the line is {len(line):,} characters long, above the {MAX_LINE_CHARS:,} "
                            "a data line may hold")
        if number == len(lines) and not _is_json(line):  # the last line, without its newline
            raise UserError(
                f"{where}: the last line is not valid JSON and has no newline at its end: "
                f"the file looks truncated (cut off while it was written or copied)\n"
                f"  fix: write or copy '{path}' again, or delete its last line"
            )
        records.append(parse_line(line, input_names, where, number, aliases=aliases))
    if not records:
        raise UserError(f"data file '{path}' has no records (expected one JSON object per line)")
    return records


def parse_line(line: str, input_names: Sequence[str], where: str, number: int = 0, *,
               aliases: bool = True) -> DataRecord:
    """One JSONL line -> a DataRecord; `where` ("file:line") prefixes every error."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(
            f"{where}: not valid JSON: {err.msg} (column {err.colno})\n"
            f"  fix: make every line one JSON object, like {_example(input_names)}"
        ) from None
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a JSON object like {_example(input_names)}, got {type(value).__name__}")
    return DataRecord(number, input_values(value, input_names, where, aliases=aliases), value)


def input_values(record: dict[str, Any], input_names: Sequence[str], where: str, *,
                 aliases: bool = True) -> dict[str, str]:
    """The plan's inputs from one record (with `aliases`, SINGLE_INPUT_ALIASES for a
    single input); raises UserError for a missing, non-text or too long field."""
    alias_names = SINGLE_INPUT_ALIASES if aliases and len(input_names) == 1 else ()
    values = {}
    for name in input_names:
        key = name
        if name not in record:
            key = next((alias for alias in alias_names if alias in record), name)
        if key not in record:
            accepted = [name, *(alias for alias in alias_names if alias != name)]
            fields = ", ".join(record) or "none"
            raise UserError(f"{where}: no field {' or '.join(repr(a) for a in accepted)} (fields: {fields})")
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise UserError(f"{where}: field '{key}' must be text, got {type(value).__name__}")
        values[name] = check_input_length(str(value), f"{where}: field '{key}'")
    return values


def check_input_length(text: str, where: str) -> str:
    """`text`, or UserError naming `where` when it is longer than MAX_INPUT_CHARS."""
    if len(text) > MAX_INPUT_CHARS:
        raise UserError(f"{where} is {len(text):,} characters long, above the {MAX_INPUT_CHARS:,} an input may hold")
    return text


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _example(input_names: Sequence[str]) -> str:
    return json.dumps({name: "..." for name in input_names})
