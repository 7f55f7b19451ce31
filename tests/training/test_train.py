"""Short training runs on the real bundled model: metrics, adapters, frozen nodes, exact resume."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from neuromas.diagnostics import UserError
from neuromas.runtime.models.adapters import attach_adapters
from neuromas.runtime.backends.transformers import TransformersBackend
from neuromas.runtime.training.checkpoint import list_checkpoints
from neuromas.runtime.generation.rollout import Runtime
from neuromas.runtime.tasks.registry import Example, Task
from neuromas.runtime.training.loop import train
from neuromas.runtime.training.scoring import make_scorer
from neuromas.runtime.training.session import METRICS_FILE, TrainSettings, start_session

REPO = Path(__file__).resolve().parents[2]
PLUGINS = "tests.training.reward_plugins"
QUESTIONS = ["What is 2 + 3?", "Name a fruit.", "What is 10 - 4?", "Spell cat."]
TIMING = {"rollout_s", "update_s", "sync_s", "step_s"}


@pytest.fixture
def task() -> Task:
    return Task("questions", [Example({"question": q}, "5", {}) for q in QUESTIONS], seed=0)


@pytest.fixture(autouse=True)
def plugins_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))


def make_runtime(base_model, plan, seed: int = 0) -> Runtime:
    """A Runtime on a private copy of the session's model; the adapters' random init is seeded."""
    torch.manual_seed(seed)
    model = attach_adapters(copy.deepcopy(base_model.model), plan)
    return Runtime(plan, TransformersBackend(model, base_model.tokenizer))


def code_scorer(plan, task):
    """The plan's reward, a test plugin: user code, allowed here."""
    return make_scorer(plan.train.reward, task, allow_code=True)


def lora_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def test_a_short_run_trains_the_adapters_and_logs_every_step(base_model, make_plan, task, tmp_path):
    plan = make_plan(
        max_tokens=6, algorithm="reinforce", reward=f"{PLUGINS}:flaky_vowel_share", frozen=("hidden[1]",), lr=1e-2,
        group=3, batch=1,
    )
    runtime = make_runtime(base_model, plan)
    before = lora_state(runtime.backend.model)
    probe = base_model.tokenizer("What is 2 + 3?", return_tensors="pt").input_ids
    with torch.no_grad():
        frozen_logits = runtime.backend.model(probe, adapter_names=["__base__"]).logits  # what hidden[1] runs
    settings = TrainSettings(steps=2, save_every=1, keep_checkpoints=1, log_kl=True)
    session = start_session(plan, runtime, task, settings, tmp_path, score=code_scorer(plan, task))
    returned = train(session)

    rows = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert rows == returned and [row["step"] for row in rows] == [1, 2]
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1, 2] and samples[0]["inputs"]["question"] in QUESTIONS
    assert [row["data_position"] for row in rows] == [1, 2]
    for row in rows:
        assert math.isfinite(row["loss"]) and row["grad_norm"] > 0 and row["tokens"] > 0
        assert row["completions"] == 1 * 3 * 3  # inputs x group x nodes
        assert row["reward_failures"] == 1  # every third reward call raises, and the run goes on
        assert 0.0 <= row["reward_mean"] <= 1.0 and row["kl"] >= 0.0
        assert row["ratio"] == pytest.approx(1.0, abs=1e-6)  # one pass: old log-probs are the model's own
        assert 0 <= row["length_truncations"] <= row["completions"]
        assert all(row[name] >= 0 for name in TIMING)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # B starts at zero: the adapters are the base
    assert rows[1]["kl"] > 0
    # Per node, from the sampler's log-probs (bf16 numerics: not exactly 0 at step 1).
    node_kl = [{key: value for key, value in row.items() if key.endswith("/kl")} for row in rows]
    print("per-node KL to the base:", node_kl)
    trained = {f"node/{node.id}/kl" for node in plan.nodes if node.id != "hidden[1]"}  # a frozen node is the base
    assert set(node_kl[0]) == set(node_kl[1]) == trained
    assert all(0.0 <= value < 0.01 for value in node_kl[0].values())
    assert all(node_kl[1][key] > node_kl[0][key] for key in trained)

    after = lora_state(runtime.backend.model)
    for name in before:
        if ".hidden_1." in name:
            continue
        if "lora_B" in name:
            assert not torch.equal(before[name], after[name]), name
    assert not any(".hidden_1." in name for name in after)  # the frozen node has no adapter ...
    with torch.no_grad():  # ... and still runs exactly the base model
        assert torch.equal(runtime.backend.model(probe, adapter_names=["__base__"]).logits, frozen_logits)

    (checkpoint,) = list_checkpoints(tmp_path)  # keep_checkpoints=1 pruned step 1
    assert checkpoint.name == "step-000002"
    assert {p.name for p in checkpoint.iterdir()} == {"adapters", "optimizer.pt", "rng.pt", "state.json", "manifest.json"}
    assert {p.name for p in (checkpoint / "adapters").iterdir()} == {"hidden_0", "answer_0"}
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 2
    assert not [p for p in checkpoint.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_resume_continues_exactly(base_model, make_plan, task, tmp_path):
    plan = make_plan(max_tokens=4, algorithm="grpo", reward=f"{PLUGINS}:vowel_share", lr=1e-2, kl=0.05, batch=1)

    straight = make_runtime(base_model, plan)
    session = start_session(plan, straight, task, TrainSettings(steps=3), tmp_path / "straight", score=code_scorer(plan, task))
    expected = train(session)

    first = make_runtime(base_model, plan)
    session = start_session(plan, first, task, TrainSettings(steps=2), tmp_path / "resumed", score=code_scorer(plan, task))
    train(session)
    second = make_runtime(base_model, plan, seed=123)  # another init: the checkpoint must override it
    session = start_session(plan, second, task, TrainSettings(steps=3), tmp_path / "resumed",
                            score=code_scorer(plan, task), resume=True)
    assert session.state.step == 2 and session.state.data_position == 2
    train(session)

    resumed = [json.loads(line) for line in (tmp_path / "resumed" / METRICS_FILE).read_text().splitlines()]
    assert [row["step"] for row in resumed] == [1, 2, 3]
    strip = lambda row: {key: value for key, value in row.items() if key not in TIMING}  # noqa: E731
    assert [strip(row) for row in resumed] == [strip(row) for row in expected]
    assert expected[-1]["grad_norm"] > 0
    want, got = lora_state(straight.backend.model), lora_state(second.backend.model)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[name], got[name]) for name in want)


def test_a_used_folder_needs_resume_and_the_same_plan(base_model, make_plan, task, tmp_path):
    plan = make_plan(max_tokens=2, reward="contains", batch=1)
    (tmp_path / METRICS_FILE).write_text("")
    runtime = make_runtime(base_model, plan)
    with pytest.raises(UserError, match="--resume"):
        start_session(plan, runtime, task, TrainSettings(steps=1), tmp_path)
    (tmp_path / METRICS_FILE).unlink()
    train(start_session(plan, runtime, task, TrainSettings(steps=1), tmp_path))
    other = make_plan(max_tokens=2, reward="contains", batch=1, lr=0.5)
    with pytest.raises(UserError, match="another plan"):
        start_session(other, make_runtime(base_model, other), task, TrainSettings(steps=2), tmp_path, resume=True)
    with pytest.raises(UserError, match="--seed"):
        start_session(plan, runtime, task, TrainSettings(steps=2, seed=7), tmp_path, resume=True)


def test_plans_that_cannot_train_are_refused(base_model, make_plan, task, tmp_path):
    import msgspec

    plan = make_plan()
    runtime = make_runtime(base_model, plan)
    with pytest.raises(UserError, match="no train block"):
        start_session(msgspec.structs.replace(plan, train=None), runtime, task, TrainSettings(steps=1), tmp_path)
    frozen = make_plan(frozen=("hidden[0]", "hidden[1]", "answer[0]"))
    with pytest.raises(UserError, match="frozen"):
        start_session(frozen, runtime, task, TrainSettings(steps=1), tmp_path)


def test_several_epochs_reuse_the_rollout_with_a_clipped_ratio(base_model, make_plan, task, tmp_path):
    plan = make_plan(max_tokens=4, algorithm="rloo", reward=f"{PLUGINS}:vowel_share", lr=5e-2, clip=0.05,
                     epochs=3, batch=1)
    session = start_session(plan, make_runtime(base_model, plan), task, TrainSettings(steps=1), tmp_path,
                            score=code_scorer(plan, task))
    (row,) = train(session)
    # Pass 1 starts at ratio 1; passes 2 and 3 see the adapters the earlier passes moved.
    assert row["ratio"] != pytest.approx(1.0, abs=1e-6)
    assert row["clip_fraction"] > 0 and math.isfinite(row["loss"])


def test_a_step_without_signal_skips_the_optimizer_and_still_counts(base_model, make_plan, task, tmp_path):
    """Step 1 has graded rewards; step 2's are all 0.3: its advantages are exactly zero, so
    AdamW must not move the adapters on its old momentum, yet the step is logged and saved."""
    plan = make_plan(max_tokens=3, algorithm="grpo", group=3, batch=1, lr=1e-2)
    calls = {"count": 0}

    def graded_then_constant(answer, example) -> float:
        calls["count"] += 1
        return 0.3 if calls["count"] > plan.train.group else (calls["count"] % 3) ** 2 / 4  # 0.25, 1, 0

    runtime = make_runtime(base_model, plan)
    session = start_session(plan, runtime, task, TrainSettings(steps=2, save_every=1, keep_checkpoints=0), tmp_path,
                            score=graded_then_constant)
    session.settings = session.settings._replace(steps=1)
    (first,) = train(session)
    after_first = lora_state(runtime.backend.model)
    session.settings = session.settings._replace(steps=2)
    (second,) = train(session)
    assert first["zero_std_fraction"] == 0.0 and first["optimizer_skipped"] is False and first["grad_norm"] > 0
    assert second["zero_std_fraction"] == 1.0 and second["optimizer_skipped"] is True
    assert first["rows_skipped"] == 0 and second["rows_skipped"] > 0  # every row of step 2 had advantage 0
    after_second = lora_state(runtime.backend.model)
    assert all(torch.equal(after_first[name], after_second[name]) for name in after_first)
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-000001", "step-000002"]
