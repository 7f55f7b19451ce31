"""`neuromas compile SPEC`: show the execution plan as text, JSON or a picture."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import neuromas
from neuromas.commands.options import add_spec_argument, command_parser
from neuromas.commands.paths import check_out_file
from neuromas.diagnostics import UserError

FORMATS = ("text", "json", "dot", "svg", "png")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(
        subparsers, "compile", help="show a spec's execution plan",
        description="Compile a .nmas spec into its execution plan (to standard output, or to -o FILE).",
        epilog="examples:\n  neuromas compile specs/neuromas3.nmas\n  neuromas compile specs/neuromas3.nmas --format png -o neuromas3.png\n"
        "  neuromas compile specs/growth.nmas --stage wide --format json",
        groups=("spec", "stage", "out-file"),
    )
    add_spec_argument(parser)
    parser.add_argument("--format", choices=FORMATS, default=None, help="output format (default: from -o's suffix, else text)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    image_format = args.format or _format_from_suffix(args.output)
    plan = neuromas.compile(args.spec, stage=args.stage, allow_outside_paths=args.allow_outside_paths)
    path = check_out_file(args.output) if args.output is not None else None
    if path is None and image_format in ("svg", "png"):
        raise UserError(f"--format {image_format} is binary: give a file with -o", exit_code=2)
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    data = _render(plan, image_format)
    if path is None:
        sys.stdout.write(data)
        return 0
    try:
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data, encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot write '{args.output}': {err.strerror or err}") from None
    return 0


def _format_from_suffix(output: str | None) -> str:
    suffix = Path(output).suffix.lstrip(".") if output else ""
    return suffix if suffix in FORMATS else "text"


def _render(plan: neuromas.Plan, image_format: str) -> str | bytes:
    if image_format == "text":
        from neuromas.render.text import summarize

        return summarize(plan)
    if image_format == "json":
        return plan.to_pretty_json()
    from neuromas.render import dot

    return dot.to_dot(plan) if image_format == "dot" else dot.render(plan, image_format)
