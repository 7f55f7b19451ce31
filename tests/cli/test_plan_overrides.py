"""--lora-rank, --lr, --group, --batch and --answer-format change the plan the commands run, growth stages
included, before any model loads."""

from pathlib import Path

import pytest

from neuromas.cli import build_parser, main
from neuromas.commands.train import training_plan

SPEC = str(Path(__file__).resolve().parents[2] / "specs/growth.nmas")


def test_lora_rank_scales_alpha_and_reaches_every_growth_stage():
    args = build_parser().parse_args(["train", SPEC, "--task", "reasoning_gym:basic_arithmetic", "--out", "x",
                                      "--lora-rank", "4", "--lr", "3e-5"])
    plan = training_plan(args)
    assert (plan.adapter.rank, plan.adapter.alpha) == (4, 8.0)  # the spec's rank 16, alpha 32
    assert all((stage.plan.adapter.rank, stage.plan.adapter.alpha) == (4, 8.0) for stage in plan.growth)
    assert plan.train.lr == 3e-5


def test_training_overrides_and_the_answer_format_reach_every_growth_stage():
    """The schedule trains each stage with the run's train settings (`stage_plans`); the
    answer format must reach the stages' outputs too: a grown run once read its answers
    as text while the experiment asked for numbers."""
    from neuromas.runtime.training.schedule import stage_plans

    args = build_parser().parse_args(["train", SPEC, "--task", "reasoning_gym:basic_arithmetic", "--out", "x",
                                      "--lr", "1e-3", "--group", "3", "--batch", "5", "--steps", "7",
                                      "--answer-format", "number"])
    plan = training_plan(args)
    assert plan.growth and (plan.train.lr, plan.train.group, plan.train.batch, plan.train.steps) == (1e-3, 3, 5, 7)
    for stage in stage_plans(plan):
        assert (stage.plan.train.lr, stage.plan.train.group, stage.plan.train.batch) == (1e-3, 3, 5)
        assert {output.answer_format for output in stage.plan.outputs} == {"number"}


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--lora-rank", "0", "must be from 1 to 1024"),
    ("--lora-rank", "4096", "must be from 1 to 1024"),
    ("--lr", "0", "must be a finite number above 0"),
    ("--lr", "inf", "must be a finite number above 0"),
])
def test_out_of_range_overrides_are_usage_errors(flag, value, message, capsys):
    assert main(["train", SPEC, "--task", "reasoning_gym:basic_arithmetic", "--out", "x", flag, value]) == 2
    assert message in capsys.readouterr().err
