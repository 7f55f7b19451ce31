"""`neuromas run SPEC --input TEXT`: run a system once on one input and print its answer.

torch, transformers and peft load only inside the handler (`neuromas.runtime`), never
when the CLI starts.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import TYPE_CHECKING, Any

from neuromas.commands.assemble import build_runtime, check_adapters, check_backend, load_plan
from neuromas.commands.options import add_spec_argument, command_parser
from neuromas.diagnostics import UserError

if TYPE_CHECKING:
    from neuromas.plan import Plan

EXAMPLES = """examples:
  neuromas run specs/neuromas3.nmas --input "What is 12 * 7?"
  neuromas run specs/neuromas3.nmas --input "What is 12 * 7?" --trace --max-tokens 32
  neuromas run my.nmas --input question="..." --input context="..." --adapters runs/step-300
  neuromas run specs/neuromas3.nmas --input "What is 12 * 7?" --backend vllm --tensor-parallel-size 2
  neuromas run specs/neuromas3.nmas --input "What is 12 * 7?" --backend server --server http://gpu1:8000

exit status: 0 ok, 2 bad spec or usage, 1 runtime failure (model, adapters)"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(subparsers, "run", help="run a system on one input and print its answer",
                            description="Run a .nmas system on one input and print the answer.", epilog=EXAMPLES,
                            groups=("spec", "stage", "model", "runtime", "sampling", "backend"))
    add_spec_argument(parser)
    parser.add_argument(
        "--input", action="append", required=True, metavar="TEXT",
        help="the input text; for several inputs, NAME=TEXT once per input",
    )
    parser.add_argument("--trace", action="store_true", help="print every node's message as a tree by level")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    plan = load_plan(args)
    inputs = parse_inputs(args.input, plan.inputs)
    choice = check_backend(args)
    check_adapters(plan, args)
    group = args.group = args.group or 1  # the value used, for error messages too
    runtime = build_runtime(plan, choice, args.seed)
    rollout = runtime.rollout([inputs], group=group)
    for sample in rollout.samples[0]:
        if args.trace:
            print(render_trace(plan, inputs, sample))
        prefix = f"sample {sample.sample}: " if group > 1 else ""
        for layer, answer in sample.answers.items():
            label = f"{layer}: " if len(sample.answers) > 1 else ""
            print(f"{prefix}{label}{answer.text}")
    return 0


def parse_inputs(values: list[str], names: tuple[str, ...]) -> dict[str, str]:
    """`--input` values -> {input name: text}; raises UserError (exit 2) for a bad set or
    a text above the input length limit."""
    from neuromas.runtime.tasks.data import check_input_length

    if len(names) == 1 and len(values) == 1 and not values[0].startswith(f"{names[0]}="):
        return {names[0]: _checked(values[0], "--input", check_input_length)}
    result = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or name not in names:
            raise UserError(f"--input {value!r}: expected NAME=TEXT with NAME one of: {', '.join(names)}", exit_code=2)
        result[name] = _checked(text, f"--input {name}=...", check_input_length)
    missing = [name for name in names if name not in result]
    if missing:
        raise UserError(f"missing --input for: {', '.join(missing)}", exit_code=2)
    return result


def _checked(text: str, where: str, check: Any) -> str:
    try:
        return check(text, where)
    except UserError as err:
        raise UserError(str(err), exit_code=2) from None


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
