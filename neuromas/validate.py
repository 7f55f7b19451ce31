"""Graph rules of a System -> Diagnostics: names, widths, patterns, feeding, cycles, reach."""

from __future__ import annotations

from neuromas import ir
from neuromas.diagnostics import Diagnostic, did_you_mean
from neuromas.spans import Span, SpanIndex
from neuromas.passes.assign_levels import CycleError, node_levels
from neuromas.passes.prune_unreachable import reaching_outputs


MAX_NODES = 1_000_000  # far beyond any system a model can run: a larger one is a typo
MAX_EDGES = 10_000_000


def check_system(system: ir.System, spans: SpanIndex) -> list[Diagnostic]:
    """Layer-level rules; every problem is collected, none stops the others (except a
    system too large to expand, which is reported alone)."""
    return check_size(system, spans) or _SystemCheck(system, spans).run()


def check_size(system: ir.System, spans: SpanIndex) -> list[Diagnostic]:
    """Refuse, before anything is expanded, a system with more than MAX_NODES nodes or
    (at most) MAX_EDGES edges."""
    nodes = sum(layer.width * (layer.repeat or 1) for layer in system.layers)
    if nodes > MAX_NODES:
        largest = max(range(len(system.layers)), key=lambda i: system.layers[i].width * (system.layers[i].repeat or 1))
        return [Diagnostic(spans.find(("layers", largest)), f"this system would have {nodes:,} nodes; the limit is {MAX_NODES:,}",
                           "check the width and repeat of this layer")]
    widths = {name: layer.width for layer in system.layers for name in (layer.name, *ir.layer_names(layer))}
    counts = {("edges", i): _edges_at_most(edge.pattern, widths.get(edge.target.name, 1), widths.get(edge.source.name, 1),
                                           edge.target.index, edge.source.index) for i, edge in enumerate(system.edges)}
    counts |= {("layers", i): (layer.repeat - 1) * _edges_at_most(layer.chain, layer.width, layer.width, None, None)
               for i, layer in enumerate(system.layers) if layer.repeat is not None and layer.chain is not None}
    edges = sum(counts.values())
    if edges > MAX_EDGES:
        largest = max(counts, key=counts.__getitem__)
        return [Diagnostic(spans.find(largest), f"this system could have {edges:,} edges, {counts[largest]:,} of them here; the limit is {MAX_EDGES:,}",
                           "connect wide layers with one_to_one, window(k) or random(p) instead of dense")]
    return []


def _edges_at_most(pattern: ir.Pattern, target: int, source: int, target_index: int | None, source_index: int | None) -> int:
    target = 1 if target_index is not None else target
    source = 1 if source_index is not None else source
    if pattern.kind == "one_to_one":
        return target
    if pattern.kind == "window":
        return target * min(source, 2 * (pattern.k or 1) - 1)
    return target * source


class _SystemCheck:
    def __init__(self, system: ir.System, spans: SpanIndex) -> None:
        self.system = system
        self.spans = spans
        self.found: list[Diagnostic] = []
        self.instances = {name: layer for layer in system.layers for name in ir.layer_names(layer)}
        self.repeated = {layer.name: layer for layer in system.layers if layer.repeat is not None}
        self.duplicates: set[str] = set()

    def error(self, path: tuple, message: str, hint: str | None = None) -> None:
        self.found.append(Diagnostic(self.spans.find(path), message, hint))

    def run(self) -> list[Diagnostic]:
        self.check_names()
        edges_ok = [self.check_edge(i, edge) for i, edge in enumerate(self.system.edges)]
        self.check_chains()
        self.check_node_settings()
        self.check_outputs()
        if all(edges_ok):
            self.check_fed()
        return self.found

    def check_names(self) -> None:
        system = self.system
        if not system.inputs:
            self.error(("name",), f"system '{system.name}' has no input", "add one, like 'input question'")
        if not system.layers:
            self.error(("name",), f"system '{system.name}' has no layer", "add one, like 'layer answer width 1'")
        if not system.outputs:
            self.error(("name",), f"system '{system.name}' has no output", "name the layer that answers, like 'output answer'")
        first: dict[str, str] = {}
        for i, name in enumerate(system.inputs):
            self._unique(name, ("inputs", i), "input", first)
        for i, layer in enumerate(system.layers):
            self._unique(layer.name, ("layers", i), "layer", first)
        outputs: set[str] = set()
        for i, output in enumerate(system.outputs):
            if output.layer in outputs:
                self.error(("outputs", i), f"output '{output.layer}' is named twice")
            outputs.add(output.layer)

    def _unique(self, name: str, path: tuple, kind: str, first: dict[str, str]) -> None:
        if name in first:
            self.error(path, f"duplicate name '{name}': already used by {first[name]}", "every input and layer needs its own name")
            self.duplicates.add(name)
        else:
            first[name] = f"the {kind} at line {self.spans.find(path).line}"

    def resolve(self, path: tuple, endpoint: ir.Endpoint, inputs_too: bool = True) -> ir.Layer | None:
        """The layer an endpoint names, or None after reporting why it names none.
        `inputs_too`: an input would do here, so name and suggest inputs too."""
        if endpoint.kind == "input":
            return None
        name = endpoint.name
        layer = self.instances.get(name)
        if layer is None:
            base, _, repeat = name.partition(".")
            if name in self.repeated:
                names = ir.layer_names(self.repeated[name])
                self.error(path, f"layer '{name}' is repeated {len(names)} times: name one repeat", f"like '{names[0]}' or '{names[-1]}'")
            elif repeat and base in self.repeated:
                self.error(path, f"layer '{base}' has no repeat {repeat}", f"its repeats are {base}.0 to {base}.{self.repeated[base].repeat - 1}")
            elif repeat and base in self.instances:
                self.error(path, f"layer '{base}' is not repeated", f"write '{base}'")
            else:
                known = [*(self.system.inputs if inputs_too else ()), *self.instances, *self.repeated]
                what = "layer or input" if inputs_too else "layer"
                self.error(path, f"unknown {what} '{name}'", did_you_mean(name, known))
            return None
        if endpoint.index is not None and endpoint.index >= layer.width:
            self.error(path, f"node {endpoint.index} is out of range: layer '{name}' has width {layer.width}", f"nodes are numbered 0 to {layer.width - 1}")
            return None
        return layer

    def check_edge(self, i: int, edge: ir.Edge) -> bool:
        path = ("edges", i)
        target = self.resolve((*path, "target"), edge.target)
        source = self.resolve((*path, "source"), edge.source)
        if target is None or (source is None and edge.source.kind == "layer"):
            return False
        has_pattern = self.spans.has((*path, "pattern"))
        if edge.source.kind == "input":
            if has_pattern:
                self.error((*path, "pattern"), f"'{edge.source.name}' is an input: it reaches every node it feeds", "connection patterns are for layers; drop it")
            return True
        if has_pattern and (edge.source.index is not None or edge.target.index is not None) and edge.pattern.kind != "dense":
            self.error((*path, "pattern"), f"'{edge.pattern.kind}' connects whole layers, not single nodes", "drop the pattern or the node index")
            return True
        self.check_pattern((*path, "pattern"), edge.pattern, source, edge.source.name, target, edge.target.name)
        return True

    def check_pattern(self, path: tuple, pattern: ir.Pattern, source: ir.Layer, source_name: str, target: ir.Layer, target_name: str) -> None:
        if pattern.kind == "one_to_one" and source.width != target.width:
            self.error(
                path,
                f"one_to_one needs equal widths: '{source_name}' has width {source.width}, '{target_name}' has width {target.width}",
                "use dense or window(k) between layers of different widths",
            )
        if pattern.kind == "window" and pattern.k is not None and pattern.k > source.width:
            self.error(path, f"window({pattern.k}) is larger than the width of '{source_name}' ({source.width})", f"use window({source.width}) or less, or dense")

    def check_chains(self) -> None:
        for i, layer in enumerate(self.system.layers):
            if layer.chain is not None:
                self.check_pattern(("layers", i, "chain"), layer.chain, layer, layer.name, layer, layer.name)

    def check_node_settings(self) -> None:
        for i, layer in enumerate(self.system.layers):
            seen: set[int] = set()
            for j, node in enumerate(layer.nodes):
                path = ("layers", i, "nodes", j, "index")
                if node.index >= layer.width:
                    self.error(path, f"node {node.index} is out of range: layer '{layer.name}' has width {layer.width}", f"nodes are numbered 0 to {layer.width - 1}")
                if node.index in seen:
                    self.error(path, f"node {node.index} of layer '{layer.name}' has settings twice")
                seen.add(node.index)

    def check_outputs(self) -> None:
        for i, output in enumerate(self.system.outputs):
            path = ("outputs", i)
            if output.layer in self.system.inputs:
                self.error(path, f"'{output.layer}' is an input; an output names a layer")
                continue
            layer = self.resolve(path, ir.Endpoint(kind="layer", name=output.layer), inputs_too=False)
            if layer is not None and layer.width > 1 and not output.vote:
                self.error(path, f"output '{output.layer}' has width {layer.width}: one answer needs one node", f"add an answer layer of width 1, or vote: 'output {output.layer} vote'")

    def check_fed(self) -> None:
        fed = {edge.target.name for edge in self.system.edges}
        outputs = {output.layer for output in self.system.outputs}
        for i, layer in enumerate(self.system.layers):
            for k, name in enumerate(ir.layer_names(layer)):
                if name in fed or (k > 0 and layer.chain is not None) or name in self.duplicates:
                    continue
                if name in outputs:
                    self.error(("layers", i), f"output '{name}' is fed by nothing", f"add an edge, like '{name} <- {self._example_source(layer)}'")
                else:
                    self.error(("layers", i), f"layer '{name}' is fed by nothing", f"add an edge, like '{name} <- {self._example_source(layer)}'")

    def _example_source(self, layer: ir.Layer) -> str:
        return self.system.inputs[0] if self.system.inputs else "question"


def check_graph(graph: ir.Graph, spans: SpanIndex, system: ir.System) -> list[Diagnostic]:
    """Node-level rules on the resolved graph: cycles, nodes that read nothing, layers
    whose text reaches no output. `system` is the spec's own (repeats not expanded)."""
    found: list[Diagnostic] = []
    layer_paths = {name: ("layers", i) for i, layer in enumerate(system.layers) for name in ir.layer_names(layer)}
    try:
        node_levels(graph)
    except CycleError as err:
        cycle = err.cycle
        found.append(Diagnostic(_edge_span(system, spans, cycle), "edges form a cycle: " + " <- ".join(cycle), "a node cannot read, directly or not, its own text"))
        return found
    for node in graph.nodes:
        if not node.reads and _fed(system, node.layer):
            found.append(Diagnostic(spans.find(layer_paths[node.layer]), f"node '{node.id}' reads nothing: no edge reaches it", "connect it, or make the layer narrower"))
    reaching = reaching_outputs(graph)
    by_layer: dict[str, list[str]] = {}
    for node in graph.nodes:
        by_layer.setdefault(node.layer, []).append(node.id)
    reader = system.outputs[0].layer if system.outputs else "answer"
    for layer, ids in by_layer.items():
        if not reaching.intersection(ids):
            found.append(Diagnostic(spans.find(layer_paths[layer]), f"the text of layer '{layer}' reaches no output", f"read it from a later layer (like '{reader} <- {layer} dense') or remove it"))
    return found


def _fed(system: ir.System, layer: str) -> bool:
    return any(edge.target.name == layer for edge in system.edges) or "." in layer


def _edge_span(system: ir.System, spans: SpanIndex, cycle: list[str]) -> Span | None:
    """The span of an edge along the cycle (its first step), else of the first layer."""
    target, source = (name.partition("[")[0] for name in cycle[:2])
    for i, edge in enumerate(system.edges):
        if edge.target.name == target and edge.source.name == source:
            return spans.find(("edges", i))
    for i, layer in enumerate(system.layers):
        if target in ir.layer_names(layer):
            return spans.find(("layers", i))
    return None
