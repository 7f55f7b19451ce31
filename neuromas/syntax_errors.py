"""Lark's syntax errors -> Diagnostics in words people know.

"expected one of: a number, '{'", did-you-mean for misspelt statement keywords, and
hints for the usual slips (an unclosed bracket, an edge inside a settings block).
"""

from __future__ import annotations

import unicodedata

import lark
from lark import Token

from neuromas.diagnostics import Diagnostic, did_you_mean
from neuromas.parser import lark_parser
from neuromas.spans import Span

# Words for the grammar's regex terminals; keywords and punctuation are shown quoted.
TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "INT": "a whole number",
    "STRING": 'a string in double quotes',
    "_NL": "end of line",
    "$END": "end of file",
}


def terminal_word(name: str) -> str:
    """How a terminal reads in an error message: 'a number', "'{'", "'layer'"."""
    if name in TERMINAL_WORDS:
        return TERMINAL_WORDS[name]
    terminal = lark_parser().get_terminal(name)
    return f"'{terminal.pattern.value}'"


def syntax_diagnostic(err: lark.exceptions.UnexpectedInput, source: str, file: str) -> Diagnostic:
    """Lark's error as a Diagnostic: what was expected, in words, what was found, and a hint."""
    expected = _parser_expects(err)
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        char = source[err.pos_in_stream]
        span = Span.point(file, err.line, err.column)
        found = "a line break" if char == "\n" else f"unexpected character {char!r}"
        if char == "'":
            hint = 'strings use double quotes: "text"'
        elif unicodedata.category(char) in ("Cf", "Zs", "Cc") and char not in "\t\n":
            name = "a byte order mark" if char == "\ufeff" else unicodedata.name(char, "a control character")
            hint = f"an invisible character, U+{ord(char):04X} ({name}): delete it (an editor may show nothing there)"
        else:
            hint = _hint_for(expected, None, source, err.pos_in_stream, err.line)
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
    terminals = {terminal.name for terminal in lark_parser().terminals} | {"$END"}
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
