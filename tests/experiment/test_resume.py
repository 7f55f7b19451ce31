"""The runner resumes a killed experiment: finished phases are not repeated and the final
table equals an uninterrupted run's. `neuromas train|eval` are replaced by fake_cli.py,
which writes their files in milliseconds; the real commands run in test_small_experiment.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).with_name("fake_cli.py")

EXPERIMENT = f"""
name = "resume"
task = "reasoning_gym:basic_arithmetic"
steps = 3
seeds = [0, 1]
held_out = 20
reference = "single_agent"

[[arm]]
name = "single_agent"
spec = "{ROOT / 'specs/single_agent.nmas'}"

[[arm]]
name = "neuromas3"
spec = "{ROOT / 'specs/neuromas3.nmas'}"
rank = 5

[[arm]]
name = "self_consistency"
spec = "{ROOT / 'specs/self_consistency.nmas'}"
train = false
"""

RUN = f"""
import sys
from pathlib import Path
from neuromas.commands.experiment import execute
from neuromas.experiment.config import load_experiment
execute(load_experiment(sys.argv[1]), Path(sys.argv[2]), command=(sys.executable, {str(FAKE)!r}))
"""


def run_experiment(tmp_path: Path, out: Path, kill: str = "", extra: str = "") -> subprocess.CompletedProcess:
    file = tmp_path / "experiment.toml"
    file.write_text(extra + EXPERIMENT)
    env = {**os.environ, "FAKE_CALLS": str(tmp_path / f"{out.name}.calls"), "FAKE_KILL": kill}
    return subprocess.run([sys.executable, "-c", RUN, str(file), str(out)], env=env, capture_output=True, text=True)


def table(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    for arm in results["arms"]:
        del arm["train_s"], arm["eval_s"]  # wall time differs between runs
    return results


def test_a_runner_killed_inside_an_arm_and_between_arms_resumes_to_the_same_table(tmp_path):
    straight = run_experiment(tmp_path, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    calls = (tmp_path / "straight.calls").read_text().splitlines()
    assert len(calls) == 2 * 2 + 2 * 2 + 2  # train + eval per trained arm x seed, eval per frozen seed

    out = tmp_path / "killed"
    inside = run_experiment(tmp_path, out, kill="train:neuromas3:2")  # inside an arm: mid-training
    assert inside.returncode == -9
    assert not (out / "results.json").exists()
    between = run_experiment(tmp_path, out, kill="eval:neuromas3")  # between arms: right after an eval
    assert between.returncode == -9
    final = run_experiment(tmp_path, out)
    assert final.returncode == 0, final.stderr

    assert table(out) == table(tmp_path / "straight")
    killed_calls = (tmp_path / "killed.calls").read_text().splitlines()
    evals = [line for line in killed_calls if line.startswith("eval")]
    assert len(evals) == len(set(evals)), "a finished evaluation ran again"
    assert "done" in final.stderr and "[1/6] single_agent seed 0: done" in final.stderr
    trains = [line for line in killed_calls if line.startswith("train single_agent")]
    assert len(trains) == 2, "a finished arm trained again"
    assert (out / "results.md").read_text() == (tmp_path / "straight" / "results.md").read_text()
    assert (out / "results.png").stat().st_size > 10_000


def test_results_pair_each_arm_with_the_reference_on_the_same_questions(tmp_path):
    assert run_experiment(tmp_path, tmp_path / "out").returncode == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    by_name = {arm["arm"]: arm for arm in results["arms"]}
    reference = by_name["single_agent"]
    assert reference["vs_reference"]["difference"] == 0.0 and reference["vs_reference"]["mcnemar_p"] == 1.0
    for arm in results["arms"]:
        assert arm["n"] == 2 * 20  # two seeds x the same 20 questions
        assert arm["accuracy_low"] <= arm["accuracy"] <= arm["accuracy_high"]
    assert by_name["self_consistency"]["trainable_parameters"] == 0
    assert by_name["neuromas3"]["trainable_parameters"] == 3 * 5 * 30 * 3840
    assert by_name["single_agent"]["reward_curve"][0][0] == 1


def test_a_train_reward_trains_the_reward_scores_and_log_kl_reaches_training(tmp_path):
    extra = 'reward = "numeric_match"\ntrain_reward = "number_answer"\nlog_kl = true\n'
    assert run_experiment(tmp_path, tmp_path / "out", extra=extra).returncode == 0
    calls = [line.split() for line in (tmp_path / "out.calls").read_text().splitlines()]
    assert {tuple(call[-2:]) for call in calls if call[0] == "train"} == {("number_answer", "log-kl")}
    assert {tuple(call[-2:]) for call in calls if call[0] == "eval"} == {("numeric_match", "-")}
