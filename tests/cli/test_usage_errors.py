"""Usage errors found before any model loads (exit 2, saying what and where), and damaged
files named with their line (exit 1)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec
import pytest

import neuromas
from neuromas.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cli_helpers.py (pytest runs in importlib mode)
from cli_helpers import GROWTH, NEUROMAS3  # noqa: E402


def run(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


# --task -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("nope:x", "--task 'nope:x': unknown task kind 'nope' (known: jsonl, hf, reasoning_gym, humaneval)"),
        ("jsonl:", "--task 'jsonl:': expected KIND:ARGUMENT"),
        ("jsonl", "--task 'jsonl': expected KIND:ARGUMENT"),
        ("data.txt", "or a data file (.jsonl, .json, .csv, .parquet)"),
        ("reasoning_gym:no_such_generator", "--task reasoning_gym:no_such_generator (no settings): reasoning_gym refused it"),
    ],
)
def test_a_bad_task_is_a_usage_error(task, message, capsys, tmp_path, no_model):
    code, err = run(capsys, ["train", NEUROMAS3, "--task", task, "--out", str(tmp_path / "run")])
    assert (code, "Traceback" in err) == (2, False) and message in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["size=0"], "--task-option size=0: must be a whole number from 1 to 1000000000"),
        (["size=2.5"], "--task-option size=2.5: must be a whole number"),
        (["max_digits=abc"], "--task reasoning_gym:basic_arithmetic (max_digits='abc'): reasoning_gym refused it"),
        (["oops"], "--task-option 'oops': expected KEY=VALUE"),
    ],
)
def test_a_bad_reasoning_gym_setting_is_a_usage_error(options, message, capsys, tmp_path, no_model):
    pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed")
    argv = ["eval", NEUROMAS3, "--task", "reasoning_gym:basic_arithmetic"]
    for option in options:
        argv += ["--task-option", option]
    code, err = run(capsys, argv)
    assert code == 2 and message in err, err


def test_a_plain_data_file_path_is_a_task(tmp_path, data):
    from neuromas.runtime.tasks.registry import TaskOptions, load_task, parse_reference

    assert parse_reference("runs/data.jsonl") == ("jsonl", "runs/data.jsonl")
    assert parse_reference("rows.CSV") == ("hf", "csv:rows.CSV")
    assert parse_reference("a/b.parquet") == ("hf", "parquet:a/b.parquet")
    assert parse_reference("x.json") == ("hf", "json:x.json")
    assert parse_reference("jsonl:x.json") == ("jsonl", "x.json")
    task = load_task(str(data), TaskOptions(input_names=("question",)))
    assert (task.name, len(task), task.at(0).answer) == (f"jsonl:{data}", 1, "5")
    pytest.importorskip("datasets", reason="the datasets package is not installed")
    table = tmp_path / "rows.csv"
    table.write_text("question,answer\nWhat is 2 + 3?,5\nWhat is 1 + 1?,2\n")
    task = load_task(str(table), TaskOptions(input_names=("question",)))
    assert len(task) == 2 and {task.at(i).answer for i in range(2)} == {"5", "2"}


def test_code_reward_without_allow_code_is_a_usage_error(capsys, tmp_path, data, no_model):
    code, err = run(capsys, ["train", NEUROMAS3, "--task", str(data), "--out", str(tmp_path / "run"),
                             "--reward", "my_rewards:score"])
    assert code == 2 and "pass --allow-code" in err, err
    code, err = run(capsys, ["eval", NEUROMAS3, "--task", str(data), "--reward", "exact_mach"])
    assert code == 2 and "unknown reward 'exact_mach'" in err, err


def test_a_question_field_the_user_names_must_be_there(capsys, tmp_path, no_model):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5"}) + "\n")
    code, err = run(capsys, ["eval", NEUROMAS3, "--task", str(data), "--question-field", "nope"])
    assert code == 1 and f"{data}:1: no field 'nope' (fields: question, answer)" in err, err
    with pytest.raises(no_model):  # the default field still accepts "prompt" and "input"
        data.write_text(json.dumps({"prompt": "What is 2 + 3?", "answer": "5"}) + "\n")
        main(["eval", NEUROMAS3, "--task", str(data)])


# Output paths --------------------------------------------------------------------------------------


@pytest.fixture
def places(tmp_path) -> dict[str, str]:
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    return {"file": str(tmp_path / "file"), "under_file": str(tmp_path / "file" / "run"),
            "folder": str(tmp_path / "folder")}


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("file", "is a file, not a folder"),
        ("under_file", "which is a file, not a folder"),
        ("/proc/newdir", "--out '/proc/newdir': cannot write a folder there"),
        ("/proc/version", "--out '/proc/version' is a file, not a folder"),
        ("/dev/null", "--out '/dev/null' is a file, not a folder"),
        ("/sys/kernel/x", "--out '/sys/kernel/x': cannot write a folder there"),
        ("", "--out is empty"),
        ("/", "--out '/' is the root folder"),
    ],
)
def test_train_refuses_an_out_folder_it_cannot_write(out, message, places, data, capsys, no_model):
    code, err = run(capsys, ["train", NEUROMAS3, "--task", str(data), "--out", places.get(out, out)])
    assert code == 2 and message in err, err


@pytest.mark.parametrize(
    ("command", "out", "message"),
    [
        ("eval", "folder", "is a folder: name a file to write"),
        ("eval", "/proc/version", "-o '/proc/version': cannot write this file"),
        ("eval", "", "-o is empty"),
        ("rollout", "/proc/version", "-o '/proc/version': cannot write this file"),
        ("rollout", "under_file", "which is a file, not a folder"),
        ("compile", "/", "-o '/' is the root folder"),
    ],
)
def test_output_files_are_checked_before_anything_runs(command, out, message, places, data, capsys, no_model):
    argv = {"eval": ["eval", NEUROMAS3, "--task", str(data)], "rollout": ["rollout", NEUROMAS3, "--data", str(data)],
            "compile": ["compile", NEUROMAS3]}[command]
    code, err = run(capsys, [*argv, "-o", places.get(out, out)])
    assert code == 2 and message in err, err
    assert Path(places["file"]).read_text() == "x"


def test_an_output_file_that_exists_is_left_as_it_was_by_the_check(tmp_path, data, capsys, no_model):
    out = tmp_path / "result.json"
    out.write_text("old")
    with pytest.raises(no_model):
        main(["eval", NEUROMAS3, "--task", str(data), "-o", str(out)])
    assert out.read_text() == "old"


# Damaged files ----------------------------------------------------------------------------------------


def adapter_folder(root: Path, plan: neuromas.Plan, tensors: dict | None = None, weights: bytes | None = None) -> Path:
    """Saved adapters for every slot of `plan` (peft's layout), with these weights."""
    from safetensors.torch import save_file

    for slot in plan.adapters:
        folder = root / slot.name
        folder.mkdir(parents=True)
        config = {"r": plan.adapter.rank, "lora_alpha": plan.adapter.alpha, "target_modules": list(plan.adapter.targets),
                  "use_dora": False, "use_rslora": False}
        (folder / "adapter_config.json").write_text(json.dumps(config))
        if weights is not None:
            (folder / "adapter_model.safetensors").write_bytes(weights)
        else:
            save_file(tensors, str(folder / "adapter_model.safetensors"))
    return root


@pytest.mark.parametrize("damage", ["header", "shape", "nan"])
def test_run_names_a_damaged_adapter_file(damage, tmp_path, capsys, no_model):
    import torch

    plan = neuromas.compile(NEUROMAS3)
    rank, key = plan.adapter.rank, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    if damage == "header":
        root = adapter_folder(tmp_path / "adapters", plan, weights=b"\xff" * 8 + b"{not json")
    elif damage == "shape":
        root = adapter_folder(tmp_path / "adapters", plan, {key: torch.zeros(rank + 3, 8)})
    else:
        root = adapter_folder(tmp_path / "adapters", plan, {key: torch.full((rank, 8), float("nan"))})
    code, err = run(capsys, ["run", NEUROMAS3, "--input", "hi", "--adapters", str(root)])
    assert code == 1 and "Traceback" not in err, err
    assert "adapter_model.safetensors" in err and str(root) in err
    assert {"header": "is not a readable safetensors file", "shape": f"which is not a rank-{rank} LoRA matrix",
            "nan": "holds NaN or infinite values"}[damage] in err


def metrics_run(tmp_path: Path, lines: list[str]) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"step": 1, "reward_mean": 0.5}', "[1, 2, 3]"], "metrics.jsonl:2: expected a JSON object"),
        (['{"step": "one", "reward_mean": 0.5}'], "metrics.jsonl:1: 'step' must be a whole number"),
        (['{"step": 1, "reward_mean": "high"}'], "metrics.jsonl:1: 'reward_mean' must be a number or null"),
        (['{"step": 1, "loss": [0.1]}'], "metrics.jsonl:1: 'loss' must be a number or null"),
        (['{"step": true}'], "metrics.jsonl:1: 'step' must be a whole number"),
    ],
)
@pytest.mark.parametrize("command", ["report", "plot"])
def test_report_and_plot_name_the_line_of_a_bad_metrics_row(command, lines, message, tmp_path, capsys):
    code, err = run(capsys, [command, str(metrics_run(tmp_path, lines))])
    assert code == 1 and message in err and "Traceback" not in err, err


def test_report_and_compare_refuse_an_eval_result_no_evaluation_gives(tmp_path, capsys):
    result = {"system": "s", "stage": None, "plan_hash": "h", "task": "t", "adapters": None, "n": -5, "group": 1,
              "correct": 1, "accuracy": 2.0, "accuracy_low": 0.0, "accuracy_high": 1.0, "tokens_per_question": 1.0,
              "calls_per_question": 1.0, "calls_per_rollout": 1, "seconds_per_question": 1.0, "seed": 0, "scores": [1.0]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(result))
    for argv in (["eval", "--compare", str(path)], ["report", str(path)]):
        code, err = run(capsys, argv)
        assert code == 1 and f"'{path}'" in err and "n must be at least 1, got -5" in err, err
        assert "accuracy must be from 0 to 1, got 2.0" in err
    path.write_text(json.dumps([result]))
    code, err = run(capsys, ["eval", "--compare", str(path)])
    assert code == 1 and "Expected `object`, got `array`" in err, err


def test_a_consistent_eval_result_still_reads(tmp_path):
    from neuromas.runtime.tasks.evaluate import EvalResult

    good = EvalResult(system="s", stage=None, plan_hash="h", task="t", adapters=None, n=2, group=1, correct=1,
                      accuracy=0.5, accuracy_low=0.09, accuracy_high=0.91, tokens_per_question=3.0,
                      calls_per_question=1.0, calls_per_rollout=1, seconds_per_question=0.1, seed=0, scores=[1.0, 0.0])
    assert msgspec.json.decode(msgspec.json.encode(good), type=EvalResult) == good
    with pytest.raises(ValueError, match="2 scores for n x group = 4 samples"):
        msgspec.structs.replace(good, group=2, correct=2)


def test_a_huge_input_line_is_refused_at_once_with_its_line(tmp_path, capsys, no_model):
    import time

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"question": "short", "answer": "1"}) + "\n"
                    + json.dumps({"question": "x" * 20_000_000, "answer": "2"}) + "\n")
    started = time.perf_counter()
    code, err = run(capsys, ["rollout", NEUROMAS3, "--data", str(data)])
    assert code == 1 and f"{data}:2: the line is 20,000,031 characters long, above the 1,000,000" in err, err
    assert time.perf_counter() - started < 30
    data.write_text(json.dumps({"question": "x" * 200_000, "answer": "2"}) + "\n")
    code, err = run(capsys, ["train", NEUROMAS3, "--task", str(data), "--out", str(tmp_path / "run")])
    assert code == 1 and f"{data}:1: field 'question' is 200,000 characters long, above the 100,000" in err, err
    code, err = run(capsys, ["run", NEUROMAS3, "--input", "x" * 200_000])
    assert code == 2 and "--input is 200,000 characters long" in err, err


# grow ---------------------------------------------------------------------------------------------------


def trained_run(tmp_path: Path, **train_overrides) -> Path:
    """A run folder as `neuromas train specs/growth.nmas --stage neuromas3 --batch ...` leaves
    it: plan.json and a checkpoint's state.json (the weights are never reached)."""
    from neuromas.runtime.training.checkpoint import checkpoint_path, plan_fingerprint

    plan = neuromas.compile(GROWTH, stage="neuromas3")
    if train_overrides:
        plan = msgspec.structs.replace(plan, train=msgspec.structs.replace(plan.train, **train_overrides))
    run_dir = tmp_path / "n3"
    folder = checkpoint_path(run_dir, 4)
    folder.mkdir(parents=True)
    (run_dir / "plan.json").write_text(plan.to_pretty_json())
    state = {"step": 4, "data_position": 16, "seed": 0, "plan_fingerprint": plan_fingerprint(plan)}
    (folder / "state.json").write_text(json.dumps(state))
    return run_dir


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("{broken", "state.json:1: not valid JSON"),
        ('["step"]', "state.json: expected a JSON object, got list"),
        ('{"step": 4, "seed": 0, "plan_fingerprint": "x"}', "state.json: no 'data_position' field: the checkpoint is incomplete"),
        ('{"step": "4", "data_position": 0, "seed": 0, "plan_fingerprint": "x"}', "state.json: 'step' must be a whole number"),
    ],
)
def test_grow_names_a_broken_or_incomplete_state_file(state, message, tmp_path, capsys, no_model):
    run_dir = trained_run(tmp_path)
    (next(run_dir.glob("checkpoints/*")) / "state.json").write_text(state)
    code, err = run(capsys, ["grow", str(run_dir), "--spec", GROWTH, "--stage", "neuromas5", "--out", str(tmp_path / "n5")])
    assert code == 1 and message in err and "Traceback" not in err, err


def test_grow_takes_the_overrides_a_checkpoint_was_trained_with(tmp_path, capsys, no_model):
    plan = neuromas.compile(GROWTH, stage="neuromas3")
    run_dir = trained_run(tmp_path, batch=plan.train.batch + 1)
    argv = ["grow", str(run_dir), "--spec", GROWTH, "--stage", "neuromas5", "--out", str(tmp_path / "n5")]
    code, err = run(capsys, argv)
    assert code == 2, err
    assert (f"was trained from stage 'neuromas3' with other settings: batch {plan.train.batch + 1}, here "
            f"{plan.train.batch} (grow with --batch {plan.train.batch + 1})") in err
    with pytest.raises(no_model):  # the same override: past every check, to the model load
        main([*argv, "--batch", str(plan.train.batch + 1)])


def test_grow_names_max_tokens_and_group_overrides(tmp_path, capsys, no_model):
    from neuromas.runtime.generation.rollout import cap_max_tokens
    from neuromas.runtime.training.checkpoint import plan_fingerprint

    run_dir = trained_run(tmp_path, group=3)
    plan = cap_max_tokens(neuromas.Plan.from_json((run_dir / "plan.json").read_bytes()), 5)
    (run_dir / "plan.json").write_text(plan.to_pretty_json())
    state_file = next(run_dir.glob("checkpoints/*")) / "state.json"
    state = json.loads(state_file.read_text()) | {"plan_fingerprint": plan_fingerprint(plan)}
    state_file.write_text(json.dumps(state))
    argv = ["grow", str(run_dir), "--spec", GROWTH, "--stage", "neuromas5", "--out", str(tmp_path / "n5")]
    code, err = run(capsys, argv)
    assert code == 2 and "group 3, here" in err and "(grow with --group 3)" in err and "(grow with --max-tokens 5)" in err
    with pytest.raises(no_model):
        main([*argv, "--group", "3", "--max-tokens", "5"])


def test_grow_refuses_an_out_folder_that_holds_a_run(tmp_path, capsys, no_model):
    run_dir = trained_run(tmp_path)
    other = trained_run(tmp_path / "other")
    code, err = run(capsys, ["grow", str(run_dir), "--spec", GROWTH, "--stage", "neuromas5", "--out", str(other)])
    assert code == 1 and "already holds a run" in err, err
    code, err = run(capsys, ["grow", str(run_dir), "--spec", GROWTH, "--out", str(tmp_path / "n5")])
    assert code == 2 and "grow needs --stage NAME" in err, err


def test_unknown_stage_is_a_usage_error(capsys):
    for argv in (["compile", GROWTH, "--stage", "nope"], ["run", GROWTH, "--stage", "nope", "--input", "x"]):
        code, err = run(capsys, argv)
        assert code == 2 and "no growth stage 'nope' (stages: neuromas3, neuromas5, neuromas7)" in err, err



def test_train_says_how_many_steps_this_call_trained():
    from neuromas.commands.train import trained_summary

    assert trained_summary([], 2, 1) == "trained no steps: the run is at step 2 already (--steps 1; raise it to train on)"
    assert trained_summary([1, 2], 2, 2) == "trained 2 steps"
    assert trained_summary([3, 4], 4, 4) == "trained 2 steps (3 to 4, resumed at step 2)"
