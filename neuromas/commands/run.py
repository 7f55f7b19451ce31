"""`neuromas run SPEC --input TEXT`: run a system once on one input and print its answer.

Also holds the runtime options that `run` and `rollout` share. torch, transformers and
peft load only inside the handlers (`neuromas.runtime`), never when the CLI starts.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import TYPE_CHECKING, Any

import neuromas
from neuromas.diagnostics import UserError

if TYPE_CHECKING:
    from neuromas.plan import Plan

EXAMPLES = """examples:
  neuromas run specs/neuromas3.nmas --input "What is 12 * 7?"
  neuromas run specs/neuromas3.nmas --input "What is 12 * 7?" --trace --max-tokens 32
  neuromas run my.nmas --input question="..." --input context="..." --adapters runs/step-300

exit status: 0 ok, 2 bad spec or usage, 1 runtime failure (model, adapters)"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a system on one input and print its answer",
        description="Run a .nmas system on one input with the transformers backend and print the answer.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", metavar="SPEC")
    parser.add_argument(
        "--input", action="append", required=True, metavar="TEXT",
        help="the input text; for several inputs, NAME=TEXT once per input",
    )
    parser.add_argument("--trace", action="store_true", help="print every node's message as a tree by level")
    add_runtime_options(parser)
    parser.set_defaults(handler=run)


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Options every command that runs a plan shares."""
    parser.add_argument(
        "--model", metavar="MODEL", help="bundled model name, local HF folder or hub id (default: the spec's)"
    )
    parser.add_argument("--group", type=int, default=1, metavar="G", help="samples per input (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                        help="model dtype (default: auto, bfloat16 where native)")
    parser.add_argument("--adapters", metavar="DIR", help="load trained adapters from DIR/<slot>/")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="cap every node's max_tokens at N")
    parser.add_argument("--stage", metavar="NAME", help="run this growth stage's plan")


def load_plan(args: argparse.Namespace) -> Plan:
    """The spec's plan with the command-line overrides applied (without loading a model)."""
    plan = neuromas.compile(args.spec)
    if args.stage is not None:
        try:
            plan = plan.stage_plan(args.stage).plan
        except KeyError as err:
            raise UserError(err.args[0], exit_code=2) from None
    if args.group < 1:
        raise UserError(f"--group must be at least 1, got {args.group}", exit_code=2)
    if args.max_tokens is not None:
        if args.max_tokens < 1:
            raise UserError(f"--max-tokens must be at least 1, got {args.max_tokens}", exit_code=2)
        from neuromas.runtime.rollout import cap_max_tokens

        plan = cap_max_tokens(plan, args.max_tokens)
    return plan


def build_runtime(plan: Plan, args: argparse.Namespace) -> Any:
    """Load the model and adapters and return a Runtime; raises UserError."""
    from pathlib import Path

    from neuromas.runtime import Runtime, TransformersBackend, resolve_model

    resolve_model(args.model or plan.model)  # a missing model fails before anything loads
    backend = TransformersBackend.for_plan(
        plan,
        model=args.model,
        dtype=args.dtype,
        threads=args.threads,
        adapters_dir=Path(args.adapters) if args.adapters else None,
    )
    return Runtime(plan, backend, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    plan = load_plan(args)
    inputs = parse_inputs(args.input, plan.inputs)
    runtime = build_runtime(plan, args)
    rollout = runtime.rollout([inputs], group=args.group)
    for sample in rollout.samples[0]:
        if args.trace:
            print(render_trace(plan, inputs, sample))
        prefix = f"sample {sample.sample}: " if args.group > 1 else ""
        for layer, answer in sample.answers.items():
            label = f"{layer}: " if len(sample.answers) > 1 else ""
            print(f"{prefix}{label}{answer.text}")
    return 0


def parse_inputs(values: list[str], names: tuple[str, ...]) -> dict[str, str]:
    """`--input` values -> {input name: text}; raises UserError (exit 2) for a bad set."""
    if len(names) == 1 and len(values) == 1 and not values[0].startswith(f"{names[0]}="):
        return {names[0]: values[0]}
    result = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or name not in names:
            raise UserError(f"--input {value!r}: expected NAME=TEXT with NAME one of: {', '.join(names)}", exit_code=2)
        result[name] = text
    missing = [name for name in names if name not in result]
    if missing:
        raise UserError(f"missing --input for: {', '.join(missing)}", exit_code=2)
    return result


def render_trace(plan: Plan, inputs: dict[str, str], sample: Any) -> str:
    """Every node's message as a tree: the system, its levels, each level's nodes."""
    lines = [f"{plan.system}  (sample {sample.sample})"]
    for name, text in inputs.items():
        lines.append(f"│  {name}: {_one_line(text)}")
    for level_index, level in enumerate(plan.levels):
        is_last_level = level_index == len(plan.levels) - 1
        lines.append(f"{'└' if is_last_level else '├'}─ level {level.index}")
        stem = "   " if is_last_level else "│  "
        node_ids = [node_id for call in level.calls for node_id in call.nodes]
        for position, node_id in enumerate(node_ids):
            record = sample.records[node_id]
            is_last_node = position == len(node_ids) - 1
            adapter = record.adapter or "frozen"
            lines.append(
                f"{stem}{'└' if is_last_node else '├'}─ {node_id}  "
                f"[{adapter}, {len(record.completion_ids)} tokens, {record.finish_reason}]"
            )
            body = stem + ("   " if is_last_node else "│  ")
            for text_line in (record.text.strip() or "(empty)").splitlines():
                for wrapped in textwrap.wrap(text_line, 100) or [""]:
                    lines.append(body + wrapped)
    return "\n".join(lines)


def _one_line(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."
