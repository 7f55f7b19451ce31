"""Each compiler pass alone, on tiny specs or hand-built IR."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import neuromas
from neuromas import ir
from neuromas.lower import lower
from neuromas.passes.assign_adapters import assign_adapters
from neuromas.passes.assign_levels import CycleError, assign_levels, node_levels
from neuromas.passes.batch_levels import batch_levels
from neuromas.passes.expand_repeats import expand_repeats
from neuromas.passes.order_prompts import order_prompts
from neuromas.passes.prune_unreachable import prune_unreachable
from neuromas.passes.resolve_edges import connect, resolve_edges
from neuromas.passes.verify import IRVerificationError, verify_ir
from neuromas.syntax import parse_text

ROOT = Path(__file__).resolve().parent.parent


def system(body: str) -> ir.System:
    """The System of a spec whose body (inside `system s { ... }`) is `body`."""
    return lower(parse_text(f"system s {{\n{body}\n}}\n"))[0]


def graph(body: str) -> ir.Graph:
    return resolve_edges(expand_repeats(system(body)))


def reads(g: ir.Graph) -> dict[str, tuple[str, ...]]:
    return {node.id: node.reads for node in g.nodes}


TWO_LAYERS = """
    input q
    layer a width {a}
    layer b width {b}
    a <- q
    b <- a {pattern}
    output b vote
"""


def pattern_reads(pattern: str, a: int, b: int) -> list[tuple[str, ...]]:
    g = graph(TWO_LAYERS.format(a=a, b=b, pattern=pattern))
    return [node.reads for node in g.nodes if node.layer == "b"]


# expand_repeats -----------------------------------------------------------------------


def test_expand_repeats_names_instances_and_adds_chain_edges_first() -> None:
    expanded = expand_repeats(system("""
    input q
    layer h width 2 repeat 3 chain one_to_one
    layer answer width 1
    h.0 <- q
    answer <- h.2
    output answer
"""))
    assert [layer.name for layer in expanded.layers] == ["h.0", "h.1", "h.2", "answer"]
    assert all(layer.repeat is None and layer.chain is None for layer in expanded.layers)
    edges = [(e.target.name, e.source.name, e.pattern.kind) for e in expanded.edges]
    assert edges == [("h.1", "h.0", "one_to_one"), ("h.2", "h.1", "one_to_one"), ("h.0", "q", "dense"), ("answer", "h.2", "dense")]


def test_expand_repeats_without_chain_adds_no_edges() -> None:
    before = system("""
    input q
    layer h width 1 repeat 2
    layer answer width 1
    h.0 <- q
    h.1 <- q
    answer <- h.0, h.1
    output answer
""")
    after = expand_repeats(before)
    assert after.edges == before.edges
    assert [layer.name for layer in after.layers] == ["h.0", "h.1", "answer"]


def test_expand_repeats_leaves_a_system_without_repeats_alone() -> None:
    plain = system("input q\nlayer a width 1\na <- q\noutput a")
    assert expand_repeats(plain) == plain


# resolve_edges --------------------------------------------------------------------------


def test_dense_reads_every_source_node() -> None:
    assert pattern_reads("dense", 3, 2) == [("a[0]", "a[1]", "a[2]")] * 2


def test_one_to_one_reads_the_same_index() -> None:
    assert pattern_reads("one_to_one", 3, 3) == [("a[0]",), ("a[1]",), ("a[2]",)]


def test_window_with_equal_widths_reads_neighbours() -> None:
    assert pattern_reads("window(2)", 4, 4) == [("a[0]", "a[1]"), ("a[0]", "a[1]", "a[2]"), ("a[1]", "a[2]", "a[3]"), ("a[2]", "a[3]")]


def test_window_with_different_widths_centres_on_the_scaled_position() -> None:
    # target i of 4 is centred on source 2i of 8
    assert pattern_reads("window(2)", 8, 4) == [
        ("a[0]", "a[1]"), ("a[1]", "a[2]", "a[3]"), ("a[3]", "a[4]", "a[5]"), ("a[5]", "a[6]", "a[7]"),
    ]
    # target i of 8 is centred on source i // 2 of 4
    assert pattern_reads("window(1)", 4, 8) == [(f"a[{i // 2}]",) for i in range(8)]


def test_random_is_deterministic_and_never_leaves_a_node_without_sources() -> None:
    sparse = pattern_reads("random(0.05, seed = 7)", 6, 16)
    assert sparse == pattern_reads("random(0.05, seed = 7)", 6, 16)
    assert all(len(r) >= 1 for r in sparse)
    assert pattern_reads("random(1)", 3, 2) == pattern_reads("dense", 3, 2)


def test_random_depends_on_the_seed() -> None:
    pattern = ir.Pattern(kind="random", p=0.5, seed=1)
    first = [connect(pattern, 8, 8, t, "a->b") for t in range(8)]
    assert first == [connect(pattern, 8, 8, t, "a->b") for t in range(8)]
    other = pattern.model_copy(update={"seed": 2})
    assert first != [connect(other, 8, 8, t, "a->b") for t in range(8)]


def test_explicit_node_pairs_read_only_that_node() -> None:
    g = graph("""
    input q
    layer a width 2
    layer b width 2
    a <- q
    b[0] <- a[1]
    b[1] <- a[0], q
    output b vote
""")
    assert reads(g)["b[0]"] == ("a[1]",)
    assert reads(g)["b[1]"] == ("a[0]", "q")


def test_reads_follow_edge_order_without_repeats() -> None:
    g = graph("input q\nlayer a width 2\nlayer b width 1\na <- q\nb <- q, a, a[1]\noutput b")
    assert reads(g)["b[0]"] == ("q", "a[0]", "a[1]")


def test_node_settings_override_the_layer() -> None:
    g = graph("input q\nlayer a width 2 { max_tokens 64 node 1 { temperature 0.5 } }\na <- q\noutput a vote")
    settings = {node.id: (node.generation.max_tokens, node.generation.temperature) for node in g.nodes}
    assert settings == {"a[0]": (64, 1.0), "a[1]": (64, 0.5)}


# prune_unreachable --------------------------------------------------------------------------


def test_prune_unreachable_removes_and_names_nodes_that_reach_no_output() -> None:
    g = graph("input q\nlayer a width 3\nlayer b width 1\na <- q\nb <- a[0], a[2]\noutput b")
    pruned = prune_unreachable(g)
    assert [node.id for node in pruned.nodes] == ["a[0]", "a[2]", "b[0]"]
    assert pruned.warnings == ("removed 1 node(s) whose text reaches no output: a[1]",)


def test_prune_unreachable_keeps_a_graph_that_is_all_reachable() -> None:
    g = graph("input q\nlayer a width 2\nlayer b width 1\na <- q\nb <- a\noutput b")
    assert prune_unreachable(g) == g


def test_compile_reports_the_pruning_warning(tmp_path: Path) -> None:
    spec = tmp_path / "pruned.nmas"
    spec.write_text("system s {\n    input q\n    layer a width 2\n    layer b width 1\n    a <- q\n    b <- a[0]\n    output b\n}\n")
    assert neuromas.compile(spec).warnings == ("removed 1 node(s) whose text reaches no output: a[1]",)


# assign_levels ----------------------------------------------------------------------------------


def test_levels_are_longest_paths_so_skip_edges_cost_no_level() -> None:
    g = assign_levels(graph("""
    input q
    layer a width 1
    layer b width 1
    layer c width 1
    a <- q
    b <- a
    c <- a, q, b
    output c
"""))
    assert {node.id: node.level for node in g.nodes} == {"a[0]": 0, "b[0]": 1, "c[0]": 2}


def test_levels_sort_nodes_even_when_layers_are_declared_out_of_order() -> None:
    g = assign_levels(graph("input q\nlayer late width 1\nlayer early width 2\nearly <- q\nlate <- early\noutput late"))
    assert [(node.id, node.level) for node in g.nodes] == [("early[0]", 0), ("early[1]", 0), ("late[0]", 1)]


def test_node_levels_names_a_cycle() -> None:
    g = graph("input q\nlayer a width 1\nlayer b width 1\na <- q\nb <- a\noutput b")
    looped = g.model_copy(update={"nodes": tuple(
        node.model_copy(update={"reads": ("q", "b[0]")}) if node.id == "a[0]" else node for node in g.nodes
    )})
    with pytest.raises(CycleError) as caught:
        node_levels(looped)
    assert caught.value.cycle in (["a[0]", "b[0]", "a[0]"], ["b[0]", "a[0]", "b[0]"])


# batch_levels -------------------------------------------------------------------------------------


def batched(body: str) -> ir.Graph:
    return batch_levels(assign_levels(graph(body)))


def test_one_call_per_level_when_settings_agree() -> None:
    g = batched("input q\nlayer a width 3\nlayer b width 1\na <- q\nb <- a\noutput b")
    assert [(call.level, call.nodes, call.split_reason) for call in g.calls] == [
        (0, ("a[0]", "a[1]", "a[2]"), None), (1, ("b[0]",), None),
    ]


def test_a_level_splits_by_settings_and_says_why() -> None:
    g = batched("""
    input q
    layer a width 3 {
        node 1 { temperature 0.5 }
    }
    layer b width 2 { max_tokens 32 }
    layer answer width 1
    a <- q
    b <- q
    answer <- a, b
    output answer
""")
    level0 = [call for call in g.calls if call.level == 0]
    assert [call.nodes for call in level0] == [("a[0]", "a[2]"), ("a[1]",), ("b[0]", "b[1]")]
    assert {call.split_reason for call in level0} == {"max_tokens differs (128 vs 32); temperature differs (0.5 vs 1.0)"}


# order_prompts ----------------------------------------------------------------------------------------


def ordered(body: str) -> ir.Graph:
    return order_prompts(batch_levels(assign_adapters(assign_levels(graph(body)))))


def test_shared_prefix_comes_first_with_inputs_before_node_texts() -> None:
    g = ordered("""
    input q
    input context
    layer a width 2
    layer b width 2
    a <- q
    b <- a one_to_one, context, q
    output b vote
""")
    call = next(call for call in g.calls if call.level == 1)
    assert call.shared_prefix == ("q", "context")
    assert reads(g) == {"a[0]": ("q",), "a[1]": ("q",), "b[0]": ("q", "context", "a[0]"), "b[1]": ("q", "context", "a[1]")}


def test_a_call_groups_its_requests_by_adapter() -> None:
    g = ordered("""
    input q
    layer a width 4 {
        share per_layer
        node 1 { share per_node }
    }
    a <- q
    output a vote
""")
    assert g.calls[0].nodes == ("a[0]", "a[2]", "a[3]", "a[1]")
    assert [node.id for node in g.nodes] == ["a[0]", "a[2]", "a[3]", "a[1]"]
    assert [node.adapter for node in g.nodes] == ["layer-a", "layer-a", "layer-a", "node-a-1"]


# assign_adapters ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("share", "slots"), [
    ("per_node", ["node-h-0-0", "node-h-0-1", "node-h-1-0", "node-h-1-1"]),
    ("per_layer", ["layer-h-0", "layer-h-0", "layer-h-1", "layer-h-1"]),
    ("shared", ["shared"] * 4),
    ("frozen", [None] * 4),
])
def test_adapter_slots_follow_sharing(share: str, slots: list[str | None]) -> None:
    g = assign_adapters(graph(f"share {share}\ninput q\nlayer h width 2 repeat 2 chain dense\nh.0 <- q\noutput h.1 vote"))
    assert [node.adapter for node in g.nodes] == slots


def test_plan_lists_each_trainable_slot_once_and_no_frozen_node() -> None:
    plan = neuromas.compile("system s {\n input q\n layer a width 2 { share shared }\n layer b width 1 { share frozen }\n a <- q\n b <- a\n output b\n}\n")
    assert [(slot.name, slot.sharing, slot.nodes) for slot in plan.adapters] == [("shared", "shared", ("a[0]", "a[1]"))]
    assert plan.node_map()["b[0]"].adapter is None


# the verifier ---------------------------------------------------------------------------------------------


def compiled_graph() -> ir.Graph:
    return ordered("input q\nlayer a width 2\nlayer b width 1\na <- q\nb <- a, q\noutput b")


def with_node(g: ir.Graph, node_id: str, **update) -> ir.Graph:
    nodes = tuple(node.model_copy(update=update) if node.id == node_id else node for node in g.nodes)
    return g.model_copy(update={"nodes": nodes})


def test_verifier_accepts_a_compiled_graph() -> None:
    verify_ir(compiled_graph(), after="order_prompts")


@pytest.mark.parametrize(("break_it", "message"), [
    (lambda g: with_node(g, "b[0]", reads=("q", "a[0]", "nowhere")), "b[0] reads unknown source nowhere"),
    (lambda g: with_node(g, "b[0]", level=0), "edge a[0] -> b[0] does not go to a higher level"),
    (lambda g: with_node(g, "a[1]", reads=("q", "q")), "a[1] reads a source twice"),
    (lambda g: g.model_copy(update={"nodes": g.nodes[::-1]}), "nodes are not sorted by level"),
    (lambda g: g.model_copy(update={"calls": g.calls[:1]}), "not every node is in exactly one call"),
    (lambda g: with_node(g, "a[1]", generation=ir.Generation(max_tokens=7)), "call at level 0 mixes generation settings"),
])
def test_verifier_names_the_pass_and_the_broken_invariant(break_it, message: str) -> None:
    with pytest.raises(IRVerificationError, match=f"^after pass order_prompts: {re.escape(message)}$"):
        verify_ir(break_it(compiled_graph()), after="order_prompts")


# growth origins ---------------------------------------------------------------------------------------------


def origins(stage: str) -> list[tuple[str, str, str | None]]:
    plan = neuromas.compile(ROOT / "specs" / "growth.nmas")
    return [(o.node, o.kind, o.source) for o in plan.stage_plan(stage).origins]


def test_the_first_stage_starts_every_node_from_zero() -> None:
    assert origins("neuromas3") == [("hidden[0]", "zero", None), ("hidden[1]", "zero", None), ("answer[0]", "zero", None)]


def test_an_inserted_layer_copies_the_layer_it_follows() -> None:
    assert origins("neuromas5") == [
        ("hidden[0]", "keep", "hidden[0]"), ("hidden[1]", "keep", "hidden[1]"),
        ("mid[0]", "copy", "hidden[0]"), ("mid[1]", "copy", "hidden[1]"),
        ("answer[0]", "keep", "answer[0]"),
    ]


def test_widened_layers_copy_a_trained_node_or_average_the_layer() -> None:
    assert origins("neuromas7") == [
        ("hidden[0]", "keep", "hidden[0]"), ("hidden[1]", "keep", "hidden[1]"), ("hidden[2]", "copy", "hidden[0]"),
        ("mid[0]", "keep", "mid[0]"), ("mid[1]", "keep", "mid[1]"), ("mid[2]", "mean", "mid"),
        ("answer[0]", "keep", "answer[0]"),
    ]


def test_init_zero_and_an_explicit_copy_source() -> None:
    plan = neuromas.compile("""system s {
    input q
    layer a width 2
    layer b width 1
    a <- q
    b <- a
    output b
    growth {
        stage first {}
        stage wider {
            widen a to 4 init copy a[1]
            insert c width 1 after a init zero
        } after 10 steps
    }
}
""")
    made = {o.node: (o.kind, o.source) for o in plan.stage_plan("wider").origins}
    assert made["a[2]"] == made["a[3]"] == ("copy", "a[1]")
    assert made["c[0]"] == ("zero", None)
    assert made["b[0]"] == ("keep", "b[0]")
