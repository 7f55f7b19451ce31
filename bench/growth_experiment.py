"""Grown vs from scratch: NeuroMAS-7 trained for the same steps both ways, then evaluated on the same held-out questions.

  grown    specs/growth.nmas as a schedule (NeuroMAS-3 -> 5 -> 7) through
           `train_with_growth`, its `after N steps` scaled to --steps: a stage written
           to start at step a of a --reference-steps run starts at round(a * steps / reference);
  scratch  the last stage's plan (NeuroMAS-7) alone, through `start_session` + `train`;
  untrained  that plan with fresh adapters (skip with --no-untrained).
Both trained runs use the same seed, task, data order and settings; every run answers the
same --eval-n held-out questions (the task with data seed 1000, as `neuromas eval`)
with the same sampling seeds. Prints a table and writes JSON under bench/results/.

    python bench/growth_experiment.py                                   # 6 steps, 20 questions, 1 thread
    python bench/growth_experiment.py --steps 900 --eval-n 200 --max-tokens 128 --threads 16 \\
        --group 8 --batch 4 --out bench/results/growth_900.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import torch

import neuromas
from neuromas.runtime.tasks.evaluate import HELD_OUT_SEED
from neuromas.plan import Plan
from neuromas.vocabulary import ANSWER_FORMATS
from neuromas.runtime import Runtime, TransformersBackend
from neuromas.runtime.tasks.evaluate import EvalResult, evaluate
from neuromas.runtime.training.plateau import EvalSettings
from neuromas.runtime.generation.rollout import cap_max_tokens
from neuromas.runtime.training.schedule import stage_plans, train_with_growth
from neuromas.runtime.tasks.registry import TaskOptions, load_task, parse_task_options
from neuromas.runtime.training.loop import train
from neuromas.runtime.training.scoring import make_scorer
from neuromas.runtime.training.session import TrainSettings, start_session


def scaled_schedule(plan: Plan, steps: int, reference_steps: int) -> Plan:
    """The plan with every stage's `after N steps` scaled from a `reference_steps` run to
    `steps` (at least one step after the stage before it, so every stage trains)."""
    stages, previous = [], 0
    for stage in plan.growth:
        after = stage.after_steps
        if after is not None:
            after = max(round(after * steps / reference_steps), previous + 1)
            previous = after
        stages.append(msgspec.structs.replace(stage, after_steps=after))
    return msgspec.structs.replace(plan, growth=tuple(stages))


def with_answer_format(plan: Plan, answer_format: str) -> Plan:
    """The plan, and every stage's plan, with each output's answer extracted as `answer_format`."""
    outputs = tuple(msgspec.structs.replace(output, answer_format=answer_format) for output in plan.outputs)
    growth = tuple(msgspec.structs.replace(stage, plan=with_answer_format(stage.plan, answer_format))
                   for stage in plan.growth)
    return msgspec.structs.replace(plan, outputs=outputs, growth=growth)


def make_runtime_factory(args: argparse.Namespace):
    def make_runtime(stage_plan: Plan) -> Runtime:
        torch.manual_seed(args.seed)  # the same fresh adapters for both runs
        return Runtime(stage_plan, TransformersBackend.for_plan(stage_plan, threads=args.threads), seed=args.seed)

    return make_runtime


def train_grown(plan: Plan, task, args, out: Path) -> tuple[Any, float, list[dict]]:
    settings = TrainSettings(steps=args.steps, seed=args.seed, save_every=args.steps)
    evaluation = None
    if args.eval_every:
        evaluation = EvalSettings(task=held_out_task(args, plan), every=args.eval_every, n=args.plateau_n, seed=args.seed)
    started = time.perf_counter()
    session = train_with_growth(plan, make_runtime_factory(args), task, settings, out, on_step=progress("grown"),
                                evaluation=evaluation)
    seconds = time.perf_counter() - started
    return session, seconds, json.loads((out / "stages.json").read_text())


def train_scratch(plan: Plan, task, args, out: Path) -> tuple[Any, float]:
    settings = TrainSettings(steps=args.steps, seed=args.seed, save_every=args.steps)
    started = time.perf_counter()
    session = start_session(plan, make_runtime_factory(args)(plan), task, settings, out)
    train(session, on_step=progress("scratch"))
    return session, time.perf_counter() - started


def progress(name: str):
    def show(metrics: dict) -> None:
        print(f"  {name} step {metrics['step']} ({metrics['stage'] or '-'}): reward {metrics['reward_mean']:.3f} "
              f"in {metrics['step_s']:.1f} s", file=sys.stderr, flush=True)

    return show


def held_out_task(args: argparse.Namespace, plan: Plan):
    return load_task(args.task, TaskOptions(input_names=plan.inputs, seed=HELD_OUT_SEED,
                                            options=parse_task_options(args.task_option)))


def evaluate_runtime(runtime: Runtime, plan: Plan, args: argparse.Namespace, label: str) -> EvalResult:
    task = held_out_task(args, plan)
    assert plan.train is not None
    score = make_scorer(plan.train.reward, task, None, False)
    print(f"  evaluating {label} on {args.eval_n} held-out questions", file=sys.stderr, flush=True)
    return evaluate(runtime, task, score, args.eval_n, batch=args.eval_batch, seed=args.seed, adapters=label)


def table(rows: list[dict[str, Any]]) -> str:
    header = ("run", "system", "train steps", "accuracy [95% CI]", "tokens/q", "train s", "eval s/q")
    cells = [header] + [(
        row["run"], row["system"], str(row["train_steps"]),
        f"{row['eval']['accuracy']:.3f} [{row['eval']['accuracy_low']:.3f}, {row['eval']['accuracy_high']:.3f}]",
        f"{row['eval']['tokens_per_question']:.1f}", f"{row['train_s']:.0f}",
        f"{row['eval']['seconds_per_question']:.2f}",
    ) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="specs/growth.nmas",
                        help="a spec with a growth block (default: specs/growth.nmas)")
    parser.add_argument("--task", default="reasoning_gym:basic_arithmetic",
                        help="KIND:ARG (default: reasoning_gym:basic_arithmetic)")
    parser.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a generator setting; repeatable")
    parser.add_argument("--answer-format", choices=ANSWER_FORMATS,
                        help="how the final answer is extracted (default: the spec's output format)")
    parser.add_argument("--steps", type=int, default=6, help="training steps for each run (default: 6)")
    parser.add_argument("--reference-steps", type=int, default=900,
                        help="the run length the spec's `after N steps` were written for (default: 900)")
    parser.add_argument("--group", type=int, default=2, help="samples per input (default: 2)")
    parser.add_argument("--batch", type=int, default=1, help="inputs per step (default: 1)")
    parser.add_argument("--max-tokens", type=int, default=16, help="cap on every node's max_tokens (default: 16)")
    parser.add_argument("--eval-n", type=int, default=20, help="held-out questions for the final evaluation (default: 20)")
    parser.add_argument("--eval-batch", type=int, default=8, help="questions per evaluation rollout (default: 8)")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="grown run: held-out evaluations every N steps for `or plateau` (default: 0, none)")
    parser.add_argument("--plateau-n", type=int, default=10, help="questions per plateau evaluation (default: 10)")
    parser.add_argument("--no-untrained", action="store_true", help="skip evaluating the untrained NeuroMAS-7")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of training data, adapters and sampling (default: 0)")
    parser.add_argument("--runs", help="keep the two run folders here (default: a temporary folder)")
    parser.add_argument("--out", default="bench/results/growth_experiment.json", help="where to write the JSON results")
    args = parser.parse_args(argv)
    for name in ("steps", "group", "batch", "max_tokens", "eval_n", "eval_batch", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    plan = neuromas.compile(args.spec)
    if not plan.growth or plan.train is None:
        parser.error(f"{args.spec} needs a train block and a growth block")
    train_settings = msgspec.structs.replace(plan.train, steps=args.steps, group=args.group, batch=args.batch)
    plan = cap_max_tokens(msgspec.structs.replace(plan, train=train_settings), args.max_tokens)
    if args.answer_format is not None:
        plan = with_answer_format(plan, args.answer_format)
    plan = scaled_schedule(plan, args.steps, args.reference_steps)
    final = stage_plans(plan)[-1].plan  # the grown system, trained from scratch
    options = TaskOptions(input_names=plan.inputs, seed=args.seed, options=parse_task_options(args.task_option))
    task = load_task(args.task, options)
    schedule = [(stage.name, stage.after_steps) for stage in plan.growth]
    print(f"schedule over {args.steps} steps: {schedule}", file=sys.stderr)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch_dir:
        runs = Path(args.runs) if args.runs else Path(scratch_dir)
        if not args.no_untrained:
            runtime = make_runtime_factory(args)(final)
            rows.append({"run": "untrained", "system": final.stage, "train_steps": 0, "train_s": 0.0,
                         "eval": evaluate_runtime(runtime, final, args, "untrained")})
            del runtime
        session, seconds, stages = train_grown(plan, task, args, runs / "grown")
        rows.append({"run": "grown", "system": session.plan.stage, "train_steps": session.state.step, "train_s": seconds,
                     "stages": stages, "eval": evaluate_runtime(session.runtime, session.plan, args, "grown")})
        del session
        session, seconds = train_scratch(final, task, args, runs / "scratch")
        rows.append({"run": "scratch", "system": final.stage, "train_steps": session.state.step, "train_s": seconds,
                     "eval": evaluate_runtime(session.runtime, final, args, "scratch")})
    for row in rows:
        row["eval"] = msgspec.to_builtins(row["eval"])
    print(table(rows), end="")
    results = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "arguments": vars(args),
        "schedule": schedule,
        "runs": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
