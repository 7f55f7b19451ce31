"""Property tests of the compiler over random valid systems (see tests/strategies.py).

fmt keeps the IR and is idempotent; mutated specs (bytes and tokens) only ever give
CompileError diagnostics; plans keep their invariants (calls, levels, JSON, hashes,
determinism), and pruning removes exactly the nodes that reach no output, as an
independent graph search over the expected graph finds them.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuromas import ast, ir, plan
from neuromas.diagnostics import CompileError
from neuromas.format import format_spec
from neuromas.lower import lower
from neuromas.pipeline import compile_source
from neuromas.syntax import decode_source, parse_text

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/strategies.py (pytest runs in importlib mode)
from strategies import Net, System, levels, node_reads, reaching, systems  # noqa: E402

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.nmas"))
MUTATION_EXAMPLES = 1000


def examples(n: int) -> settings:
    """Reproducible runs: the same n examples on every machine, no time limit per example."""
    return settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def compiled(text: str) -> plan.Plan:
    return compile_source(text, "<generated>", verify=True)


# fmt -----------------------------------------------------------------------------------------


@examples(250)
@given(systems())
def test_fmt_round_trip_keeps_ir_and_comments(system: System) -> None:
    """Printed with fmt and parsed again, a spec lowers to the same IR and keeps its comments."""
    spec = parse_text(system.text)
    again = parse_text(format_spec(spec))
    assert lower(again)[0] == lower(spec)[0]
    assert sorted(c.text for c in again.comments) == sorted(c.text for c in spec.comments)


@examples(250)
@given(systems())
def test_fmt_is_idempotent(system: System) -> None:
    """fmt of fmt's output changes nothing."""
    once = format_spec(parse_text(system.text))
    assert format_spec(parse_text(once)) == once


# robustness ----------------------------------------------------------------------------------

TOKEN = re.compile(rb'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*|[+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|<-|->|\s+|.', re.S)
INSERTS = (
    b"{", b"}", b"(", b")", b"[", b"]", b",", b"<-", b"->", b".", b"=", b"\n", b"\r\n", b"#", b" ", b"\t",
    b"0", b"-1", b"1e9", b"2.5", b"1e400", b"99", b".5", b"7", b"[3]", b".7",
    b'"x"', b'"\\N{bogus}"', b'"\\ud800"', b'"\\x4"', b'"\x00"', b'"\\q"', b'"', b"'a'",
    b"system", b"layer", b"width", b"repeat", b"chain", b"input", b"output", b"vote", b"format", b"model",
    b"adapter", b"lora(rank = 0)", b"share", b"template", b"defaults", b"train", b"growth", b"stage", b"after",
    b"steps", b"or", b"plateau", b"evals", b"widen", b"insert", b"to", b"init", b"copy", b"mean", b"zero",
    b"keep", b"drop", b"node", b"dense", b"one_to_one", b"window(9)", b"random(0.5, seed = 2)", b"random(0)",
    b"max_tokens", b"temperature", b"top_p", b"stop", b"per_layer", b"frozen", b"hidden", b"answer", b"h.9",
    b"node 5 { temperature 0.1 }", b"answer <- hidden dense", b"\xc3\xa9", b"\xff", b"\xe2\x82", b"\x00",
)


BYTES = st.one_of(st.integers(0x20, 0x7E), st.sampled_from(b"\t\n\r"), st.integers(0, 255))  # printable ones first
NAME, NUMBER, STRING = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*"), re.compile(rb"[+-]?\d[\d.eE+-]*"), re.compile(rb'"(?:[^"\\\n]|\\.)*"')
SAME_KIND = {  # besides the spec's own tokens of each kind
    NAME: (b"[]", b"[[x], []]", b"[" * 1500 + b"x" + b"]" * 1500),
    NUMBER: (b"0", b"-1", b"1e400", b"2.5", b"99", b"1e-9"),
    STRING: (b'"\\N{bogus}"', b'"\\ud800"', b'"\\x4"', b'"\x00"', b'"\\q"', b'"\\U0001F600"', b'"\\0"', '"é\\n"'.encode()),
}


@st.composite
def mutated(draw) -> bytes:
    """A valid spec (an example or a drawn one) after 1 to 4 byte or token edits."""
    if draw(st.booleans()):
        data = draw(st.sampled_from(SPECS)).read_bytes()
    else:
        data = draw(systems()).text.encode()
    edits = draw(st.sampled_from(((_byte_edit, _token_edit), (_same_kind_edit,))))  # half: edits that mostly parse
    for _ in range(draw(st.integers(1, 4))):
        data = draw(st.sampled_from(edits))(draw, data)
    return data


def _byte_edit(draw, data: bytes) -> bytes:
    """Delete, insert, replace, swap or duplicate bytes (any byte, so not always UTF-8)."""
    i = draw(st.integers(0, len(data)))
    j = min(len(data), i + draw(st.integers(1, 8)))
    match draw(st.sampled_from(("delete", "insert", "replace", "swap", "duplicate"))):
        case "delete":
            return data[:i] + data[j:]
        case "insert":
            return data[:i] + bytes([draw(BYTES)]) + data[i:]
        case "replace":
            return data[:i] + bytes([draw(BYTES)]) + data[i + 1 :]
        case "swap":
            k = draw(st.integers(0, len(data)))
            a, b = sorted((i, k))
            return data[:a] + data[b : b + 1] + data[a + 1 : b] + data[a : a + 1] + data[b + 1 :] if b > a else data
        case _:
            return data[:j] + data[i:j] + data[j:]


def _token_edit(draw, data: bytes) -> bytes:
    """Delete, insert, swap, duplicate or replace a token (keywords, punctuation, odd values)."""
    tokens = TOKEN.findall(data) or [b""]
    i = draw(st.integers(0, len(tokens) - 1))
    match draw(st.sampled_from(("delete", "insert", "swap", "duplicate", "replace"))):
        case "delete":
            del tokens[i]
        case "insert":
            tokens.insert(i, draw(st.sampled_from(INSERTS)) + b" " * draw(st.integers(0, 1)))
        case "swap":
            k = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[k] = tokens[k], tokens[i]
        case "duplicate":
            tokens.insert(i, tokens[i])
        case _:
            tokens[i] = draw(st.sampled_from([*INSERTS, *tokens]))
    return b"".join(tokens)


def _same_kind_edit(draw, data: bytes) -> bytes:
    """A name, number or string for another of its kind (or a list for a name): mostly still parses."""
    tokens = TOKEN.findall(data)
    for kind, extra in SAME_KIND.items():
        found = [i for i, token in enumerate(tokens) if kind.fullmatch(token)]
        if found and draw(st.booleans()):
            tokens[draw(st.sampled_from(found))] = draw(st.sampled_from(extra if draw(st.booleans()) else [tokens[i] for i in found]))
    return b"".join(tokens)


@examples(MUTATION_EXAMPLES)
@given(mutated())
def test_mutations_only_raise_compile_errors(data: bytes) -> None:
    """A broken spec gives CompileError diagnostics that point into it; one that still
    compiles gives a plan that survives JSON. No other exception, ever."""
    try:
        result = compile_source(decode_source(data, "fuzz.nmas"), "fuzz.nmas", verify=True)
    except CompileError as err:
        assert any(d.severity == "error" for d in err.diagnostics)
        lines = data.count(b"\n") + 2
        for d in err.diagnostics:
            assert d.message
            assert d.span is None or (d.span.file == "fuzz.nmas" and 1 <= d.span.line <= lines and d.span.column >= 1), d
        assert err.render()
        return
    assert plan.Plan.from_json(result.to_json()) == result


# bounds --------------------------------------------------------------------------------------

# A setting, how a spec writes it (on line 6 of BOUNDED_SPEC), and its allowed range.
BOUNDED = {
    "max_tokens": ("defaults {{ max_tokens {} }}", 1, ir.MAX_TOKENS),
    "max_prompt_tokens": ("defaults {{ max_prompt_tokens {} }}", 1, ir.MAX_TOKENS),
    "temperature": ("defaults {{ temperature {} }}", 0, ir.MAX_TEMPERATURE),
    "rank": ("adapter lora(rank = {})", 1, ir.MAX_LORA_RANK),
    "group": ("train {{ group {} }}", 1, ir.MAX_GROUP),
    "batch": ("train {{ batch {} }}", 1, ir.MAX_BATCH),
    "steps": ("train {{ steps {} }}", 1, ir.MAX_STEPS),
    "epochs": ("train {{ epochs {} }}", 1, ir.MAX_EPOCHS),
}
BOUNDED_SPEC = "system s {{\n    input q\n    layer a width 1\n    a <- q\n    output a\n    {}\n}}\n"


@st.composite
def bounded_settings(draw, inside: bool) -> tuple[str, str, int | float]:
    name = draw(st.sampled_from(sorted(BOUNDED)))
    _, low, high = BOUNDED[name]
    if isinstance(high, float):
        values = st.floats(low, high) if inside else st.floats(high, 1e300, exclude_min=True) | st.floats(-1e300, low, exclude_max=True)
    else:
        values = st.integers(low, high) if inside else st.integers(high + 1, 10**30) | st.integers(-(10**30), low - 1)
    value = draw(values)
    return name, BOUNDED[name][0].format(repr(value)), value


@examples(300)
@given(bounded_settings(inside=False))
def test_every_bound_names_its_range_where_it_is_broken(setting: tuple[str, str, int | float]) -> None:
    name, line, value = setting
    _, low, high = BOUNDED[name]
    try:
        compiled(BOUNDED_SPEC.format(line))
    except CompileError as err:
        (diagnostic,) = err.diagnostics
        shown_high = int(high) if float(high).is_integer() else high
        found = ast.Number(repr(value), diagnostic.span).value  # as the spec reads it: `1e+16` is a whole number
        assert diagnostic.message == f"{name} must be between {low} and {shown_high}, found {found}"
        assert diagnostic.span.line == 6
        return
    raise AssertionError(f"{line} compiled")


@examples(100)
@given(bounded_settings(inside=True))
def test_values_inside_every_bound_compile(setting: tuple[str, str, int | float]) -> None:
    compiled(BOUNDED_SPEC.format(setting[1]))


# plans ---------------------------------------------------------------------------------------


def check_plan(result: plan.Plan, net: Net) -> None:
    """The plan of one compiled system (the spec's own or a growth stage's) against `net`."""
    reads = node_reads(net)
    kept = reaching(net, reads)
    nodes = result.node_map()
    # pruning removes exactly the nodes that reach no output, and says which
    assert set(nodes) == kept
    dropped = set(reads) - kept
    noted = {name for warning in result.warnings if warning.startswith("removed") for name in warning.partition(": ")[2].split(", ")}
    assert noted == dropped
    # each node reads what its edges say; edges go from lower levels to higher ones
    expected_levels = levels(reads, kept)
    for node in result.nodes:
        assert {source.name for source in node.reads} == reads[node.id]
        assert node.level == expected_levels[node.id]
        for source in node.reads:
            assert (source.kind == "node") == (source.name in nodes)
            if source.kind == "node":
                assert nodes[source.name].level < node.level
    assert [node.level for node in result.nodes] == sorted(node.level for node in result.nodes)
    assert result.depth == max(expected_levels.values()) + 1
    # every node is in exactly one call, of its level; a level takes one call per setting
    placed = Counter(name for call in result.calls for name in call.nodes)
    assert placed == Counter(list(nodes))
    for level in result.levels:
        members = [node for node in result.nodes if node.level == level.index]
        assert all(nodes[name].level == level.index for call in level.calls for name in call.nodes)
        assert len(level.calls) == len({node.generation for node in members})
        for call in level.calls:
            assert all(nodes[name].generation == call.generation for name in call.nodes)
            for name in call.nodes:
                assert nodes[name].reads[: len(call.shared_prefix)] == call.shared_prefix
    for node in result.nodes:  # settings merged: defaults, then the layer's, then the node's
        g = node.generation
        assert (g.max_tokens, g.temperature, g.top_p, g.stop) == net.generation_of(node.id)
    # outputs and adapter slots
    assert {output.layer: output.aggregate == "vote" for output in result.outputs} == net.outputs
    for output in result.outputs:
        assert set(output.nodes) == {node.id for node in result.nodes if node.layer == output.layer}
    slots = Counter(name for slot in result.adapters for name in slot.nodes)
    assert slots == Counter(node.id for node in result.nodes if node.adapter is not None)


@examples(400)
@given(systems())
def test_plan_matches_expected_graph(system: System) -> None:
    """The plan and every growth stage's plan against the graphs the strategy expects."""
    result = compiled(system.text)
    check_plan(result, system.net)
    assert [stage.name for stage in result.growth] == [stage.name for stage in system.stages]
    for stage, expected in zip(result.growth, system.stages):
        check_plan(stage.plan, expected.net)
    check_origins(result)


def check_origins(result: plan.Plan) -> None:
    """Each node of a stage keeps its trained adapter, or starts from trained ones or zero."""
    trained: plan.Plan | None = None
    for stage in result.growth:
        assert [origin.node for origin in stage.origins] == [node.id for node in stage.plan.nodes]
        old = set() if trained is None else set(trained.node_map())
        for origin in stage.origins:
            assert (origin.kind == "keep") == (origin.node in old)
            if trained is None:
                assert origin.kind == "zero"
            elif origin.kind == "copy":
                assert origin.source in old
            elif origin.kind == "mean":
                assert any(node.layer == origin.source for node in trained.nodes)
        trained = stage.plan


@examples(300)
@given(systems(any_init=True))
def test_growth_inits_need_trained_sources(system: System) -> None:
    """`init copy` and `init mean` here may name layers new in their stage, or nodes that
    are out of range or were pruned: the compiler reports those, and nothing else."""
    try:
        result = compiled(system.text)
    except CompileError as err:
        reasons = ("needs trained adapters", "has no trained adapter", "is out of range")
        assert all(any(reason in d.message for reason in reasons) for d in err.diagnostics), err.render()
        return
    check_origins(result)


@examples(150)
@given(systems(uniform=True))
def test_uniform_settings_take_one_call_per_level(system: System) -> None:
    """With the same generation settings everywhere, a rollout takes one call per level."""
    result = compiled(system.text)
    assert len(result.calls) == result.depth
    assert all(call.split_reason is None for call in result.calls)


@examples(200)
@given(systems())
def test_plan_json_round_trip_and_determinism(system: System) -> None:
    """JSON round trips exactly, and compiling again gives the same bytes and hash."""
    result = compiled(system.text)
    data = result.to_json()
    assert plan.Plan.from_json(data) == result
    assert plan.Plan.from_json(data).to_json() == data
    assert plan.Plan.from_json(result.to_pretty_json()) == result
    again = compiled(system.text)
    assert again.to_json() == data
    assert again.content_hash == result.content_hash
