"""The plateau decision and the growth trigger on hand-made reward sequences; the CLI's checks of the flags."""

from __future__ import annotations

import json

import pytest

import neuromas
from neuromas.cli import main
from neuromas.runtime.training.plateau import EVALS_FILE, evals_since_best, has_plateaued, is_due, read_evals, step_trigger_only
from neuromas.runtime.training.schedule import _record_stage, growth_trigger

SPEC = """
system plateau_growth {
    input question
    layer hidden width 1 { max_tokens 3 }
    layer answer width 1 { max_tokens 3 }
    hidden <- question
    answer <- hidden dense, question
    output answer
    train { group 2  batch 1  reward numeric_match }
    growth {
        stage small {}
        stage wide { widen hidden to 2 } after 10 steps or plateau 2 evals
        stage deep { insert mid width 1 after hidden } after 20 steps
    }
}
"""


@pytest.mark.parametrize(
    ("rewards", "since"),
    [
        ([], 0),
        ([0.3], 0),
        ([0.1, 0.2, 0.3], 0),  # improving every time
        ([0.3, 0.2, 0.1], 2),
        ([0.2, 0.2, 0.2], 2),  # equal is not better
        ([0.1, 0.5, 0.4, 0.5], 2),  # the first to reach the best counts
        ([0.5, 0.1, 0.6, 0.6], 1),
    ],
)
def test_evals_since_best(rewards, since):
    assert evals_since_best(rewards) == since


def test_has_plateaued_needs_patience_evaluations_after_the_best():
    assert not has_plateaued([], 1)
    assert not has_plateaued([0.0], 1)  # the first evaluation only sets the best
    assert has_plateaued([0.0, 0.0], 1)
    assert not has_plateaued([0.4, 0.3, 0.2], 3)
    assert has_plateaued([0.4, 0.3, 0.2, 0.4], 3)
    assert not has_plateaued([0.4, 0.3, 0.2, 0.41], 3)  # a new best resets the count
    with pytest.raises(ValueError, match="patience"):
        has_plateaued([0.1], 0)


def test_growth_trigger_takes_whichever_comes_first():
    plan = neuromas.compile(SPEC)
    _, wide, deep = plan.growth
    assert growth_trigger(None, 100, [0.0, 0.0, 0.0]) is None  # the last stage never grows
    assert growth_trigger(wide, 3, [0.1, 0.2]) is None
    assert growth_trigger(wide, 3, [0.2, 0.1, 0.2]) == "plateau"
    assert growth_trigger(wide, 10, [0.1, 0.2]) == "steps"
    assert growth_trigger(wide, 10, [0.2, 0.1, 0.1]) == "steps"  # both: the step count names it
    assert growth_trigger(deep, 19, [0.5, 0.0, 0.0, 0.0]) is None  # no plateau clause: steps only


def test_evaluations_are_due_every_n_steps_and_after_the_last():
    assert [step for step in range(12) if is_due(step, 4, 10)] == [4, 8, 10]
    assert not is_due(0, 1, 10)


def test_a_run_without_evaluations_is_warned_that_only_steps_start_stages():
    plan = neuromas.compile(SPEC)
    warning = step_trigger_only(plan.growth)
    assert warning is not None and "'wide' after 10 steps" in warning and "--eval-every" in warning
    assert "'deep'" not in warning
    assert step_trigger_only(plan.growth[2:]) is None


def test_stage_records_say_why_and_survive_a_resume(tmp_path):
    _record_stage(tmp_path, "small", 0, "start")
    _record_stage(tmp_path, "wide", 4, "plateau", ["small"])
    _record_stage(tmp_path, "deep", 20, "steps", ["small", "wide"])
    history = json.loads((tmp_path / "stages.json").read_text())
    assert history == [{"stage": "small", "start_step": 0, "trigger": "start"},
                       {"stage": "wide", "start_step": 4, "trigger": "plateau"},
                       {"stage": "deep", "start_step": 20, "trigger": "steps"}]
    _record_stage(tmp_path, "wide", 12, "start", ["small"])  # resumed in stage wide at step 12
    assert json.loads((tmp_path / "stages.json").read_text()) == history[:2]
    _record_stage(tmp_path, "small", 3, "start")  # resumed before the growth
    assert json.loads((tmp_path / "stages.json").read_text()) == history[:1]


def test_reading_evaluations_back_drops_rows_after_the_checkpoint(tmp_path):
    rows = [{"step": step, "stage": "small", "reward_mean": 0.1 * step} for step in (2, 4, 6)]
    (tmp_path / EVALS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert read_evals(tmp_path, 5) == rows[:2]
    assert read_evals(tmp_path, 6) == rows[:2]  # the file itself lost the later row
    assert read_evals(tmp_path, 0) == [] and not (tmp_path / EVALS_FILE).exists()


def test_eval_flags_need_a_growth_schedule_and_positive_numbers(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"question": "What is 1 + 1?", "answer": "2"}) + "\n")
    spec = tmp_path / "plain.nmas"
    spec.write_text(SPEC.split("    growth {")[0] + "}\n")
    code = main(["train", str(spec), "--task", f"jsonl:{data}", "--out", str(tmp_path / "run"), "--eval-every", "2"])
    assert code == 2 and "needs a growth block" in capsys.readouterr().err
    growth_spec = tmp_path / "growth.nmas"
    growth_spec.write_text(SPEC)
    code = main(["train", str(growth_spec), "--task", f"jsonl:{data}", "--out", str(tmp_path / "run"),
                 "--eval-every", "2", "--eval-n", "0"])
    assert code == 2 and "argument --eval-n: must be from 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
