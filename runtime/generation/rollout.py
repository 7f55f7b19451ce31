"""A plan, a backend and inputs -> a Rollout: every node's completion for every input and sample.

Execution is level by level. Each plan Call becomes exactly one `backend.generate`
covering every input x group sample x node of the call; rows are ordered by adapter
slot, then node, then input, then sample, so rows sharing an adapter (and a prompt,
for the samples of one input) are adjacent. Sample g of a node reads sample g of the
nodes upstream: each sample is one independent run of the whole system.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from neuromas.plan import Call, Generation, Node, Output, Plan

from .answers import extract_answer, normalize_text
from ..backends.base import Backend, GenRequest
from ..failures import in_phase
from .prompts import Prompt, PromptRenderer

# (node, input index) -> the Generation of that node's rows for that input.
GenerationFor = Callable[[Node, int], Generation]


class NodeRecord(NamedTuple):
    """One node's completion in one sample of one input.

    prompt_ids: (P,) the rendered prompt.  completion_ids: (T,) sampled tokens (EOS or
    stop included).  logprobs: (T,) sampling log-probs of completion_ids.
    truncated: sources shortened to fit max_prompt_tokens.
    """

    node: str
    adapter: str | None
    input_index: int
    sample: int
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str
    finish_reason: str
    truncated: tuple[str, ...]


class Answer(NamedTuple):
    """What an output layer answered in one sample.

    text: the output node's text ('single'), or the winning extracted answer ('vote').
    answer: the answer extracted from it (runtime.answers), None when there is none.
    votes: normalized answer -> number of nodes that gave it ({} for 'single').
    """

    layer: str
    text: str
    answer: str | None
    votes: dict[str, int]


@dataclass
class Sample:
    """One run of the whole system on one input."""

    input_index: int
    sample: int
    records: dict[str, NodeRecord] = field(default_factory=dict)  # node id -> record
    answers: dict[str, Answer] = field(default_factory=dict)  # output layer -> answer


@dataclass
class Rollout:
    """Every node's record for every input and sample: `samples[input_index][sample]`."""

    plan: Plan
    inputs: list[dict[str, str]]
    group: int
    seed: int
    samples: list[list[Sample]]
    calls: int  # backend.generate calls made
    truncations: int  # source texts shortened to fit max_prompt_tokens, over all prompts

    def records(self) -> Iterator[NodeRecord]:
        """All node records, input by input, sample by sample, in plan node order."""
        for per_input in self.samples:
            for sample in per_input:
                yield from sample.records.values()

    def answer(self, input_index: int = 0, sample: int = 0, layer: str | None = None) -> Answer:
        """The answer of output `layer` (default: the plan's first output)."""
        layer = layer or self.plan.outputs[0].layer
        return self.samples[input_index][sample].answers[layer]

    @property
    def completion_tokens(self) -> int:
        return sum(len(record.completion_ids) for record in self.records())

    def traces(self, with_tokens: bool = False) -> Iterator[dict[str, Any]]:
        """One JSON-ready record per input and sample (what `neuromas rollout` writes)."""
        levels = {node.id: node.level for node in self.plan.nodes}
        for per_input in self.samples:
            for sample in per_input:
                nodes = {}
                for node_id, record in sample.records.items():
                    entry = {
                        "level": levels[node_id],
                        "adapter": record.adapter,
                        "text": record.text,
                        "finish_reason": record.finish_reason,
                        "prompt_tokens": len(record.prompt_ids),
                        "completion_tokens": len(record.completion_ids),
                        "logprob_sum": round(sum(record.logprobs), 4),
                        "truncated": list(record.truncated),
                    }
                    if with_tokens:
                        entry |= {
                            "prompt_ids": list(record.prompt_ids),
                            "completion_ids": list(record.completion_ids),
                            "logprobs": list(record.logprobs),
                        }
                    nodes[node_id] = entry
                yield {
                    "input_index": sample.input_index,
                    "sample": sample.sample,
                    "inputs": self.inputs[sample.input_index],
                    "answers": {layer: answer._asdict() for layer, answer in sample.answers.items()},
                    "nodes": nodes,
                }


class Runtime:
    """Runs one plan on one backend. `seed` seeds the n-th rollout with seed + n, unless
    `rollout(seed=...)` names one; the same seed gives the same rollout."""

    def __init__(self, plan: Plan, backend: Backend, *, seed: int = 0):
        self.plan = plan
        self.backend = backend
        self.seed = seed
        self.renderer = PromptRenderer(plan, backend.tokenizer)
        self.nodes = plan.node_map()
        self.rollouts_done = 0

    @in_phase("rollout")
    def rollout(
        self,
        inputs: Sequence[Mapping[str, str] | str],
        group: int = 1,
        *,
        seed: int | None = None,
        generation: GenerationFor | None = None,
    ) -> Rollout:
        """Run the system `group` times on every input (a mapping of input name -> text,
        or a plain string for a one-input plan). `generation` gives each input its own
        sampling settings (default: every node's own), so that inputs with different
        settings still share one call per plan call. Raises ValueError for missing inputs."""
        if group < 1:
            raise ValueError(f"group must be at least 1, got {group}")
        values = [self._input_values(item) for item in inputs]
        rollout_seed = self.seed + self.rollouts_done if seed is None else seed
        self.rollouts_done += 1
        samples = [[Sample(i, g) for g in range(group)] for i in range(len(values))]
        calls_before = self.backend.stats.calls
        truncations = 0
        for call_index, call in enumerate(self.plan.calls):
            call_seed = _call_seed(rollout_seed, call_index)
            truncations += self._run_call(call, values, samples, call_seed, generation)
        for per_input in samples:
            for sample in per_input:
                sample.records = {node.id: sample.records[node.id] for node in self.plan.nodes}
                sample.answers = {out.layer: self._answer(out, sample) for out in self.plan.outputs}
        calls = self.backend.stats.calls - calls_before
        return Rollout(self.plan, values, group, rollout_seed, samples, calls, truncations)

    def _run_call(
        self,
        call: Call,
        values: list[dict[str, str]],
        samples: list[list[Sample]],
        seed: int,
        generation: GenerationFor | None = None,
    ) -> int:
        """One backend.generate for the whole call; returns the number of truncations."""
        rows: list[tuple[Node, Sample, Prompt]] = []
        prompts: dict[tuple[str, int, tuple[str, ...]], Prompt] = {}
        for node in request_order(call, self.nodes):
            for per_input in samples:
                for sample in per_input:
                    messages = {s.name: sample.records[s.name].text for s in node.reads if s.kind == "node"}
                    key = (node.id, sample.input_index, tuple(messages.values()))
                    if key not in prompts:  # the samples of a level-0 node share one prompt
                        prompts[key] = self.renderer.render(node, values[sample.input_index], messages)
                    rows.append((node, sample, prompts[key]))
        requests = [
            GenRequest(
                prompt.ids,
                node.adapter,
                node.generation if generation is None else generation(node, sample.input_index),
            )
            for node, sample, prompt in rows
        ]
        results = self.backend.generate(requests, seed=seed)
        for (node, sample, prompt), result in zip(rows, results, strict=True):
            sample.records[node.id] = NodeRecord(
                node=node.id,
                adapter=node.adapter,
                input_index=sample.input_index,
                sample=sample.sample,
                prompt_ids=result.prompt_ids,
                completion_ids=result.completion_ids,
                logprobs=result.logprobs,
                text=result.text,
                finish_reason=result.finish_reason,
                truncated=prompt.truncated,
            )
        return sum(len(prompt.truncated) for _, _, prompt in rows)

    def _input_values(self, item: Mapping[str, str] | str) -> dict[str, str]:
        names = self.plan.inputs
        if isinstance(item, str):
            if len(names) != 1:
                raise ValueError(f"this system has inputs {', '.join(names)}: pass a mapping, not a string")
            return {names[0]: item}
        missing = [name for name in names if name not in item]
        if missing:
            raise ValueError(f"input record lacks {', '.join(missing)} (the system's inputs: {', '.join(names)})")
        return {name: str(item[name]) for name in names}

    def _answer(self, output: Output, sample: Sample) -> Answer:
        texts = [sample.records[node_id].text for node_id in output.nodes]
        if output.aggregate == "single":
            return Answer(output.layer, texts[0], extract_answer(texts[0], output.answer_format), {})
        return majority_vote(output.layer, texts, output.answer_format)


def request_order(call: Call, nodes: Mapping[str, Node]) -> list[Node]:
    """The call's nodes with each adapter slot's nodes adjacent, slots in first-seen order."""
    slot_rank: dict[str | None, int] = {}
    for node_id in call.nodes:
        slot_rank.setdefault(nodes[node_id].adapter, len(slot_rank))
    return sorted((nodes[node_id] for node_id in call.nodes), key=lambda node: slot_rank[node.adapter])


def majority_vote(layer: str, texts: Sequence[str], answer_format: str | None) -> Answer:
    """The most common extracted answer (normalized); ties go to the earliest node."""
    extracted = [extract_answer(text, answer_format) for text in texts]
    keys = [normalize_text(answer) if answer is not None else None for answer in extracted]
    votes = Counter(key for key in keys if key)
    if not votes:
        return Answer(layer, "", None, {})
    best = max(votes.values())
    winner = next(key for key in keys if key and votes[key] == best)
    spelled = extracted[keys.index(winner)]
    return Answer(layer, spelled or winner, spelled, dict(votes))


def cap_max_tokens(plan: Plan, max_tokens: int) -> Plan:
    """The plan with every node's and call's max_tokens at most `max_tokens` (quick runs),
    its growth stages' plans included."""

    def capped(generation: Generation) -> Generation:
        return msgspec.structs.replace(generation, max_tokens=min(generation.max_tokens, max_tokens))

    nodes = tuple(msgspec.structs.replace(node, generation=capped(node.generation)) for node in plan.nodes)
    levels = tuple(
        msgspec.structs.replace(
            level,
            calls=tuple(msgspec.structs.replace(call, generation=capped(call.generation)) for call in level.calls),
        )
        for level in plan.levels
    )
    growth = tuple(msgspec.structs.replace(stage, plan=cap_max_tokens(stage.plan, max_tokens)) for stage in plan.growth)
    return msgspec.structs.replace(plan, nodes=nodes, levels=levels, growth=growth)


def _call_seed(rollout_seed: int, call_index: int) -> int:
    digest = hashlib.blake2b(f"{rollout_seed}:{call_index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (2**63)
