"""Spec text -> AST: the Lark parser, its newline handling, and syntax errors as Diagnostics."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import lark
from lark import Token, Transformer, v_args

from neuromas import ast
from neuromas.diagnostics import CompileError, Diagnostic, Span, did_you_mean

# Words for the grammar's regex terminals; keywords and punctuation are shown quoted.
TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "INT": "a whole number",
    "STRING": 'a string in double quotes',
    "_NL": "end of line",
    "$END": "end of file",
}


def grammar_path() -> Path:
    """The grammar file: `grammar/` beside the package in a checkout, inside it in a wheel."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "grammar", package / "grammar"):
        if (candidate / "neuromas.lark").is_file():
            return candidate / "neuromas.lark"
    raise FileNotFoundError(f"grammar/neuromas.lark not found beside {package}")


def grammar_text() -> str:
    return grammar_path().read_text(encoding="utf-8")


class _Newlines:
    """Keeps only the newlines that can end statements.

    Drops newlines inside (...) and [...] (so lists and arguments may wrap), runs of
    newlines (blank and comment lines), and newlines right after '{' or at the start
    of the file. It never holds a token back: the contextual lexer lexes each token
    in the parser state that the token before it left. Its state lives on the
    instance, so that a parse resumed after `_keyword_as_name` goes on where it was;
    `reset` starts a file.
    """

    always_accept = ("_NL",)

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.depth = 0
        self.previous = "LBRACE"  # as if the file opened a block: leading newlines are dropped

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        for token in stream:
            if token.type == "_NL":
                if self.depth > 0 or self.previous in ("LBRACE", "_NL"):
                    continue
            elif token.type in ("LPAR", "LSQB"):
                self.depth += 1
            elif token.type in ("RPAR", "RSQB"):
                self.depth = max(0, self.depth - 1)
            self.previous = token.type
            yield token


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _keyword_as_name(err: lark.exceptions.UnexpectedInput) -> bool:
    """Keywords are reserved only where they are expected: a keyword that the parser
    cannot take where it can take a name is that name. (LALR states shared by several
    rules let the lexer see one: after a value, `steps` may end `after 300 steps`, so
    in `train { lr 1e-4  steps 100 }` it came as a keyword.) Returns True to go on."""
    if not isinstance(err, lark.exceptions.UnexpectedToken):
        return False
    token = err.token
    if token.type in ("NAME", "$END") or not _WORD.fullmatch(str(token)):
        return False
    parser = err.interactive_parser
    if "NAME" not in parser.accepts():
        return False
    parser.feed_token(Token.new_borrow_pos("NAME", str(token), token))
    return True


@cache
def _parser() -> tuple[lark.Lark, list[Token], _Newlines]:
    comments: list[Token] = []
    newlines = _Newlines()
    parser = lark.Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        postlex=newlines,
        propagate_positions=True,
        maybe_placeholders=True,
        lexer_callbacks={"COMMENT": comments.append},
    )
    return parser, comments, newlines


def terminal_word(name: str) -> str:
    """How a terminal reads in an error message: 'a number', "'{'", "'layer'"."""
    if name in TERMINAL_WORDS:
        return TERMINAL_WORDS[name]
    parser = _parser()[0]
    terminal = parser.get_terminal(name)
    return f"'{terminal.pattern.value}'"


def parse_text(source: str, file: str = "<spec>") -> ast.SpecFile:
    """Parse spec text into an AST; raises CompileError with one syntax diagnostic."""
    if not source.strip():
        diagnostic = Diagnostic(
            Span.point(file, 1, 1), "empty spec", hint="a spec starts with 'system NAME {' and ends with '}'"
        )
        raise CompileError([diagnostic], source)
    parser, comments, newlines = _parser()
    comments.clear()
    newlines.reset()
    try:
        tree = parser.parse(source, on_error=_keyword_as_name)
    except lark.exceptions.UnexpectedInput as err:
        raise CompileError([_syntax_diagnostic(err, source, file)], source) from None
    try:
        system = _ToAst(file).transform(tree)
    except (lark.exceptions.VisitError, RecursionError) as err:
        error = err.orig_exc if isinstance(err, lark.exceptions.VisitError) else err
        if isinstance(error, CompileError):  # a bad string: see _string_value
            raise CompileError(error.diagnostics, source) from None
        if isinstance(error, RecursionError):
            nested = Diagnostic(Span.point(file, 1, 1), "spec is nested too deeply", "lists and arguments nest a few levels at most")
            raise CompileError([nested], source) from None
        raise
    found = tuple(ast.Comment(c.value.rstrip(), c.line, c.column) for c in comments)
    return ast.SpecFile(system, found, file, source)


ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}  # and \uHHHH
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)")


def _string_value(token: Token, file: str) -> str:
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
    raise CompileError([Diagnostic(_span(token, file), f"invalid string: {problems[0]}", hint)])


def decode_source(data: bytes, file: str) -> str:
    """Spec bytes as text; raises CompileError pointing at the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[: err.start]
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8")) + 1  # in characters, as editors count
        message = f"spec is not valid UTF-8 text (byte 0x{data[err.start]:02x} at line {line}, column {column})"
        hint = "save the file as UTF-8"
        shown = data.decode("utf-8", errors="replace")
        raise CompileError([Diagnostic(Span.point(file, line, column), message, hint)], shown) from None


def _syntax_diagnostic(err: lark.exceptions.UnexpectedInput, source: str, file: str) -> Diagnostic:
    expected = _parser_expects(err)
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        char = source[err.pos_in_stream]
        span = Span.point(file, err.line, err.column)
        found = "a line break" if char == "\n" else f"unexpected character {char!r}"
        hint = 'strings use double quotes: "text"' if char == "'" else _hint_for(expected, None, source, err.pos_in_stream, err.line)
    else:
        token = err.token
        typo = _statement_typo(expected, token, source, file)
        if typo is not None:
            return typo
        found = _describe_token(token)
        span = _token_span(token, source, file)
        offset = len(source) if token.type == "$END" or token.start_pos is None else token.start_pos
        hint = _hint_for(expected, token, source, offset, span.line)
    words = _expected_words(expected)
    if not words:
        return Diagnostic(span, found, hint)
    if len(words) == 1:
        wanted = words[0]
    else:
        wanted = "one of " + ", ".join(words[:-1]) + " or " + words[-1]
    return Diagnostic(span, f"expected {wanted}, found {found}" if not found.startswith("unexpected") else f"{found}; expected {wanted}", hint)


def _parser_expects(err: lark.exceptions.UnexpectedInput) -> set[str]:
    """Terminals the parser could take here (the lexer's list also has newlines, always)."""
    interactive = getattr(err, "interactive_parser", None)
    if interactive is not None:
        return set(interactive.accepts())
    state = getattr(err, "state", None)
    try:
        keys = state.parse_conf.states[state.position].keys()
    except AttributeError:
        return set(getattr(err, "expected", None) or getattr(err, "allowed", None) or ())
    terminals = {terminal.name for terminal in _parser()[0].terminals} | {"$END"}
    return {key for key in keys if key in terminals}


_STATEMENT_KEYWORDS = {"MODEL", "ADAPTER", "SHARE", "TEMPLATE", "DEFAULTS", "INPUT", "LAYER", "OUTPUT", "TRAIN", "GROWTH"}
_VALUE_STARTS = {"NUMBER", "STRING", "NAME", "LSQB"}


def _expected_words(expected: set[str]) -> list[str]:
    """Readable names for what was expected, with statement and value starts grouped."""
    expected = expected - {"COMMENT", "WHITESPACE"}
    groups = []
    if _STATEMENT_KEYWORDS <= expected:
        expected = expected - _STATEMENT_KEYWORDS - {"NAME"}
        groups.append("a statement (layer, input, output, model, adapter, share, template, defaults, train, growth, or an edge 'a <- b')")
    if _VALUE_STARTS <= expected:
        expected = expected - _VALUE_STARTS
        groups.append("a value (a number, a string, a name or a [list])")
    return groups + sorted({terminal_word(name) for name in expected})


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    if token.type == "_NL":
        return "end of line"
    if token.type == "NAME":
        return f"the name '{token.value}'"
    if token.type in ("NUMBER", "INT"):
        return f"the number {token.value}"
    if token.type == "STRING":
        return f"the string {token.value}"
    return f"'{token.value}'"


def _token_span(token: Token, source: str, file: str) -> Span:
    if token.type == "$END" or token.line is None:
        lines = source.splitlines() or [""]
        return Span.point(file, len(lines), len(lines[-1]) + 1)
    if token.type == "_NL":
        return Span.point(file, token.line, token.column)
    return Span(file, token.line, token.column, token.end_line or token.line, token.end_column or token.column + 1)


def _hint_for(expected: set[str], token: Token | None, source: str, offset: int, line: int) -> str | None:
    kind = token.type if token is not None else None
    open_brackets = _open_brackets(source, offset)
    if expected == {"WIDTH"}:
        return "a layer needs a width, like 'layer hidden width 2'"
    if open_brackets:
        bracket, opened = open_brackets[-1]
        # a list or arguments still open on a later line, or closed by the wrong bracket
        wrapped = bracket in "([" and _CLOSING[bracket] in expected and (opened < line or kind in _CLOSING.values())
        if kind == "$END" or wrapped:
            return f"the '{bracket}' at line {opened} is not closed"
        if kind == "ARROW" and "ARROW" not in expected and len(open_brackets) > 1 and opened < line:
            return f"an edge cannot go inside a settings block: is the '{{' at line {opened} missing its '}}'?"
    if "ARROW" in expected and kind in ("NAME", "NUMBER", "STRING", None):
        return "an edge reads 'target <- source pattern', like 'answer <- hidden dense'"
    if kind == "RBRACE" and expected & {"NUMBER", "STRING", "NAME"}:
        return "a setting needs a value, like 'max_tokens 64'"
    if kind == "RBRACE" and expected == {"$END"}:
        return "this '}' closes nothing: the system's block ended before it"
    if kind == "CHAIN":
        return "'chain' links the repeats of a layer and follows 'repeat', like 'layer h width 2 repeat 3 chain dense'"
    return None


_CLOSING = {"(": "RPAR", "[": "RSQB", "{": "RBRACE"}  # the terminal that closes each bracket
_CLOSERS = {"(": ")", "[": "]", "{": "}"}


def _open_brackets(source: str, end: int) -> list[tuple[str, int]]:
    """The brackets still open at offset `end` (outermost first), each with its line;
    brackets inside strings and comments do not count."""
    stack: list[tuple[str, int]] = []
    line, i = 1, 0
    while i < end:
        char = source[i]
        if char == "\n":
            line += 1
        elif char == "#":
            i = source.find("\n", i)
            if i < 0:
                break
            continue
        elif char == '"':
            i += 1
            while i < end and source[i] not in '"\n':
                i += 2 if source[i] == "\\" else 1
            if i < end and source[i] == "\n":
                continue
        elif char in _CLOSERS:
            stack.append((char, line))
        elif stack and char == _CLOSERS[stack[-1][0]]:
            stack.pop()
        i += 1
    return stack


_STATEMENT_WORDS = ("model", "adapter", "share", "template", "defaults", "input", "layer", "output", "train", "growth")


def _statement_typo(expected: set[str], token: Token, source: str, file: str) -> Diagnostic | None:
    """`layr hidden width 2` parses as the start of an edge: name the misspelt keyword instead.
    Only at the system's top level: inside growth stages layer names start statements too."""
    if expected - {"ARROW", "DOT", "LSQB"} or "ARROW" not in expected or token.line is None or token.start_pos is None:
        return None
    if len(_open_brackets(source, token.start_pos)) != 1:
        return None
    text = source.splitlines()[token.line - 1]
    words = text[: token.column - 1].split()
    if len(words) != 1:
        return None
    hint = did_you_mean(words[0], _STATEMENT_WORDS)
    if hint is None:
        return None
    column = text.index(words[0]) + 1
    return Diagnostic(Span.point(file, token.line, column, len(words[0])), f"unknown statement '{words[0]}'", hint)


def _span(meta_or_token, file: str) -> Span:
    return Span(file, meta_or_token.line, meta_or_token.column, meta_or_token.end_line, meta_or_token.end_column)


@v_args(meta=True)
class _ToAst(Transformer):
    """Lark parse tree -> ast records (one method per grammar rule)."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def _s(self, meta) -> Span:
        return _span(meta, self.file)

    def _name(self, token: Token) -> ast.Name:
        return ast.Name(str(token), _span(token, self.file))

    # values
    def number(self, meta, children):
        return ast.Number(str(children[0]), self._s(meta))

    def string(self, meta, children):
        return ast.String(_string_value(children[0], self.file), self._s(meta))

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
        return ast.ModelDecl(ast.String(_string_value(children[0], self.file), _span(children[0], self.file)), self._s(meta))

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
        return ast.String(_string_value(token, self.file), _span(token, self.file))

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
