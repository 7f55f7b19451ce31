"""System -> Graph: every layer becomes its nodes, every edge pattern the sources each node reads."""

from __future__ import annotations

import random

from neuromas import ir
from neuromas.plan import node_id


def resolve_edges(system: ir.System) -> ir.Graph:
    """Create the nodes and resolve each edge into per-node reads.

    Needs: repeats expanded, names checked. Guarantees: each node's `reads` lists
    its sources once, in the order the spec's edges give them.
    """
    layers = {layer.name: layer for layer in system.layers}
    ids = {layer.name: [node_id(layer.name, index) for index in range(layer.width)] for layer in system.layers}
    reads: dict[str, dict[str, None]] = {name: {} for names in ids.values() for name in names}
    for edge in system.edges:
        target = layers[edge.target.name]
        targets = range(target.width) if edge.target.index is None else (edge.target.index,)
        for index in targets:
            reads[ids[target.name][index]].update(dict.fromkeys(_sources(edge, index, target.width, ids)))
    nodes = []
    for layer in system.layers:
        overrides = {node.index: node for node in layer.nodes}
        first = ir.Node.model_construct(
            id=ids[layer.name][0], layer=layer.name, index=0, width=layer.width, generation=layer.generation,
            template=layer.template, share=layer.share, reads=(), level=None, adapter=None,
        )
        for index, name in enumerate(ids[layer.name]):
            node = ir.evolve(first, id=name, index=index, reads=tuple(reads[name]))
            own = overrides.get(index)
            if own is not None:
                node = ir.evolve(node, generation=own.generation, template=own.template, share=own.share)
            nodes.append(node)
    return ir.Graph.model_construct(system=system, nodes=tuple(nodes), calls=(), warnings=())


def _sources(edge: ir.Edge, target_index: int, target_width: int, ids: dict[str, list[str]]) -> list[str]:
    """The node ids (or the input) that one target node reads through `edge`; `ids` lists each layer's nodes."""
    if edge.source.kind == "input":
        return [edge.source.name]
    source = ids[edge.source.name]
    if edge.source.index is not None:
        return [source[edge.source.index]]
    indices = connect(edge.pattern, len(source), target_width, target_index, f"{edge.source.name}->{edge.target.name}")
    return [source[i] for i in indices]


def connect(pattern: ir.Pattern, source_width: int, target_width: int, target: int, salt: str) -> list[int]:
    """Indices of the source nodes that target node `target` reads under `pattern`.

    window(k): centred on the target's position scaled to the source layer, the
    source nodes less than k away. random(p): each pair independently with
    probability p, from a generator seeded by the seed and the two layers' names (the
    same on every machine); a target that would read nothing reads one source.
    """
    if pattern.kind == "dense":
        return list(range(source_width))
    if pattern.kind == "one_to_one":
        return [target]
    if pattern.kind == "window":
        assert pattern.k is not None
        centre = target * source_width // target_width
        return list(range(max(0, centre - pattern.k + 1), min(source_width, centre + pattern.k)))
    if pattern.kind == "random":
        assert pattern.p is not None
        rng = random.Random(f"{pattern.seed}:{salt}:{target}")
        chosen = [i for i in range(source_width) if rng.random() < pattern.p]
        return chosen or [rng.randrange(source_width)]
    raise AssertionError(f"resolve_edges: unknown pattern {pattern.kind!r}")
