"""`neuromas train SPEC --task ... --steps N --out DIR`: train every node's adapter on a task's terminal reward.

Writes DIR/metrics.jsonl (one row per step), DIR/samples.jsonl (one run's output per
step), DIR/plan.json and DIR/checkpoints/step-*/ (adapters in peft's format, optimizer
and RNG states); `--resume` continues the newest checkpoint exactly. torch loads only
inside `run`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import msgspec

from neuromas.commands.run import add_runtime_options, build_runtime, load_plan
from neuromas.commands.task_options import TASK_HELP, add_task_options, task_from_args
from neuromas.diagnostics import UserError

EXAMPLES = f"""examples:
  neuromas train specs/neuromas3.nmas --task reasoning_gym:basic_arithmetic --steps 50 --out runs/n3
  neuromas train specs/neuromas3.nmas --task jsonl:data/train.jsonl --steps 200 --out runs/n3 --group 8 --batch 4
  neuromas train specs/neuromas3.nmas --task jsonl:data/train.jsonl --steps 400 --out runs/n3 --resume
  neuromas train specs/neuromas3.nmas --task reasoning_gym:basic_arithmetic --task-option min_terms=2 \\
      --task-option max_terms=2 --task-option max_digits=1 --max-tokens 32 --steps 30 --out runs/easy

{TASK_HELP}

stopping: the first Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a checkpoint and
exits with "stopped at step N; resume with: ..."; a second Ctrl-C aborts at once.

exit status: 0 ok, 2 bad spec or usage, 1 runtime failure (model, data, reward code),
130 stopped by SIGINT (or aborted), 143 stopped by SIGTERM"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a system's adapters with RL on a task",
        description="Train every node's LoRA adapter jointly from one terminal reward (REINFORCE, GRPO or RLOO).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("spec", metavar="SPEC")
    parser.add_argument("--steps", type=int, metavar="N", help="optimiser steps in all (default: the spec's)")
    parser.add_argument("--out", required=True, metavar="DIR", help="run folder: metrics, plan, checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--batch", type=int, metavar="B", help="inputs per step (default: the spec's)")
    parser.add_argument("--answer-format", choices=("text", "number", "choice"),
                        help="how the final answer is extracted (default: the spec's output format)")
    parser.add_argument("--token-budget", type=int, default=4096, metavar="N",
                        help="padded tokens per training micro-batch (default: 4096)")
    parser.add_argument("--save-every", type=int, default=10, metavar="N", help="checkpoint every N steps (default: 10)")
    parser.add_argument("--keep", type=int, default=2, metavar="N", help="checkpoints kept (default: 2; 0 keeps all)")
    parser.add_argument("--log-kl", action="store_true", help="measure the KL to the base model even when kl is 0")
    parser.add_argument("--eval-every", type=int, metavar="N",
                        help="growth runs: evaluate held-out reward every N steps (and after the last) into "
                             "DIR/evals.jsonl, so `or plateau K evals` can start a stage early (default: never; "
                             "then stages start after their steps only, with a warning)")
    parser.add_argument("--eval-n", type=int, default=50, metavar="M",
                        help="held-out questions per evaluation: the task with data seed 1000, as `neuromas eval` "
                             "uses (a jsonl file gives its own examples in another order) (default: 50)")
    add_task_options(parser)
    add_runtime_options(parser)
    parser.set_defaults(handler=run, group=None)  # --group defaults to the spec's


def run(args: argparse.Namespace) -> int:
    from neuromas.runtime.training.train import TrainSettings, check_out_folder, make_scorer, start_session, train

    plan = training_plan(args)
    assert plan.train is not None
    task = task_from_args(args, plan.inputs, args.seed)
    evaluation = eval_settings(args, plan)
    # Mistakes the user can fix are reported before the model loads.
    make_scorer(plan.train.reward, task, args.reward, args.allow_code)
    check_out_folder(Path(args.out), args.resume)
    _seed_everything(args.seed)  # adapters are initialised when the model loads
    settings = TrainSettings(
        steps=plan.train.steps,
        seed=args.seed,
        token_budget=args.token_budget,
        save_every=args.save_every,
        keep_checkpoints=args.keep,
        log_kl=args.log_kl,
    )
    from tqdm import tqdm

    from neuromas.runtime.training.stop import StopSignals

    with StopSignals() as stop, tqdm(total=settings.steps, unit="step", file=sys.stderr, desc="train",
                                         disable=os.environ.get("RANK", "0") != "0") as bar:

        def show(metrics: dict) -> None:
            loss = metrics["loss"]
            stage = f"{metrics['stage']} " if metrics.get("stage") else ""
            bar.set_postfix_str(f"{stage}reward={metrics['reward_mean']:.3f} loss={'-' if loss is None else f'{loss:.4f}'}")
            bar.update(metrics["step"] - bar.n)

        if plan.growth and args.stage is None:  # the whole growth schedule, in one run
            from neuromas.runtime.training.schedule import train_with_growth

            session = train_with_growth(plan, lambda stage_plan: build_runtime(stage_plan, args), task, settings,
                                        Path(args.out), reward=args.reward, allow_code=args.allow_code,
                                        resume=args.resume, on_step=show, evaluation=evaluation, stop=stop)
        else:
            session = start_session(plan, build_runtime(plan, args), task, settings, Path(args.out),
                                    reward=args.reward, allow_code=args.allow_code, resume=args.resume)
            bar.update(session.state.step)
            train(session, on_step=show, stop=stop)
    if stop.requested and session.state.step < settings.steps:
        print(f"stopped at step {session.state.step}; resume with: {resume_command()}", file=sys.stderr)
        return stop.exit_code
    print(f"trained {session.state.step} steps; metrics and checkpoints in {args.out}", file=sys.stderr)
    return 0


def training_plan(args: argparse.Namespace):
    """The spec's plan with --steps, --group, --batch and --answer-format applied; raises
    UserError (exit 2) for a spec without a train block or a bad number."""
    if args.group is None:
        args.group = 1  # load_plan checks it; the real default is the spec's
        group = None
    else:
        group = args.group
    plan = load_plan(args)
    if plan.train is None:
        raise UserError(f"'{args.spec}' has no train block: add `train {{ algorithm grpo ... }}` to train it", exit_code=2)
    overrides = {"steps": args.steps, "group": group, "batch": args.batch}
    for name, value in overrides.items():
        if value is not None and value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}", exit_code=2)
    changed = {name: value for name, value in overrides.items() if value is not None}
    train = msgspec.structs.replace(plan.train, **changed)
    if train.algorithm == "rloo" and train.group < 2:
        raise UserError("rloo needs a group of at least 2 samples per input (--group)", exit_code=2)
    plan = msgspec.structs.replace(plan, train=train)
    if args.answer_format is not None:
        outputs = tuple(msgspec.structs.replace(output, answer_format=args.answer_format) for output in plan.outputs)
        plan = msgspec.structs.replace(plan, outputs=outputs)
    return plan


def eval_settings(args: argparse.Namespace, plan):
    """Held-out evaluation settings from --eval-every and --eval-n (None without
    --eval-every); raises UserError (exit 2) for a bad number or a run without growth."""
    if args.eval_every is None:
        return None
    if args.eval_every < 1 or args.eval_n < 1:
        raise UserError(f"--eval-every and --eval-n must be at least 1, got {args.eval_every} and {args.eval_n}",
                        exit_code=2)
    if not plan.growth or args.stage is not None:
        raise UserError("--eval-every evaluates during a growth schedule: the spec needs a growth block "
                        "(and no --stage); for a trained run use `neuromas eval --checkpoint DIR`", exit_code=2)
    from neuromas.commands.eval import HELD_OUT_SEED
    from neuromas.runtime.training.plateau import EvalSettings

    held_out = task_from_args(args, plan.inputs, HELD_OUT_SEED)
    return EvalSettings(task=held_out, every=args.eval_every, n=args.eval_n, seed=args.seed)


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that continues this run: the same arguments, with --resume."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(["neuromas", *argv])


def _seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)
