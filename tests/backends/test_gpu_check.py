"""bench/gpu_check.sh without a GPU: its syntax, its arguments, and the commands a dry run
prints (every step, each under its time limit, all writing under one folder)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")
STEPS = ("gpu-tests", "rollout", "train", "sync")
NINE_MINUTES_S = 9 * 60


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_the_script_parses():
    assert subprocess.run([BASH, "-n", str(SCRIPT)], capture_output=True, text=True).returncode == 0


def test_a_dry_run_prints_every_step_under_one_folder_within_nine_minutes(tmp_path):
    out = tmp_path / "check"
    done = gpu_check("--dry-run", "--out", str(out), "--python", "/opt/py/bin/python")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert [line.split("]")[0][1:] for line in lines] == list(STEPS)
    limits = [int(re.search(r"timeout (\d+)s", line).group(1)) for line in lines]
    assert sum(limits) <= NINE_MINUTES_S
    for line in lines:
        command, log = line.split(": ", 1)[1].rsplit(" > ", 1)
        assert command.startswith("/opt/py/bin/python ") and log.startswith(f"{out}/")
    by_step = dict(zip(STEPS, lines, strict=True))
    assert "-m gpu tests/gpu" in by_step["gpu-tests"] and f"--junitxml {out}/" in by_step["gpu-tests"]
    assert "--widths 2 4 8" in by_step["rollout"] and f"--out {out}" in by_step["rollout"]
    assert "specs/neuromas3.nmas" in by_step["train"] and "--steps 20" in by_step["train"]
    assert "--backend vllm" in by_step["train"] and f"--out {out}/train-neuromas3" in by_step["train"]
    assert "specs/neuromas7.nmas" in by_step["sync"]
    assert not out.exists()  # a dry run writes nothing


def test_the_update_step_runs_only_when_asked_for():
    done = gpu_check("--dry-run", "--only", "update", "--out", "/tmp/o", "--python", "py")
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert line.startswith("[update] timeout 90s: py bench/update.py ") and "--out /tmp/o/update.json" in line


def test_only_picks_steps_and_bad_arguments_exit_2_with_the_usage():
    done = gpu_check("--dry-run", "--only", "sync", "--only", "train", "--out", "/tmp/o")
    assert [line.split("]")[0][1:] for line in done.stdout.splitlines() if line.startswith("[")] == ["sync", "train"]
    for args, message in ((["--only", "nope"], "unknown step 'nope'"), (["--bogus"], "unknown argument '--bogus'"),
                          (["--out"], "--out needs a folder")):
        bad = gpu_check(*args)
        assert bad.returncode == 2 and message in bad.stderr and "Usage: bash bench/gpu_check.sh" in bad.stderr
