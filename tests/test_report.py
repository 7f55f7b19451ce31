"""`neuromas report`: eval JSON files and training run folders -> one table and a PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from neuromas.cli import main


def eval_result(path: Path, *, system: str, correct: int, n: int, low: float, high: float) -> Path:
    """A hand-made `neuromas eval --out` file."""
    record = {
        "system": system, "stage": None, "plan_hash": "abc123", "task": "jsonl:data/test.jsonl",
        "adapters": None, "n": n, "group": 1, "correct": correct, "accuracy": correct / n,
        "accuracy_low": low, "accuracy_high": high, "tokens_per_question": 123.45,
        "calls_per_question": 0.25, "calls_per_rollout": 2, "seconds_per_question": 1.5, "seed": 1000,
        "scores": [1.0] * correct + [0.0] * (n - correct),
    }
    path.write_text(json.dumps(record))
    return path


def training_run(folder: Path, rewards: list[float], system: str = "neuromas3") -> Path:
    """A hand-made `neuromas train --out` folder: metrics.jsonl and plan.json."""
    folder.mkdir(parents=True)
    rows = [{"step": step, "reward_mean": reward, "reward_std": 0.1, "accuracy": reward, "loss": 0.01}
            for step, reward in enumerate(rewards, start=1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "plan.json").write_text(json.dumps({"system": system, "stage": None}))
    return folder


def test_report_compares_eval_results_and_runs_and_draws_them(tmp_path, capsys):
    single = eval_result(tmp_path / "single.json", system="single", correct=12, n=40, low=0.181, high=0.456)
    trained = eval_result(tmp_path / "n3.json", system="neuromas3", correct=30, n=40, low=0.599, high=0.859)
    run = training_run(tmp_path / "run", [0.0] * 20 + [0.5] * 5 + [1.0] * 5)
    png = tmp_path / "out" / "report.png"
    assert main(["report", str(single), str(trained), str(run), "-o", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["run", "system", "task", "n"] and "reward (last 10)" in lines[0]
    assert lines[2].split()[:4] == ["single", "single", "jsonl:data/test.jsonl", "40"]
    assert "0.300 [0.181, 0.456]" in lines[2] and "123.5" in lines[2] and "0.25" in lines[2] and "1.50" in lines[2]
    assert "0.750 [0.599, 0.859]" in lines[3]
    assert lines[4].split() == ["run", "neuromas3", "-", "-", "-", "-", "-", "-", "30", "0.750"]
    assert lines[5] == str(png)

    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert png.stat().st_size > 10_000
    assert pixels.shape[0] > 300 and pixels.shape[1] > 1000  # two panels side by side
    assert pixels[..., :3].std() > 0.05  # bars, whiskers and curves, not a blank canvas


def test_report_of_runs_only_and_the_last_option(tmp_path, capsys):
    first = training_run(tmp_path / "a" / "run", [0.0, 1.0, 1.0], system="small")
    second = training_run(tmp_path / "b" / "run", [0.5, 0.5, 0.0, 0.0], system="grown")
    png = tmp_path / "runs.png"
    assert main(["report", str(first), str(second), "--last", "2", "-o", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "reward (last 2)" in lines[0]
    assert lines[2].split()[0] == str(first) and lines[2].split()[-2:] == ["3", "1.000"]  # same names: whole paths
    assert lines[3].split()[-2:] == ["4", "0.000"]
    assert png.stat().st_size > 5_000


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.json", "no such file or folder"),
        (lambda tmp: (tmp / "bad.json").write_text("{}") and tmp / "bad.json", "cannot read eval result"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "has no metrics.jsonl"),
    ],
)
def test_report_errors_name_the_input(tmp_path, capsys, make, message):
    assert main(["report", str(make(tmp_path))]) == 1
    assert message in capsys.readouterr().err


def test_report_usage_errors_exit_2(tmp_path, capsys):
    run = training_run(tmp_path / "run", [0.0])
    assert main(["report", str(run), "--last", "0"]) == 2
    assert "argument --last: must be from 1 to 2147483647, got 0" in capsys.readouterr().err


def test_building_the_cli_imports_neither_matplotlib_nor_torch():
    code = ("import sys, neuromas, neuromas.cli; neuromas.cli.build_parser(); "
            "print(sorted(m for m in ('matplotlib', 'torch', 'datasets') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
