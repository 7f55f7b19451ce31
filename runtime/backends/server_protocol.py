"""GenRequests -> request bodies for vLLM's OpenAI-compatible server, its responses -> GenResults,
and rows -> servers (plain Python, no network).

One `POST /v1/completions` per row (checked against vLLM 0.26 and 0.32's `CompletionRequest`,
vllm/entrypoints/openai/completion/protocol.py):

  * `prompt`: the row's token ids (a list of ints is taken as one tokenized prompt, so
    the server does not tokenize again); `model`: the adapter's published name, or the
    base model's name for a frozen node;
  * the row's sampling settings as in-process vLLM gets them (`vllm_requests.sampling_kwargs`):
    temperature, top_p, max_tokens, stop strings, a per-row seed, and the neutral
    top_k, min_p and penalties (`vllm_requests.NEUTRAL_SAMPLING`: the server would
    otherwise take them from the model's generation_config.json), `logprobs=0` (the
    sampled token's log-prob, computed after temperature and top-p when the server runs
    with `--logprobs-mode processed_logprobs`), `include_stop_str_in_output=False`;
  * `return_token_ids: true`: the choice carries `token_ids` (the completion's ids, the
    EOS or stop-string token included). Should a server leave them out,
    `return_tokens_as_token_ids: true` makes the log-prob entries' tokens read
    "token_id:<id>", which are parsed instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..models.adapter_versions import AdapterVersion
from .base import FinishReason, GenRequest, GenResult
from .vllm_requests import NEUTRAL_SAMPLING, request_seed, sampling_kwargs

TOKEN_ID_PREFIX = "token_id:"
FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


class ServerResponseError(RuntimeError):
    """A server's answer that does not have what a GenResult needs."""


def completion_body(
    request: GenRequest, row: int, base_model: str, adapters: Mapping[str, AdapterVersion], seed: int | None
) -> dict[str, Any]:
    """The JSON body of one row's /v1/completions request. Raises ValueError for an empty
    prompt or an adapter slot with no published version."""
    if not request.prompt_ids:
        raise ValueError(f"request {row} has an empty prompt")
    if request.adapter is None:
        model = base_model
    elif request.adapter in adapters:
        model = adapters[request.adapter].name
    else:
        raise ValueError(
            f"adapter slot '{request.adapter}' has no published version on the servers: "
            "call backend.publish(model) or backend.set_adapters(folders) first"
        )
    sampling = sampling_kwargs(request.generation, None if seed is None else request_seed(seed, row))
    body: dict[str, Any] = {
        "model": model,
        "prompt": list(request.prompt_ids),
        "n": 1,
        "max_tokens": sampling["max_tokens"],
        "temperature": sampling["temperature"],
        "top_p": sampling["top_p"],
        "stop": sampling["stop"],
        "skip_special_tokens": sampling["skip_special_tokens"],
        "include_stop_str_in_output": sampling["include_stop_str_in_output"],
        **{field: sampling[field] for field in NEUTRAL_SAMPLING},
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
    }
    if sampling["logprobs"] is not None:
        body["logprobs"] = sampling["logprobs"]
    if "seed" in sampling:
        body["seed"] = sampling["seed"]
    return body


def parse_completion(request: GenRequest, response: Mapping[str, Any]) -> GenResult:
    """One /v1/completions response (one choice) -> GenResult; greedy rows (no log-probs
    asked for) get 0.0 per token. Raises ServerResponseError for a malformed answer."""
    choices = response.get("choices") or []
    if len(choices) != 1:
        raise ServerResponseError(f"expected one choice in the server's response, got {len(choices)}")
    choice = choices[0]
    logprobs = choice.get("logprobs")
    tokens = choice.get("token_ids")
    if tokens is None:
        if not logprobs:
            raise ServerResponseError(
                "the server returned no token ids: it must be vLLM with `return_token_ids` support (0.10.2 or newer)"
            )
        tokens = [_token_id(token) for token in logprobs.get("tokens") or []]
    tokens = tuple(int(token) for token in tokens)
    if logprobs is None:
        values = (0.0,) * len(tokens)
    else:
        raw = logprobs.get("token_logprobs") or []
        if len(raw) != len(tokens) or any(value is None for value in raw):
            raise ServerResponseError(
                f"the server returned {len(raw)} log-probs for {len(tokens)} tokens (or a null log-prob)"
            )
        values = tuple(float(value) for value in raw)
    reason = FINISH_REASONS.get(str(choice.get("finish_reason")))
    if reason is None:
        raise ServerResponseError(f"the server ended a request with finish_reason {choice.get('finish_reason')!r}")
    return GenResult(tuple(request.prompt_ids), tokens, values, choice.get("text") or "", reason)


def _token_id(token: str) -> int:
    if not token.startswith(TOKEN_ID_PREFIX):
        raise ServerResponseError(f"log-prob token {token!r} is not 'token_id:<id>' (return_tokens_as_token_ids)")
    return int(token[len(TOKEN_ID_PREFIX) :])


def assign_servers(requests: Sequence[GenRequest], servers: int) -> list[int]:
    """A server index for every row: consecutive rows in `servers` runs of about equal load
    (prompt + max_tokens), each boundary moved, within a quarter of a server's share, to
    where the two rows around it share the least cached prefix (a different adapter, or
    the shortest common prompt prefix). Rows come grouped by adapter, node, input and
    sample (runtime.rollout), so a node's group samples, which share their prompt, stay
    on one server and hit its prefix cache."""
    count = len(requests)
    if servers < 1:
        raise ValueError(f"servers must be at least 1, got {servers}")
    if servers == 1 or count <= 1:
        return [0] * count
    loads = [len(r.prompt_ids) + r.generation.max_tokens for r in requests]
    before = [0]  # before[i]: load of rows 0 .. i-1
    for load in loads:
        before.append(before[-1] + load)
    share = before[-1] / servers
    boundaries = []
    previous = 0
    for k in range(1, servers):
        ideal = k * share
        candidates = [b for b in range(previous + 1, count) if abs(before[b] - ideal) <= share / 4]
        if not candidates:
            nearest = min(range(previous + 1, count), key=lambda b: abs(before[b] - ideal), default=count)
            candidates = [nearest]
        best = min(candidates, key=lambda b: (_shared_prefix(requests[b - 1], requests[b]), abs(before[b] - ideal)))
        boundaries.append(best)
        previous = best
    assignment, server = [], 0
    for row in range(count):
        while server < len(boundaries) and row >= boundaries[server]:
            server += 1
        assignment.append(server)
    return assignment


def _shared_prefix(a: GenRequest, b: GenRequest) -> int:
    """Prompt tokens two rows could share in a prefix cache (none across adapters)."""
    if a.adapter != b.adapter:
        return 0
    length = 0
    for x, y in zip(a.prompt_ids, b.prompt_ids):
        if x != y:
            break
        length += 1
    return length
