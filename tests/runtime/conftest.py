"""Fixtures for the runtime tests: the bundled SmolLM2 loaded once, and backends for small plans.

Torch runs on NEUROMAS_TEST_THREADS threads (default 1) during these tests only: on a
shared 2-core machine, two threads collapse whenever the other core is busy.
"""

from __future__ import annotations

import copy
import os

import pytest

from neuromas.plan import Plan

@pytest.fixture(autouse=True)
def _test_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("NEUROMAS_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def loaded():
    """The bundled model (converted on first use, then cached), loaded once per session."""
    from neuromas.runtime.models.loading import load_model

    return load_model()


@pytest.fixture
def make_backend(loaded):
    """backend = make_backend(plan): a private model copy with the plan's adapters."""
    from neuromas.runtime import TransformersBackend, attach_adapters

    def make(plan: Plan, backend_class=None):
        model = attach_adapters(copy.deepcopy(loaded.model), plan, base_model=loaded.source)
        return (backend_class or TransformersBackend)(model, loaded.tokenizer, source=loaded.source)

    return make
