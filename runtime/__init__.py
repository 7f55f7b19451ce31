"""The NeuroMAS runtime: plans -> rollouts, rewards and adapter updates (imports torch).

Public API (loaded on first use, so `neuromas.runtime.tasks.data` or `.generation.answers` stay light):

    load_model(reference="smollm2-135m-instruct", *, dtype="auto", threads=None) -> LoadedModel
    TransformersBackend.for_plan(plan, *, model=None, dtype="auto", threads=None,
                                 adapters_dir=None, max_batch_rows=None,
                                 lora_rows="stacked") -> TransformersBackend
    backend.generate(requests: Sequence[GenRequest], *, seed=None) -> list[GenResult]
    backend.model (the PeftModel), backend.tokenizer, backend.stats
    Runtime(plan, backend, *, seed=0).rollout(inputs, group=1, *, seed=None) -> Rollout
    attach_adapters(model, plan), save_adapters(model, root), load_adapters(model, folders)
    read_records(path, input_names) -> list[DataRecord]
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Backend": ".backends.base",
    "BackendStats": ".backends.base",
    "GenRequest": ".backends.base",
    "GenResult": ".backends.base",
    "TransformersBackend": ".backends.transformers",
    "LoadedModel": ".models.loading",
    "load_model": ".models.loading",
    "resolve_model": ".models.loading",
    "DEFAULT_MODEL": ".models.loading",
    "attach_adapters": ".models.adapters",
    "save_adapters": ".models.adapters",
    "load_adapters": ".models.adapters",
    "adapter_folders": ".models.adapters",
    "Prompt": ".generation.prompts",
    "PromptRenderer": ".generation.prompts",
    "Runtime": ".generation.rollout",
    "Rollout": ".generation.rollout",
    "Sample": ".generation.rollout",
    "NodeRecord": ".generation.rollout",
    "Answer": ".generation.rollout",
    "DataRecord": ".tasks.data",
    "read_records": ".tasks.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
