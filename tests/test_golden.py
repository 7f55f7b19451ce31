"""Every example spec against its checked-in IR, canonical form, plan (text and JSON) and DOT."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import neuromas
from neuromas.format import format_spec
from neuromas.lower import lower
from neuromas.plan import Plan
from neuromas.render import dot
from neuromas.render.text import summarize
from neuromas.syntax import parse_text

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.nmas"))
GOLDEN = Path(__file__).resolve().parent / "golden"

by_name = pytest.mark.parametrize("spec", SPECS, ids=[spec.stem for spec in SPECS])


def test_there_are_example_specs() -> None:
    assert len(SPECS) >= 10


def test_every_golden_file_has_its_spec() -> None:
    assert {path.name.partition(".")[0] for path in GOLDEN.iterdir()} == {spec.stem for spec in SPECS}


@by_name
def test_ir(spec: Path, golden) -> None:
    system, _ = lower(parse_text(spec.read_text(encoding="utf-8"), spec.name))
    golden(GOLDEN / f"{spec.stem}.ir.json", system.model_dump_json(indent=2) + "\n")


@by_name
def test_fmt(spec: Path, golden) -> None:
    source = spec.read_text(encoding="utf-8")
    formatted = format_spec(parse_text(source, spec.name))
    golden(GOLDEN / f"{spec.stem}.fmt.nmas", formatted)
    assert formatted == source, f"{spec.name} is not in canonical form: run `neuromas fmt --write {spec}`"


@by_name
def test_plan_text(spec: Path, golden) -> None:
    golden(GOLDEN / f"{spec.stem}.plan.txt", summarize(neuromas.compile(spec)))


@by_name
def test_plan_json(spec: Path, golden) -> None:
    golden(GOLDEN / f"{spec.stem}.plan.json", neuromas.compile(spec).to_pretty_json())


@by_name
def test_dot(spec: Path, golden) -> None:
    golden(GOLDEN / f"{spec.stem}.dot", dot.to_dot(neuromas.compile(spec)))


def test_dot_gives_each_call_its_own_colour() -> None:
    plan = neuromas.compile(ROOT / "specs" / "wide.nmas")  # 3 calls: 1 node, 15 nodes, 1 node
    graph = dot.to_dot(plan)
    colours = [re.search(rf'"{re.escape(call.nodes[0])}" \[label=.*?fillcolor="([^"]+)"', graph, re.S)[1] for call in plan.calls]
    assert len(set(colours)) == len(plan.calls) == 3


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
@by_name
def test_svg_names_every_node(spec: Path) -> None:
    plan = neuromas.compile(spec)
    svg = dot.render(plan, "svg").decode()
    titles = set(re.findall(r"<title>([^<]*)</title>", svg))
    assert {node.id for node in plan.nodes} <= titles
    assert {f"input/{name}" for name in plan.inputs} <= titles


@by_name
def test_compiling_twice_gives_the_same_bytes(spec: Path) -> None:
    first, second = neuromas.compile(spec), neuromas.compile(spec)
    assert first.to_json() == second.to_json()
    assert first.content_hash == second.content_hash
    assert Plan.from_json(first.to_json()) == first


def test_plan_bytes_do_not_depend_on_the_hash_seed() -> None:
    """Set and dict orders vary with PYTHONHASHSEED between processes: plans must not."""
    script = "import sys, neuromas; print(*(neuromas.compile(p).content_hash for p in sys.argv[1:]))"
    expected = " ".join(neuromas.compile(spec).content_hash for spec in SPECS)
    for seed in ("1", "2"):
        result = subprocess.run([sys.executable, "-c", script, *map(str, SPECS)], capture_output=True, text=True,
                                env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        assert result.stdout.split() == expected.split()
