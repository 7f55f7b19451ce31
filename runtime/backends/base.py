"""Token-id generation requests -> completions: the types every backend speaks.

Requests carry prompt token ids, not text: the runtime renders and tokenizes each
prompt once, so any backend (transformers here, vLLM later) receives the same rows.
Sampling settings are the plan's own `Generation`; each backend translates them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

from neuromas.plan import Generation

FinishReason = Literal["stop", "length"]


class GenRequest(NamedTuple):
    """One row of a batched generation call.

    prompt_ids: (P,) token ids of the fully rendered prompt (chat template applied).
    adapter: the LoRA adapter slot that generates this row; None runs the base model.
    generation: max_tokens, temperature (0 = greedy), top_p and stop strings of this row.
    """

    prompt_ids: tuple[int, ...]
    adapter: str | None
    generation: Generation


class GenResult(NamedTuple):
    """One completion, in the order of its request.

    prompt_ids: (P,) as requested.
    completion_ids: (T,) every sampled token, the one that ended it included (EOS or
        the last token of a stop string), so a trainer can score the stop decision.
    logprobs: (T,) log-probability of each sampled token under the distribution it was
        sampled from (after temperature and top-p); 0.0 for greedy rows.
    text: the decoded completion without special tokens, cut before any stop string.
    finish_reason: "stop" (EOS or a stop string) or "length" (max_tokens reached).
    """

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str
    finish_reason: FinishReason


@dataclass
class BackendStats:
    """Running counts of what a backend generated (reset with `reset()`)."""

    calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def record(self, results: Sequence[GenResult]) -> None:
        self.calls += 1
        self.requests += len(results)
        self.prompt_tokens += sum(len(result.prompt_ids) for result in results)
        self.completion_tokens += sum(len(result.completion_ids) for result in results)

    def reset(self) -> None:
        self.calls = self.requests = self.prompt_tokens = self.completion_tokens = 0


@runtime_checkable
class Backend(Protocol):
    """What the runtime needs from a generation engine.

    `generate` runs every request in ONE batched call, each row under its own adapter,
    and returns results in request order; `seed` makes the call reproducible.
    `tokenizer` is a Hugging Face tokenizer (chat template included): the runtime
    renders and tokenizes prompts with it. `set_adapters` loads trained adapter
    weights, one peft folder per slot name.
    """

    tokenizer: Any
    stats: BackendStats

    def generate(self, requests: Sequence[GenRequest], *, seed: int | None = None) -> list[GenResult]: ...

    def set_adapters(self, adapters: Mapping[str, Path]) -> None: ...
