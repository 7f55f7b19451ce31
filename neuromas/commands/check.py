"""`neuromas check SPEC...`: report every problem in each spec."""

from __future__ import annotations

import argparse
import sys

import neuromas
from neuromas.commands.options import command_parser
from neuromas.diagnostics import CompileError, UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(subparsers, "check", help="check specs for errors",
                            description="Check .nmas specs; print every problem found.",
                            epilog="example: neuromas check specs/*.nmas", groups=("spec",))
    parser.add_argument("specs", nargs="+", metavar="SPEC")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    failed = 0
    for spec in args.specs:
        try:
            plan = neuromas.compile(spec, allow_outside_paths=args.allow_outside_paths)
        except CompileError as err:
            print(err.render(), file=sys.stderr)
            failed += 1
            continue
        except UserError as err:  # not a regular file, unreadable: the other specs are still checked
            print(f"error: {err}", file=sys.stderr)
            failed += 1
            continue
        for warning in plan.warnings:
            print(f"{spec}: warning: {warning}", file=sys.stderr)
        print(f"ok {spec}: {_count(len(plan.nodes), 'node')}, {_count(plan.depth, 'level')}, {_count(len(plan.calls), 'call')} per rollout")
    return 2 if failed else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
