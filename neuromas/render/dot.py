"""Plan -> a graphviz picture: layers as clusters, nodes coloured by their batched call."""

from __future__ import annotations

import graphviz

from neuromas.diagnostics import UserError
from neuromas.plan import Plan

# The largest plan drawn as a picture. Measured on a 2-core CPU, as SVG: a chain of 1,000
# nodes takes 1 s, of 2,000 nodes 4.4 s (growing faster than linearly, past a minute for
# 10,000); 10,000 edges between two layers take 3.3 s.
MAX_PICTURE_NODES = 1000
MAX_PICTURE_EDGES = 10_000
# A PNG is at most this many inches a side (4,800 pixels at graphviz's 96 dpi), larger
# drawings scaled down: rasterising a full-size 100-layer chain took 36 s, at this size 0.7 s.
MAX_PNG_INCHES = 50
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
    """The picture as SVG or PNG bytes; raises UserError (exit code 2) for a plan too large
    to lay out in seconds, and UserError if graphviz's `dot` is missing."""
    edges = sum(len(node.reads) for node in plan.nodes)
    if len(plan.nodes) > MAX_PICTURE_NODES or edges > MAX_PICTURE_EDGES:
        raise UserError(
            f"this plan has {len(plan.nodes):,} nodes and {edges:,} edges, too many to draw: graphviz lays out "
            f"at most {MAX_PICTURE_NODES:,} nodes and {MAX_PICTURE_EDGES:,} edges in seconds, and minutes beyond; "
            "write the graph as text instead (--format dot, json or text)", exit_code=2)
    graph = to_graph(plan)
    if image_format == "png":
        graph.graph_attr["size"] = f"{MAX_PNG_INCHES},{MAX_PNG_INCHES}"
    try:
        return graph.pipe(format=image_format)
    except graphviz.ExecutableNotFound:
        raise UserError("graphviz's 'dot' program is not installed: install it (Debian: apt-get install graphviz)") from None
