"""The `neuromas` command line: one module per subcommand under `neuromas.commands`."""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Sequence

from neuromas.diagnostics import CompileError, UserError

# Each module defines `add_parser(subparsers)` and `run(args) -> int`.
COMMANDS = ("check", "fmt", "compile", "run", "rollout", "train", "grow", "eval", "plot", "report", "serve", "experiment")

EXAMPLE = """example:
  neuromas compile specs/neuromas3.nmas
  neuromas check specs/*.nmas
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuromas",
        description="Compile and run multi-agent LLM systems described in .nmas specs.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"neuromas.commands.{name}").add_parser(subparsers)
    return parser


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """The parser, built once per process (parsing leaves it unchanged)."""
    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help (0), or a usage error argparse has printed (2)
        return done.code if isinstance(done.code, int) else 2
    try:
        return args.handler(args)
    except CompileError as err:
        if args.debug:
            raise
        print(err.render(), file=sys.stderr)
        return 2
    except UserError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # out of memory, a full disk: mapped to what to do, or re-raised
        from neuromas.runtime.failures import explain

        mapped = explain(err, args.command, vars(args))
        if mapped is None or args.debug:
            raise
        print(f"error: {mapped}", file=sys.stderr)
        return mapped.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
