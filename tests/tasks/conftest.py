"""Shared by the sandbox tests: a problem to judge, per-layer skips that say why, and folders to check."""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class IncrList:
    """A HumanEval-like problem: `incr_list` and its tests, to judge solutions against."""

    solution: str = '''
def incr_list(l: list):
    """Return list with elements incremented by 1."""
    return [x + 1 for x in l]
'''
    wrong: str = '''
def incr_list(l: list):
    return [x + 2 for x in l]
'''
    tests: str = '''
def check(candidate):
    assert candidate([]) == []
    assert candidate([3, 2, 1]) == [4, 3, 2]
    assert candidate([5, 2, 5, 2, 3, 3, 9, 0, 123]) == [6, 3, 6, 3, 4, 4, 10, 1, 124]

check(candidate)
'''

    def judge(self, solution: str, tests: str | None = None, timeout_s: float = 3.0):
        from neuromas.runtime.tasks.sandbox import Limits, run_tests

        return run_tests(textwrap.dedent(solution), tests or self.tests, "incr_list", Limits(timeout_s=timeout_s))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sandbox_layer(name): skip unless the sandbox's layer `name` holds here")
    config.addinivalue_line("markers", "sandbox: runs code in the sandbox; skipped where it refuses to run")


def pytest_runtest_setup(item: pytest.Item) -> None:
    layers = [mark.args[0] for mark in item.iter_markers("sandbox_layer")]
    if not layers and item.get_closest_marker("sandbox") is None:
        return
    from neuromas.runtime.tasks.sandbox import sandbox_probe

    probe = sandbox_probe()  # one real run, cached for the session
    why = "; ".join(probe.notes) or "the kernel refused it"
    for layer in ["uid", *layers]:
        if layer not in probe.layers:
            pytest.skip(f"no {layer!r} sandbox layer on this machine ({why})")


@pytest.fixture
def incr_list() -> IncrList:
    return IncrList()


@pytest.fixture
def sandbox_temp(tmp_path, monkeypatch) -> Path:
    """The folder the sandbox makes its temporary folders in; it must be empty afterwards."""
    folder = tmp_path / "sandbox-temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    assert list(folder.iterdir()) == [], "the sandbox left a temporary folder behind"


@pytest.fixture
def outside() -> Path:
    """A fresh folder outside every temporary folder (in the home folder), removed afterwards."""
    folder = Path.home() / f".neuromas-sandbox-test-{os.getpid()}-{time.monotonic_ns()}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder)
