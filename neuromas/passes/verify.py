"""The IR verifier: invariants every pass must keep, checked between passes under tests."""

from __future__ import annotations

from neuromas import ir


class IRVerificationError(AssertionError):
    """A compiler bug: a pass broke an invariant (never a user error)."""


def verify_ir(value: ir.System | ir.Graph, after: str) -> None:
    """Raise IRVerificationError naming the pass `after` if `value` breaks an invariant."""

    def fail(message: str) -> None:
        raise IRVerificationError(f"after pass {after}: {message}")

    if isinstance(value, ir.System):
        again = ir.System.model_validate(value.model_dump())
        if again != value:
            fail("system does not validate to itself")
        return
    ir.Graph.model_validate(value.model_dump())  # every field well-typed and in range
    nodes = value.node_map()
    if len(nodes) != len(value.nodes):
        fail("duplicate node ids")
    inputs = set(value.system.inputs)
    for node in value.nodes:
        for source in node.reads:
            if source not in inputs and source not in nodes:
                fail(f"{node.id} reads unknown source {source}")
        if len(set(node.reads)) != len(node.reads):
            fail(f"{node.id} reads a source twice")
        if node.level is not None:
            for source in node.reads:
                if source in nodes and (nodes[source].level is None or nodes[source].level >= node.level):
                    fail(f"edge {source} -> {node.id} does not go to a higher level")
    levels = [node.level for node in value.nodes]
    if None not in levels and levels != sorted(levels):
        fail("nodes are not sorted by level")
    if value.calls:
        placed = [name for call in value.calls for name in call.nodes]
        if sorted(placed) != sorted(nodes):
            fail("not every node is in exactly one call")
        for call in value.calls:
            if {nodes[name].level for name in call.nodes} != {call.level}:
                fail(f"call at level {call.level} holds nodes of another level")
            if len({nodes[name].generation for name in call.nodes}) != 1:
                fail(f"call at level {call.level} mixes generation settings")
            for name in call.nodes:
                if nodes[name].reads[: len(call.shared_prefix)] != call.shared_prefix and call.shared_prefix:
                    fail(f"{name} does not read its call's shared prefix first")
