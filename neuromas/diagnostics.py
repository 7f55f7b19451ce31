"""Errors and warnings about a spec, rendered as `file:line:col` with the line and a caret."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from neuromas.spans import Span


@dataclass(frozen=True, slots=True)
class Diagnostic:
    span: Span | None
    message: str
    hint: str | None = None
    severity: Literal["error", "warning"] = "error"
    text: str | None = None  # the text of `span.file` when it is not the spec's (a template's)

    def render(self, source: str | None) -> str:
        """The message with the offending line and a caret under the span."""
        source = self.text if self.text is not None else source
        if self.span is None:
            lines = [f"{self.severity}: {self.message}"]
        else:
            span = self.span
            lines = [f"{span.file}:{span.line}:{span.column}: {self.severity}: {self.message}"]
            text = _source_line(source, span.line)
            if text is not None:
                gutter = str(span.line)
                end = span.end_column if span.end_line == span.line else len(text) + 1
                width = max(1, min(end, len(text) + 1) - span.column)
                lines.append(f" {gutter} | {text}")
                lines.append(f" {' ' * len(gutter)} | {' ' * (span.column - 1)}{'^' * width}")
        if self.hint:
            lines.append(f"   = help: {self.hint}")
        return "\n".join(lines)


def _source_line(source: str | None, line: int) -> str | None:
    if source is None:
        return None
    lines = source.splitlines()
    if not 1 <= line <= len(lines):
        return None
    return lines[line - 1].expandtabs(1)


class CompileError(Exception):
    """A spec with errors: every diagnostic found, collected before reporting."""

    def __init__(self, diagnostics: Sequence[Diagnostic], source: str | None = None) -> None:
        self.diagnostics = tuple(diagnostics)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        errors = [d for d in self.diagnostics if d.severity == "error"]
        parts = [d.render(self.source) for d in self.diagnostics]
        noun = "error" if len(errors) == 1 else "errors"
        parts.append(f"{len(errors)} {noun} found")
        return "\n\n".join(parts)


class UserError(Exception):
    """A problem the user can fix (missing file, bad data, missing package): no traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """A hint naming the closest known name, if one is close."""
    matches = difflib.get_close_matches(name, sorted(set(known)), n=1)
    return f"did you mean '{matches[0]}'?" if matches else None


def quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)
