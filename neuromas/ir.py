"""The validated system a spec describes: frozen pydantic models, no source positions."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from neuromas.vocabulary import Algorithm, AnswerFormat, InitKind, LossNorm, PatternKind, Sharing

PositiveInt = Annotated[int, Field(ge=1)]

# Upper bounds: far beyond any sensible value, so that a typo is an error at `check`
# instead of an overflow, a refusal by a server, or a run that takes hours.
MAX_TOKENS = 1_048_576  # 2**20: more than any model's context, for max_tokens and max_prompt_tokens
MAX_TEMPERATURE = 2.0  # the range vLLM and OpenAI-style servers accept
MAX_LORA_RANK = 1024  # also bounded by the model's hidden size when adapters are attached
MAX_GROUP = 4096
MAX_BATCH = 65_536
MAX_STEPS = 1_000_000_000
MAX_EPOCHS = 1000
MAX_SEED = 2**63 - 1
TokenCount = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
M = TypeVar("M", bound=BaseModel)


def evolve(model: M, **changes: Any) -> M:
    """`model.model_copy(update=changes)` at half the cost: how passes update nodes,
    thousands at a time. Like model_copy it does not validate (the IR verifier does)."""
    copied = object.__new__(type(model))
    object.__setattr__(copied, "__dict__", {**model.__dict__, **changes})
    object.__setattr__(copied, "__pydantic_fields_set__", model.__pydantic_fields_set__ | changes.keys())
    object.__setattr__(copied, "__pydantic_extra__", None)
    object.__setattr__(copied, "__pydantic_private__", None)
    return copied


class IRModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)  # `1e400` is inf: no JSON for it


class Lora(IRModel):
    rank: int = Field(default=16, ge=1, le=MAX_LORA_RANK)
    alpha: float = Field(default=32.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    targets: tuple[str, ...] = Field(default=("q_proj", "k_proj", "v_proj", "o_proj"), min_length=1)


class Generation(IRModel):
    max_tokens: TokenCount = 128
    temperature: float = Field(default=1.0, ge=0, le=MAX_TEMPERATURE)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: tuple[str, ...] = ()


class Template(IRModel):
    """`builtin` (the role-free structural template) or a Jinja file, relative to the spec."""

    kind: Literal["builtin", "jinja"] = "builtin"
    path: str | None = None


class NodeSettings(IRModel):
    """Settings of one node of a layer (`node 1 { ... }`), overriding the layer's."""

    index: int = Field(ge=0)
    generation: Generation
    template: Template
    share: Sharing


class Layer(IRModel):
    name: str
    width: PositiveInt
    repeat: PositiveInt | None = None  # layer h repeat 3 -> h.0, h.1, h.2
    chain: Pattern | None = None  # edges h.{i+1} <- h.i for a repeated layer
    generation: Generation
    template: Template
    share: Sharing
    nodes: tuple[NodeSettings, ...] = ()


class Pattern(IRModel):
    """How the nodes of two layers connect."""

    kind: PatternKind = "dense"
    k: PositiveInt | None = None  # window(k): node i reads source nodes i-k+1 .. i+k-1
    p: float | None = Field(default=None, gt=0, le=1)  # random(p): each pair with probability p
    seed: int = Field(default=0, ge=0, le=MAX_SEED)


class Endpoint(IRModel):
    """One end of an edge: an input, a layer (`h.1`), or one node of it (`h.1[0]`)."""

    kind: Literal["input", "layer"]
    name: str
    index: int | None = None


class Edge(IRModel):
    target: Endpoint
    source: Endpoint
    pattern: Pattern = Pattern()


class Output(IRModel):
    layer: str
    vote: bool = False  # majority vote over the layer's answers (self-consistency)
    answer_format: AnswerFormat | None = None  # how the answer is read


class Train(IRModel):
    algorithm: Algorithm = "grpo"
    group: int = Field(default=4, ge=1, le=MAX_GROUP)  # samples per input for group baselines
    lr: float = Field(default=1e-4, gt=0)
    kl: float = Field(default=0.0, ge=0)
    clip: float = Field(default=0.2, gt=0)
    reward: str = "exact_match"  # a built-in, or "package.module:function"
    loss_norm: LossNorm = "token"
    grad_clip: float = Field(default=1.0, gt=0)
    batch: int = Field(default=4, ge=1, le=MAX_BATCH)  # inputs per step
    steps: Steps = 100
    epochs: int = Field(default=1, ge=1, le=MAX_EPOCHS)


class Init(IRModel):
    """How a grown node's adapter starts."""

    kind: InitKind
    source: str | None = None  # node id or layer for copy, layer for mean


class Resize(IRModel):
    op: Literal["resize"] = "resize"
    layer: str
    width: PositiveInt


class Widen(IRModel):
    op: Literal["widen"] = "widen"
    layer: str
    width: PositiveInt
    init: Init = Init(kind="copy")


class Insert(IRModel):
    op: Literal["insert"] = "insert"
    layer: Layer
    after: str
    init: Init = Init(kind="zero")


class EdgeRule(IRModel):
    op: Literal["keep", "drop"]
    source: str
    target: str


class AddEdge(IRModel):
    op: Literal["edge"] = "edge"
    edge: Edge


GrowthOp = Annotated[Resize | Widen | Insert | EdgeRule | AddEdge, Field(discriminator="op")]


class Stage(IRModel):
    name: str
    ops: tuple[GrowthOp, ...]
    after_steps: int | None = Field(default=None, ge=0, le=MAX_STEPS)
    plateau_evals: Steps | None = None


class System(IRModel):
    name: str
    model: str = "smollm2-135m-instruct"
    adapter: Lora = Lora()
    max_prompt_tokens: TokenCount = 2048
    inputs: tuple[str, ...]
    layers: tuple[Layer, ...]
    edges: tuple[Edge, ...]
    outputs: tuple[Output, ...]
    train: Train | None = None
    growth: tuple[Stage, ...] = ()

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if name in layer_names(layer):
                return layer
        raise KeyError(name)


def layer_names(layer: Layer) -> tuple[str, ...]:
    """The names a layer's instances go by: `hidden`, or `h.0`, `h.1`, ... when repeated."""
    if layer.repeat is None:
        return (layer.name,)
    return tuple(f"{layer.name}.{i}" for i in range(layer.repeat))


Layer.model_rebuild()


# The node graph: what the compiler passes work on after edges are resolved.


class Node(IRModel):
    id: str  # `hidden[0]`, `h.1[2]`: see neuromas.plan.node_id
    layer: str  # `hidden`, `h.1`
    index: int = Field(ge=0)
    width: PositiveInt
    generation: Generation
    template: Template
    share: Sharing
    reads: tuple[str, ...]  # input names and node ids; prompt order once `order_prompts` ran
    level: int | None = None
    adapter: str | None = None  # adapter slot; None = frozen


class CallGroup(IRModel):
    """Nodes of one level that go into one generation call, in request order."""

    level: int = Field(ge=0)
    nodes: tuple[str, ...] = Field(min_length=1)
    shared_prefix: tuple[str, ...] = ()
    split_reason: str | None = None


class Graph(IRModel):
    system: System  # repeats expanded: every layer has repeat None
    nodes: tuple[Node, ...]
    calls: tuple[CallGroup, ...] = ()
    warnings: tuple[str, ...] = ()

    def node_map(self) -> dict[str, Node]:
        return {node.id: node for node in self.nodes}


def is_node_id(name: str) -> bool:
    """Sources are input names (`question`) or node ids (`hidden[0]`)."""
    return name.endswith("]")
