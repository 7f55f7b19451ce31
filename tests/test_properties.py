"""Property tests of the compiler over random valid systems (see tests/strategies.py).

fmt keeps the IR and is idempotent; mutated specs (bytes and tokens) only ever give
CompileError diagnostics; plans keep their invariants (calls, levels, JSON, hashes,
determinism), and pruning removes exactly the nodes that reach no output, as an
independent graph search over the expected graph finds them.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import Net, System, levels, node_reads, reaching, systems

from neuromas import plan
from neuromas.diagnostics import CompileError
from neuromas.format import format_spec
from neuromas.lower import lower
from neuromas.pipeline import compile_source
from neuromas.syntax import decode_source, parse_text

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.nmas"))
MUTATION_EXAMPLES = 2500


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
    spec = parse_text(system.text)
    again = parse_text(format_spec(spec))
    assert lower(again)[0] == lower(spec)[0]
    assert sorted(c.text for c in again.comments) == sorted(c.text for c in spec.comments)


@examples(250)
@given(systems())
def test_fmt_is_idempotent(system: System) -> None:
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


@st.composite
def mutated(draw) -> bytes:
    """A valid spec (an example or a drawn one) after 1 to 4 byte or token edits."""
    if draw(st.booleans()):
        data = draw(st.sampled_from(SPECS)).read_bytes()
    else:
        data = draw(systems(any_init=True)).text.encode()
    for _ in range(draw(st.integers(1, 4))):
        data = draw(st.sampled_from((_byte_edit, _token_edit)))(draw, data)
    return data


def _byte_edit(draw, data: bytes) -> bytes:
    i = draw(st.integers(0, len(data)))
    j = min(len(data), i + draw(st.integers(1, 8)))
    match draw(st.sampled_from(("delete", "insert", "replace", "swap", "duplicate"))):
        case "delete":
            return data[:i] + data[j:]
        case "insert":
            return data[:i] + bytes([draw(st.integers(0, 255))]) + data[i:]
        case "replace":
            return data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
        case "swap":
            k = draw(st.integers(0, len(data)))
            a, b = sorted((i, k))
            return data[:a] + data[b : b + 1] + data[a + 1 : b] + data[a : a + 1] + data[b + 1 :] if b > a else data
        case _:
            return data[:j] + data[i:j] + data[j:]


def _token_edit(draw, data: bytes) -> bytes:
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


@examples(MUTATION_EXAMPLES)
@given(mutated())
def test_mutations_only_raise_compile_errors(data: bytes) -> None:
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
    for node in result.nodes:
        max_tokens, temperature, top_p, stop = net.generation_of(node.id)
        assert (node.generation.max_tokens, node.generation.temperature, node.generation.top_p, node.generation.stop) == (max_tokens, temperature, top_p, stop)
    # outputs and adapter slots
    assert {output.layer: output.aggregate == "vote" for output in result.outputs} == net.outputs
    for output in result.outputs:
        assert set(output.nodes) == {node.id for node in result.nodes if node.layer == output.layer}
    slots = Counter(name for slot in result.adapters for name in slot.nodes)
    assert slots == Counter(node.id for node in result.nodes if node.adapter is not None)


@examples(200)
@given(systems())
def test_plan_matches_expected_graph(system: System) -> None:
    result = compiled(system.text)
    check_plan(result, system.net)
    assert [stage.name for stage in result.growth] == [stage.name for stage in system.stages]
    trained: plan.Plan | None = None
    for stage, expected in zip(result.growth, system.stages):
        check_plan(stage.plan, expected.net)
        assert [origin.node for origin in stage.origins] == [node.id for node in stage.plan.nodes]
        old = set() if trained is None else set(trained.node_map())
        for origin in stage.origins:
            assert (origin.kind == "keep") == (origin.node in old)
            if trained is None:
                assert origin.kind == "zero"
            elif origin.kind == "copy":  # a new node starts from a trained one
                assert origin.source in old
            elif origin.kind == "mean":
                assert any(node.layer == origin.source for node in trained.nodes)
        trained = stage.plan


@examples(150)
@given(systems(uniform=True))
def test_uniform_settings_take_one_call_per_level(system: System) -> None:
    result = compiled(system.text)
    assert len(result.calls) == result.depth
    assert all(call.split_reason is None for call in result.calls)


@examples(150)
@given(systems())
def test_plan_json_round_trip_and_determinism(system: System) -> None:
    result = compiled(system.text)
    data = result.to_json()
    assert plan.Plan.from_json(data) == result
    assert plan.Plan.from_json(data).to_json() == data
    assert plan.Plan.from_json(result.to_pretty_json()) == result
    again = compiled(system.text)
    assert again.to_json() == data
    assert again.content_hash == result.content_hash
