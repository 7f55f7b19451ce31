"""Fixtures for the serving tests: the real server on a free loopback port, running the
bundled SmolLM2 through NeuroMAS-3 with every node capped at a few tokens.

Torch runs on NEUROMAS_TEST_THREADS threads (default 1): the machine is shared.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serving tests need fastapi and uvicorn: pip install 'neuromas[serve]'")
pytest.importorskip("openai", reason="the serving tests call the server with the openai client: pip install openai")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serving_helpers.py (pytest runs in importlib mode)
from serving_helpers import MAX_TOKENS, SPEC, start_server  # noqa: E402


@pytest.fixture(scope="session")
def runtime():
    """NeuroMAS-3 on the bundled model, every node capped at MAX_TOKENS tokens."""
    import torch

    import neuromas
    from neuromas.runtime import Runtime, TransformersBackend
    from neuromas.runtime.generation.rollout import cap_max_tokens

    torch.set_num_threads(int(os.environ.get("NEUROMAS_TEST_THREADS", "1")))
    plan = cap_max_tokens(neuromas.compile(str(SPEC)), MAX_TOKENS)
    return Runtime(plan, TransformersBackend.for_plan(plan))


@pytest.fixture(scope="module")
def live(runtime):
    server, stop = start_server(runtime)
    yield server
    stop()


@pytest.fixture
def client(live):
    import openai

    return openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0, timeout=300)
