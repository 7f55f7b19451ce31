"""Spec bytes -> text -> AST: the front door of the compiler.

`parser` holds the Lark parser, `syntax_errors` words its errors, and `to_ast` builds
the AST records from its tree.
"""

from __future__ import annotations

import lark

from neuromas import ast
from neuromas.diagnostics import CompileError, Diagnostic
from neuromas.parser import parse_tree
from neuromas.spans import Span
from neuromas.syntax_errors import syntax_diagnostic
from neuromas.to_ast import ToAst


BOM = "\ufeff"  # a UTF-8 byte order mark, which some editors write at the start of a file


def parse_text(source: str, file: str = "<spec>") -> ast.SpecFile:
    """Parse spec text into an AST; raises CompileError with one syntax diagnostic.
    A byte order mark at the start is dropped."""
    source = source.removeprefix(BOM)
    if not source.strip():
        diagnostic = Diagnostic(
            Span.point(file, 1, 1), "empty spec", hint="a spec starts with 'system NAME {' and ends with '}'"
        )
        raise CompileError([diagnostic], source)
    try:
        tree, comments = parse_tree(source)
    except lark.exceptions.UnexpectedInput as err:
        raise CompileError([syntax_diagnostic(err, source, file)], source) from None
    try:
        system = ToAst(file).transform(tree)
    except (lark.exceptions.VisitError, RecursionError) as err:
        error = err.orig_exc if isinstance(err, lark.exceptions.VisitError) else err
        if isinstance(error, CompileError):  # a bad string: see to_ast.string_value
            raise CompileError(error.diagnostics, source) from None
        if isinstance(error, RecursionError):
            nested = Diagnostic(Span.point(file, 1, 1), "spec is nested too deeply", "lists and arguments nest a few levels at most")
            raise CompileError([nested], source) from None
        raise
    found = tuple(ast.Comment(c.value.rstrip(), c.line, c.column) for c in comments)
    return ast.SpecFile(system, found, file, source)


def decode_source(data: bytes, file: str) -> str:
    """Spec bytes as text, without a byte order mark at the start; raises CompileError
    pointing at the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8").removeprefix(BOM)
    except UnicodeDecodeError as err:
        before = data[: err.start]
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8")) + 1  # in characters, as editors count
        message = f"spec is not valid UTF-8 text (byte 0x{data[err.start]:02x} at line {line}, column {column})"
        hint = "save the file as UTF-8"
        shown = data.decode("utf-8", errors="replace")
        raise CompileError([Diagnostic(Span.point(file, line, column), message, hint)], shown) from None
