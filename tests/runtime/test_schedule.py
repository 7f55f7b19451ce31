"""Training through growth stages on the real bundled model: one run, stages recorded, exact resume,
early growth on a plateau of held-out reward."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch

import neuromas
from neuromas.runtime.models.adapters import attach_adapters
from neuromas.runtime.backends.transformers import TransformersBackend
from neuromas.runtime.training.checkpoint import list_checkpoints
from neuromas.runtime.training.plateau import EvalSettings
from neuromas.runtime.generation.rollout import Runtime
from neuromas.runtime.training.schedule import train_with_growth
from neuromas.runtime.tasks.registry import TaskOptions, load_task
from neuromas.runtime.training.session import TrainSettings

SPEC = (Path(__file__).resolve().parents[1] / "specs" / "tiny_growth.nmas").read_text()
TIMING = ("rollout_s", "update_s", "sync_s", "step_s", "seconds")
# Early growth: held-out rewards that cannot improve (no 3-token answer is a 12-digit number) plateau at once.
PLATEAU_SPEC = SPEC.replace("after 2 steps", "after 50 steps or plateau 1 evals")
UNREACHABLE = "987654321987"


@pytest.fixture
def task(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(4)))
    return load_task(f"jsonl:{path}", TaskOptions(input_names=("question",)))


def text_code(answer, example) -> float:
    """A graded reward that tells almost any two texts apart: every group of distinct
    samples has a signal."""
    return sum(map(ord, answer.text)) % 101 / 100


def _run(loaded, task, out, steps, resume=False, spec=SPEC, evaluation=None, score=None):
    plan = neuromas.compile(spec)

    def make_runtime(stage_plan):
        torch.manual_seed(0)
        model = attach_adapters(copy.deepcopy(loaded.model), stage_plan, base_model=loaded.source)
        return Runtime(stage_plan, TransformersBackend(model, loaded.tokenizer, source=loaded.source), seed=0)

    rows = []
    session = train_with_growth(plan, make_runtime, task, TrainSettings(steps=steps, save_every=1, keep_checkpoints=0),
                                out, score=score, resume=resume, on_step=rows.append, evaluation=evaluation)
    return session, rows


def _metrics(out, name="metrics.jsonl"):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in (out / name).read_text().splitlines()]


def test_growth_run_records_stages_and_grows_at_its_step(loaded, task, tmp_path):
    out = tmp_path / "run"
    session, rows = _run(loaded, task, out, steps=3)
    assert [row["stage"] for row in rows] == ["small", "small", "wide"]
    assert json.loads((out / "stages.json").read_text()) == [
        {"stage": "small", "start_step": 0, "trigger": "start"}, {"stage": "wide", "start_step": 2, "trigger": "steps"}]
    assert not (out / "evals.jsonl").exists()
    assert session.plan.stage == "wide" and len(session.plan.nodes) == 3
    step2 = list_checkpoints(out)[1]
    assert step2.name == "step-000002"
    assert sorted(p.name for p in (step2 / "adapters").iterdir()) == ["node-answer-0", "node-hidden-0", "node-hidden-1"]
    # the copy starts equal to its source at the growth step
    source = (step2 / "adapters" / "node-hidden-0" / "adapter_model.safetensors").read_bytes()
    copy_ = (step2 / "adapters" / "node-hidden-1" / "adapter_model.safetensors").read_bytes()
    assert source == copy_


def test_resume_across_the_growth_boundary_is_exact(loaded, task, tmp_path):
    straight, _ = _run(loaded, task, tmp_path / "straight", steps=3)
    _run(loaded, task, tmp_path / "split", steps=2)  # stops on the boundary, before growing
    resumed, rows = _run(loaded, task, tmp_path / "split", steps=3, resume=True)
    assert [row["stage"] for row in rows] == ["wide"]
    assert _metrics(tmp_path / "split") == _metrics(tmp_path / "straight")
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        if "lora_" in name:
            assert torch.equal(a, b), name


def _lora(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters() if "lora_" in name}


def test_resume_inside_a_grown_stage_is_exact(loaded, task, tmp_path):
    """The grown model lists old slots before new ones; the model rebuilt on resume lists them
    in plan order. AdamW's moments must follow the names, so step 4 is the uninterrupted one."""
    straight, _ = _run(loaded, task, tmp_path / "straight", steps=4, score=text_code)
    _run(loaded, task, tmp_path / "split", steps=3, score=text_code)  # grows at step 2, trains step 3 grown
    resumed, rows = _run(loaded, task, tmp_path / "split", steps=4, resume=True, score=text_code)
    assert [row["stage"] for row in rows] == ["wide"] and resumed.state.step == 4
    assert _metrics(tmp_path / "split") == _metrics(tmp_path / "straight")
    want, got = _lora(straight.model), _lora(resumed.model)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[name], got[name]) for name in want), [n for n in want if not torch.equal(want[n], got[n])]
    # AdamW stepped in the grown stage (the moments mattered): the comparison has teeth
    assert all(row["grad_norm"] > 0 and not row["optimizer_skipped"] for row in _metrics(tmp_path / "straight"))


def test_grow_checkpoint_matches_growing_during_training(loaded, task, tmp_path):
    from neuromas.runtime.training.schedule import grow_checkpoint

    _run(loaded, task, tmp_path / "straight", steps=3)
    _run(loaded, task, tmp_path / "small", steps=2)
    plan = neuromas.compile(SPEC)

    def make_runtime(stage_plan):
        model = attach_adapters(copy.deepcopy(loaded.model), stage_plan, base_model=loaded.source)
        return Runtime(stage_plan, TransformersBackend(model, loaded.tokenizer, source=loaded.source))

    folder = grow_checkpoint(list_checkpoints(tmp_path / "small")[-1], plan, "wide", tmp_path / "grown", make_runtime)
    expected = tmp_path / "straight" / "checkpoints" / "step-000002" / "adapters"
    for slot in ("node-hidden-0", "node-hidden-1", "node-answer-0"):
        name = "adapter_model.safetensors"
        assert (folder / "adapters" / slot / name).read_bytes() == (expected / slot / name).read_bytes(), slot
    assert json.loads((tmp_path / "grown" / "plan.json").read_text())["stage"] == "wide"
    with pytest.raises(neuromas.UserError, match="first stage"):
        grow_checkpoint(folder, plan, "small", tmp_path / "again", make_runtime)


def test_plateau_of_held_out_reward_grows_early_and_resumes_across_it(loaded, tmp_path):
    """Evaluations at steps 1 and 2 give the same reward (0), a plateau of one
    evaluation: the stage meant for step 50 starts at step 2. Six steps and six
    evaluations: about a minute on a shared 2-core machine, like the resume test above."""
    def unreachable_task(seed):
        path = tmp_path / "held.jsonl"
        path.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": UNREACHABLE}) + "\n"
                                for i in range(4)))
        return load_task(f"jsonl:{path}", TaskOptions(input_names=("question",), seed=seed))

    task = unreachable_task(0)
    evaluation = EvalSettings(task=unreachable_task(1000), every=1, n=1, batch=1)
    straight, rows = _run(loaded, task, tmp_path / "straight", steps=3, spec=PLATEAU_SPEC, evaluation=evaluation)
    assert [row["stage"] for row in rows] == ["small", "small", "wide"]
    assert json.loads((tmp_path / "straight" / "stages.json").read_text())[1] == {
        "stage": "wide", "start_step": 2, "trigger": "plateau"}
    evals = _metrics(tmp_path / "straight", "evals.jsonl")
    assert [(row["step"], row["stage"], row["reward_mean"]) for row in evals] == [
        (1, "small", 0.0), (2, "small", 0.0), (3, "wide", 0.0)]
    assert evals[0]["n"] == 1 and evals[0]["accuracy_low"] == 0.0 and evals[0]["accuracy_high"] > 0.5

    # Stopped on the boundary before growing: the resumed run reads both evaluations back and grows.
    _run(loaded, task, tmp_path / "split", steps=2, spec=PLATEAU_SPEC, evaluation=evaluation)
    resumed, rows = _run(loaded, task, tmp_path / "split", steps=3, resume=True, spec=PLATEAU_SPEC, evaluation=evaluation)
    assert [row["stage"] for row in rows] == ["wide"]
    assert _metrics(tmp_path / "split") == _metrics(tmp_path / "straight")
    assert _metrics(tmp_path / "split", "evals.jsonl") == evals
    assert (tmp_path / "split" / "stages.json").read_text() == (tmp_path / "straight" / "stages.json").read_text()
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        if "lora_" in name:
            assert torch.equal(a, b), name



def test_a_plateau_spec_without_evaluations_warns_and_grows_by_steps(loaded, task, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="neuromas.runtime.training.schedule"):
        session, rows = _run(loaded, task, tmp_path / "run", steps=1, spec=PLATEAU_SPEC)
    assert "growth ignores `or plateau K evals`: 'wide' after 50 steps" in caplog.text
    assert session.plan.stage == "small" and not (tmp_path / "run" / "evals.jsonl").exists()


def test_capping_max_tokens_caps_every_growth_stage():
    from neuromas.runtime.generation.rollout import cap_max_tokens

    plan = cap_max_tokens(neuromas.compile("specs/growth.nmas"), 8)
    for stage in plan.growth:
        assert {node.generation.max_tokens for node in stage.plan.nodes} == {8}, stage.name
        assert {call.generation.max_tokens for call in stage.plan.calls} == {8}, stage.name
