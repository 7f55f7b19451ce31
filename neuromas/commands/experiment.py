"""`neuromas experiment FILE --out DIR`: every arm x seed trained and scored on the same
held-out questions, then one table with intervals and paired tests (results.json/.md/.png)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from neuromas.commands.options import command_parser

EXAMPLES = """examples:
  neuromas experiment experiments/paper_small.toml --out runs/paper_small
  neuromas experiment experiments/paper_small.toml --out runs/paper_small   # again: finished arms are skipped

An experiment file names the arms ([[arm]] tables: name, spec, train, rank, steps, stage,
group, eval_group) and what they share (task, task_options, steps, seeds, held_out,
held_out_seed, batch, group, max_tokens, lr, threads, reward, answer_format, reference,
match_budget). Each arm x seed runs `neuromas train` (unless train = false) and
`neuromas eval` in DIR/runs/ARM/seed-S/; a killed experiment resumes where it stopped."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(
        subparsers, "experiment", help="run a declarative experiment: arms x seeds, one table with paired tests",
        description="Train and evaluate every arm of an experiment file; write DIR/results.json, results.md, "
                    "results.png (--out DIR: the experiment folder, its runs and results).",
        epilog=EXAMPLES, groups=("out-dir",),
    )
    parser.add_argument("file", metavar="FILE", help="the experiment's TOML file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from neuromas.experiment.config import load_experiment

    print(execute(load_experiment(args.file), Path(args.out)), end="")
    return 0


def execute(experiment, out: Path, command: tuple[str, ...] | None = None) -> str:
    """Check budgets, run every unfinished arm x seed, write the results; returns the table.
    `command` replaces `python -m neuromas` (tests)."""
    import neuromas
    from neuromas.experiment.budget import check_matched, model_config, trainable_parameters
    from neuromas.experiment.results import collect, markdown, picture
    from neuromas.experiment.runner import Runner, eval_points

    plans = {arm.name: neuromas.compile(arm.spec) for arm in experiment.arms}  # spec errors before anything runs
    for arm in experiment.arms:
        if arm.rank is not None:
            plans[arm.name] = plans[arm.name].with_lora_rank(arm.rank)
    config = model_config(next(iter(plans.values())).model)
    parameters = {name: trainable_parameters(plan, config) for name, plan in plans.items()}
    trained = {arm.name: parameters[arm.name] for arm in experiment.arms if arm.train}
    for name, count in parameters.items():
        print(f"{name}: {count:,} trainable parameters" + ("" if name in trained else " (frozen)"), file=sys.stderr)
    if experiment.match_budget:
        for names in experiment.budget_groups().values():
            check_matched({name: parameters[name] for name in names})
    stage_starts = {name: [stage.after_steps for stage in plan.growth if stage.after_steps is not None]
                    for name, plan in plans.items()}
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(experiment, out, log=lambda line: print(line, file=sys.stderr, flush=True),
                    **({} if command is None else {"command": command}))
    runner.run(stage_starts)
    points = {arm.name: eval_points(experiment, arm, stage_starts[arm.name]) for arm in experiment.arms}
    results = collect(experiment, runner, points, trained)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out / "results.md").write_text(table)
    picture(results, out / "results.png")
    return table
