"""`neuromas train --report-to`: metrics rows, eval rows and the run config in each tracker,
read back with the tracker's own reader."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from neuromas.cli import main
from neuromas.runtime.training.tracking import Trackers, hyperparameters, scalars

REPO = Path(__file__).resolve().parents[2]
SPEC = str(REPO / "specs" / "neuromas3.nmas")


def write_data(path: Path) -> Path:
    rows = [{"question": "What is 2 + 3?", "answer": "5"}, {"question": "What is 4 + 4?", "answer": "8"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def train_argv(tmp_path: Path, *extra: str) -> list[str]:
    data = write_data(tmp_path / "train.jsonl")
    return ["train", SPEC, "--task", f"jsonl:{data}", "--steps", "2", "--max-tokens", "2", "--group", "2",
            "--batch", "1", "--out", str(tmp_path / "run"), "--reward", "numeric_match", "--threads", "1", *extra]


def read_tensorboard(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def test_a_two_step_run_writes_its_metrics_and_config_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard", reason="the TensorBoard test needs tensorboard: pip install tensorboard")
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    assert main(train_argv(tmp_path, "--report-to", "tensorboard")) == 0
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = read_tensorboard(run / "tensorboard")
    for field in ("reward_mean", "accuracy", "completions", "rollout_s", "step_s"):
        scalars_written = events.Scalars(f"train/{field}")
        assert [event.step for event in scalars_written] == [1, 2]
        assert [event.value for event in scalars_written] == pytest.approx([row[field] for row in rows])
    assert "train/stage" not in events.Tags()["scalars"]  # a null or a string is not a curve
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["train.algorithm"].string_value == "grpo"
    assert hparams["train.group"].number_value == 2 and hparams["run.steps"].number_value == 2
    assert hparams["task"].string_value.startswith("jsonl:")


def test_eval_rows_go_under_eval(tmp_path):
    pytest.importorskip("tensorboard", reason="needs tensorboard: pip install tensorboard")
    row = {"step": 4, "stage": "wide", "n": 50, "reward_mean": 0.25, "accuracy": 0.2, "seconds": 3.5}
    with Trackers(["tensorboard"], tmp_path, {"lr": 1e-4}) as trackers:
        trackers.log_eval(row)
    events = read_tensorboard(tmp_path / "tensorboard")
    assert sorted(events.Tags()["scalars"]) == ["eval/accuracy", "eval/n", "eval/reward_mean", "eval/seconds"]
    assert [(e.step, e.value) for e in events.Scalars("eval/reward_mean")] == [(4, 0.25)]


def test_a_missing_tracker_package_exits_2_with_the_install_line_before_the_model_loads(tmp_path, capsys,
                                                                                         monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert main(train_argv(tmp_path, "--report-to", "wandb")) == 2
    err = capsys.readouterr().err
    assert "--report-to wandb needs the wandb package: pip install wandb" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_none_reports_nowhere(tmp_path):
    with Trackers(["none"], tmp_path, {}) as trackers:
        trackers.log_step({"step": 1, "loss": 0.5})
        assert trackers.trackers == []
    assert list(tmp_path.iterdir()) == []


def test_scalars_keep_finite_numbers_only():
    row = {"step": 3, "loss": None, "stage": "s", "reward_mean": 0.5, "grad_norm": float("nan"), "tokens": 12,
           "is_skipped": True}
    assert scalars(row) == {"reward_mean": 0.5, "tokens": 12.0, "is_skipped": 1.0}


def test_hyperparameters_are_flat_scalars():
    config = {"train": {"lr": 1e-4, "group": 8}, "adapter": {"targets": ("q_proj", "v_proj")}, "stage": None}
    assert hyperparameters(config) == {"train.lr": 1e-4, "train.group": 8, "adapter.targets": "q_proj,v_proj",
                                       "stage": "none"}


def test_wandb_runs_offline_in_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="needs wandb: pip install wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    with Trackers(["wandb"], tmp_path, {"train": {"lr": 1e-4}}) as trackers:
        trackers.log_step({"step": 1, "reward_mean": 0.25})
        trackers.log_step({"step": 2, "reward_mean": 0.75})
    [run_folder] = (tmp_path / "wandb").glob("offline-run-*")
    # wandb keeps an offline run as its own record log, for `wandb sync` to upload.
    # wandb's service process finishes writing it after `finish` returns (at the latest at exit).
    [records] = run_folder.glob("run-*.wandb")
    deadline = time.monotonic() + 60
    while b"0.75" not in (data := records.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert data.startswith(b":W&B") and b"reward_mean" in data and b"0.75" in data and b"train.lr" in data


def test_trackio_stores_the_run_locally(tmp_path, monkeypatch):
    pytest.importorskip("trackio", reason="needs trackio: pip install trackio")
    import sys

    if "trackio" not in sys.modules:  # trackio reads TRACKIO_DIR when it is imported
        monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    from trackio.sqlite_storage import SQLiteStorage

    with Trackers(["trackio"], tmp_path, {"train": {"lr": 1e-4}}, name="trackio-test") as trackers:
        trackers.log_step({"step": 1, "reward_mean": 0.25})
        trackers.log_eval({"step": 1, "accuracy": 0.5})
        trackers.log_step({"step": 2, "reward_mean": 0.75})
    logs = SQLiteStorage.get_logs("neuromas", "trackio-test")
    assert [(row["step"], row.get("train/reward_mean")) for row in logs if "train/reward_mean" in row] == [
        (1, 0.25), (2, 0.75)]
    assert any(row.get("eval/accuracy") == 0.5 for row in logs)
    assert SQLiteStorage.get_run_config("neuromas", "trackio-test")["train.lr"] == 1e-4
