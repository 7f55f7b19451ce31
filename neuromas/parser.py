"""The Lark parser for grammar/neuromas.lark: spec text -> Lark parse tree.

Owns the grammar file, the newline filter between lexer and parser, and the rule that
keywords are reserved only where they are expected. Error wording is in
`syntax_errors`; building the AST from the tree is in `to_ast`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import lark
from lark import Token


def grammar_path() -> Path:
    """The grammar file: `grammar/` beside the package in a checkout, inside it in a wheel."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "grammar", package / "grammar"):
        if (candidate / "neuromas.lark").is_file():
            return candidate / "neuromas.lark"
    raise FileNotFoundError(f"grammar/neuromas.lark not found beside {package}")


def grammar_text() -> str:
    return grammar_path().read_text(encoding="utf-8")


class Newlines:
    """Keeps only the newlines that can end statements.

    Drops newlines inside (...) and [...] (so lists and arguments may wrap), runs of
    newlines (blank and comment lines), and newlines right after '{' or at the start
    of the file. It never holds a token back: the contextual lexer lexes each token
    in the parser state that the token before it left. Its state lives on the
    instance, so that a parse resumed after `keyword_as_name` goes on where it was;
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


def keyword_as_name(err: lark.exceptions.UnexpectedInput) -> bool:
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
def _parser() -> tuple[lark.Lark, list[Token], Newlines]:
    comments: list[Token] = []
    newlines = Newlines()
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


def lark_parser() -> lark.Lark:
    """The one Lark parser (built on first use), for its terminals."""
    return _parser()[0]


def parse_tree(source: str) -> tuple[lark.Tree, list[Token]]:
    """The parse tree of `source` and its comment tokens; raises Lark's UnexpectedInput."""
    parser, comments, newlines = _parser()
    comments.clear()
    newlines.reset()
    tree = parser.parse(source, on_error=keyword_as_name)
    return tree, list(comments)
