"""Crash safety of `neuromas train`: SIGKILL at random and targeted moments, then resume.

A real `neuromas train` subprocess on the bundled model (a two-node spec, 2 new tokens
per node, group 2, batch 1, a checkpoint every step) is killed during startup, rollout,
update, the metrics write and the checkpoint write, then resumed, again and again.
After every kill: every checkpoint verifies; metrics.jsonl holds steps 1..N once each,
in order (N the last checkpoint, or one more whose row was logged before its
checkpoint); the checkpoints equal those of an uninterrupted reference run bit for bit
(rollout seeds depend only on the seed and the step, and the RNG state is checkpointed,
so the run is deterministic); and a resumed session loads exactly the last
checkpoint's tensors and continues at its step. At the end the crashed run equals the
reference run: metrics, samples and adapters.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from neuromas.cli import build_parser
from neuromas.runtime.training.checkpoint import list_checkpoints, newest_verified
from neuromas.runtime.training.session import METRICS_FILE, SAMPLES_FILE, keep_rows_until

REPO = Path(__file__).resolve().parents[2]
TIMING = {"rollout_s", "update_s", "sync_s", "step_s"}
QUESTIONS = [("What is 2 + 3?", "5"), ("Name a fruit.", "apple"), ("What is 10 - 4?", "6"), ("Spell cat.", "cat")]
SPEC = """system tiny {
    model "smollm2-135m-instruct"
    adapter lora(rank = 2, alpha = 4, targets = [q_proj, v_proj])
    input question
    layer hidden width 1
    layer answer width 1
    hidden <- question
    answer <- hidden, question
    output answer
    train {
        algorithm grpo
        group     2
        batch     1
        lr        1e-2
        reward    exact_match
    }
}
"""
GROWTH_SPEC = SPEC.replace("system tiny {", "system tiny_growth {").replace(
    "        reward    exact_match\n    }\n",
    "        reward    exact_match\n    }\n    growth {\n        stage small {}\n"
    "        stage wide { widen hidden to 2 init copy } after 1 steps\n    }\n")
# Kill moments: launch plus a random delay (startup, rollout or update), or the moment
# the run folder shows a point of a step's end: its metrics row logged, its checkpoint's
# staging folder created, the staged manifest written, the checkpoint renamed into place.
TARGETS = ("staging", "delay", "logged", "delay", "staged_manifest", "delay", "renamed", "delay")


@dataclass
class Setup:
    """The files and command line of one crash experiment."""

    root: Path
    spec: Path
    data: Path

    @classmethod
    def create(cls, root: Path, spec: str = SPEC) -> Setup:
        root.mkdir(parents=True, exist_ok=True)
        (root / "tiny.nmas").write_text(spec)
        rows = [{"question": q, "answer": a} for q, a in QUESTIONS]
        (root / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        return cls(root, root / "tiny.nmas", root / "data.jsonl")

    def argv(self, out: Path, steps: int, *, keep: int = 2, resume: bool = False) -> list[str]:
        """`neuromas train` arguments (without the program)."""
        argv = ["train", str(self.spec), "--task", f"jsonl:{self.data}", "--steps", str(steps), "--out", str(out),
                "--max-tokens", "2", "--reward", "tests.training.reward_plugins:vowel_share", "--allow-code",
                "--threads", "1", "--save-every", "1", "--keep", str(keep)]
        return argv + (["--resume"] if resume else [])

    def launch(self, argv: list[str]) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        return subprocess.Popen([sys.executable, "-m", "neuromas", *argv], cwd=self.root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@dataclass
class Reference:
    """An uninterrupted run: its folder, and how long startup and a step take."""

    out: Path
    steps: int
    startup_s: float
    step_s: float


@dataclass
class Tally:
    """What the kills hit."""

    phases: Counter = field(default_factory=Counter)
    kills: int = 0
    finished_early: int = 0


def run_reference(setup: Setup, steps: int) -> Reference:
    out = setup.root / "reference"
    started = time.monotonic()
    process = setup.launch(setup.argv(out, steps, keep=0))
    first_row_s = None
    while process.poll() is None:
        if first_row_s is None and metric_lines(out):
            first_row_s = time.monotonic() - started
        time.sleep(0.05)
    _, stderr = process.communicate()
    assert process.returncode == 0, stderr
    rows = read_rows(out)
    assert [row["step"] for row in rows] == list(range(1, steps + 1))
    step_s = sum(row["step_s"] for row in rows) / len(rows)
    startup_s = (first_row_s or step_s) - rows[0]["step_s"]
    return Reference(out, steps, max(startup_s, 0.5), step_s)


def metric_lines(out: Path) -> list[str]:
    path = out / METRICS_FILE
    return path.read_text().split("\n") if path.exists() else [""]


def read_rows(out: Path) -> list[dict]:
    """Complete metrics rows; a partial last line (a kill during the write) is left out."""
    complete = metric_lines(out)[:-1]  # the last item is the text after the last newline
    return [json.loads(line) for line in complete]


def staging_folders(out: Path) -> list[Path]:
    root = out / "checkpoints"
    return [path for path in root.iterdir() if path.name.startswith(".step-")] if root.is_dir() else []


def newest_step(out: Path) -> int:
    checkpoints = list_checkpoints(out)
    return int(checkpoints[-1].name.removeprefix("step-")) if checkpoints else 0


def is_target_reached(target: str, out: Path, start_step: int) -> bool:
    if target == "logged":
        return len(read_rows(out)) > start_step
    if target == "staging":
        return bool(staging_folders(out))
    if target == "staged_manifest":
        return any((path / "manifest.json").exists() for path in staging_folders(out))
    if target == "renamed":
        return newest_step(out) > start_step
    raise ValueError(target)


def kill_once(setup: Setup, out: Path, steps: int, target: str, reference: Reference, rng: random.Random,
              *, resume: bool = True) -> str:
    """Launch the run, SIGKILL it at `target`, and return the phase the kill hit
    ("finished" when the run ended first)."""
    start_step = newest_step(out)
    launched = time.monotonic()
    process = setup.launch(setup.argv(out, steps, resume=resume))
    delay_s = rng.uniform(0.3 * reference.startup_s, reference.startup_s + 1.5 * reference.step_s)
    deadline = launched + 600
    while process.poll() is None:
        now = time.monotonic()
        assert now < deadline, f"{target} not reached in 600 s"
        if target == "delay" and now - launched >= delay_s:
            break
        if target != "delay" and is_target_reached(target, out, start_step):
            break
        time.sleep(0.002)
    if process.poll() is not None:
        _, stderr = process.communicate()
        assert process.returncode == 0, stderr
        return "finished"
    process.send_signal(signal.SIGKILL)
    killed_s = time.monotonic() - launched
    process.communicate()
    return phase_hit(out, start_step, killed_s, reference)


def phase_hit(out: Path, start_step: int, killed_s: float, reference: Reference) -> str:
    """What the run was doing when it died, from what it left on disk (and, inside a
    step, from the reference's timings)."""
    if staging_folders(out):
        return "checkpoint write"
    rows, step = read_rows(out), newest_step(out)
    if len(rows) > step or metric_lines(out)[-1]:
        return "between log and checkpoint"
    if step > start_step:
        return "after checkpoint rename"
    if killed_s < reference.startup_s:
        return "startup"
    return "rollout or update"


def check_after_kill(setup: Setup, out: Path, reference: Reference, base_model, last_step: int) -> int:
    """Check a killed run's folder, resume it in this process as `neuromas train --resume`
    would, and check what the resumed session holds. Returns the step it resumes at."""
    found, skipped = newest_verified(out)
    assert skipped == [], f"a checkpoint failed verification: {skipped}"
    step = newest_step(out)
    assert step >= last_step, f"the run went back from step {last_step} to {step}"
    rows = read_rows(out)
    assert [row["step"] for row in rows] in (list(range(1, step + 1)), list(range(1, step + 2)))
    if found is not None:
        assert_same_adapters(found, reference.out / "checkpoints" / found.name)

    session = resumed_session(setup, out, base_model, reference.steps)
    session.close()  # the next launch must be able to take the run folder
    assert session.state.step == step
    if found is not None:
        assert_model_holds(session.model, found)
    rows = read_rows(out)
    assert [row["step"] for row in rows] == list(range(1, step + 1))
    assert strip(rows) == strip(read_rows(reference.out)[:step])
    return step


def resumed_session(setup: Setup, out: Path, base_model, steps: int):
    """start_session(resume=True) on a fresh copy of the bundled model, built from the
    same command line as the subprocess."""
    from neuromas.commands.assemble import load_task
    from neuromas.commands.train import training_plan
    from neuromas.runtime.models.adapters import attach_adapters
    from neuromas.runtime.backends.transformers import TransformersBackend
    from neuromas.runtime.generation.rollout import Runtime
    from neuromas.runtime.training.scoring import make_scorer
    from neuromas.runtime.training.session import TrainSettings, start_session

    args = build_parser().parse_args(setup.argv(out, steps, resume=True))
    plan = training_plan(args)
    task = load_task(args, plan.inputs, args.seed)
    torch.manual_seed(99)  # another init than the run's: the checkpoint must override it
    model = attach_adapters(copy.deepcopy(base_model.model), plan)
    runtime = Runtime(plan, TransformersBackend(model, base_model.tokenizer), seed=args.seed)
    settings = TrainSettings(steps=steps, seed=args.seed, save_every=1, keep_checkpoints=args.keep)
    score = make_scorer(plan.train.reward, task, args.reward, allow_code=True)
    return start_session(plan, runtime, task, settings, out, score=score, resume=True)


def adapter_tensors(checkpoint: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {path.name: load_file(str(path / "adapter_model.safetensors"))
            for path in sorted((checkpoint / "adapters").iterdir())}


def assert_same_adapters(checkpoint: Path, reference: Path) -> None:
    got, want = adapter_tensors(checkpoint), adapter_tensors(reference)
    assert got.keys() == want.keys()
    for slot in want:
        assert got[slot].keys() == want[slot].keys()
        assert all(torch.equal(got[slot][key], want[slot][key]) for key in want[slot]), f"{checkpoint.name} {slot}"


def assert_model_holds(model, checkpoint: Path) -> None:
    from peft import get_peft_model_state_dict

    for slot, saved in adapter_tensors(checkpoint).items():
        loaded = get_peft_model_state_dict(model, adapter_name=slot)
        assert loaded.keys() == saved.keys()
        assert all(torch.equal(loaded[key].cpu(), saved[key]) for key in saved), f"{checkpoint.name} {slot}"


def strip(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key not in TIMING} for row in rows]


def crash_and_resume(tmp_path: Path, base_model, *, steps: int, kills: int, seed: int) -> Tally:
    """The whole experiment: a reference run, `kills` killed launches of the crashed run
    (each checked), then an uninterrupted resume to the end, compared with the reference."""
    setup = Setup.create(tmp_path)
    reference = run_reference(setup, steps)
    out = tmp_path / "crashed"
    rng = random.Random(seed)
    tally = Tally()
    step = 0
    for index in range(kills):
        if step >= steps:
            break
        target = "delay" if index == 0 else TARGETS[(index - 1) % len(TARGETS)]
        phase = kill_once(setup, out, steps, target, reference, rng, resume=index > 0)  # the first is a new run
        if phase == "finished":
            tally.finished_early += 1
        else:
            tally.kills += 1
        tally.phases[phase] += 1
        step = check_after_kill(setup, out, reference, base_model, step)
        print(f"kill {index + 1}: target {target}, hit {phase}, resumes at step {step}", flush=True)

    final = setup.launch(setup.argv(out, steps, resume=True))
    _, stderr = final.communicate()
    assert final.returncode == 0, stderr
    assert strip(read_rows(out)) == strip(read_rows(reference.out))
    samples = lambda folder: (folder / SAMPLES_FILE).read_text()  # noqa: E731
    assert samples(out) == samples(reference.out)
    for checkpoint in list_checkpoints(out):
        assert_same_adapters(checkpoint, reference.out / "checkpoints" / checkpoint.name)
    assert newest_step(out) == steps
    return tally


@pytest.mark.slow
def test_kills_during_training_lose_nothing(tmp_path, base_model):
    """Three kills (early, when the checkpoint staging folder appears, after a random
    delay) and a resume to the end: about 60-90 s on an idle 2-core machine."""
    tally = crash_and_resume(tmp_path, base_model, steps=3, kills=3, seed=1)
    assert tally.kills >= 2, tally
    print(f"crash harness: {tally}")


@pytest.mark.slow
def test_fifty_kills_lose_nothing(tmp_path, base_model):
    """At least 50 SIGKILLs across startup, rollout, update, metrics write and checkpoint
    write (each a new process: about 10-20 s per kill on 2 cores, 10-20 minutes in all)."""
    started = time.monotonic()
    tally = crash_and_resume(tmp_path, base_model, steps=40, kills=56, seed=7)
    report = {"kills": tally.kills, "finished_early": tally.finished_early, "phases": dict(tally.phases),
              "wall_s": round(time.monotonic() - started, 1)}
    print(f"crash harness: {json.dumps(report)}")
    assert tally.kills >= 50, report


@pytest.mark.slow
def test_a_kill_inside_a_grown_stage_then_resume_equals_the_uninterrupted_run(tmp_path):
    """Growth after step 1, a SIGKILL once step 2 (the first of the grown stage) is logged,
    then a resume to step 3: metrics, samples and every checkpoint equal the reference's.
    Three launches and six steps: about 60 s on an idle 2-core machine."""
    setup = Setup.create(tmp_path, GROWTH_SPEC)
    reference = run_reference(setup, 3)
    assert [row["stage"] for row in read_rows(reference.out)] == ["small", "wide", "wide"]
    out = tmp_path / "crashed"
    process = setup.launch(setup.argv(out, 3))
    wait_for_rows(process, out, 2)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert newest_step(out) in (1, 2, 3)
    final = setup.launch(setup.argv(out, 3, resume=True))
    _, stderr = final.communicate()
    assert final.returncode == 0, stderr
    assert strip(read_rows(out)) == strip(read_rows(reference.out))
    assert (out / SAMPLES_FILE).read_text() == (reference.out / SAMPLES_FILE).read_text()
    assert newest_step(out) == 3
    for checkpoint in list_checkpoints(out):
        assert_same_adapters(checkpoint, reference.out / "checkpoints" / checkpoint.name)


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_holds_the_run(tmp_path):
    """A resume launched while a run is training exits 1 naming the holder; the first run
    goes on and logs every step once. The first run is given far more steps than it can
    finish while the second starts (a step takes about 1.5 s, a launch longer), and is
    stopped with SIGTERM once the second has been refused: about 40 s on 2 cores."""
    setup = Setup.create(tmp_path)
    out = tmp_path / "run"
    first = setup.launch(setup.argv(out, 500))
    wait_for_rows(first, out, 1)
    second = setup.launch(setup.argv(out, 500, resume=True))
    _, stderr = second.communicate(timeout=600)
    first_alive = first.poll() is None
    first.send_signal(signal.SIGTERM)
    _, first_stderr = first.communicate(timeout=600)
    assert second.returncode == 1, stderr
    assert f"in use by another run (pid {first.pid} on host " in stderr and "Traceback" not in stderr
    assert first_alive, first_stderr  # the refusal came while the first held the lock
    assert first.returncode == 143, first_stderr  # stopped by SIGTERM after a finished step
    stopped = re.search(r"stopped at step (\d+);", first_stderr)
    assert stopped, first_stderr
    assert [row["step"] for row in read_rows(out)] == list(range(1, int(stopped.group(1)) + 1))


def test_a_row_cut_short_by_a_crash_is_dropped_on_resume(tmp_path):
    rows = [{"step": step, "reward_mean": 0.5} for step in (1, 2, 3)]
    path = tmp_path / METRICS_FILE
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"step": 4, "rew')
    keep_rows_until(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == [METRICS_FILE]  # no temporary file left


def wait_for_rows(process: subprocess.Popen, out: Path, count: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while len(read_rows(out)) < count:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"no metrics row {count} in {timeout_s} s"
        time.sleep(0.02)


def stop_with(setup: Setup, argv: list[str], out: Path, signum: int) -> tuple[int, str]:
    """Launch, send `signum` once a new step is under way, and return (exit code, stderr)."""
    process = setup.launch(argv)
    wait_for_rows(process, out, len(read_rows(out)) + 1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=600)
    return process.returncode, stderr


@pytest.mark.slow
def test_sigterm_and_sigint_stop_cleanly_and_resume(tmp_path):
    """SIGTERM, then a resume stopped by SIGINT: each finishes its step, checkpoints it
    (although --save-every is far off) and says how to resume. Three steps, two launches:
    about 30 s on an idle 2-core machine."""
    setup = Setup.create(tmp_path)
    out = tmp_path / "run"
    argv = setup.argv(out, 50) + ["--save-every", "100"]

    code, stderr = stop_with(setup, argv, out, signal.SIGTERM)
    assert code == 143, stderr
    step = newest_step(out)
    assert step >= 1 and [row["step"] for row in read_rows(out)] == list(range(1, step + 1))
    assert f"stopped at step {step}; resume with: neuromas train " in stderr and "SIGTERM: finishing" in stderr
    resume = stderr.split("resume with: ")[1].splitlines()[0]
    assert resume.endswith("--resume") and f"--out {out}" in resume
    found, skipped = newest_verified(out)
    assert found is not None and found.name == f"step-{step:06d}" and skipped == []

    code, stderr = stop_with(setup, shlex.split(resume)[1:], out, signal.SIGINT)
    assert code == 130, stderr
    later = newest_step(out)
    assert later > step and f"stopped at step {later}; resume with:" in stderr
    assert [row["step"] for row in read_rows(out)] == list(range(1, later + 1))
    assert json.loads((out / "checkpoints" / f"step-{later:06d}" / "state.json").read_text())["step"] == later


@pytest.mark.slow
def test_a_second_sigint_aborts_without_a_checkpoint(tmp_path):
    """Two SIGINTs half a second apart, mid-step: exit 130 at once, no checkpoint of the
    unfinished step. One launch and a step: about 15 s."""
    setup = Setup.create(tmp_path)
    out = tmp_path / "run"
    process = setup.launch(setup.argv(out, 50) + ["--save-every", "100"])
    wait_for_rows(process, out, 1)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "stopped at step" not in stderr
    assert list_checkpoints(out) == [] and staging_folders(out) == []
