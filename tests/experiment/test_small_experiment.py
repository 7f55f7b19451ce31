"""A real experiment on the bundled model: two arms, a few steps, the real `neuromas train`
and `neuromas eval` commands, then the table and the picture."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about 65 s: in CI's slow run (.ci/run)
def test_a_two_arm_experiment_trains_scores_and_writes_its_table(tmp_path):
    file = tmp_path / "small.toml"
    file.write_text(f"""
name = "small"
task = "reasoning_gym:basic_arithmetic"
task_options = {{ min_terms = 2, max_terms = 2, max_digits = 1 }}
steps = 2
held_out = 4
batch = 1
group = 2
max_tokens = 8
reference = "frozen"

[[arm]]
name = "frozen"
spec = "{ROOT / 'specs/single_agent.nmas'}"
train = false

[[arm]]
name = "trained"
spec = "{ROOT / 'specs/single_agent.nmas'}"
""")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "neuromas", "experiment", str(file), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    trained = next(arm for arm in results["arms"] if arm["arm"] == "trained")
    assert trained["steps"] == 2 and trained["n"] == 4
    assert [step for step, _ in trained["reward_curve"]] == [1, 2]
    assert trained["trainable_parameters"] == 48 * 30 * 3840
    assert (out / "runs/trained/seed-0/train/checkpoints").is_dir()
    assert "| trained | 2 | 5,529,600 |" in (out / "results.md").read_text()
    assert done.stdout == (out / "results.md").read_text()
    again = subprocess.run([sys.executable, "-m", "neuromas", "experiment", str(file), "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stderr.count(": done") == 2, again.stderr
