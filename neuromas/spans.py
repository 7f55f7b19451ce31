"""Where things are in a spec: a `Span` of text, and the `SpanIndex` that maps paths into
IR data (`("layers", 0, "width")`) back to the spans they were lowered from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Path = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a spec file; lines and columns start at 1, `end_column` is exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    @classmethod
    def point(cls, file: str, line: int, column: int, width: int = 1) -> Span:
        return cls(file, line, column, line, column + width)

    @classmethod
    def of(cls, located: Any, file: str) -> Span:
        """The span of a Lark token or a tree's `meta`."""
        return cls(file, located.line, located.column, located.end_line, located.end_column)


class SpanIndex:
    """Where each piece of IR data came from, keyed by its path into the data."""

    def __init__(self, file: str) -> None:
        self.file = file
        self._spans: dict[Path, Span] = {}

    def add(self, path: Path, span: Span) -> None:
        self._spans.setdefault(path, span)

    def has(self, path: Path) -> bool:
        return path in self._spans

    def find(self, path: Path) -> Span | None:
        """The span of `path`, or of its longest prefix that has one."""
        for end in range(len(path), -1, -1):
            span = self._spans.get(tuple(path[:end]))
            if span is not None:
                return span
        return None
