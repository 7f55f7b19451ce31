"""Fixtures for the training tests: the bundled model (loaded once) and small hand-built plans."""

from __future__ import annotations

import copy

import pytest

from neuromas.plan import AdapterSlot, Call, Generation, Level, Lora, Node, Output, Plan, Source, Template, Train

MODEL = "smollm2-135m-instruct"


def neuromas3_plan(
    *,
    max_tokens: int = 8,
    algorithm: str = "grpo",
    group: int = 2,
    batch: int = 2,
    lr: float = 1e-3,
    kl: float = 0.0,
    clip: float = 0.2,
    reward: str = "numeric_match",
    loss_norm: str = "token",
    epochs: int = 1,
    frozen: tuple[str, ...] = (),
    rank: int = 4,
) -> Plan:
    """The paper's NeuroMAS-3 (two parallel nodes -> one answer node), built by hand so
    these tests do not depend on the compiler. Nodes named in `frozen` get no adapter."""
    generation = Generation(max_tokens=max_tokens, temperature=1.0, top_p=1.0)
    question = Source(kind="input", name="question")

    def node(layer: str, index: int, width: int, level: int, reads: tuple[Source, ...], is_output: bool = False) -> Node:
        node_id = f"{layer}[{index}]"
        return Node(
            id=node_id,
            layer=layer,
            index=index,
            width=width,
            level=level,
            adapter=None if node_id in frozen else f"{layer}_{index}",
            template=Template(),
            generation=generation,
            reads=reads,
            is_output=is_output,
        )

    hidden = [node("hidden", i, 2, 0, (question,)) for i in range(2)]
    answer = node(
        "answer", 0, 1, 1, (Source(kind="node", name="hidden[0]"), Source(kind="node", name="hidden[1]"), question), True
    )
    nodes = (*hidden, answer)
    return Plan(
        system="neuromas3",
        model=MODEL,
        adapter=Lora(rank=rank, alpha=2.0 * rank, dropout=0.0, targets=("q_proj", "v_proj")),
        max_prompt_tokens=1024,
        inputs=("question",),
        nodes=nodes,
        levels=(
            Level(index=0, calls=(Call(level=0, nodes=("hidden[0]", "hidden[1]"), generation=generation, shared_prefix=(question,)),)),
            Level(index=1, calls=(Call(level=1, nodes=("answer[0]",), generation=generation, shared_prefix=answer.reads),)),
        ),
        outputs=(Output(layer="answer", nodes=("answer[0]",)),),
        adapters=tuple(
            AdapterSlot(name=n.adapter, sharing="per_node", nodes=(n.id,)) for n in nodes if n.adapter is not None
        ),
        train=Train(
            algorithm=algorithm,
            group=group,
            lr=lr,
            kl=kl,
            clip=clip,
            reward=reward,
            loss_norm=loss_norm,
            grad_clip=1.0,
            batch=batch,
            steps=3,
            epochs=epochs,
        ),
    )


@pytest.fixture(scope="session")
def make_plan():
    """The NeuroMAS-3 plan builder (keyword arguments as `neuromas3_plan`)."""
    return neuromas3_plan


@pytest.fixture(scope="session")
def base_model():
    """The bundled SmolLM2-135M (bf16 where the CPU supports it), loaded once per session."""
    from neuromas.runtime.models.loading import load_model

    return load_model(MODEL)


@pytest.fixture
def fresh_model(base_model):
    """A private copy of the base model and its tokenizer, for tests that attach adapters."""
    return copy.deepcopy(base_model.model), base_model.tokenizer
