"""`neuromas eval SPEC --task T --n N`: accuracy with a 95% interval, and the cost per question."""

from __future__ import annotations

import argparse
import sys

from neuromas.commands import assemble
from neuromas.commands.assemble import DEFAULT_BATCH, TASK_HELP
from neuromas.commands.options import COUNT, SEED, add_spec_argument, command_parser
from neuromas.commands.paths import check_out_file
from neuromas.diagnostics import UserError
from neuromas.runtime.tasks.evaluate import HELD_OUT_SEED

EXAMPLES = f"""examples:
  neuromas eval specs/neuromas3.nmas --task reasoning_gym:basic_arithmetic --n 100 -o n3.json
  neuromas eval specs/neuromas3.nmas --task reasoning_gym:basic_arithmetic --n 100 --checkpoint runs/n3 -o n3-trained.json
  neuromas eval --compare n3.json n3-trained.json single.json

{TASK_HELP}

The data seed (--data-seed, default {HELD_OUT_SEED}) differs from training's default, so
procedural tasks give held-out questions. A data file with fewer than --n questions is
evaluated on each of its questions once (with a warning)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(
        subparsers, "eval", help="measure a system's accuracy on a task",
        description="Evaluate a system on a task: accuracy (Wilson 95% interval), tokens, calls and seconds per "
                    "question; -o FILE also writes the result as JSON.",
        epilog=EXAMPLES, groups=("spec", "stage", "model", "runtime", "checkpoint", "sampling", "batch", "task", "backend", "out-file"),
    )
    add_spec_argument(parser, optional=True)
    group = parser.add_argument_group("evaluation")
    group.add_argument("--n", type=COUNT, default=50, metavar="N", help="questions (default: 50)")
    group.add_argument("--data-seed", type=SEED, default=HELD_OUT_SEED, metavar="S",
                       help=f"task seed (default: {HELD_OUT_SEED})")
    group.add_argument("--compare", nargs="+", metavar="RESULT", help="print these eval JSON files side by side (no SPEC)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from neuromas.runtime.tasks.evaluate import comparison_table, evaluate

    if args.compare:
        print(comparison_table([(path, _read(path)) for path in args.compare]), end="")
        return 0
    if args.spec is None or args.task is None:
        raise UserError("eval needs SPEC and --task (or --compare RESULT...)", exit_code=2)
    assemble.use_checkpoint(args)
    plan = assemble.load_plan(args)
    task = assemble.load_task(args, plan.inputs, args.data_seed)
    score = assemble.make_scorer(plan, task, args)
    choice = assemble.check_backend(args)
    assemble.check_adapters(plan, args)
    out = check_out_file(args.output) if args.output is not None else None
    n = min(args.n, len(task))
    if n < args.n:
        print(f"warning: --n {args.n}, but {task.name} has {n} question(s): evaluating each once", file=sys.stderr)
    runtime = assemble.build_runtime(plan, choice, args.seed)
    from tqdm import tqdm

    group = args.group = args.group or 1  # the values used, for error messages too
    args.batch = args.batch or DEFAULT_BATCH
    with tqdm(total=n, unit="q", file=sys.stderr, desc="eval") as bar:
        result = evaluate(runtime, task, score, n, group=group, batch=args.batch, seed=args.seed,
                          adapters=args.adapters, on_batch=bar.update)
    print(comparison_table([(args.spec, result)]), end="")
    if out is not None:
        import msgspec

        try:
            out.write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
        except OSError as err:
            raise UserError(f"cannot write '{out}': {err.strerror or err}") from None
    return 0


def _read(path: str):
    import msgspec

    from neuromas.runtime.tasks.evaluate import read_result

    try:
        return read_result(path)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as err:
        raise UserError(f"cannot read eval result '{path}': {err}") from None
