"""Lark parse tree -> AST records (one method per grammar rule), strings unescaped."""

from __future__ import annotations

import re

from lark import Token, Transformer, v_args

from neuromas import ast
from neuromas.diagnostics import CompileError, Diagnostic
from neuromas.spans import Span

ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}  # and \uHHHH
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)")


def string_value(token: Token, file: str) -> str:
    """A STRING token's text with its escapes read: \\" \\\\ \\n \\t \\uHHHH, nothing else,
    so that `"\\boxed{}"` is an error rather than a backspace."""
    problems: list[str] = []

    def unescape(match: re.Match[str]) -> str:
        code = match[1]
        if code[0] == "u" and len(code) == 5:
            char = chr(int(code[1:], 16))
            if 0xD800 <= ord(char) <= 0xDFFF or char == "\0":
                problems.append(f"'\\{code}' is not a text character")
            return char
        if code in ESCAPES:
            return ESCAPES[code]
        problems.append(f"unknown escape '\\{code}'")
        return code

    text = _ESCAPE.sub(unescape, str(token)[1:-1])
    if "\0" in text and not problems:
        problems.append("a NUL character")
    if not problems:
        return text
    hint = 'escapes are \\" \\\\ \\n \\t \\uHHHH; write a backslash as \\\\, like "\\\\boxed{}"'
    raise CompileError([Diagnostic(Span.of(token, file), f"invalid string: {problems[0]}", hint)])


@v_args(meta=True)
class ToAst(Transformer):
    """Lark parse tree -> ast records (one method per grammar rule)."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def _s(self, meta) -> Span:
        return Span.of(meta, self.file)

    def _name(self, token: Token) -> ast.Name:
        return ast.Name(str(token), Span.of(token, self.file))

    # values
    def number(self, meta, children):
        return ast.Number(str(children[0]), self._s(meta))

    def string(self, meta, children):
        return ast.String(string_value(children[0], self.file), self._s(meta))

    def name(self, meta, children):
        return self._name(children[0])

    def list(self, meta, children):
        return ast.List(tuple(c for c in children if c is not None), self._s(meta))

    def keyword_arg(self, meta, children):
        return ast.Arg(self._name(children[0]), children[1], self._s(meta))

    def args(self, meta, children):
        return tuple(
            c if isinstance(c, ast.Arg) else ast.Arg(None, c, c.span) for c in children if c is not None
        )

    def call(self, meta, children):
        return ast.Call(self._name(children[0]), children[1], self._s(meta))

    # settings
    def setting(self, meta, children):
        return ast.Setting(self._name(children[0]), children[1], self._s(meta))

    def settings(self, meta, children):
        return tuple(children)

    def node(self, meta, children):
        return ast.NodeSettings(children[0], children[1], self._s(meta))

    # graph
    def repeat_index(self, meta, children):
        return int(children[1])

    def node_index(self, meta, children):
        return int(children[0])

    def ref(self, meta, children):
        name, repeat, index = children
        return ast.Ref(self._name(name), repeat, index, self._s(meta))

    def pattern(self, meta, children):
        return ast.Pattern(self._name(children[0]), children[1], self._s(meta))

    def source(self, meta, children):
        return ast.SourceDecl(children[0], children[1], self._s(meta))

    def edge(self, meta, children):
        target, _arrow, *sources = children
        return ast.EdgeDecl(target, tuple(sources), self._s(meta))

    # system statements
    def model(self, meta, children):
        return ast.ModelDecl(ast.String(string_value(children[0], self.file), Span.of(children[0], self.file)), self._s(meta))

    def adapter(self, meta, children):
        return ast.AdapterDecl(children[0], self._s(meta))

    def share(self, meta, children):
        return ast.ShareDecl(self._name(children[0]), self._s(meta))

    def template(self, meta, children):
        return ast.TemplateDecl(children[0], self._s(meta))

    def defaults(self, meta, children):
        return ast.DefaultsDecl(children[0], self._s(meta))

    def input(self, meta, children):
        return ast.InputDecl(self._name(children[0]), self._s(meta))

    def repeat(self, meta, children):
        return children  # [count, chain pattern or None]

    def layer(self, meta, children):
        name, width, repeat, settings = children
        count, chain = repeat if repeat is not None else (None, None)
        return ast.LayerDecl(self._name(name), width, count, chain, settings, self._s(meta))

    def vote(self, meta, children):
        return True

    def answer_format(self, meta, children):
        token = children[0]
        return ast.String(string_value(token, self.file), Span.of(token, self.file))

    def output(self, meta, children):
        ref, vote, answer_format = children
        return ast.OutputDecl(ref, bool(vote), answer_format, self._s(meta))

    def train(self, meta, children):
        return ast.TrainDecl(children[0], self._s(meta))

    # growth
    def init(self, meta, children):
        return ast.Init(self._name(children[0]), children[1], self._s(meta))

    def resize(self, meta, children):
        return ast.Resize(children[0], children[1], self._s(meta))

    def widen(self, meta, children):
        return ast.Widen(children[0], children[1], children[2], self._s(meta))

    def insert(self, meta, children):
        name, width, after, init, settings = children
        return ast.Insert(self._name(name), width, after, init, settings, self._s(meta))

    def keep(self, meta, children):
        return ast.EdgeRule(True, children[0], children[2], self._s(meta))

    def drop(self, meta, children):
        return ast.EdgeRule(False, children[0], children[2], self._s(meta))

    def plateau(self, meta, children):
        return children[0]

    def after(self, meta, children):
        return ast.After(children[0], children[1], self._s(meta))

    def stage(self, meta, children):
        name, *ops, after = children
        return ast.StageDecl(self._name(name), tuple(ops), after, self._s(meta))

    def growth(self, meta, children):
        return ast.GrowthDecl(tuple(c for c in children if c is not None), self._s(meta))

    def system(self, meta, children):
        name, *statements = children
        return ast.SystemDecl(self._name(name), tuple(statements), self._s(meta))

    def start(self, meta, children):
        return children[0]
