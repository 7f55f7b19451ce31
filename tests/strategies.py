"""Hypothesis strategies: random valid .nmas systems as spec text, and their expected graphs.

`systems()` draws a system and writes it as spec text in a random but valid style
(comments, blank lines, CRLF, one-line or multi-line blocks, wrapped lists). Alongside
the text it keeps a `Net` per compiled system (the spec's own and one per growth
stage): its layer instances, edges and outputs, from which `node_reads`, `reaching`
and `levels` compute what the compiler should produce, without using the compiler.

Every drawn system is valid by construction: edges go only from earlier layers to
later ones; every node reads something; every layer reaches an output with at least
one node (explicit node pairs and narrowing windows leave other nodes dangling, which
the compiler must prune); growth ops that would break a rule are left out.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from neuromas.passes.resolve_edges import connect
from neuromas.vocabulary import ALGORITHMS, ANSWER_FORMATS, LOSS_NORMS, SHARINGS

# Names that are keywords elsewhere in the grammar, but not where a layer name may
# start a statement (keywords are reserved only where they are expected).
NAMES = (
    "hidden", "mid", "answer", "h", "g", "x_1", "Agent", "_p", "z9", "sample", "critic",
    "width", "vote", "chain", "after", "steps", "dense", "window", "format", "system",
    "repeat", "node", "to", "init", "copy", "or", "plateau", "stage", "random",
)
COMMENTS = ("# note", "#", "#  spaced  out", "# ünïcödé ✓ — 中文", "# a <- b dense, c window(2)", "# { not a block", '# "quoted"')
MAX_TOKENS = (("64", 64), ("1", 1), ("256", 256), ("+32", 32))
TEMPERATURES = (("0", 0), ("0.7", 0.7), ("1.0", 1.0), (".3", 0.3), ("15e-1", 1.5), ("1", 1))
TOP_PS = (("0.9", 0.9), ("1", 1), ("9.5e-1", 0.95))
STOPS = (('"END"', ("END",)), ('["\\n\\n", "Q:"]', ("\n\n", "Q:")), ("[]", ()), ('"Ω \\"x\\""', ('Ω "x"',)))
SHARES = SHARINGS
PROBABILITIES = (("0.5", 0.5), (".5", 0.5), ("5e-1", 0.5), ("0.25", 0.25), ("1", 1.0), ("0.9", 0.9))


# The expected graph ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    kind: str  # dense, one_to_one, window, random
    k: int | None = None
    p: float | None = None
    seed: int = 0
    text: str = "dense"  # as written in the spec


@dataclass(frozen=True)
class End:
    """An input, a layer instance (`h.1`), or one node of it (`h.1[0]`)."""

    name: str
    index: int | None = None

    def __str__(self) -> str:
        return self.name if self.index is None else f"{self.name}[{self.index}]"


@dataclass(frozen=True)
class Edge:
    target: End
    source: End
    pattern: Pattern | None  # None: written without a pattern (dense)


Generation = tuple[int, float, float, tuple[str, ...]]  # max_tokens, temperature, top_p, stop


@dataclass
class Net:
    """A compiled system as the tests expect it: layer instances in order, edges, outputs."""

    inputs: tuple[str, ...]
    widths: dict[str, int]  # layer instance -> width, in declaration order
    edges: list[Edge]
    outputs: dict[str, bool]  # layer -> vote
    generation: dict[str, Generation]  # layer -> its nodes' generation settings
    node_generation: dict[str, dict[int, Generation]]  # layer -> node index -> overrides applied

    def node_ids(self) -> list[str]:
        return [f"{name}[{i}]" for name, width in self.widths.items() for i in range(width)]

    def generation_of(self, node: str) -> Generation:
        layer, _, index = node[:-1].rpartition("[")
        return self.node_generation[layer].get(int(index), self.generation[layer])


def _indices(pattern: Pattern | None, source_width: int, target_width: int, target: int, salt: str) -> list[int]:
    """Source nodes a target node reads, from the patterns' definitions in the language docs."""
    if pattern is None or pattern.kind == "dense":
        return list(range(source_width))
    if pattern.kind == "one_to_one":
        return [target]
    if pattern.kind == "window":
        assert pattern.k is not None
        centre = target * source_width // target_width
        return [i for i in range(source_width) if abs(i - centre) < pattern.k]
    # random(p): which pairs are drawn is the compiler's choice; its properties are tested apart
    from neuromas import ir

    return connect(ir.Pattern(kind="random", p=pattern.p, seed=pattern.seed), source_width, target_width, target, salt)


def node_reads(net: Net) -> dict[str, set[str]]:
    """Node id -> the inputs and node ids it reads."""
    reads: dict[str, set[str]] = {node: set() for node in net.node_ids()}
    for edge in net.edges:
        width = net.widths[edge.target.name]
        targets = range(width) if edge.target.index is None else [edge.target.index]
        for t in targets:
            found = reads[f"{edge.target.name}[{t}]"]
            if edge.source.name in net.inputs:
                found.add(edge.source.name)
            elif edge.source.index is not None:
                found.add(str(edge.source))
            else:
                salt = f"{edge.source.name}->{edge.target.name}"
                found.update(f"{edge.source.name}[{i}]" for i in _indices(edge.pattern, net.widths[edge.source.name], width, t, salt))
    return reads


def reaching(net: Net, reads: dict[str, set[str]]) -> set[str]:
    """Nodes whose text reaches an output node (output nodes included): a graph search
    backwards from the outputs."""
    seen = {node for node in reads if node.rpartition("[")[0] in net.outputs}
    frontier = list(seen)
    while frontier:
        for source in reads[frontier.pop()]:
            if source in reads and source not in seen:
                seen.add(source)
                frontier.append(source)
    return seen


def levels(reads: dict[str, set[str]], nodes: set[str]) -> dict[str, int]:
    """Longest path from the inputs, over the given nodes (sources are among them)."""
    found: dict[str, int] = {}

    def level(node: str) -> int:
        if node not in found:
            found[node] = max((level(s) + 1 for s in reads[node] if s in reads), default=0)
        return found[node]

    for node in nodes:
        level(node)
    return found


def problems(net: Net, min_widths: dict[str, int]) -> list[str]:
    """Why the compiler must reject `net`: the language's graph rules, checked here directly."""
    found = []
    order = {name: i for i, name in enumerate(net.widths)}
    for edge in net.edges:
        target, source = edge.target, edge.source
        if target.name not in net.widths or (source.name not in net.inputs and source.name not in net.widths):
            found.append(f"unknown layer in {edge}")
            continue
        if source.name in net.widths and order[source.name] >= order[target.name]:
            found.append(f"edge {edge} goes backwards")
        for end in (target, source):
            if end.index is not None and end.index >= net.widths[end.name]:
                found.append(f"{end} out of range")
        pattern = edge.pattern
        if pattern is not None and source.name in net.widths:
            sw, tw = net.widths[source.name], net.widths[target.name]
            if pattern.kind == "one_to_one" and sw != tw:
                found.append(f"one_to_one between widths {sw} and {tw}")
            if pattern.kind == "window" and pattern.k is not None and pattern.k > sw:
                found.append(f"window({pattern.k}) over width {sw}")
    for layer, width in net.widths.items():
        if width < min_widths.get(layer, 1):
            found.append(f"node settings of {layer} out of range")
        if not any(edge.target.name == layer for edge in net.edges):
            found.append(f"{layer} is fed by nothing")
        if width > 1 and layer in net.outputs and not net.outputs[layer]:
            found.append(f"output {layer} of width {width} without vote")
    if found:
        return found
    reads = node_reads(net)
    found += [f"{node} reads nothing" for node, sources in reads.items() if not sources]
    reached = reaching(net, reads)
    found += [f"{layer} reaches no output" for layer, width in net.widths.items() if not any(f"{layer}[{i}]" in reached for i in range(width))]
    return found


# Drawing systems ---------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    net: Net  # the system this stage trains


@dataclass
class System:
    """A drawn system: its spec text and what the compiler should make of it."""

    text: str
    net: Net
    stages: list[Stage] = field(default_factory=list)
    uniform: bool = False  # every node has the same generation settings


class _Writer:
    """Spec text in a drawn style: indents, comments, blank lines, block layout, line ends."""

    def __init__(self, draw: Any) -> None:
        self.draw = draw
        self.lines: list[str] = []
        self.crlf = draw(st.integers(0, 9)) == 0
        self.depth = 0

    def comment(self) -> str:
        return self.draw(st.sampled_from(COMMENTS))

    def add(self, text: str) -> None:
        """A statement, maybe after a blank or comment line, maybe with a trailing comment."""
        style = self.draw(st.integers(0, 319))  # one draw (they are not free): gap, indent, comment
        gap, indent, trailing = style % 10, ("    ", "  ", "\t", "")[style // 10 % 4], style // 40 == 0
        if gap == 0:
            self.lines.append("")
        elif gap == 1:
            self.lines.append(indent * self.depth + self.comment())
        self.lines.append(indent * self.depth + text + ("  " + self.comment() if trailing else ""))

    def settings(self, items: list[str]) -> str:
        """A settings block: `{}`, `{ a 1  b 2 }`, or one item a line (with comments)."""
        if not items:
            return self.draw(st.sampled_from(("{}", "{ }", "{\n}")))
        if self.draw(st.booleans()) and not any("\n" in item for item in items):
            return "{ " + "  ".join(items) + " }"
        inside = []
        for item in items:
            note = "  " + self.comment() if self.draw(st.integers(0, 5)) == 0 else ""
            inside.append("        " + item + note)
        return "{\n" + "\n".join(inside) + "\n    }"

    def text(self) -> str:
        text = "\n".join(self.lines) + "\n"
        return text.replace("\n", "\r\n") if self.crlf else text


def _pattern(draw: Any, source_width: int, target_width: int) -> Pattern:
    """A pattern valid between layers of these widths, written in one of its forms."""
    kinds = ["dense", "window", "random"] + (["one_to_one"] if source_width == target_width else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "dense":
        return Pattern("dense", text=draw(st.sampled_from(("dense", "dense()"))))
    if kind == "one_to_one":
        return Pattern("one_to_one", text="one_to_one")
    if kind == "window":
        k = draw(st.integers(1, source_width))
        return Pattern("window", k=k, text=draw(st.sampled_from((f"window({k})", f"window( {k} )"))))
    p_text, p = draw(st.sampled_from(PROBABILITIES))
    if draw(st.booleans()):
        return Pattern("random", p=p, text=f"random({p_text})")
    seed = draw(st.integers(0, 99))
    return Pattern("random", p=p, seed=seed, text=draw(st.sampled_from((f"random({p_text}, seed = {seed})", f"random({p_text},seed={seed})"))))


def _generation_items(draw: Any) -> tuple[list[str], dict[str, Any]]:
    """Some generation settings: their text and their values."""
    items, values = [], {}
    for name, choices in (("max_tokens", MAX_TOKENS), ("temperature", TEMPERATURES), ("top_p", TOP_PS), ("stop", STOPS)):
        if draw(st.integers(0, 2)) == 0:
            text, value = draw(st.sampled_from(choices))
            items.append(f"{name} {text}")
            values[name] = value
    return items, values


def _as_generation(values: dict[str, Any]) -> Generation:
    return (values.get("max_tokens", 128), values.get("temperature", 1.0), values.get("top_p", 1.0), values.get("stop", ()))


@dataclass
class _Layer:
    """A layer as declared: its instances (`h.0`, `h.1`, ... when repeated) and settings."""

    name: str
    width: int
    repeat: int | None
    chain: Pattern | None
    items: list[str]  # its settings block's items
    block: bool  # a block is written (maybe empty)
    generation: dict[str, Any]
    nodes: dict[int, dict[str, Any]]

    @property
    def instances(self) -> list[str]:
        return [self.name] if self.repeat is None else [f"{self.name}.{i}" for i in range(self.repeat)]


def _layer_settings(draw: Any, width: int, uniform: bool, defaults: dict[str, Any]) -> tuple[list[str], bool, dict[str, Any], dict[int, dict[str, Any]]]:
    """A layer's block items, whether it has a block, its generation settings over the
    defaults, and its nodes' settings over its own."""
    items: list[str] = []
    values: dict[str, Any] = {}
    if not uniform:
        items, values = _generation_items(draw)
    if draw(st.integers(0, 3)) == 0:
        items.append(f"share {draw(st.sampled_from(SHARES))}")
    if draw(st.integers(0, 5)) == 0:
        items.append("template builtin")
    merged = {**defaults, **values}
    nodes: dict[int, dict[str, Any]] = {}
    if not uniform and draw(st.integers(0, 3)) == 0:
        for index in draw(st.lists(st.integers(0, width - 1), min_size=1, max_size=2, unique=True)):
            node_items, node_values = _generation_items(draw)
            if draw(st.booleans()):
                node_items.append(f"share {draw(st.sampled_from(SHARES))}")
            body = "{ " + "  ".join(node_items) + " }" if node_items else "{}"
            items.append(f"node {index} {body}")
            nodes[index] = {**merged, **node_values}
    block = bool(items) or draw(st.integers(0, 4)) == 0
    return items, block, merged, nodes


@st.composite
def systems(draw: Any, *, uniform: bool = False, growth: bool = True, max_layers: int = 5, any_init: bool = False) -> System:
    """A random valid system; `uniform`: every node gets the same generation settings.
    `any_init`: growth inits may name any layer, trained or not (then the spec may be
    invalid: for robustness tests only)."""
    n_inputs = draw(st.integers(1, 2))
    n_layers = draw(st.integers(1, max_layers))
    names = draw(st.lists(st.sampled_from(NAMES), min_size=n_inputs + n_layers + 3, max_size=n_inputs + n_layers + 3, unique=True))
    inputs, layer_names, spare = names[:n_inputs], names[n_inputs : n_inputs + n_layers], names[n_inputs + n_layers :]
    writer = _Writer(draw)
    head: list[str] = []

    # system-wide statements
    if draw(st.booleans()):
        head.append(f"model {json.dumps(draw(st.sampled_from(('smollm2-135m-instruct', 'models/my model', 'org/ñame'))), ensure_ascii=False)}")
    if draw(st.booleans()):
        args = []
        if draw(st.booleans()):
            args.append(f"rank = {draw(st.integers(1, 64))}")
        if draw(st.booleans()):
            args.append(f"alpha = {draw(st.sampled_from(('16', '32.0', '1e1')))}")
        if draw(st.booleans()):
            args.append("dropout = 0.05")
        if draw(st.booleans()):
            args.append(draw(st.sampled_from(("targets = [q_proj,\n        v_proj]", "targets = q_proj", "targets = [q_proj, k_proj, v_proj, o_proj]"))))
        head.append(f"adapter lora({', '.join(args)})")
    if draw(st.integers(0, 3)) == 0:
        head.append(f"share {draw(st.sampled_from(SHARES))}")
    if draw(st.integers(0, 5)) == 0:
        head.append("template builtin")
    defaults: dict[str, Any] = {}
    if draw(st.integers(0, 3)) == 0:
        items, defaults = _generation_items(draw)
        if draw(st.booleans()):
            items.append(f"max_prompt_tokens {draw(st.integers(16, 4096))}")
        head.append("defaults " + writer.settings(items))

    # layers: the last one answers
    layers: list[_Layer] = []
    for name in layer_names:
        width = draw(st.integers(1, 4))
        repeat = draw(st.integers(1, 3)) if draw(st.integers(0, 3)) == 0 else None
        chain = _pattern(draw, width, width) if repeat is not None and draw(st.booleans()) else None
        items, block, merged, nodes = _layer_settings(draw, width, uniform, defaults)
        layers.append(_Layer(name, width, repeat, chain, items, block, merged, nodes))
    net = Net(
        inputs=tuple(inputs),
        widths={instance: layer.width for layer in layers for instance in layer.instances},
        edges=[],
        outputs={},
        generation={instance: _as_generation(layer.generation) for layer in layers for instance in layer.instances},
        node_generation={instance: {i: _as_generation(v) for i, v in layer.nodes.items()} for layer in layers for instance in layer.instances},
    )
    min_widths = {instance: max(layer.nodes, default=-1) + 1 for layer in layers for instance in layer.instances}
    instances = list(net.widths)
    chained = {f"{layer.name}.{k}": layer.chain for layer in layers if layer.chain is not None for k in range(1, layer.repeat or 0)}
    chain_edges = [Edge(End(name), End(f"{name.rpartition('.')[0]}.{int(name.rpartition('.')[2]) - 1}"), pattern) for name, pattern in chained.items()]

    # outputs: the last instance, maybe another one
    last = instances[-1]
    net.outputs[last] = net.widths[last] > 1 or draw(st.integers(0, 4)) == 0
    if len(instances) > 1 and draw(st.integers(0, 3)) == 0:
        other = draw(st.sampled_from(instances[:-1]))
        net.outputs[other] = net.widths[other] > 1 or draw(st.booleans())

    # edges: one feed per instance that no chain feeds, then extra ones (skips included)
    written: list[Edge] = []
    for j, name in enumerate(instances):
        if name in chained:
            continue
        source = draw(st.sampled_from([*inputs, *instances[:j]]))
        written.append(_edge(draw, net, name, source, whole=True))
    for _ in range(draw(st.integers(0, 4))):
        j = draw(st.integers(0, len(instances) - 1))
        source = draw(st.sampled_from([*inputs, *instances[:j]]))
        written.append(_edge(draw, net, instances[j], source, whole=False))
    net.edges = chain_edges + written
    # every layer reaches an output: connect those that do not to a node that does,
    # often through one node pair (so the layer's other nodes dangle)
    for i in reversed(range(len(instances))):
        name = instances[i]
        reached = reaching(net, node_reads(net))
        if any(f"{name}[{k}]" in reached for k in range(net.widths[name])):
            continue
        later = [node for node in reached if instances.index(node.rpartition("[")[0]) > i]
        target = draw(st.sampled_from(sorted(later)))
        layer, _, index = target[:-1].rpartition("[")
        if draw(st.integers(0, 3)) > 0:
            edge = Edge(End(layer, int(index)), End(name, draw(st.integers(0, net.widths[name] - 1))), None)
        else:
            edge = _edge(draw, net, layer, name, whole=True)
        written.append(edge)
        net.edges.append(edge)
    assert not problems(net, min_widths), problems(net, min_widths)

    # the text
    writer.lines.append(f"system {draw(st.sampled_from(NAMES))} {{")
    writer.depth = 1
    for text in head:
        writer.add(text)
    for name in inputs:
        writer.add(f"input {name}")
    statements = [_layer_text(writer, layer) for layer in layers]
    edge_texts = _edge_statements(draw, written)
    for text in edge_texts:  # edges may come before or between the layers they connect
        statements.insert(draw(st.integers(0, len(statements))), text)
    output_texts = [_output_text(draw, name, vote) for name, vote in net.outputs.items()]
    for text in [*statements, *output_texts]:
        writer.add(text)
    if draw(st.booleans()):
        writer.add(_train_text(draw, writer))
    stages: list[Stage] = []
    if growth and (any_init or draw(st.booleans())):
        stages = _growth(draw, writer, net, min_widths, spare, uniform, defaults, any_init)
    writer.depth = 0
    writer.lines.append("}")
    if draw(st.integers(0, 4)) == 0:
        writer.lines.append(writer.comment())
    return System(writer.text(), net, stages, uniform)


def _edge(draw: Any, net: Net, target: str, source: str, whole: bool) -> Edge:
    """An edge into `target`; `whole`: from every node of a layer (each target node reads some)."""
    if source in net.inputs:
        index = None if whole or draw(st.booleans()) else draw(st.integers(0, net.widths[target] - 1))
        return Edge(End(target, index), End(source), None)
    target_index = None if whole or draw(st.booleans()) else draw(st.integers(0, net.widths[target] - 1))
    source_index = None if whole or draw(st.booleans()) else draw(st.integers(0, net.widths[source] - 1))
    if target_index is None and source_index is None:
        pattern = _pattern(draw, net.widths[source], net.widths[target]) if draw(st.integers(0, 3)) else None
    else:
        pattern = Pattern("dense", text="dense") if draw(st.integers(0, 3)) == 0 else None
    return Edge(End(target, target_index), End(source, source_index), pattern)


def _source_text(edge: Edge) -> str:
    return str(edge.source) if edge.pattern is None else f"{edge.source} {edge.pattern.text}"


def _edge_statements(draw: Any, edges: list[Edge]) -> list[str]:
    """Edges as statements; consecutive edges into the same target may share one."""
    texts: list[str] = []
    previous: Edge | None = None
    for edge in edges:
        if previous is not None and previous.target == edge.target and draw(st.booleans()):
            texts[-1] += draw(st.sampled_from((", ", ",", " , "))) + _source_text(edge)
        else:
            texts.append(f"{edge.target} {draw(st.sampled_from(('<-', ' <- ')))} {_source_text(edge)}")
        previous = edge
    return texts


def _layer_text(writer: _Writer, layer: _Layer) -> str:
    text = f"layer {layer.name} width {layer.width}"
    if layer.repeat is not None:
        text += f" repeat {layer.repeat}"
        if layer.chain is not None:
            text += f" chain {layer.chain.text}"
    return text + " " + writer.settings(layer.items) if layer.block else text


def _output_text(draw: Any, name: str, vote: bool) -> str:
    text = f"output {name}" + (" vote" if vote else "")
    if draw(st.integers(0, 3)) == 0:
        text += " format " + json.dumps(draw(st.sampled_from(ANSWER_FORMATS)))
    return text


def _train_text(draw: Any, writer: _Writer) -> str:
    choices = {
        "algorithm": ALGORITHMS,
        "group": ("8", "2"),
        "lr": ("1e-4", "0.001", "3E-5"),
        "kl": ("0.0", "0.01"),
        "clip": ("0.2",),
        "reward": ("exact_match", '"my_rewards.scoring:score"'),
        "loss_norm": LOSS_NORMS,
        "grad_clip": ("1.0",),
        "batch": ("4",),
        "steps": ("100", "7"),
        "epochs": ("1", "2"),
    }
    names = draw(st.lists(st.sampled_from(sorted(choices)), unique=True, max_size=5))
    return "train " + writer.settings([f"{name} {draw(st.sampled_from(choices[name]))}" for name in names])


# Growth -------------------------------------------------------------------------------------


def _growth(draw: Any, writer: _Writer, net: Net, min_widths: dict[str, int], spare: list[str], uniform: bool, defaults: dict[str, Any], any_init: bool) -> list[Stage]:
    """Stages that each keep the system valid; an op that would not is left out."""
    writer.add("growth {")
    writer.depth = 2
    stages: list[Stage] = []
    current = net
    step = -1
    names = iter(spare)
    stage_names = draw(st.lists(st.sampled_from(NAMES), min_size=3, max_size=3, unique=True))
    for s in range(draw(st.integers(2 if any_init else 1, 3))):
        trained = current
        ops: list[str] = []
        for _ in range(draw(st.integers(int(any_init), 4))):
            proposal = _growth_op(draw, current, trained, s == 0, names, uniform, defaults, any_init)
            if proposal is None:
                continue
            text, grown = proposal
            if not problems(grown, min_widths):
                ops.append(text)
                current = grown
        after = ""
        if s > 0:
            step = draw(st.integers(step + 1, step + 500))
            after = f" after {step} steps"
            if draw(st.booleans()):
                after += f" or plateau {draw(st.integers(1, 9))} evals"
        header = f"stage {stage_names[s]}"
        if not ops:
            writer.add(header + " {}" + after)
        elif len(ops) == 1 and "\n" not in ops[0] and draw(st.booleans()):
            writer.add(f"{header} {{ {ops[0]} }}{after}")
        else:
            writer.add(header + " {")
            writer.depth = 3
            for op in ops:
                writer.add(op)
            writer.depth = 2
            writer.add("}" + after)
        stages.append(Stage(stage_names[s], current))
    writer.depth = 1
    writer.add("}")
    return stages


def _growth_op(draw: Any, net: Net, trained: Net, is_first: bool, names: Any, uniform: bool, defaults: dict[str, Any], any_init: bool) -> tuple[str, Net] | None:
    """One growth op and the system after it, or None when no such op applies.
    `any_init`: widen and insert favour layers new in this stage, whose adapters
    are not trained yet (then `init copy` and `init mean` must be refused)."""
    grown = copy.deepcopy(net)
    layers = list(grown.widths)
    fresh = [layer for layer in layers if layer not in trained.widths]
    grown_from = fresh if any_init and fresh and draw(st.booleans()) else layers
    kinds = ("widen", "insert") * (2 if any_init else 1) + ("keep", "drop", "edge") + (("resize",) if is_first else ())
    kind = draw(st.sampled_from(kinds))
    if kind == "resize":
        layer = draw(st.sampled_from(layers))
        width = draw(st.integers(1, 5))
        grown.widths[layer] = width
        return f"{layer} width {width}", grown
    if kind == "widen":
        layer = draw(st.sampled_from(grown_from))
        width = grown.widths[layer] + draw(st.integers(1, 2))
        grown.widths[layer] = width
        return f"widen {layer} to {width}{_init(draw, net if is_first or any_init else trained, layer)}", grown
    if kind == "insert":
        name = next(names, None)
        if name is None:
            return None
        after = draw(st.sampled_from(grown_from))
        width = draw(st.integers(1, 3))
        readers = list(dict.fromkeys(e.target.name for e in grown.edges if e.source.name == after and e.source.name in grown.widths))
        position = layers.index(after) + 1
        grown.widths = dict([*list(grown.widths.items())[:position], (name, width), *list(grown.widths.items())[position:]])
        grown.edges += [Edge(End(name), End(after), None)] + [Edge(End(reader), End(name), None) for reader in readers]
        values: dict[str, Any] = {}
        items: list[str] = []
        if not uniform:
            items, values = _generation_items(draw)
        merged = {**defaults, **values}
        grown.generation[name] = _as_generation(merged)
        grown.node_generation[name] = {}
        text = f"insert {name} width {width} after {after}{_init(draw, net if is_first or any_init else trained, after)}"
        if items:
            text += " { " + "  ".join(items) + " }"
        return text, grown
    if kind in ("keep", "drop"):
        if not grown.edges:
            return None
        edge = draw(st.sampled_from(grown.edges))
        if kind == "drop":
            grown.edges = [e for e in grown.edges if not (e.source.name == edge.source.name and e.target.name == edge.target.name)]
        return f"{kind} {edge.source.name} -> {edge.target.name}", grown
    j = draw(st.integers(0, len(layers) - 1))
    source = draw(st.sampled_from([*grown.inputs, *layers[:j]]))
    edge = _edge(draw, grown, layers[j], source, whole=False)
    grown.edges.append(edge)
    return f"{edge.target} <- {_source_text(edge)}", grown


def _init(draw: Any, pool: Net, default: str) -> str:
    """` init ...` or nothing. Copy and mean read trained adapters: their source (by
    default `default`) must be a layer of `pool`, the system the stage before trained
    (for the first stage, the system as it stands: nothing is trained yet)."""
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return " init zero" if default not in pool.widths else ""
    if choice == 1:
        return " init zero"
    kind = "copy" if choice < 4 else "mean"
    if draw(st.booleans()):
        return f" init {kind}" if default in pool.widths else " init zero"
    layer = draw(st.sampled_from(list(pool.widths)))
    if kind == "copy" and draw(st.booleans()):
        # a named node must have a trained adapter: one whose text reaches an output
        reached = reaching(pool, node_reads(pool))
        kept = [node for node in (f"{layer}[{i}]" for i in range(pool.widths[layer])) if node in reached]
        if kept:
            return f" init copy {draw(st.sampled_from(kept))}"
    return f" init {kind} {layer}"
