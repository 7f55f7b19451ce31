"""The NeuroMAS runtime: plans -> rollouts, rewards and adapter updates (imports torch).

Public API (loaded on first use, so `neuromas.runtime.data` or `.answers` stay light):

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
    "LoadedModel": ".models",
    "load_model": ".models",
    "resolve_model": ".models",
    "DEFAULT_MODEL": ".models",
    "attach_adapters": ".adapters",
    "save_adapters": ".adapters",
    "load_adapters": ".adapters",
    "adapter_folders": ".adapters",
    "Prompt": ".prompts",
    "PromptRenderer": ".prompts",
    "Runtime": ".rollout",
    "Rollout": ".rollout",
    "Sample": ".rollout",
    "NodeRecord": ".rollout",
    "Answer": ".rollout",
    "DataRecord": ".data",
    "read_records": ".data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
