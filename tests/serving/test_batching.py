"""Level batching across requests: concurrent requests share one backend call per plan call."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serving_helpers.py (pytest runs in importlib mode)
from serving_helpers import MAX_TOKENS, start_server  # noqa: E402


def ask(base_url: str, question: str, **settings):
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
    return client.chat.completions.create(
        model="neuromas3", messages=[{"role": "user", "content": question}], extra_body={"neuromas": {"trace": True}},
        **settings,
    )


def test_eight_simultaneous_requests_share_one_call_per_level(runtime):
    # The window is long and closes as soon as 8 runs wait: all 8 requests meet in one batch.
    server, stop = start_server(runtime, window_s=30.0, max_batch_runs=8)
    try:
        calls_before = runtime.backend.stats.calls
        questions = [f"What is {i} + {i}?" for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda q: ask(server.base_url, q), questions))
        assert runtime.backend.stats.calls - calls_before == len(runtime.plan.calls) == 2
        assert server.scheduler.stats.batches == 1 and server.scheduler.stats.largest_batch == 8
        assert all(len(response.choices) == 1 for response in responses)
    finally:
        stop()


def test_each_request_keeps_its_own_settings_inside_a_shared_batch(runtime):
    server, stop = start_server(runtime, window_s=30.0, max_batch_runs=4)
    try:
        calls_before = runtime.backend.stats.calls
        settings = [{"max_tokens": 1}, {"max_tokens": 2, "n": 2}, {"temperature": 0}]
        with ThreadPoolExecutor(3) as pool:
            capped, pair, greedy = pool.map(lambda s: ask(server.base_url, "Name a colour.", **s), settings)
        assert runtime.backend.stats.calls - calls_before == 2  # 4 runs: one call per level
        tokens = [[node["completion_tokens"] for node in trace["nodes"].values()]
                  for trace in capped.model_extra["neuromas"]["trace"] + pair.model_extra["neuromas"]["trace"]]
        assert tokens[0] == [1, 1, 1] and all(max(run) <= 2 for run in tokens[1:]) and len(tokens) == 3
        [trace] = greedy.model_extra["neuromas"]["trace"]
        assert trace["nodes"]["answer[0]"]["logprob_sum"] == 0.0  # temperature 0 reached the output layer only
        assert trace["nodes"]["hidden[0]"]["completion_tokens"] <= MAX_TOKENS
    finally:
        stop()


def test_a_full_queue_answers_429_with_retry_after(runtime):
    # Two requests wait out a long window; a third finds the queue (2) full.
    server, stop = start_server(runtime, max_queue=2, window_s=10.0)
    try:
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(ask, server.base_url, "Name a colour.") for _ in range(2)]
            deadline = time.monotonic() + 60
            while server.scheduler.queued < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(openai.RateLimitError) as caught:  # what an openai client sees
                ask(server.base_url, "Name a colour.")
            answered = [future.result() for future in waiting]
        refused = caught.value.response
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert len(answered) == 2
        after = httpx.get(server.base_url.removesuffix("/v1") + "/health", timeout=60).json()
        assert after["queued"] == 0 and after["requests"] == 2
    finally:
        stop()


def test_a_seeded_sampled_request_runs_in_a_rollout_of_its_own(runtime):
    from neuromas.runtime.serving.jobs import SystemRequest, needs_own_rollout

    inputs = ({"question": "Name a colour."},)
    assert needs_own_rollout(SystemRequest(inputs, seed=3), runtime.plan)  # the hidden layer samples at 1.0
    assert not needs_own_rollout(SystemRequest(inputs), runtime.plan)
    server, stop = start_server(runtime, window_s=2.0)
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda s: ask(server.base_url, "Name a colour.", **s), [{"seed": 3}, {}, {}]))
        # The seeded one alone, the other two together (or each alone when they missed the window).
        assert server.scheduler.stats.batches in (2, 3) and server.scheduler.stats.requests == 3
    finally:
        stop()
