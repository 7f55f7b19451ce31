"""`evaluate` on the real bundled model, and the `eval` command's helpers."""

from __future__ import annotations

import json

import pytest

import neuromas
from neuromas.diagnostics import UserError
from neuromas.runtime.tasks.evaluate import comparison_table, evaluate, read_result
from neuromas.runtime.tasks.rewards import load_reward
from neuromas.runtime.generation.rollout import Runtime, cap_max_tokens
from neuromas.runtime.tasks.registry import TaskOptions, load_task

QUESTIONS = [("What is 2 + 2? Answer with a number.", "4"), ("What is 3 + 5? Answer with a number.", "8"),
             ("What is 10 - 7? Answer with a number.", "3")]


@pytest.fixture
def task(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    return load_task(f"jsonl:{path}", TaskOptions(input_names=("question",)))


def test_evaluate_counts_calls_tokens_and_scores(make_backend, task, tmp_path):
    plan = cap_max_tokens(neuromas.compile("specs/neuromas3.nmas"), 6)
    runtime = Runtime(plan, make_backend(plan), seed=0)
    reward = load_reward("numeric_match", allow_code=False)
    seen = []

    def score(answer, example):
        seen.append(example.answer)
        return reward(answer.text, example.answer)

    result = evaluate(runtime, task, score, n=3, batch=2, group=1)
    assert seen == [example.answer for example in task.batch(0, 3)]  # every question scored once, in order
    assert result.n == 3 and len(result.scores) == 3
    assert result.calls_per_rollout == 2
    assert result.calls_per_question == pytest.approx(4 / 3)  # 2 batches x 2 levels, over 3 questions
    assert 0 < result.tokens_per_question <= 3 * 6  # three nodes, at most 6 tokens each
    assert result.accuracy_low <= result.accuracy <= result.accuracy_high
    path = tmp_path / "result.json"
    import msgspec

    path.write_bytes(msgspec.json.encode(result))
    assert read_result(path) == result
    table = comparison_table([("n3", result), ("again", result)])
    assert table.splitlines()[0].split()[:3] == ["run", "task", "n"]
    assert len(table.splitlines()) == 4


def test_checkpoint_adapters_finds_the_newest_verified_checkpoint(tmp_path, capsys):
    from neuromas.commands.assemble import checkpoint_adapters
    from neuromas.runtime.training.checkpoint import write_manifest

    folders = [tmp_path / "run" / "checkpoints" / f"step-00000{step}" for step in (1, 2)]
    for folder in folders:
        (folder / "adapters").mkdir(parents=True)
        (folder / "adapters" / "weights.bin").write_bytes(b"0123")
        (folder / "state.json").write_text("{}")
        write_manifest(folder)
    assert checkpoint_adapters(tmp_path / "run") == folders[1] / "adapters"
    assert checkpoint_adapters(folders[0]) == folders[0] / "adapters"
    (folders[1] / "adapters" / "weights.bin").write_bytes(b"0124")  # damaged: the older one is used
    assert checkpoint_adapters(tmp_path / "run") == folders[0] / "adapters"
    assert "skipping step-000002" in capsys.readouterr().err
    with pytest.raises(UserError, match="weights.bin"):
        checkpoint_adapters(folders[1])
    with pytest.raises(UserError, match="holds no checkpoint"):
        checkpoint_adapters(tmp_path)
