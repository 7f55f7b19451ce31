"""`neuromas grow CHECKPOINT --stage NAME --out DIR`: one growth step from a trained checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import neuromas
from neuromas.diagnostics import UserError

EXAMPLES = """examples:
  neuromas train specs/growth.nmas --stage neuromas3 --task reasoning_gym:basic_arithmetic --steps 300 --out runs/n3
  neuromas grow runs/n3 --spec specs/growth.nmas --stage neuromas5 --out runs/n5
  neuromas train specs/growth.nmas --stage neuromas5 --task reasoning_gym:basic_arithmetic --steps 600 --out runs/n5 --resume

CHECKPOINT is a checkpoint folder or a run folder (its newest checkpoint). The spec comes
from --spec, or from the run folder's growth_plan.json when `neuromas train` grew it."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "grow", help="grow a trained checkpoint into the next growth stage",
        description="Grow a trained system into a growth stage: kept adapters and optimizer state carried, new nodes initialised as the spec says.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    parser.add_argument("--stage", required=True, metavar="NAME", help="the stage to grow into")
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder for the grown checkpoint")
    parser.add_argument("--spec", metavar="SPEC", help="the spec with the growth block (default: the run's growth_plan.json)")
    parser.add_argument("--model", metavar="MODEL", help="bundled model name, local HF folder or hub id (default: the spec's)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from neuromas.runtime import Runtime, TransformersBackend
    from neuromas.runtime.training.checkpoint import list_checkpoints
    from neuromas.runtime.training.schedule import grow_checkpoint

    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "state.json").is_file():
        found = list_checkpoints(checkpoint)
        if not found:
            raise UserError(f"'{checkpoint}' holds no checkpoint")
        checkpoint = found[-1]
    plan = _growth_plan(args, checkpoint)

    def make_runtime(stage_plan):
        backend = TransformersBackend.for_plan(stage_plan, model=args.model, dtype=args.dtype, threads=args.threads)
        return Runtime(stage_plan, backend)

    folder = grow_checkpoint(checkpoint, plan, args.stage, Path(args.out), make_runtime)
    print(f"grew {checkpoint} into stage '{args.stage}': {folder}", file=sys.stderr)
    return 0


def _growth_plan(args: argparse.Namespace, checkpoint: Path) -> neuromas.Plan:
    from neuromas.runtime.training.schedule import GROWTH_PLAN_FILE

    if args.spec:
        return neuromas.compile(args.spec)
    for folder in (checkpoint.parent.parent, checkpoint):
        path = folder / GROWTH_PLAN_FILE
        if path.is_file():
            return neuromas.Plan.from_json(path.read_bytes())
    raise UserError("no growth plan found next to the checkpoint: name the spec with --spec", exit_code=2)
