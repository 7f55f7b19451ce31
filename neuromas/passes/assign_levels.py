"""Graph -> Graph: each node's level is its longest path from the inputs."""

from __future__ import annotations

from neuromas import ir


class CycleError(ValueError):
    def __init__(self, cycle: list[str]) -> None:
        super().__init__("cycle: " + " -> ".join(cycle))
        self.cycle = cycle  # each node reads the next one; the last is the first again


def node_levels(graph: ir.Graph) -> dict[str, int]:
    """Longest-path depth of every node; raises CycleError naming a cycle if there is one."""
    nodes = graph.node_map()
    levels: dict[str, int] = {}
    for start in nodes:
        if start in levels:
            continue
        # iterative depth-first search: (node, sources still to visit)
        on_path = {start}
        stack = [(start, iter(nodes[start].reads))]
        while stack:
            current, pending = stack[-1]
            for source in pending:
                if source not in nodes or source in levels:  # an input, or done
                    continue
                if source in on_path:
                    path = [name for name, _ in stack]
                    raise CycleError(path[path.index(source):] + [source])
                on_path.add(source)
                stack.append((source, iter(nodes[source].reads)))
                break
            else:
                stack.pop()
                on_path.discard(current)
                levels[current] = max([levels[s] + 1 for s in nodes[current].reads if s in nodes], default=0)
    return levels


def assign_levels(graph: ir.Graph) -> ir.Graph:
    """Needs: an acyclic graph. Guarantees: every source of a node is at a lower level;
    nodes are sorted by level (stable within a level), so skip edges are handled."""
    levels = node_levels(graph)
    nodes = sorted((ir.evolve(node, level=levels[node.id]) for node in graph.nodes), key=lambda n: n.level)
    return graph.model_copy(update={"nodes": tuple(nodes)})
