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

import msgspec

from neuromas.commands import assemble
from neuromas.commands.assemble import TASK_HELP
from neuromas.commands.options import COUNT, add_spec_argument, command_parser, positive_number, whole_number
from neuromas.commands.paths import check_out_folder
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
    parser = command_parser(
        subparsers, "train", help="train a system's adapters with RL on a task",
        description="Train every node's LoRA adapter jointly from one terminal reward (REINFORCE, GRPO or RLOO).",
        epilog=EXAMPLES, groups=("spec", "stage", "model", "runtime", "sampling", "batch", "task", "backend", "out-dir"),
    )
    add_spec_argument(parser)
    group = parser.add_argument_group("training")
    group.add_argument("--steps", type=COUNT, metavar="N", help="optimiser steps in all (default: the spec's)")
    group.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    group.add_argument("--lr", type=positive_number, metavar="LR", help="learning rate (default: the spec's)")
    group.add_argument("--token-budget", type=COUNT, default=4096, metavar="N",
                       help="padded tokens per training micro-batch (default: 4096)")
    group.add_argument("--save-every", type=COUNT, default=10, metavar="N", help="checkpoint every N steps (default: 10)")
    group.add_argument("--keep", type=whole_number(0), default=2, metavar="N",
                       help="checkpoints kept (default: 2; 0 keeps all)")
    group.add_argument("--log-kl", action="store_true", help="measure the KL to the base model even when kl is 0")
    group.add_argument("--eval-every", type=COUNT, metavar="N",
                       help="growth runs: evaluate held-out reward every N steps (and after the last) into "
                            "DIR/evals.jsonl, so `or plateau K evals` can start a stage early (default: never; "
                            "then stages start after their steps only, with a warning)")
    group.add_argument("--eval-n", type=COUNT, default=50, metavar="M",
                       help="held-out questions per evaluation: the task with data seed 1000, as `neuromas eval` "
                            "uses (a jsonl file gives its own examples in another order) (default: 50)")
    from neuromas.runtime.training.tracking import TRACKERS  # imports no torch

    group.add_argument("--report-to", action="append", default=[], metavar="TRACKER", choices=TRACKERS,
                       help="also send the metrics rows, eval rows and run config to tensorboard, wandb or trackio "
                            "(files under DIR; wandb offline unless WANDB_MODE says otherwise); repeatable "
                            "(default: none)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from neuromas.runtime.training.session import TrainSettings, start_session
    from neuromas.runtime.training.session import check_out_folder as check_run_folder

    # Every mistake the user can fix is reported before the model loads.
    plan = training_plan(args)
    assert plan.train is not None
    assemble.require(args, "task", "train")
    task = assemble.load_task(args, plan.inputs, args.seed)
    evaluation = eval_settings(args, plan)
    score = assemble.make_scorer(plan, task, args)
    choice = assemble.check_backend(args, trains=True)
    assemble.check_adapters(plan, args)
    out = check_out_folder(args.out)
    check_run_folder(out, args.resume)
    from neuromas.runtime.training.tracking import Trackers, check_trackers, run_config

    check_trackers(args.report_to)  # a missing tracker package, before the model loads
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

    from neuromas.runtime.training import distributed
    from neuromas.runtime.training.stop import StopSignals

    with StopSignals() as stop, tqdm(total=settings.steps, unit="step", file=sys.stderr, desc="train",
                                         disable=os.environ.get("RANK", "0") != "0") as bar, \
            Trackers(args.report_to if os.environ.get("RANK", "0") == "0" else (), out,
                     run_config(plan, settings, spec=args.spec, task=args.task, backend=args.backend)) as trackers:

        trained: list[int] = []  # the steps this call trains

        def show(metrics: dict) -> None:
            trained.append(metrics["step"])
            loss = metrics["loss"]
            stage = f"{metrics['stage']} " if metrics.get("stage") else ""
            bar.set_postfix_str(f"{stage}reward={metrics['reward_mean']:.3f} loss={'-' if loss is None else f'{loss:.4f}'}")
            bar.update(metrics["step"] - bar.n)
            trackers.log_step(metrics)

        if plan.growth and args.stage is None:  # the whole growth schedule, in one run
            from neuromas.runtime.training.schedule import train_with_growth

            session = train_with_growth(plan, lambda stage_plan: assemble.build_runtime(stage_plan, choice, args.seed),
                                        task, settings, out, score=score, resume=args.resume, on_step=show,
                                        evaluation=evaluation, on_eval=trackers.log_eval, stop=stop)
        else:
            from neuromas.runtime.training.loop import train

            session = start_session(plan, assemble.build_runtime(plan, choice, args.seed), task, settings, out,
                                    score=score, resume=args.resume)
            bar.update(session.state.step)
            train(session, on_step=show, stop=stop)
    session.close()
    distributed.shutdown()  # under torchrun: every rank leaves the job together
    if stop.requested and session.state.step < settings.steps:
        print(f"stopped at step {session.state.step}; resume with: {resume_command()}", file=sys.stderr)
        return stop.exit_code
    print(f"{trained_summary(trained, session.state.step, settings.steps)}; metrics and checkpoints in {args.out}",
          file=sys.stderr)
    return 0


def trained_summary(trained: list[int], step: int, steps: int) -> str:
    """What this call did: the steps it trained, or why it trained none."""
    if not trained:
        return f"trained no steps: the run is at step {step} already (--steps {steps}; raise it to train on)"
    if trained[0] == 1:
        return f"trained {len(trained)} steps"
    return f"trained {len(trained)} steps ({trained[0]} to {trained[-1]}, resumed at step {trained[0] - 1})"


def training_plan(args: argparse.Namespace):
    """The spec's plan with --steps, --group, --batch, --lr and --answer-format applied; raises
    UserError (exit 2) for a spec without a train block or settings that do not fit."""
    plan = assemble.load_plan(args)
    if plan.train is None:
        raise UserError(f"'{args.spec}' has no train block: add `train {{ algorithm grpo ... }}` to train it", exit_code=2)
    overrides = {"steps": args.steps, "group": args.group, "batch": args.batch, "lr": args.lr}
    changed = {name: value for name, value in overrides.items() if value is not None}
    train = msgspec.structs.replace(plan.train, **changed)
    if train.algorithm == "rloo" and train.group < 2:
        raise UserError("rloo needs a group of at least 2 samples per input (--group)", exit_code=2)
    args.group, args.batch = train.group, train.batch  # the values used, for error messages too
    return msgspec.structs.replace(plan, train=train)


def eval_settings(args: argparse.Namespace, plan):
    """Held-out evaluation settings from --eval-every and --eval-n (None without
    --eval-every); raises UserError (exit 2) for a bad number or a run without growth."""
    if args.eval_every is None:
        return None
    if not plan.growth or args.stage is not None:
        raise UserError("--eval-every evaluates during a growth schedule: the spec needs a growth block "
                        "(and no --stage); for a trained run use `neuromas eval --checkpoint DIR`", exit_code=2)
    from neuromas.runtime.tasks.evaluate import HELD_OUT_SEED
    from neuromas.runtime.training.plateau import EvalSettings

    held_out = assemble.load_task(args, plan.inputs, HELD_OUT_SEED)
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
