"""The real server on a loopback port, called with the official openai client."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serving_helpers.py (pytest runs in importlib mode)
from serving_helpers import MAX_TOKENS  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]


def test_models_lists_the_system(client, live):
    models = client.models.list()
    assert [model.id for model in models.data] == ["neuromas3"]
    assert client.models.retrieve("neuromas3").owned_by == "neuromas"


def test_chat_answers_with_usage_over_every_node(client):
    response = client.chat.completions.create(model="neuromas3", messages=QUESTION, extra_body={"neuromas": {"trace": True}})
    assert response.object == "chat.completion"
    [choice] = response.choices
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    [trace] = response.model_extra["neuromas"]["trace"]
    assert set(trace["nodes"]) == {"hidden[0]", "hidden[1]", "answer[0]"}
    assert choice.message.content == trace["nodes"]["answer[0]"]["text"]
    nodes = trace["nodes"].values()
    assert response.usage.completion_tokens == sum(node["completion_tokens"] for node in nodes)
    assert response.usage.prompt_tokens == sum(node["prompt_tokens"] for node in nodes)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_no_trace_unless_asked(client):
    response = client.chat.completions.create(model="neuromas3", messages=QUESTION)
    assert "neuromas" not in (response.model_extra or {})


def test_completions_take_a_prompt_or_a_list_of_prompts(client):
    one = client.completions.create(model="neuromas3", prompt="What is 2 + 3?")
    assert one.object == "text_completion" and len(one.choices) == 1
    two = client.completions.create(model="neuromas3", prompt=["What is 1 + 1?", "Name a colour."], n=2)
    assert [choice.index for choice in two.choices] == [0, 1, 2, 3]


def test_n_runs_the_whole_system_n_times(client):
    response = client.chat.completions.create(
        model="neuromas3", messages=QUESTION, n=3, temperature=1.0, extra_body={"neuromas": {"trace": True}}
    )
    assert [choice.index for choice in response.choices] == [0, 1, 2]
    traces = response.model_extra["neuromas"]["trace"]
    assert len(traces) == 3 and all(len(trace["nodes"]) == 3 for trace in traces)


def test_max_tokens_caps_every_node(client):
    response = client.chat.completions.create(
        model="neuromas3", messages=QUESTION, max_tokens=1, extra_body={"neuromas": {"trace": True}}
    )
    [trace] = response.model_extra["neuromas"]["trace"]
    assert [node["completion_tokens"] for node in trace["nodes"].values()] == [1, 1, 1]
    assert response.usage.completion_tokens == 3


def test_temperature_zero_is_greedy_and_a_seed_repeats_a_sampled_answer(client):
    greedy = [client.chat.completions.create(model="neuromas3", messages=QUESTION, temperature=0,
                                             extra_body={"neuromas": {"trace": True}}) for _ in range(2)]
    answers = [response.model_extra["neuromas"]["trace"][0]["nodes"]["answer[0]"]["logprob_sum"] for response in greedy]
    assert answers == [0.0, 0.0]  # a greedy row's distribution is a point mass
    seeded = [client.chat.completions.create(model="neuromas3", messages=QUESTION, temperature=1.0, seed=7, n=2)
              for _ in range(2)]
    assert [c.message.content for c in seeded[0].choices] == [c.message.content for c in seeded[1].choices]


def test_chat_stream_sends_the_role_then_the_answer_then_usage(client):
    stream = client.chat.completions.create(
        model="neuromas3", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    reasons = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert text and reasons in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 3 * MAX_TOKENS


def test_completion_stream_with_n(client):
    chunks = list(client.completions.create(model="neuromas3", prompt="What is 2 + 3?", n=2, stream=True))
    texts = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert all(texts.values())


@pytest.mark.parametrize(
    ("arguments", "status", "param"),
    [
        ({"n": 0}, 400, "n"),
        ({"temperature": 3}, 400, "temperature"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, 400, "tools"),
        ({"logprobs": True}, 400, "logprobs"),
        ({"extra_body": {"best_answer": True}}, 400, "best_answer"),
        ({"model": "gpt-4o"}, 404, "model"),
        ({"messages": [{"role": "system", "content": "be brief"}]}, 400, "messages"),
    ],
)
def test_bad_requests_get_openai_errors(client, arguments, status, param):
    request = {"model": "neuromas3", "messages": QUESTION} | arguments
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(**request)
    assert caught.value.status_code == status
    assert caught.value.body["param"] == param
    assert caught.value.body["type"] == "invalid_request_error"
    assert "Traceback" not in caught.value.response.text


def test_a_body_that_is_not_json_and_an_unknown_route(live):
    broken = httpx.post(f"{live.base_url}/chat/completions", content=b"{not json",
                        headers={"Content-Type": "application/json"}, timeout=60)
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.get(f"{live.base_url}/engines", timeout=60)
    assert missing.status_code == 404 and "error" in missing.json()


def test_health(live):
    health = httpx.get(live.base_url.removesuffix("/v1") + "/health", timeout=60).json()
    assert health["status"] == "ok" and health["model"] == "neuromas3"


def test_a_two_input_system_takes_a_json_object(runtime):
    """The input mapping, checked without a server: a JSON object naming each input."""
    from neuromas.runtime.serving.openai_api import RequestError, system_inputs

    names = ("question", "context")
    text = json.dumps({"question": "Why?", "context": "Because."})
    assert system_inputs(text, names, "messages") == {"question": "Why?", "context": "Because."}
    for bad in ("plain text", json.dumps({"question": "Why?"}), json.dumps({"question": "a", "context": 1})):
        with pytest.raises(RequestError):
            system_inputs(bad, names, "messages")
