"""Graph -> Graph: prompt pieces and requests ordered so that shared text comes first.

vLLM keys its prefix cache by LoRA adapter: KV is reused between the group samples of
one node and between nodes that share an adapter, never across adapters. So each node
reads first what every node of its call reads (inputs before node texts), then its own
sources; and a call's requests are grouped by adapter slot, node by node.
"""

from __future__ import annotations

from neuromas import ir


def order_prompts(graph: ir.Graph) -> ir.Graph:
    """Needs: calls batched and adapters assigned. Guarantees: each node's `reads` starts
    with its call's `shared_prefix`; a call's nodes are grouped by adapter slot."""
    nodes = graph.node_map()
    position = {node.id: i for i, node in enumerate(graph.nodes)}
    inputs = {name: i for i, name in enumerate(graph.system.inputs)}

    def source_key(source: str) -> tuple[int, int]:
        return (0, inputs[source]) if source in inputs else (1, position[source])

    updated: dict[str, ir.Node] = {}
    calls = []
    for call in graph.calls:
        members = [nodes[name] for name in call.nodes]
        shared = set(members[0].reads).intersection(*(node.reads for node in members[1:]))
        prefix = tuple(sorted(shared, key=source_key))
        for node in members:
            rest = tuple(source for source in node.reads if source not in shared)
            updated[node.id] = ir.evolve(node, reads=prefix + rest)
        first_seen = {slot: i for i, slot in reversed(list(enumerate(node.adapter for node in members)))}
        ordered = sorted(members, key=lambda node: first_seen[node.adapter])
        calls.append(call.model_copy(update={"nodes": tuple(node.id for node in ordered), "shared_prefix": prefix}))
    order = {name: (i, j) for i, call in enumerate(calls) for j, name in enumerate(call.nodes)}  # call, then request order
    new_nodes = sorted((updated[node.id] for node in graph.nodes), key=lambda node: (node.level, order[node.id]))
    return graph.model_copy(update={"nodes": tuple(new_nodes), "calls": tuple(calls)})
