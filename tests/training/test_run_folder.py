"""One writer per run folder (a lock naming its holder), `grow` never over another run,
and damaged log lines that keep a run resumable. No model is loaded."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import neuromas
from neuromas.diagnostics import UserError
from neuromas.runtime.tasks.registry import Example, Task
from neuromas.runtime.training.schedule import grow_checkpoint
from neuromas.runtime.training.session import LOCK_FILE, METRICS_FILE, RunLock, TrainSettings, keep_rows_until, start_session

GROWTH = (Path(__file__).resolve().parents[1] / "specs" / "tiny_growth.nmas").read_text()
HOLD = """
import sys, time
from neuromas.runtime.training.session import RunLock
RunLock.acquire(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the run folder's lock; yields (folder, pid)."""
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        yield out, child.pid
    finally:
        child.kill()
        child.wait()


def no_model(plan):
    raise AssertionError("the model must not load for a refused run folder")


def test_a_second_writer_is_refused_with_the_holder_named(holder, make_plan):
    out, pid = holder
    task = Task("q", [Example({"question": "What is 1 + 1?"}, "2", {})], seed=0)
    runtime = SimpleNamespace(backend=SimpleNamespace(model=None))  # the lock comes before the model is touched
    for resume in (False, True):
        with pytest.raises(UserError, match=rf"in use by another run \(pid {pid} on host \S+, started \d{{4}}-"):
            start_session(make_plan(), runtime, task, TrainSettings(steps=1), out, resume=resume)
    with pytest.raises(UserError, match=rf"pid {pid}"):
        grow_checkpoint(out / "checkpoints" / "step-000002", neuromas.compile(GROWTH), "wide", out, no_model)
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == pid  # the refused writers left the name alone


def test_the_lock_is_free_once_its_holder_is_gone(tmp_path):
    child = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(120)", ""), str(tmp_path)],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "locked"
    lock = RunLock.acquire(tmp_path)  # the exited holder's lock went with it
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_grow_refuses_an_out_folder_that_holds_a_run(tmp_path):
    out = tmp_path / "trained"
    out.mkdir()
    (out / METRICS_FILE).write_text(json.dumps({"step": 1}) + "\n")
    with pytest.raises(UserError, match="already holds a run"):
        grow_checkpoint(out / "checkpoints" / "step-000002", neuromas.compile(GROWTH), "wide", out, no_model)
    assert (out / METRICS_FILE).read_text() == json.dumps({"step": 1}) + "\n"


def test_a_damaged_middle_line_is_reported_and_the_run_stays_resumable(tmp_path, caplog):
    path = tmp_path / METRICS_FILE
    rows = [json.dumps({"step": 1}), '{"step": 2, "loss": 0.', json.dumps({"step": "3"}), json.dumps({"step": 3}),
            json.dumps({"step": 4}), '{"step": 5, "lo']
    path.write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING):
        keep_rows_until(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 3]
    assert f"{path}:2: not a JSON row" in caplog.text and f"{path}:3: not a JSON row" in caplog.text
    assert ":6:" not in caplog.text  # a last line cut short by a crash is expected, not reported
