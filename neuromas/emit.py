"""Graph -> Plan: the final pass, from pydantic IR to the msgspec plan the runtime reads."""

from __future__ import annotations

from collections.abc import Mapping

from neuromas import ir, plan


def emit_plan(graph: ir.Graph, templates: Mapping[str, str], stage: str | None = None) -> plan.Plan:
    """Needs: every pass run. `templates` maps each Jinja path the spec names to its text."""
    system = graph.system
    outputs = {output.layer: output for output in system.outputs}
    sources = {name: plan.Source(kind="input", name=name) for name in system.inputs}
    sources |= {node.id: plan.Source(kind="node", name=node.id) for node in graph.nodes}
    nodes = tuple(_node(node, outputs.get(node.layer), templates, sources) for node in graph.nodes)
    node_map = {node.id: node for node in nodes}
    levels: dict[int, list[plan.Call]] = {}
    for call in graph.calls:
        first = node_map[call.nodes[0]]
        levels.setdefault(call.level, []).append(
            plan.Call(
                level=call.level,
                nodes=call.nodes,
                generation=first.generation,
                shared_prefix=tuple([sources[name] for name in call.shared_prefix]),
                split_reason=call.split_reason,
            )
        )
    return plan.Plan(
        system=system.name,
        stage=stage,
        model=system.model,
        adapter=plan.Lora(
            rank=system.adapter.rank,
            alpha=system.adapter.alpha,
            dropout=system.adapter.dropout,
            targets=system.adapter.targets,
        ),
        max_prompt_tokens=system.max_prompt_tokens,
        inputs=system.inputs,
        nodes=nodes,
        levels=tuple(plan.Level(index=index, calls=tuple(calls)) for index, calls in sorted(levels.items())),
        outputs=tuple(_output(output, graph) for output in system.outputs),
        adapters=_slots(graph),
        train=None if system.train is None else plan.Train(**system.train.model_dump()),
        warnings=graph.warnings,
    )


def _node(node: ir.Node, output: ir.Output | None, templates: Mapping[str, str], sources: Mapping[str, plan.Source]) -> plan.Node:
    template = plan.Template()
    if node.template.kind == "jinja":
        assert node.template.path is not None
        template = plan.Template(kind="jinja", path=node.template.path, source=templates[node.template.path])
    g = node.generation
    return plan.Node(
        id=node.id,
        layer=node.layer,
        index=node.index,
        width=node.width,
        level=node.level if node.level is not None else 0,
        adapter=node.adapter,
        template=template,
        generation=plan.Generation(max_tokens=g.max_tokens, temperature=g.temperature, top_p=g.top_p, stop=g.stop),
        reads=tuple([sources[name] for name in node.reads]),
        is_output=output is not None,
        answer_format=output.answer_format if output is not None else None,
    )


def _output(output: ir.Output, graph: ir.Graph) -> plan.Output:
    nodes = tuple(node.id for node in graph.nodes if node.layer == output.layer)
    return plan.Output(
        layer=output.layer,
        nodes=nodes,
        aggregate="vote" if output.vote else "single",
        answer_format=output.answer_format,
    )


def _slots(graph: ir.Graph) -> tuple[plan.AdapterSlot, ...]:
    members: dict[str, list[str]] = {}
    sharing: dict[str, str] = {}
    for node in graph.nodes:
        if node.adapter is not None:
            members.setdefault(node.adapter, []).append(node.id)
            sharing[node.adapter] = node.share
    return tuple(plan.AdapterSlot(name=name, sharing=sharing[name], nodes=tuple(ids)) for name, ids in members.items())
