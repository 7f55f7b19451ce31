"""Graph -> Graph: drop the nodes whose text reaches no output, with a warning naming them."""

from __future__ import annotations

from neuromas import ir


def reaching_outputs(graph: ir.Graph) -> set[str]:
    """Ids of the nodes whose text reaches an output (output nodes included)."""
    output_layers = {output.layer for output in graph.system.outputs}
    stack = [node.id for node in graph.nodes if node.layer in output_layers]
    seen = set(stack)
    nodes = graph.node_map()
    while stack:
        for source in nodes[stack.pop()].reads:
            if source in nodes and source not in seen:  # inputs are not nodes
                seen.add(source)
                stack.append(source)
    return seen


def prune_unreachable(graph: ir.Graph) -> ir.Graph:
    """Needs: edges resolved. Guarantees: every node's text reaches an output."""
    kept = reaching_outputs(graph)
    dropped = [node.id for node in graph.nodes if node.id not in kept]
    if not dropped:
        return graph
    warning = f"removed {len(dropped)} node(s) whose text reaches no output: {', '.join(dropped)}"
    return graph.model_copy(
        update={"nodes": tuple(node for node in graph.nodes if node.id in kept), "warnings": (*graph.warnings, warning)}
    )
