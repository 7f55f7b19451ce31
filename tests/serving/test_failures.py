"""A failure inside the system answers 500 with OpenAI's error body, never a traceback,
and the server keeps serving."""

from __future__ import annotations

import sys
from pathlib import Path

import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serving_helpers.py (pytest runs in importlib mode)
from serving_helpers import start_server  # noqa: E402


class FailsOnce:
    """The real backend, except that its first `generate` raises (as a lost GPU would)."""

    def __init__(self, backend):
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.stats = backend.stats
        self.has_failed = False

    def generate(self, requests, *, seed=None):
        if not self.has_failed:
            self.has_failed = True
            raise RuntimeError("device lost: secret internal detail")
        return self.backend.generate(requests, seed=seed)

    def set_adapters(self, adapters):
        self.backend.set_adapters(adapters)


def test_a_failed_batch_answers_500_then_the_server_goes_on(runtime):
    from neuromas.runtime import Runtime

    server, stop = start_server(Runtime(runtime.plan, FailsOnce(runtime.backend)))
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
    messages = [{"role": "user", "content": "Name a colour."}]
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="neuromas3", messages=messages)
        text = caught.value.response.text
        assert caught.value.body["type"] == "server_error"
        assert "Traceback" not in text and "secret internal detail" not in text
        assert client.chat.completions.create(model="neuromas3", messages=messages).choices[0].message.content
    finally:
        stop()


def test_a_request_larger_than_a_batch_is_refused(live):
    client = openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0, timeout=300)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="neuromas3", prompt=["a"] * 5, n=16)  # 80 runs > 64
    assert caught.value.body["param"] == "n"
