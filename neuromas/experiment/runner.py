"""An `Experiment` -> one run folder per arm and seed, each trained with `neuromas train`
and scored with `neuromas eval` (subprocesses, so there is one training loop: the CLI's).

Layout under `--out DIR`:

    DIR/runs/<arm>/seed-<s>/train/          the `neuromas train` run folder (resumable)
    DIR/runs/<arm>/seed-<s>/eval-<step>.json `neuromas eval` after that many training steps
    DIR/runs/<arm>/seed-<s>/timing.json      wall seconds of each phase

A phase is done when its output exists and reads back: a finished eval file is never
rerun, an unfinished training run is resumed with `--resume`, so the runner can be
killed anywhere and started again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from neuromas.diagnostics import UserError

from .config import Arm, Experiment

TRAIN_DONE = "train.done"  # written after `neuromas train` exits 0 for the arm's last segment


@dataclass(frozen=True)
class RunFolder:
    """Where one arm x seed lives, and what it has finished."""

    arm: Arm
    seed: int
    path: Path

    @property
    def train_dir(self) -> Path:
        return self.path / "train"

    def eval_file(self, step: int) -> Path:
        return self.path / f"eval-{step}.json"

    def has_eval(self, step: int) -> bool:
        try:
            return "accuracy" in json.loads(self.eval_file(step).read_text())
        except (OSError, ValueError):
            return False

    def trained_steps(self) -> int:
        """The last step in the run's metrics (0 before any step)."""
        last = 0
        try:
            for line in (self.train_dir / "metrics.jsonl").read_text().splitlines():
                try:
                    last = max(last, int(json.loads(line)["step"]))
                except (ValueError, KeyError, TypeError):
                    continue
        except OSError:
            return 0
        return last


def eval_points(experiment: Experiment, arm: Arm, stage_starts: list[int]) -> list[int]:
    """The step counts after which an arm is scored: the end of training, for growth the
    start of every later stage (so each stage's result is reported), and the arm's
    `eval_at` steps (a from-scratch arm scored where a grown one changes stage). Frozen arms: 0."""
    if not arm.train:
        return [0]
    total = experiment.steps_of(arm)
    return sorted({step for step in [*stage_starts, *arm.eval_at] if 0 < step < total} | {total})


def stage_at(stage_history: list[dict], step: int) -> str | None:
    """The growth stage whose adapters a checkpoint after `step` steps holds: the last
    stage that started before that step (a stage starting at `step` has not trained yet)."""
    started = [entry for entry in stage_history if entry["start_step"] < step or entry["start_step"] == 0]
    return started[-1]["stage"] if started else None


class Runner:
    """Runs the arms in file order, seed by seed; `log` gets one progress line per phase."""

    def __init__(self, experiment: Experiment, out: Path, *, log: Callable[[str], None] = print,
                 command: tuple[str, ...] = (sys.executable, "-m", "neuromas")) -> None:
        self.experiment = experiment
        self.out = Path(out)
        self.log = log
        self.command = command

    def folders(self) -> list[RunFolder]:
        return [RunFolder(arm, seed, self.out / "runs" / arm.name / f"seed-{seed}")
                for arm in self.experiment.arms for seed in self.experiment.seeds]

    def run(self, stage_starts: dict[str, list[int]]) -> None:
        """Train and evaluate every arm x seed that is not finished yet."""
        folders = self.folders()
        for index, folder in enumerate(folders, 1):
            points = eval_points(self.experiment, folder.arm, stage_starts.get(folder.arm.name, []))
            label = f"[{index}/{len(folders)}] {folder.arm.name} seed {folder.seed}"
            if all(folder.has_eval(step) for step in points):
                self.log(f"{label}: done")
                continue
            folder.path.mkdir(parents=True, exist_ok=True)
            for step in points:
                if folder.has_eval(step):
                    continue
                if folder.arm.train and folder.trained_steps() < step:
                    self.log(f"{label}: training to step {step} ({folder.trained_steps()} done)")
                    self._timed(folder, "train_s", self._train_args(folder, step), folder.path / "train.log")
                self.log(f"{label}: scoring {self.experiment.held_out} held-out questions after step {step}")
                self._timed(folder, "eval_s", self._eval_args(folder, step), folder.path / f"eval-{step}.log")

    def _common(self, arm: Arm, seed: int, reward: str | None) -> list[str]:
        e = self.experiment
        args = ["--task", e.task, "--seed", str(seed), "--threads", str(e.threads)]
        for key, value in e.task_options.items():
            args += ["--task-option", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
        if e.backend != "transformers":
            args += ["--backend", e.backend]
        if e.max_tokens is not None:
            args += ["--max-tokens", str(e.max_tokens)]
        if arm.rank is not None:
            args += ["--lora-rank", str(arm.rank)]
        if reward is not None:
            args += ["--reward", reward]
        if e.answer_format is not None:
            args += ["--answer-format", e.answer_format]
        return args

    def _train_args(self, folder: RunFolder, steps: int) -> list[str]:
        e, arm = self.experiment, folder.arm
        args = ["train", str(arm.spec), *self._common(arm, folder.seed, e.train_reward or e.reward), "--steps", str(steps),
                "--batch", str(e.batch), "--group", str(arm.group or e.group), "--out", str(folder.train_dir)]
        if e.lr is not None:
            args += ["--lr", str(e.lr)]
        if e.log_kl:
            args.append("--log-kl")
        if (folder.train_dir / "metrics.jsonl").exists():
            args.append("--resume")
        return args

    def _eval_args(self, folder: RunFolder, step: int) -> list[str]:
        e, arm = self.experiment, folder.arm
        args = ["eval", str(arm.spec), *self._common(arm, folder.seed, e.reward), "--n", str(e.held_out),
                "--data-seed", str(e.held_out_seed), "--group", str(arm.eval_group), "-o", str(folder.eval_file(step))]
        if arm.train:
            args += ["--checkpoint", str(folder.train_dir)]
            stage = arm.stage or stage_at(_stage_history(folder.train_dir), step)
            if stage is not None:
                args += ["--stage", stage]
        elif arm.stage is not None:
            args += ["--stage", arm.stage]
        return args

    def _timed(self, folder: RunFolder, key: str, args: list[str], log_file: Path) -> None:
        started = time.perf_counter()
        with open(log_file, "a") as log:
            log.write(f"$ neuromas {' '.join(args)}\n")
            log.flush()
            code = subprocess.run([*self.command, *args], stdout=log, stderr=subprocess.STDOUT).returncode
        if code != 0:
            tail = "".join(log_file.read_text().splitlines(keepends=True)[-8:])
            raise UserError(f"arm '{folder.arm.name}' seed {folder.seed}: `neuromas {args[0]}` exited {code} "
                            f"(log: {log_file}):\n{tail}", exit_code=1)
        timing_file = folder.path / "timing.json"
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
        timing[key] = round(timing.get(key, 0.0) + time.perf_counter() - started, 2)
        timing_file.write_text(json.dumps(timing, indent=2) + "\n")


def _stage_history(train_dir: Path) -> list[dict]:
    try:
        return json.loads((train_dir / "stages.json").read_text())
    except (OSError, ValueError):
        return []
