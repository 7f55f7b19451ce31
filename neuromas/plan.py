"""The execution plan: what the compiler hands the runtime, as msgspec Structs.

A plan is self-contained: the runtime never reads the spec again. It is versioned
(`schema`), round-trips exactly through JSON, and has a stable content hash: the
same spec gives the same bytes and hash on every machine.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

import msgspec

from neuromas.vocabulary import Algorithm, AnswerFormat, LossNorm, OriginKind

SCHEMA_VERSION = 1

_NODE_ID = re.compile(r"^(?P<layer>[A-Za-z_][A-Za-z0-9_]*(?:\.\d+)?)\[(?P<index>\d+)\]$")


def node_id(layer: str, index: int) -> str:
    """The one place node ids are formatted: `hidden[0]`, `h.1[2]` (layer h, repeat 1)."""
    return f"{layer}[{index}]"


def parse_node_id(text: str) -> tuple[str, int]:
    """Split a node id into (layer, index); raises ValueError for anything else."""
    match = _NODE_ID.match(text)
    if match is None:
        raise ValueError(f"not a node id: {text!r} (expected layer[index], like 'hidden[0]')")
    return match["layer"], int(match["index"])


class _Struct(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Generation(_Struct):
    """Sampling settings of one node, as the backends receive them."""

    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()


class Lora(_Struct):
    """The LoRA adapter every trainable slot gets (peft's LoraConfig fields)."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]


class Template(_Struct):
    """A prompt template: the built-in role-free one, or a Jinja file (its text inlined)."""

    kind: Literal["builtin", "jinja"] = "builtin"
    path: str | None = None  # relative to the spec's folder, as written
    source: str | None = None


class Source(_Struct):
    """One thing a node reads: a system input or another node's text."""

    kind: Literal["input", "node"]
    name: str  # input name, or node id


class Node(_Struct):
    id: str
    layer: str
    index: int
    width: int  # width of the node's layer
    level: int  # 0-based depth: every source is at a lower level
    adapter: str | None  # adapter slot name; None = frozen (base model only)
    template: Template
    generation: Generation
    reads: tuple[Source, ...]  # in prompt order: what the node's call shares comes first
    is_output: bool = False
    answer_format: AnswerFormat | None = None


class Call(_Struct):
    """One batched generation call: its nodes share generation settings."""

    level: int
    nodes: tuple[str, ...]  # request order: grouped by adapter slot for prefix reuse
    generation: Generation
    shared_prefix: tuple[Source, ...]  # sources every node of the call reads first
    split_reason: str | None = None  # why this level needed more than one call


class Level(_Struct):
    index: int
    calls: tuple[Call, ...]


class AdapterSlot(_Struct):
    name: str  # a peft adapter name and a folder name: letters, digits, '-', '_'
    sharing: Literal["per_node", "per_layer", "shared"]
    nodes: tuple[str, ...]


class Output(_Struct):
    layer: str
    nodes: tuple[str, ...]
    aggregate: Literal["single", "vote"] = "single"
    answer_format: AnswerFormat | None = None


class Train(_Struct):
    algorithm: Algorithm
    group: int
    lr: float
    kl: float
    clip: float
    reward: str  # a built-in name, or "package.module:function"
    loss_norm: LossNorm
    grad_clip: float
    batch: int  # inputs per step
    steps: int
    epochs: int  # optimisation passes over each rollout


class Origin(_Struct):
    """Where a node of a grown stage gets its adapter from."""

    node: str
    kind: OriginKind
    source: str | None = None  # node id (keep, copy) or layer name (mean)


class GrowthStage(_Struct):
    name: str
    after_steps: int | None  # the global step at which this stage starts; None for the first
    plateau_evals: int | None  # or earlier, once held-out reward stops improving this long
    plan: Plan
    origins: tuple[Origin, ...]


class Plan(_Struct, kw_only=True):
    schema: int = SCHEMA_VERSION
    system: str
    stage: str | None = None
    model: str
    adapter: Lora
    max_prompt_tokens: int
    inputs: tuple[str, ...]
    nodes: tuple[Node, ...]  # ordered by level, then call, then request order
    levels: tuple[Level, ...]
    outputs: tuple[Output, ...]
    adapters: tuple[AdapterSlot, ...]
    train: Train | None = None
    growth: tuple[GrowthStage, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def calls(self) -> tuple[Call, ...]:
        return tuple(call for level in self.levels for call in level.calls)

    def node_map(self) -> dict[str, Node]:
        return {node.id: node for node in self.nodes}

    def stage_plan(self, name: str) -> GrowthStage:
        """The growth stage called `name`; raises KeyError naming the known stages."""
        for stage in self.growth:
            if stage.name == name:
                return stage
        known = ", ".join(stage.name for stage in self.growth) or "none"
        raise KeyError(f"no growth stage {name!r} (stages: {known})")

    def with_answer_format(self, answer_format: AnswerFormat) -> Plan:
        """This plan (and its growth stages' plans) with every output's answer read as
        `answer_format` (text, number, choice)."""
        outputs = tuple(msgspec.structs.replace(output, answer_format=answer_format) for output in self.outputs)
        growth = tuple(msgspec.structs.replace(stage, plan=stage.plan.with_answer_format(answer_format))
                       for stage in self.growth)
        return msgspec.structs.replace(self, outputs=outputs, growth=growth)

    def with_lora_rank(self, rank: int) -> Plan:
        """This plan (and its growth stages' plans) with LoRA rank `rank`. Alpha scales with
        the rank, so the adapter's scale alpha / rank is unchanged."""
        adapter = msgspec.structs.replace(self.adapter, rank=rank, alpha=self.adapter.alpha * rank / self.adapter.rank)
        growth = tuple(msgspec.structs.replace(stage, plan=stage.plan.with_lora_rank(rank)) for stage in self.growth)
        return msgspec.structs.replace(self, adapter=adapter, growth=growth)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    def to_pretty_json(self) -> str:
        return msgspec.json.format(self.to_json(), indent=2).decode() + "\n"

    @property
    def content_hash(self) -> str:
        return "sha256:" + hashlib.sha256(self.to_json()).hexdigest()

    @classmethod
    def from_json(cls, data: bytes | str) -> Plan:
        """Decode a plan; raises PlanFormatError for another schema version or bad JSON."""
        try:
            header = msgspec.json.decode(data, type=_Header)
        except msgspec.DecodeError as err:
            raise PlanFormatError(f"not a NeuroMAS plan: {err}") from None
        if header.schema != SCHEMA_VERSION:
            raise PlanFormatError(
                f"plan schema {header.schema} is not supported (this NeuroMAS reads schema {SCHEMA_VERSION}); "
                "compile the spec again"
            )
        try:
            return msgspec.json.decode(data, type=cls)
        except msgspec.ValidationError as err:
            raise PlanFormatError(f"invalid plan: {err}") from None


class _Header(msgspec.Struct):
    schema: int


class PlanFormatError(ValueError):
    """A plan file that this version cannot read."""
