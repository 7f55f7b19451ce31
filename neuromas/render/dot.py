"""Plan -> a graphviz picture: layers as clusters, nodes coloured by their batched call."""

from __future__ import annotations

import graphviz

from neuromas.diagnostics import UserError
from neuromas.plan import Plan

# Colours for calls, cycling when a plan has more calls than colours.
PALETTE = ("#cfe2ff", "#d1f0d6", "#ffe5b4", "#f4cccc", "#e3d7f4", "#d9f2f2", "#fff2a8", "#e6e6e6")


def to_graph(plan: Plan) -> graphviz.Digraph:
    title = plan.system + (f" (stage {plan.stage})" if plan.stage else "")
    graph = graphviz.Digraph(name=plan.system, graph_attr={
        "rankdir": "TB", "label": f"{title}: {len(plan.calls)} calls per rollout", "labelloc": "t",
        "fontname": "Helvetica", "newrank": "true", "nodesep": "0.3", "ranksep": "0.6",
    }, node_attr={"fontname": "Helvetica", "fontsize": "11"}, edge_attr={"color": "#555555", "arrowsize": "0.6"})
    calls = [(level.index, i, call) for level in plan.levels for i, call in enumerate(level.calls)]
    colours = {}  # node id -> (its call's colour, the call's label); one colour per call
    for number, (level, i, call) in enumerate(calls):
        for name in call.nodes:
            colours[name] = (PALETTE[number % len(PALETTE)], f"call {level}.{i}")
    with graph.subgraph(name="cluster_inputs", graph_attr={"label": "inputs", "style": "dashed", "color": "#999999"}) as inputs:
        for name in plan.inputs:
            inputs.node(f"input/{name}", name, shape="box", style="rounded")
    layers: dict[str, list] = {}
    for node in plan.nodes:
        layers.setdefault(node.layer, []).append(node)
    for layer, nodes in layers.items():
        with graph.subgraph(name=f"cluster_{layer}", graph_attr={"label": f"layer {layer}", "style": "rounded", "color": "#333333"}) as cluster:
            for node in nodes:
                colour, call = colours[node.id]
                adapter = node.adapter or "frozen"
                cluster.node(node.id, f"{node.id}\n{call} · {adapter}", shape="ellipse", style="filled", fillcolor=colour,
                             peripheries="2" if node.is_output else "1")
    for node in plan.nodes:
        for source in node.reads:
            graph.edge(f"input/{source.name}" if source.kind == "input" else source.name, node.id)
    for output in plan.outputs:
        label = f"output {output.layer}" + (" (vote)" if output.aggregate == "vote" else "")
        graph.node(f"output/{output.layer}", label, shape="box", style="bold")
        for name in output.nodes:
            graph.edge(name, f"output/{output.layer}", style="bold")
    with graph.subgraph(name="cluster_legend", graph_attr={"label": "batched calls", "style": "dotted"}) as legend:
        for level in plan.levels:
            for i, call in enumerate(level.calls):
                colour, _ = colours[call.nodes[0]]
                legend.node(f"legend/{level.index}.{i}", f"call {level.index}.{i}: {len(call.nodes)} nodes, max_tokens {call.generation.max_tokens}",
                            shape="box", style="filled", fillcolor=colour, fontsize="9")
    return graph


def to_dot(plan: Plan) -> str:
    return to_graph(plan).source


def render(plan: Plan, image_format: str) -> bytes:
    """The picture as SVG or PNG bytes; raises UserError if graphviz's `dot` is missing."""
    try:
        return to_graph(plan).pipe(format=image_format)
    except graphviz.ExecutableNotFound:
        raise UserError("graphviz's 'dot' program is not installed: install it (Debian: apt-get install graphviz)") from None
