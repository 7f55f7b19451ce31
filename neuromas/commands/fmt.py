"""`neuromas fmt SPEC`: print the spec in canonical form, or rewrite it in place."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from neuromas import read_spec
from neuromas.commands.options import command_parser
from neuromas.diagnostics import UserError
from neuromas.format import format_spec
from neuromas.syntax import parse_text


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(subparsers, "fmt", help="print a spec in canonical form",
                            description="Print a .nmas spec in canonical form (comments kept).",
                            epilog="example: neuromas fmt --write specs/neuromas3.nmas")
    parser.add_argument("specs", nargs="+", metavar="SPEC")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the files in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if a file is not in canonical form")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    unformatted = 0
    for spec in args.specs:
        source = read_spec(spec)
        formatted = format_spec(parse_text(source, spec))
        if args.write:
            if formatted != source:
                _replace(Path(spec), formatted)
        elif args.check:
            if formatted != source:
                print(f"not formatted: {spec}", file=sys.stderr)
                unformatted += 1
        else:
            sys.stdout.write(formatted)
    return 1 if unformatted else 0


def _replace(path: Path, text: str) -> None:
    """Write to a temporary file beside the spec (with the spec's permissions), then
    rename it over the spec: a failed write leaves the spec as it was."""
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise UserError(f"cannot write '{path}': {err.strerror or err}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        shutil.copymode(path, temporary)
        os.replace(temporary, path)
    except BaseException as err:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise UserError(f"cannot write '{path}': {err.strerror or err}") from None
        raise
