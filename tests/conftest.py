"""Shared by every test folder: `--update-golden`, and the IR verifier on for the session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files instead of comparing against them")


def pytest_configure(config: pytest.Config) -> None:
    os.environ["NEUROMAS_VERIFY"] = "1"  # check the IR after every compiler pass


@pytest.fixture
def golden(request: pytest.FixtureRequest):
    """`golden(path, text)`: assert `text` equals the checked-in file, or rewrite the file
    under --update-golden."""
    update = request.config.getoption("--update-golden")

    def check(path: Path, text: str) -> None:
        if update:
            path.write_text(text, encoding="utf-8", newline="")
            return
        assert path.exists(), f"no golden file {path}: run pytest with --update-golden"
        assert text == path.read_bytes().decode("utf-8"), f"differs from {path} (rerun with --update-golden if intended)"

    return check
