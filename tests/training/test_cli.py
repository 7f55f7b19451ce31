"""`neuromas train` and `neuromas plot` end to end (one short step on the bundled model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from neuromas.cli import main

REPO = Path(__file__).resolve().parents[2]
SPEC = str(REPO / "specs" / "neuromas3.nmas")


def write_data(path: Path) -> Path:
    rows = [{"question": "What is 2 + 3?", "answer": "5"}, {"question": "What is 4 + 4?", "answer": "8"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_train_then_plot(tmp_path, capsys):
    data = write_data(tmp_path / "train.jsonl")
    out = tmp_path / "run"
    argv = ["train", SPEC, "--task", f"jsonl:{data}", "--steps", "1", "--max-tokens", "2", "--group", "2",
            "--batch", "1", "--out", str(out), "--reward", "numeric_match", "--threads", "2"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 1 and rows[0]["completions"] == 1 * 2 * 3
    assert (out / "checkpoints" / "step-000001" / "adapters" / "node-answer-0" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "plan.json").read_text())["train"]["group"] == 2  # the overrides are in the plan
    assert "train:" in capsys.readouterr().err  # the progress bar

    # a second run into the same folder needs --resume (checked before the model loads)
    assert main(argv) == 1
    assert "--resume" in capsys.readouterr().err

    assert main(["plot", str(out)]) == 0
    png = out / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_plot_draws_a_long_run(tmp_path):
    rows = [
        {"step": s, "reward_mean": min(1.0, s / 40), "reward_std": 0.2, "accuracy": s / 60, "loss": 0.1 - s / 500}
        for s in range(1, 51)
    ]
    rows[7]["loss"] = None  # a step without tokens to train on
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "p.png"), "--smooth", "5"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plot", "{tmp}"], "has no metrics.jsonl"),
        (["train", SPEC, "--task", "jsonl:{tmp}/missing.jsonl", "--steps", "1", "--out", "{tmp}/o"], "cannot read"),
        (["train", SPEC, "--task", "csv:x", "--steps", "1", "--out", "{tmp}/o"], "unknown task kind 'csv'"),
        (["train", SPEC, "--task", "jsonl:x", "--steps", "0", "--out", "{tmp}/o"], "argument --steps: must be from 1"),
        (["train", SPEC, "--task", "jsonl:x", "--steps", "1", "--out", "{tmp}/o", "--reward", "m:f"], "--allow-code"),
    ],
)
def test_user_errors(tmp_path, capsys, argv, message):
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    if "jsonl:x" in argv:
        argv[argv.index("jsonl:x")] = f"jsonl:{write_data(tmp_path / 'x.jsonl')}"
    assert main(argv) in (1, 2)
    assert message in capsys.readouterr().err


def test_the_cli_does_not_import_torch():
    code = "import sys, neuromas.cli as c; c.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
