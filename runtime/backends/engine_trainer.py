"""A generation engine (in-process vLLM, or vLLM servers) and the transformers model that trains -> one Backend.

Training reads `backend.model` (the PeftModel it updates) and calls `backend.publish(model)`
after each update (runtime.train.sync_adapters); generation goes to the engine. The
training model's adapters are published before the first generation, so a run resumed
from a checkpoint samples from the checkpoint's adapters, not from the fresh ones the
engine would otherwise start with (or lack: an engine has no adapter until one is published).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import BackendStats, GenRequest, GenResult


class EngineWithTrainer:
    """`engine`: a backend with `publish(model)` (VLLMBackend, ServerBackend); `model`: the
    PeftModel whose adapters it serves."""

    def __init__(self, engine: Any, model: Any):
        self.engine = engine
        self.model = model
        self.is_published = False

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def stats(self) -> BackendStats:
        return self.engine.stats

    def generate(self, requests: Sequence[GenRequest], *, seed: int | None = None) -> list[GenResult]:
        if not self.is_published:
            self.publish(self.model)
        return self.engine.generate(requests, seed=seed)

    def publish(self, model: Any, slots: Iterable[str] | None = None) -> Any:
        """Publish the model's adapters to the engine (a new version of each). Under torchrun
        every rank calls this at the same point; the ranks then wait until the publishing
        rank's engine serves the new versions."""
        from ..training import distributed

        sync = self.engine.publish(model, slots)
        group = distributed.current()
        if group is not None:
            group.barrier()
        self.is_published = True
        return sync

    def set_adapters(self, adapters: Mapping[str, Path]) -> None:
        """Load saved peft folders into the training model; the engine gets them before the next generation."""
        from ..models.adapters import load_adapters

        load_adapters(self.model, adapters)
        self.is_published = False

    def close(self) -> None:
        if hasattr(self.engine, "close"):
            self.engine.close()
