"""`neuromas grow CHECKPOINT --stage NAME --out DIR`: one growth step from a trained checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

import neuromas
from neuromas.commands.options import command_parser
from neuromas.commands.paths import check_out_folder
from neuromas.diagnostics import UserError

EXAMPLES = """examples:
  neuromas train specs/growth.nmas --stage neuromas3 --task reasoning_gym:basic_arithmetic --steps 300 --out runs/n3
  neuromas grow runs/n3 --spec specs/growth.nmas --stage neuromas5 --out runs/n5
  neuromas train specs/growth.nmas --stage neuromas5 --task reasoning_gym:basic_arithmetic --steps 600 --out runs/n5 --resume

CHECKPOINT is a checkpoint folder or a run folder (its newest checkpoint). The spec comes
from --spec, or from the run folder's growth_plan.json when `neuromas train` grew it. A
checkpoint trained with --batch, --group or --max-tokens is grown with the same options."""

TRAINED_SETTINGS = ("batch", "group")  # train settings the command line can override (as --batch, --group)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(
        subparsers, "grow", help="grow a trained checkpoint into the next growth stage",
        description="Grow a trained system into a growth stage: kept adapters and optimizer state carried, "
                    "new nodes initialised as the spec says.",
        epilog=EXAMPLES, groups=("spec", "stage", "model", "sampling", "batch", "out-dir"),
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT")
    parser.add_argument("--spec", metavar="SPEC", help="the spec with the growth block (default: the run's growth_plan.json)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from neuromas.runtime import Runtime, TransformersBackend
    from neuromas.runtime.training.checkpoint import list_checkpoints
    from neuromas.runtime.training.schedule import grow_checkpoint
    from neuromas.runtime.training.session import check_out_folder as check_run_folder

    if args.stage is None:
        raise UserError("grow needs --stage NAME: the stage to grow into", exit_code=2)
    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "state.json").is_file():
        found = list_checkpoints(checkpoint) if checkpoint.is_dir() else []
        if not found:
            raise UserError(f"'{checkpoint}' holds no checkpoint (expected a run folder or a checkpoint folder)")
        checkpoint = found[-1]
    state = read_state(checkpoint / "state.json")
    plan = _with_overrides(_growth_plan(args, checkpoint), args)
    check_trained_from(plan, args.stage, checkpoint, state)
    out = check_out_folder(args.out)
    check_run_folder(out, resume=False)

    def make_runtime(stage_plan):
        backend = TransformersBackend.for_plan(stage_plan, model=args.model, dtype=args.dtype, threads=args.threads)
        return Runtime(stage_plan, backend)

    folder = grow_checkpoint(checkpoint, plan, args.stage, out, make_runtime)
    print(f"grew {checkpoint} into stage '{args.stage}': {folder}", file=sys.stderr)
    return 0


STATE_FIELDS = {"step": int, "data_position": int, "seed": int, "plan_fingerprint": str}


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's state.json, every field present with its type; raises UserError naming the file."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read '{path}': {getattr(err, 'strerror', None) or err}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg}): the checkpoint is damaged") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(state).__name__}: the checkpoint is damaged")
    for name, kind in STATE_FIELDS.items():
        value = state.get(name)
        if name not in state:
            raise UserError(f"{path}: no '{name}' field: the checkpoint is incomplete")
        if isinstance(value, bool) or not isinstance(value, kind) or (kind is int and value < 0):
            wanted = "a whole number from 0" if kind is int else "text"
            raise UserError(f"{path}: '{name}' must be {wanted}, got {json.dumps(value)}: the checkpoint is damaged")
    return state


def check_trained_from(plan: neuromas.Plan, stage_name: str, checkpoint: Path, state: dict[str, Any]) -> None:
    """The checkpoint was trained from the stage before `stage_name` with these settings;
    raises UserError naming the setting that differs (from the run's plan.json)."""
    from neuromas.runtime.training.checkpoint import plan_fingerprint
    from neuromas.runtime.training.schedule import grown_stage_index, stage_plans

    stages = stage_plans(plan)
    trained = stages[grown_stage_index(stages, stage_name) - 1]
    if state["plan_fingerprint"] == plan_fingerprint(trained.plan):
        return
    differences = _differences(_trained_plan(checkpoint), trained.plan)
    if differences:
        raise UserError(f"'{checkpoint}' was trained from stage '{trained.name}' with other settings: "
                        f"{'; '.join(differences)}", exit_code=2)
    raise UserError(f"'{checkpoint}' was not trained from stage '{trained.name}', the stage before '{stage_name}'",
                    exit_code=2)


def _trained_plan(checkpoint: Path) -> neuromas.Plan | None:
    """The plan.json of the run the checkpoint belongs to (None when missing or unreadable)."""
    path = checkpoint.parent.parent / "plan.json"
    try:
        return neuromas.Plan.from_json(path.read_bytes())
    except (OSError, msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return None


def _differences(trained: neuromas.Plan | None, expected: neuromas.Plan) -> list[str]:
    """What a run's plan set otherwise than the stage's, each with the option that sets it."""
    if trained is None or trained.system != expected.system or trained.stage != expected.stage:
        return []
    found = []
    if trained.train is not None and expected.train is not None:
        for name in TRAINED_SETTINGS:
            was, now = getattr(trained.train, name), getattr(expected.train, name)
            if was != now:
                found.append(f"{name} {was}, here {now} (grow with --{name} {was})")
    was_tokens = max(node.generation.max_tokens for node in trained.nodes)
    now_tokens = max(node.generation.max_tokens for node in expected.nodes)
    if was_tokens != now_tokens:
        found.append(f"max_tokens up to {was_tokens}, here {now_tokens} (grow with --max-tokens {was_tokens})")
    return found


def _with_overrides(plan: neuromas.Plan, args: argparse.Namespace) -> neuromas.Plan:
    """The growth plan with --batch, --group and --max-tokens applied to every stage."""
    changed = {name: getattr(args, name) for name in TRAINED_SETTINGS if getattr(args, name) is not None}
    if changed and plan.train is not None:
        plan = msgspec.structs.replace(plan, train=msgspec.structs.replace(plan.train, **changed))
    if args.max_tokens is not None:
        from neuromas.runtime.generation.rollout import cap_max_tokens

        plan = cap_max_tokens(plan, args.max_tokens)
    return plan


def _growth_plan(args: argparse.Namespace, checkpoint: Path) -> neuromas.Plan:
    from neuromas.runtime.training.schedule import GROWTH_PLAN_FILE

    if args.spec:
        return neuromas.compile(args.spec, allow_outside_paths=args.allow_outside_paths)
    for folder in (checkpoint.parent.parent, checkpoint):
        path = folder / GROWTH_PLAN_FILE
        if path.is_file():
            try:
                return neuromas.Plan.from_json(path.read_bytes())
            except (OSError, msgspec.DecodeError, msgspec.ValidationError, ValueError) as err:
                raise UserError(f"cannot read '{path}': {err}") from None
    raise UserError("no growth plan found next to the checkpoint: name the spec with --spec", exit_code=2)
