"""A plan, a runtime, a task and a run folder -> a training session: settings, start, resume, save.

A session holds everything one run needs between steps: the model and its optimizer,
the scorer, the run's settings and where it stands (`TrainState`). `start_session`
builds it in a fresh run folder or, with `resume`, from the newest checkpoint that
verifies; `save_step` writes a checkpoint of the step it has reached. The step loop
itself is `loop.train`.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from neuromas.diagnostics import UserError
from neuromas.plan import Plan, Train
from . import distributed
from .checkpoint import (
    TrainState,
    checkpoint_path,
    clean_checkpoints,
    list_checkpoints,
    load_checkpoint,
    newest_verified,
    plan_fingerprint,
    prune_checkpoints,
    reject_checkpoint,
    save_checkpoint,
)
from .scoring import AnswerScorer, make_scorer
from ..generation.rollout import Runtime
from ..tasks.registry import Task
from .parameters import trainable_parameters
from .update import DEFAULT_TOKEN_BUDGET, make_optimizer

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"  # one run per step, to read what the system writes
PLAN_FILE = "plan.json"
LOCK_FILE = "run.lock"  # flock'ed by the one process writing the run folder; says who it is

logger = logging.getLogger(__name__)


class TrainSettings(NamedTuple):
    """Run settings that are not part of the plan."""

    steps: int
    seed: int = 0
    token_budget: int = DEFAULT_TOKEN_BUDGET  # padded tokens per micro-batch
    save_every: int = 10  # checkpoint every N steps (and always after the last)
    keep_checkpoints: int = 2  # newest checkpoints kept (< 1: all)
    log_kl: bool = False  # measure the KL to the base even when the plan's kl is 0 (one more pass)


@dataclass
class TrainSession:
    """Everything one run holds: built once by `start_session`, then stepped by `loop.train`
    (growth swaps in the grown system's plan, model and optimizer: `schedule.grow_session`)."""

    plan: Plan
    runtime: Runtime
    model: Any  # the PeftModel being trained
    task: Task
    score: AnswerScorer
    settings: TrainSettings
    out: Path
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    state: TrainState
    lock: RunLock | None = None  # held while this session writes `out` (None on torchrun's other ranks)

    def close(self) -> None:
        """Release the run folder for other writers (exiting the process does too)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @property
    def config(self) -> Train:
        assert self.plan.train is not None
        return self.plan.train

    @property
    def slots(self) -> list[str]:
        """The plan's adapter slots, in plan order."""
        return [slot.name for slot in self.plan.adapters]

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder (always, except on torchrun's other ranks)."""
        group = distributed.current()
        return group is None or group.is_main


def start_session(
    plan: Plan,
    runtime: Runtime,
    task: Task,
    settings: TrainSettings,
    out: Path,
    *,
    score: AnswerScorer | None = None,
    resume: bool = False,
) -> TrainSession:
    """Prepare a run in `out`: the optimiser and (with `resume`) the state of the newest
    checkpoint that verifies; newer ones that fail are moved to `checkpoints/rejected/`
    with a warning. Raises UserError for a plan without training settings or adapters, an
    `out` that holds another run, a run whose checkpoints all fail verification, or a
    checkpoint of another plan.

    score: the reward of a run's answer (`scoring.make_scorer`); by default the task's own
    scorer, else the plan's reward, with no user code allowed.
    """
    if plan.train is None:
        raise UserError("the spec has no train block: add `train { algorithm grpo ... }` to train it")
    if not plan.adapters:
        raise UserError("every node of this system is frozen: there is no adapter to train")
    if score is None:
        score = make_scorer(plan.train.reward, task)
    model = runtime.backend.model
    out = Path(out)
    lock = None
    if distributed.current() is None or distributed.current().is_main:
        lock = RunLock.acquire(out)  # before anything reads or tidies the folder
    try:
        return _start(plan, runtime, model, task, settings, out, score, resume, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _start(plan: Plan, runtime: Runtime, model: Any, task: Task, settings: TrainSettings, out: Path,
           score: AnswerScorer, resume: bool, lock: RunLock | None) -> TrainSession:
    check_out_folder(out, resume)
    params = trainable_parameters(model, [slot.name for slot in plan.adapters])
    optimizer = make_optimizer(params, plan.train.lr)
    fingerprint = plan_fingerprint(plan)
    state = TrainState(step=0, data_position=0, seed=settings.seed, plan_fingerprint=fingerprint)
    group = distributed.current()
    checkpoint = None
    if resume and (group is None or group.is_main):  # rank 0 tidies; the others wait, then read
        clean_checkpoints(out)  # unfinished writes of a crashed run
        checkpoint = resume_checkpoint(out)
    if group is not None:
        group.barrier()
        checkpoint = resume_checkpoint(out) if resume else None
    if checkpoint is not None:
        # A stage's plan may be a grown one, whose old positional optimizer files are ambiguous.
        state = load_checkpoint(checkpoint, model, [slot.name for slot in plan.adapters], optimizer,
                                is_grown_stage=plan.stage is not None)
        if state.plan_fingerprint != fingerprint:
            raise UserError(
                f"'{checkpoint}' was trained from another plan ({state.plan_fingerprint}, now {fingerprint}): "
                "resume with the same spec and settings, or choose another --out"
            )
        if state.seed != settings.seed:
            raise UserError(f"'{checkpoint}' was trained with --seed {state.seed}, not {settings.seed}")
    session = TrainSession(plan=plan, runtime=runtime, model=model, task=task, score=score, settings=settings,
                           out=out, optimizer=optimizer, params=params, state=state, lock=lock)
    if session.is_main:
        out.mkdir(parents=True, exist_ok=True)
        keep_rows_until(out / METRICS_FILE, state.step)
        keep_rows_until(out / SAMPLES_FILE, state.step)
        (out / PLAN_FILE).write_text(plan.to_pretty_json())
    return session


def resume_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint under `out` that verifies (None when there is none). Newer ones
    that fail are moved to `checkpoints/rejected/`, each reported with its reason, so the
    steps they held are trained again. Raises UserError when checkpoints exist but none verifies."""
    checkpoint, skipped = newest_verified(out)
    if checkpoint is None and skipped:
        reasons = "; ".join(item.reason for item in skipped)
        raise UserError(f"no checkpoint in '{out}' verifies ({reasons}): start a new run with another --out")
    for item in skipped:
        moved = reject_checkpoint(item.path)
        logger.warning("\nresuming from %s, not the newer %s (moved to %s): %s", checkpoint.name, item.path.name, moved,
                       item.reason)
    return checkpoint


def check_out_folder(out: Path, resume: bool) -> None:
    """Refuse to start a new run over another one (UserError); cheap, so callers can
    check before loading a model."""
    if not resume and (list_checkpoints(out) or (Path(out) / METRICS_FILE).exists()):
        raise UserError(f"'{out}' already holds a run: pass --resume to continue it, or choose another --out")


def save_step(session: TrainSession) -> None:
    """Checkpoint the session's step and prune old checkpoints; under torchrun rank 0
    writes and the others wait until it has."""
    if session.is_main:
        save_checkpoint(session.out, session.model, session.slots, session.optimizer, session.state)
        prune_checkpoints(session.out, session.settings.keep_checkpoints)
    group = distributed.current()
    if group is not None:
        group.barrier()


def save_if_unsaved(session: TrainSession) -> None:
    """Checkpoint the session's step unless a checkpoint of it exists (step 0 has nothing to save)."""
    if session.state.step == 0 or checkpoint_path(session.out, session.state.step).is_dir():
        return
    save_step(session)


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON row to a run log (metrics, samples, evaluations)."""
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def keep_rows_until(path: Path, step: int) -> None:
    """Drop rows (of metrics, samples or evaluations) logged after the checkpoint a run
    resumes from (a crash can leave some). A damaged line (not a JSON row with a whole
    `step`) is dropped with a warning naming file and line, so the run stays resumable."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    lines = path.read_text(errors="replace").splitlines()
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row_step = _row_step(line)
        if row_step is None:
            if number < len(lines):  # the last line may be a row cut short by a crash: expected
                logger.warning("%s:%d: not a JSON row with a whole 'step' (dropped): %.80s", path, number, line)
            continue
        if row_step <= step:
            kept.append(line)
    staging = path.with_name(f".{path.name}.tmp")  # replaced atomically: a crash now keeps the old file
    staging.write_text("".join(line + "\n" for line in kept))
    os.replace(staging, path)


class RunLock:
    """An exclusive `fcntl.flock` on `<out>/run.lock`, which names its holder (pid, host,
    start time). The kernel drops the lock when the holder exits, however it ends. A
    process that starts a new session over a folder it already holds takes its own lock
    over (the older session of that folder must not write any more)."""

    def __init__(self, path: Path, handle: Any):
        self.path = path
        self._handle = handle

    @classmethod
    def acquire(cls, out: Path) -> RunLock:
        """Lock the run folder `out` (created if missing); raises UserError naming the
        process that holds it."""
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            key = (os.getpid(), str((out / LOCK_FILE).resolve()))
            if key in _HELD:
                _HELD.pop(key).release()
            handle = (out / LOCK_FILE).open("a+", encoding="utf-8")
        except OSError as err:
            raise UserError(f"cannot use '{out}' as a run folder: {err.strerror or err}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _describe_holder(handle.read())
            handle.close()
            raise UserError(
                f"'{out}' is in use by another run ({holder}): wait until it ends or stop it, "
                "or choose another --out"
            ) from None
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}) + "\n")
        handle.flush()
        lock = cls(out / LOCK_FILE, handle)
        _HELD[key] = lock
        return lock

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
        for key, lock in list(_HELD.items()):
            if lock is self:
                del _HELD[key]


_HELD: dict[tuple[int, str], RunLock] = {}  # (pid, lock file) -> this process's lock on it


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not yet written its name"


def _row_step(line: str) -> int | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None
