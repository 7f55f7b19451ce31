"""`neuromas eval SPEC --task T --n N`: accuracy with a 95% interval, and the cost per question."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neuromas.commands.run import add_runtime_options, build_runtime, load_plan
from neuromas.commands.task_options import TASK_HELP, add_task_options, task_from_args
from neuromas.diagnostics import UserError
from neuromas.lower import ANSWER_FORMATS

HELD_OUT_SEED = 1_000  # default data seed: examples other than training's (seed 0)

EXAMPLES = f"""examples:
  neuromas eval specs/neuromas3.nmas --task reasoning_gym:basic_arithmetic --n 100 --out n3.json
  neuromas eval specs/neuromas3.nmas --task reasoning_gym:basic_arithmetic --n 100 --checkpoint runs/n3 --out n3-trained.json
  neuromas eval --compare n3.json n3-trained.json single.json

{TASK_HELP}

The data seed (--data-seed, default {HELD_OUT_SEED}) differs from training's default, so
procedural tasks give held-out questions."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="measure a system's accuracy on a task",
        description="Evaluate a system on a task: accuracy (Wilson 95% interval), tokens, calls and seconds per question.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", metavar="SPEC", nargs="?")
    parser.add_argument("--n", type=int, default=50, help="questions (default: 50)")
    parser.add_argument("--batch", type=int, default=8, metavar="B", help="questions per rollout (default: 8)")
    parser.add_argument("--checkpoint", metavar="DIR", help="trained adapters: a run folder (its newest checkpoint) or a checkpoint folder")
    parser.add_argument("--data-seed", type=int, default=HELD_OUT_SEED, metavar="S", help=f"task seed (default: {HELD_OUT_SEED})")
    parser.add_argument("--answer-format", choices=ANSWER_FORMATS,
                        help="how the final answer is read (default: the spec's output format)")
    parser.add_argument("--out", metavar="FILE", help="write the result as JSON")
    parser.add_argument("--compare", nargs="+", metavar="RESULT", help="print these eval JSON files side by side (no SPEC)")
    add_task_options(parser, required=False)
    add_runtime_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from neuromas.runtime.tasks.evaluate import comparison_table, evaluate

    if args.compare:
        print(comparison_table([(path, _read(path)) for path in args.compare]), end="")
        return 0
    if args.spec is None or args.task is None:
        raise UserError("eval needs SPEC and --task (or --compare RESULT...)", exit_code=2)
    if args.n < 1 or args.batch < 1:
        raise UserError("--n and --batch must be at least 1", exit_code=2)
    if args.checkpoint:
        args.adapters = str(checkpoint_adapters(Path(args.checkpoint)))
    plan = load_plan(args)
    if args.answer_format is not None:
        plan = plan.with_answer_format(args.answer_format)
    task = task_from_args(args, plan.inputs, args.data_seed)
    runtime = build_runtime(plan, args)
    score = _scorer(plan, task, args)
    from tqdm import tqdm

    with tqdm(total=args.n, unit="q", file=sys.stderr, desc="eval") as bar:
        result = evaluate(runtime, task, score, args.n, group=args.group, batch=args.batch, seed=args.seed,
                          adapters=args.adapters, on_batch=bar.update)
    print(comparison_table([(args.spec, result)]), end="")
    if args.out:
        import msgspec

        Path(args.out).write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    return 0


def checkpoint_adapters(path: Path) -> Path:
    """The adapters folder of a checkpoint (verified against its manifest): `path/adapters`,
    or that of the newest checkpoint of a run folder that verifies, or `path` itself when
    it holds adapters."""
    from neuromas.runtime.training.checkpoint import list_checkpoints, newest_verified, verify_checkpoint

    if (path / "adapters").is_dir():
        verify_checkpoint(path)
        return path / "adapters"
    if list_checkpoints(path):
        newest, skipped = newest_verified(path)
        for bad in skipped:
            print(f"skipping {bad.path.name}: {bad.reason}", file=sys.stderr)
        if newest is None:
            raise UserError(f"no checkpoint in '{path}' passes its manifest check (see above)")
        return newest / "adapters"
    if path.is_dir() and any((child / "adapter_config.json").is_file() for child in path.iterdir()):
        return path
    raise UserError(f"'{path}' holds no checkpoint or adapters (expected a run folder, a checkpoint, or DIR/<slot>/)")


def _scorer(plan, task, args):
    from neuromas.runtime.training.train import make_scorer

    plan_reward = plan.train.reward if plan.train is not None else "exact_match"
    return make_scorer(plan_reward, task, args.reward, args.allow_code)


def _read(path: str):
    import msgspec

    from neuromas.runtime.tasks.evaluate import read_result

    try:
        return read_result(path)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as err:
        raise UserError(f"cannot read eval result '{path}': {err}") from None
