"""System -> System: `layer h width 4 repeat 3 chain dense` becomes layers h.0, h.1, h.2."""

from __future__ import annotations

from neuromas import ir


def expand_repeats(system: ir.System) -> ir.System:
    """Replace each repeated layer by its instances and add its chain edges.

    Needs: a validated System. Guarantees: no layer has `repeat`; chain edges come
    first among the edges, in layer order, so they are read before hand-written ones.
    """
    layers: list[ir.Layer] = []
    chain_edges: list[ir.Edge] = []
    for layer in system.layers:
        if layer.repeat is None:
            layers.append(layer)
            continue
        names = ir.layer_names(layer)
        layers += [layer.model_copy(update={"name": name, "repeat": None, "chain": None}) for name in names]
        if layer.chain is not None:
            chain_edges += [
                ir.Edge(
                    target=ir.Endpoint(kind="layer", name=later),
                    source=ir.Endpoint(kind="layer", name=earlier),
                    pattern=layer.chain,
                )
                for earlier, later in zip(names, names[1:])
            ]
    return system.model_copy(update={"layers": tuple(layers), "edges": (*chain_edges, *system.edges)})
