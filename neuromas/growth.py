"""Growth stages -> grown Systems and the origin of every node of each stage.

Stages apply in order, each to the system the stage before it produced (the first
to the spec's own system, repeats expanded). A stage keeps every trained node; new
nodes start as their `init` says; old edges stay unless the stage drops them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from neuromas import ir, plan
from neuromas.diagnostics import Diagnostic, did_you_mean
from neuromas.spans import SpanIndex


@dataclass(frozen=True)
class GrownStage:
    stage: ir.Stage
    system: ir.System  # repeats expanded
    inits: dict[str, ir.Init]  # layer -> how its new nodes start


def grow(system: ir.System, spans: SpanIndex) -> tuple[list[GrownStage], list[Diagnostic]]:
    """Apply every stage in order; report every problem with the stages' ops."""
    stages: list[GrownStage] = []
    found: list[Diagnostic] = []
    current = system
    names: set[str] = set()
    last_step = -1
    for i, stage in enumerate(system.growth):
        path = ("growth", i)
        errors = _StageCheck(current, stage, path, spans, is_first=i == 0)
        if stage.name in names:
            errors.error(path, f"growth stage '{stage.name}' is defined twice")
        names.add(stage.name)
        if i == 0 and stage.after_steps is not None:
            errors.error((*path, "after_steps"), "the first stage starts training: it has no 'after'", f"remove 'after {stage.after_steps} steps'")
        if i > 0 and stage.after_steps is None:
            errors.error(path, f"stage '{stage.name}' does not say when it starts", "every stage but the first needs 'after N steps' after its closing brace")
        if stage.after_steps is not None:
            if stage.after_steps <= last_step:
                errors.error((*path, "after_steps"), f"stage '{stage.name}' starts at step {stage.after_steps}, not after the stage before it (step {last_step})", "steps count from the start of training and must increase")
            last_step = stage.after_steps
        grown, inits = errors.apply()
        found += errors.found
        if errors.found:
            break
        stages.append(GrownStage(stage, grown, inits))
        current = grown
    return stages, found


def origins(stage: GrownStage, grown: plan.Plan, trained: plan.Plan | None) -> tuple[tuple[plan.Origin, ...], list[str]]:
    """Where each node of the grown plan gets its adapter: kept, copied, mean, or zero;
    and the nodes named by `init copy` that have no trained adapter (the plan before
    pruned them). Copying a layer, node i copies the i-th of its trained nodes, cyclically."""
    old = {} if trained is None else {node.id: node for node in trained.nodes}
    trained_nodes: dict[str, list[str]] = {}
    for node in old.values():
        trained_nodes.setdefault(node.layer, []).append(node.id)
    result = []
    for node in grown.nodes:
        if node.id in old:
            result.append(plan.Origin(node=node.id, kind="keep", source=node.id))
            continue
        init = stage.inits.get(node.layer) if trained is not None else None
        if init is None or init.kind == "zero":
            result.append(plan.Origin(node=node.id, kind="zero"))
        elif init.kind == "mean":
            result.append(plan.Origin(node=node.id, kind="mean", source=init.source or node.layer))
        else:
            source = init.source or node.layer
            if not ir.is_node_id(source):
                candidates = sorted(trained_nodes[source], key=lambda name: plan.parse_node_id(name)[1])
                source = candidates[node.index % len(candidates)]
            result.append(plan.Origin(node=node.id, kind="copy", source=source))
    untrained = sorted({o.source for o in result if o.kind == "copy" and o.source not in old})
    return tuple(result), untrained


class _StageCheck:
    """Applies one stage's ops to a system, collecting diagnostics instead of failing."""

    def __init__(self, system: ir.System, stage: ir.Stage, path: tuple, spans: SpanIndex, is_first: bool) -> None:
        self.system, self.stage, self.path, self.spans, self.is_first = system, stage, path, spans, is_first
        self.found: list[Diagnostic] = []

    def error(self, path: tuple, message: str, hint: str | None = None) -> None:
        self.found.append(Diagnostic(self.spans.find(path), message, hint))

    def ops(self) -> Iterator[tuple[tuple, ir.GrowthOp]]:
        for j, op in enumerate(self.stage.ops):
            yield (*self.path, "ops", j), op

    def known(self, layers: list[ir.Layer], name: str, path: tuple) -> ir.Layer | None:
        for layer in layers:
            if layer.name == name:
                return layer
        hint = did_you_mean(name, [layer.name for layer in layers])
        self.error(path, f"stage '{self.stage.name}' names unknown layer '{name}'", hint)
        return None

    def apply(self) -> tuple[ir.System, dict[str, ir.Init]]:
        layers = list(self.system.layers)
        edges = list(self.system.edges)
        inits: dict[str, ir.Init] = {}
        for path, op in self.ops():
            if isinstance(op, ir.Resize):
                layer = self.known(layers, op.layer, (*path, "layer"))
                if layer is None:
                    continue
                if not self.is_first:
                    self.error(path, "only the first stage sets widths", f"a later stage grows a layer: 'widen {op.layer} to {op.width} init copy'")
                    continue
                layers[layers.index(layer)] = layer.model_copy(update={"width": op.width})
            elif isinstance(op, ir.Widen):
                layer = self.known(layers, op.layer, (*path, "layer"))
                if layer is None:
                    continue
                if op.width < layer.width:
                    self.error((*path, "width"), f"stage '{self.stage.name}' shrinks trained layer '{op.layer}' from {layer.width} to {op.width}", "growth only adds nodes")
                    continue
                if op.width == layer.width:
                    self.error((*path, "width"), f"layer '{op.layer}' already has width {op.width}", f"widen it to more than {layer.width}")
                    continue
                self.check_init(layers, op.init, (*path, "init"), default=op.layer)
                layers[layers.index(layer)] = layer.model_copy(update={"width": op.width})
                inits[op.layer] = op.init
            elif isinstance(op, ir.Insert):
                after = self.known(layers, op.after, (*path, "after"))
                if any(layer.name == op.layer.name for layer in layers) or op.layer.name in self.system.inputs:
                    self.error((*path, "layer"), f"stage '{self.stage.name}' inserts '{op.layer.name}', a name already in use")
                    continue
                if after is None:
                    continue
                self.check_init(layers, op.init, (*path, "init"), default=op.after)
                init = op.init if op.init.source is not None or op.init.kind == "zero" else op.init.model_copy(update={"source": op.after})
                inits[op.layer.name] = init
                layers.insert(layers.index(after) + 1, op.layer)
                readers = list(dict.fromkeys(e.target.name for e in edges if e.source.kind == "layer" and e.source.name == op.after))
                edges.append(_dense(op.layer.name, op.after))
                edges += [_dense(reader, op.layer.name) for reader in readers]
            elif isinstance(op, ir.EdgeRule):
                matching = [e for e in edges if e.source.name == op.source and e.target.name == op.target]
                if not matching:
                    reversed_edge = any(e.source.name == op.target and e.target.name == op.source for e in edges)
                    hint = f"did you mean '{op.op} {op.target} -> {op.source}'?" if reversed_edge else "edges are written 'source -> target' here"
                    self.error(path, f"there is no edge {op.source} -> {op.target} to {op.op}", hint)
                elif op.op == "drop":
                    edges = [e for e in edges if e not in matching]
            elif isinstance(op, ir.AddEdge):
                names = {layer.name for layer in layers}
                for end, role in ((op.edge.target, "target"), (op.edge.source, "source")):
                    if end.kind == "layer" and end.name not in names:
                        self.known(layers, end.name, (*path, "edge", role))
                edges.append(op.edge)
        grown = self.system.model_copy(update={"layers": tuple(layers), "edges": tuple(edges), "growth": ()})
        return grown, inits

    def check_init(self, layers: list[ir.Layer], init: ir.Init, path: tuple, default: str) -> None:
        """Copy and mean read trained adapters: after the first stage, their source (by
        default `default`) must be in the system the stage before trained, not new here."""
        if init.kind == "zero":
            return
        source = init.source or default
        name = source.partition("[")[0]
        where = (*path, "source") if init.source is not None else path
        pool = layers if self.is_first else list(self.system.layers)
        found = next((layer for layer in pool if layer.name == name), None)
        if found is None:
            if any(layer.name == name for layer in layers):
                self.error(where, f"'init {init.kind}' needs trained adapters, but layer '{name}' is new in stage '{self.stage.name}'", f"start it with 'init zero', or {init.kind} a layer of the stage before")
            else:
                self.known(pool, name, where)
            return
        if ir.is_node_id(source):
            index = int(source[len(name) + 1 : -1])
            if index >= found.width:
                self.error(where, f"node {index} is out of range: layer '{name}' has width {found.width}", f"nodes are numbered 0 to {found.width - 1}")
        if init.kind == "mean" and ir.is_node_id(source):
            self.error(where, "'init mean' averages a layer; name a layer, not a node", f"write 'init mean {name}'")


def _dense(target: str, source: str) -> ir.Edge:
    return ir.Edge(target=ir.Endpoint(kind="layer", name=target), source=ir.Endpoint(kind="layer", name=source))
