"""Graph -> Graph: the nodes of each level go into as few generation calls as their settings allow."""

from __future__ import annotations

from itertools import groupby

from neuromas import ir


def batch_levels(graph: ir.Graph) -> ir.Graph:
    """One call per level when every node of the level has the same generation
    settings; otherwise one call per distinct setting (the fewest possible), with a
    reason naming the settings that differ.

    Needs: levels assigned. Guarantees: every node is in exactly one call, and calls
    are ordered by level.
    """
    calls: list[ir.CallGroup] = []
    for level, members in groupby(graph.nodes, key=lambda node: node.level):
        nodes = list(members)
        by_settings: dict[ir.Generation, list[str]] = {}
        for node in nodes:
            by_settings.setdefault(node.generation, []).append(node.id)
        reason = _split_reason(list(by_settings)) if len(by_settings) > 1 else None
        calls += [ir.CallGroup(level=level, nodes=tuple(ids), split_reason=reason) for ids in by_settings.values()]
    return graph.model_copy(update={"calls": tuple(calls)})


def _split_reason(settings: list[ir.Generation]) -> str:
    differing = [
        field for field in ir.Generation.model_fields if len({getattr(s, field) for s in settings}) > 1
    ]
    details = []
    for field in differing:
        values = sorted({repr(getattr(s, field)) for s in settings})
        details.append(f"{field} differs ({' vs '.join(values)})")
    return "; ".join(details)
