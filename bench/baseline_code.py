"""Modules as they were at an earlier commit, to time or compare today's code against them.

The benchmarks compare the update and the sampler with the code of commit 8b6beb2, the
last one before the update's fast paths and the shared fp32 LoRA path. The module's
source comes from `git show`, and it is executed as a sibling of today's modules, so its
relative imports resolve to today's package (`replacements` stand in for siblings
that changed too).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

BEFORE = "8b6beb2"
REPO = Path(__file__).resolve().parents[1]


def module_at(revision: str, path: str, name: str, replacements: dict[str, types.ModuleType] | None = None):
    """The module at `path` (repository-relative) as of `revision`, named `name`."""
    source = subprocess.check_output(["git", "show", f"{revision}:{path}"], text=True, cwd=REPO)
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = name.rsplit(".", 1)[0]
    saved = {key: sys.modules.get(key) for key in (replacements or {})}
    sys.modules.update(replacements or {})
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return module


def before_update(revision: str = BEFORE) -> types.ModuleType:
    """runtime/training/update.py as of `revision`."""
    return module_at(revision, "runtime/training/update.py", "neuromas.runtime.training._update_before")


def before_backend(revision: str = BEFORE) -> type:
    """The TransformersBackend class as of `revision` (with that revision's lora_rows)."""
    rows = module_at(revision, "runtime/backends/lora_rows.py", "neuromas.runtime.backends._lora_rows_before")
    backend = module_at(revision, "runtime/backends/transformers.py", "neuromas.runtime.backends._transformers_before",
                        {"neuromas.runtime.backends.lora_rows": rows})
    return backend.TransformersBackend
