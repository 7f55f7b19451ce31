"""Requests to a system (inputs, n, sampling caps) -> one shared rollout -> each request's samples.

Several requests run as ONE `Runtime.rollout`: each of a request's `n` samples becomes
its own rollout input (group 1), so every plan call is still one backend call for all
requests, and each row gets its own request's settings through the rollout's
`generation` hook: `max_tokens` caps every node, `temperature`, `top_p` and `stop`
replace the output layer's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec

from neuromas.plan import Generation, Node, Plan

from ..generation.rollout import Rollout, Runtime, Sample


class SystemRequest(NamedTuple):
    """One request: the system runs `n` times on each of `inputs` (None: the spec's setting)."""

    inputs: tuple[dict[str, str], ...]  # one mapping input name -> text per prompt
    n: int = 1
    max_tokens: int | None = None  # a cap on every node's max_tokens
    temperature: float | None = None  # replaces the output layer's
    top_p: float | None = None  # replaces the output layer's
    stop: tuple[str, ...] | None = None  # replaces the output layer's stop strings
    seed: int | None = None

    @property
    def runs(self) -> int:
        """System runs this request needs: prompts x n."""
        return len(self.inputs) * self.n


class RunResult(NamedTuple):
    """One run of the system for a request: its sample and its JSON-ready trace."""

    sample: Sample
    trace: dict[str, Any]


class SystemResult(NamedTuple):
    """A request's runs, prompt-major: run j of prompt i is `runs[i * n + j]`."""

    runs: tuple[RunResult, ...]
    prompt_tokens: int  # over every node of every run
    completion_tokens: int


def generation_for(request: SystemRequest, node: Node) -> Generation:
    """The Generation of `node`'s rows for `request`."""
    generation = node.generation
    changes: dict[str, Any] = {}
    if request.max_tokens is not None and request.max_tokens < generation.max_tokens:
        changes["max_tokens"] = request.max_tokens
    if node.is_output:
        if request.temperature is not None:
            changes["temperature"] = request.temperature
        if request.top_p is not None:
            changes["top_p"] = request.top_p
        if request.stop is not None:
            changes["stop"] = request.stop
    return msgspec.structs.replace(generation, **changes) if changes else generation


def needs_own_rollout(request: SystemRequest, plan: Plan) -> bool:
    """Whether the request must run alone: it names a seed and some node samples.

    The backends draw one random stream per call, so a sampled row's tokens depend on the
    other rows of its call; a seeded request is reproducible only in a rollout of its own,
    seeded with its seed. Greedy rows (temperature 0) do not depend on their neighbours.
    """
    return request.seed is not None and any(generation_for(request, node).temperature > 0 for node in plan.nodes)


def run_requests(runtime: Runtime, requests: Sequence[SystemRequest], *, seed: int | None = None) -> list[SystemResult]:
    """Run every request in one rollout; results in request order. Raises ValueError
    for inputs that do not match the system's (check them first: one bad request fails all)."""
    owners: list[SystemRequest] = []
    inputs: list[dict[str, str]] = []
    for request in requests:
        for values in request.inputs:
            for _ in range(request.n):
                owners.append(request)
                inputs.append(values)
    rollout = runtime.rollout(
        inputs, group=1, seed=seed, generation=lambda node, input_index: generation_for(owners[input_index], node)
    )
    return split_results(rollout, [request.runs for request in requests])


def split_results(rollout: Rollout, runs_per_request: Sequence[int]) -> list[SystemResult]:
    """A group-1 rollout's samples, cut into consecutive runs of the given sizes."""
    traces = list(rollout.traces())
    results, start = [], 0
    for count in runs_per_request:
        runs = tuple(RunResult(rollout.samples[i][0], traces[i]) for i in range(start, start + count))
        records = [record for run in runs for record in run.sample.records.values()]
        results.append(
            SystemResult(
                runs=runs,
                prompt_tokens=sum(len(record.prompt_ids) for record in records),
                completion_tokens=sum(len(record.completion_ids) for record in records),
            )
        )
        start += count
    return results


def answer_finish_reason(plan: Plan, sample: Sample) -> str:
    """"length" when the answer node ran out of max_tokens, else "stop" (a vote answers
    from several nodes, and always says "stop")."""
    output = plan.outputs[0]
    if output.aggregate == "single" and sample.records[output.nodes[0]].finish_reason == "length":
        return "length"
    return "stop"
