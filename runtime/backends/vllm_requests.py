"""GenRequests and the published adapter versions -> plain vLLM request specs (no vllm import).

Each `RequestSpec` holds what `vllm.LLM.generate` needs for one row: the prompt token
ids as given (vLLM does not tokenize again), the row's LoRA as (name, int id, path)
or None for the base model, and the keyword arguments of its `SamplingParams`.

Sampling: temperature 0 is greedy (no log-probs asked for: the point mass gives 0.0);
otherwise `logprobs=0` returns the sampled token's log-prob, which the engine computes
after temperature and top-p (`logprobs_mode="processed_logprobs"`). Stop strings end a
row with the token that completed them kept in the ids and the text cut before them
(`include_stop_str_in_output=False`). With a call seed, each sampled row gets its own
seed derived from (call seed, row), so splitting a call into sub-calls changes nothing.

Every other sampling setting is sent explicitly at its neutral value (`NEUTRAL_SAMPLING`):
vLLM's OpenAI server fills a field a request leaves out from the model's
`generation_config.json` (top_k, min_p, repetition, presence and frequency penalties),
while in-process `SamplingParams` do not, so without them the two vLLM backends would
sample from different distributions for a model that sets any of these.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from neuromas.plan import Generation

from ..models.adapter_versions import AdapterVersion
from .base import GenRequest


class LoraSpec(NamedTuple):
    """`vllm.lora.request.LoRARequest(lora_name, lora_int_id, lora_path)`."""

    name: str
    int_id: int
    path: str


class RequestSpec(NamedTuple):
    prompt_token_ids: list[int]
    lora: LoraSpec | None
    sampling: dict[str, Any]  # SamplingParams(**sampling)


def lora_spec(version: AdapterVersion) -> LoraSpec:
    return LoraSpec(version.name, version.lora_id, str(version.path))


def request_seed(call_seed: int, row: int) -> int:
    """A per-row sampling seed: distinct rows of one call, and distinct calls, get unrelated seeds."""
    digest = hashlib.blake2b(f"{call_seed}:{row}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (2**63)


# vLLM's own defaults (SamplingParams; CompletionRequest._DEFAULT_SAMPLING_PARAMS in 0.32):
# no top-k or min-p cut, no penalties. The plan has no such settings.
NEUTRAL_SAMPLING: dict[str, Any] = {
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}


def sampling_kwargs(generation: Generation, seed: int | None = None) -> dict[str, Any]:
    """`SamplingParams` keyword arguments for one row with the node's settings."""
    greedy = generation.temperature <= 0
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": generation.max_tokens,
        "temperature": 0.0 if greedy else generation.temperature,
        "top_p": 1.0 if greedy else generation.top_p,
        "stop": [stop for stop in generation.stop if stop],
        "logprobs": None if greedy else 0,
        "detokenize": True,
        "skip_special_tokens": True,
        "include_stop_str_in_output": False,
        **NEUTRAL_SAMPLING,
    }
    if seed is not None and not greedy:
        kwargs["seed"] = seed
    return kwargs


def build_requests(
    requests: Sequence[GenRequest], adapters: Mapping[str, AdapterVersion], *, seed: int | None = None
) -> list[RequestSpec]:
    """One spec per request, in order. `adapters`: slot -> its current published version.

    Raises ValueError for an empty prompt or a slot with no published version.
    """
    specs = []
    for row, request in enumerate(requests):
        if not request.prompt_ids:
            raise ValueError(f"request {row} has an empty prompt")
        lora = None
        if request.adapter is not None:
            if request.adapter not in adapters:
                raise ValueError(
                    f"adapter slot '{request.adapter}' has no published version in the vLLM engine: "
                    "call backend.publish(model) or backend.set_adapters(folders) first"
                )
            lora = lora_spec(adapters[request.adapter])
        row_seed = None if seed is None else request_seed(seed, row)
        specs.append(RequestSpec(list(request.prompt_ids), lora, sampling_kwargs(request.generation, row_seed)))
    return specs


def row_chunks(count: int, max_rows: int | None) -> list[range]:
    """Consecutive row ranges of at most `max_rows` covering `count` rows (one range when None)."""
    if count == 0:
        return []
    size = count if max_rows is None else max_rows
    if size < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    return [range(start, min(start + size, count)) for start in range(0, count, size)]
