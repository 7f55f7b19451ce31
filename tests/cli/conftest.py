"""Fixtures for the CLI tests: a tripwire on model loading, and a small data file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

class ModelLoaded(Exception):
    """Raised where a model would load: the command got past every early check."""


@pytest.fixture
def no_model(monkeypatch):
    """Make loading a model raise ModelLoaded, so that a test can show an error comes
    before it (and a bad argument never costs a model load)."""

    def tripwire(*args, **kwargs):
        raise ModelLoaded

    monkeypatch.setattr("neuromas.runtime.backends.factory.make_backend", tripwire)
    monkeypatch.setattr("neuromas.runtime.backends.transformers.TransformersBackend.for_plan", tripwire)
    return ModelLoaded


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5"}) + "\n")
    return path
