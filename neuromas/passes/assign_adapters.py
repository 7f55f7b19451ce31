"""Graph -> Graph: each node gets the adapter slot its sharing mode asks for."""

from __future__ import annotations

from neuromas import ir


def slot_name(sharing: ir.Sharing, node: ir.Node) -> str | None:
    """A name that is a valid peft adapter name and folder name (no dots or brackets)."""
    if sharing == "frozen":
        return None
    if sharing == "shared":
        return "shared"
    if sharing == "per_layer":
        return "layer-" + node.layer.replace(".", "-")
    return "node-" + node.id.replace(".", "-").replace("[", "-").rstrip("]")


def assign_adapters(graph: ir.Graph) -> ir.Graph:
    """Needs: nodes created. Guarantees: `adapter` is set for every node that trains,
    None for frozen ones; nodes that share an adapter carry the same slot name."""
    nodes = tuple(ir.evolve(node, adapter=slot_name(node.share, node)) for node in graph.nodes)
    return graph.model_copy(update={"nodes": nodes})
