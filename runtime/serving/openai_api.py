"""OpenAI chat and completion requests -> SystemRequests; SystemResults -> OpenAI responses.

Fields follow OpenAI's rules: an unknown field is refused (400 "Unrecognized request
argument"), a known field the system cannot honour is refused when set to anything but
its neutral value (tools, logprobs, penalties, ...), and bookkeeping fields (user,
metadata, store, ...) are accepted and ignored. The NeuroMAS field `neuromas`
({"trace": true}) adds every node's message to the response.

Inputs: the last user message (or the prompt) is the system's input. A system with
several inputs takes a JSON object naming each one: {"question": "...", "context": "..."}.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from neuromas.plan import Plan

from .jobs import SystemRequest, SystemResult, answer_finish_reason

MAX_N = 16  # choices per request (OpenAI allows 128; each is a full run of the system)


class RequestError(Exception):
    """A bad request: 400 (or `status`) with an OpenAI error body."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.code = code
        self.status = status


def error_body(message: str, kind: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class NeuromasOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trace: bool = False


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields chat and completions share."""

    model_config = ConfigDict(extra="forbid")

    model: str
    n: int = Field(1, ge=1, le=MAX_N)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    neuromas: NeuromasOptions = NeuromasOptions()
    # Accepted and ignored: they do not change what is generated.
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    # Refused unless neutral (checked in `refuse_unsupported`).
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: str | None = None  # ignored: no reasoning budget to set
    verbosity: str | None = None  # ignored


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


def refuse_unsupported(request: _Sampling) -> None:
    """Raise RequestError for a field set to something the system cannot do."""
    refused: list[tuple[str, bool]] = [
        ("frequency_penalty", bool(request.frequency_penalty)),
        ("presence_penalty", bool(request.presence_penalty)),
        ("logit_bias", bool(request.logit_bias)),
    ]
    if isinstance(request, ChatRequest):
        refused += [
            ("logprobs", bool(request.logprobs)),
            ("top_logprobs", request.top_logprobs is not None),
            ("tools", bool(request.tools)),
            ("tool_choice", request.tool_choice not in (None, "none")),
            ("functions", bool(request.functions)),
            ("function_call", request.function_call not in (None, "none")),
            ("response_format", (request.response_format or {"type": "text"}).get("type") != "text"),
            ("modalities", request.modalities not in (None, ["text"])),
            ("audio", request.audio is not None),
            ("prediction", request.prediction is not None),
            ("web_search_options", request.web_search_options is not None),
        ]
    else:
        assert isinstance(request, CompletionRequest)
        refused += [
            ("logprobs", request.logprobs is not None),
            ("echo", bool(request.echo)),
            ("suffix", bool(request.suffix)),
            ("best_of", request.best_of not in (None, 1)),
        ]
    for name, is_set in refused:
        if is_set:
            raise RequestError(f"'{name}' is not supported by this server (a NeuroMAS system)", param=name)


def system_request(request: ChatRequest | CompletionRequest, plan: Plan) -> SystemRequest:
    """The SystemRequest a chat or completion request asks for; raises RequestError."""
    refuse_unsupported(request)
    if isinstance(request, ChatRequest):
        texts = [last_user_text(request.messages)]
        max_tokens = request.max_completion_tokens or request.max_tokens
        param = "messages"
    else:
        texts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
        if not texts:
            raise RequestError("'prompt' is an empty list", param="prompt")
        max_tokens = request.max_tokens
        param = "prompt"
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    if stop is not None and len(stop) > 4:
        raise RequestError("'stop' takes at most 4 sequences", param="stop")
    return SystemRequest(
        inputs=tuple(system_inputs(text, plan.inputs, param) for text in texts),
        n=request.n,
        max_tokens=max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=None if stop is None else tuple(stop),
        seed=request.seed,
    )


def last_user_text(messages: list[ChatMessage]) -> str:
    """The text of the last user message (text parts joined); raises RequestError."""
    for position in range(len(messages) - 1, -1, -1):
        message = messages[position]
        if message.role != "user":
            continue
        if isinstance(message.content, str):
            return message.content
        parts = message.content or []
        kinds = {part.get("type") for part in parts}
        if kinds - {"text"}:
            raise RequestError(
                f"messages[{position}]: only text content is supported, got {', '.join(sorted(map(str, kinds)))}",
                param=f"messages.[{position}].content",
            )
        return "".join(str(part.get("text", "")) for part in parts)
    raise RequestError("'messages' has no user message: the last one fills the system's input", param="messages")


def system_inputs(text: str, names: tuple[str, ...], param: str) -> dict[str, str]:
    """A message text -> {input name: text}: the text itself for a one-input system, a JSON
    object naming every input otherwise. Raises RequestError."""
    if len(names) == 1:
        return {names[0]: text}
    expected = ", ".join(names)
    try:
        values = json.loads(text)
    except ValueError:
        values = None
    if not isinstance(values, dict):
        raise RequestError(f"this system has inputs {expected}: send a JSON object with one string each", param=param)
    missing = [name for name in names if name not in values]
    unknown = [key for key in values if key not in names]
    if missing or unknown:
        problems = [f"missing {', '.join(missing)}" if missing else "", f"unknown {', '.join(unknown)}" if unknown else ""]
        raise RequestError(f"inputs {'; '.join(p for p in problems if p)} (the system's inputs: {expected})", param=param)
    if not all(isinstance(values[name], str) for name in names):
        raise RequestError(f"every input ({expected}) must be a string", param=param)
    return {name: values[name] for name in names}


def response_id(kind: Literal["chat", "completion"]) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(result: SystemResult) -> dict[str, int]:
    """Token counts over every node of every run."""
    total = result.prompt_tokens + result.completion_tokens
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens, "total_tokens": total}


def choices(result: SystemResult, plan: Plan) -> list[tuple[str, str]]:
    """(answer text, finish reason) per choice, prompt-major."""
    layer = plan.outputs[0].layer
    return [(run.sample.answers[layer].text, answer_finish_reason(plan, run.sample)) for run in result.runs]


def trace_field(result: SystemResult) -> dict[str, Any]:
    """The `neuromas` response field: every node's message and the answers, per choice."""
    return {"trace": [{"index": i, "answers": run.trace["answers"], "nodes": run.trace["nodes"]}
                      for i, run in enumerate(result.runs)]}


def chat_response(result: SystemResult, plan: Plan, model: str, want_trace: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": response_id("chat"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": reason}
            for i, (text, reason) in enumerate(choices(result, plan))
        ],
        "usage": usage(result),
    }
    if want_trace:
        body["neuromas"] = trace_field(result)
    return body


def completion_response(result: SystemResult, plan: Plan, model: str, want_trace: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": response_id("completion"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "text": text, "logprobs": None, "finish_reason": reason}
            for i, (text, reason) in enumerate(choices(result, plan))
        ],
        "usage": usage(result),
    }
    if want_trace:
        body["neuromas"] = trace_field(result)
    return body


def stream_opening(kind: Literal["chat", "completion"], chunk_id: str, model: str, count: int) -> list[dict[str, Any]]:
    """The chunks sent at once, before any level has run: the assistant role, per choice
    (a completion stream has none)."""
    if kind != "chat":
        return []
    return [_chunk(kind, chunk_id, model, i, {"role": "assistant", "content": ""}, None) for i in range(count)]


def stream_answer(
    kind: Literal["chat", "completion"], chunk_id: str, result: SystemResult, plan: Plan, model: str,
    *, include_usage: bool, want_trace: bool,
) -> list[dict[str, Any]]:
    """The chunks sent once the answer level has run: each choice's text, then its finish
    reason; then the usage (stream_options.include_usage) and trace chunk when asked."""
    answers = choices(result, plan)
    content = "content" if kind == "chat" else "text"
    chunks = [_chunk(kind, chunk_id, model, i, {content: text}, None) for i, (text, _) in enumerate(answers)]
    chunks += [_chunk(kind, chunk_id, model, i, {} if kind == "chat" else {"text": ""}, reason)
               for i, (_, reason) in enumerate(answers)]
    if include_usage or want_trace:
        tail = {"id": chunk_id, "object": _chunk_object(kind), "created": int(time.time()), "model": model,
                "choices": [], "usage": usage(result) if include_usage else None}
        if want_trace:
            tail["neuromas"] = trace_field(result)
        chunks.append(tail)
    return chunks


def _chunk_object(kind: str) -> str:
    return "chat.completion.chunk" if kind == "chat" else "text_completion"


def _chunk(kind: str, chunk_id: str, model: str, index: int, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "finish_reason": reason, "logprobs": None}
    if kind == "chat":
        choice["delta"] = delta
    else:
        choice |= delta
    return {"id": chunk_id, "object": _chunk_object(kind), "created": int(time.time()), "model": model,
            "choices": [choice]}
