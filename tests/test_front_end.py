"""The compiler's front door: which files it reads, how it reads numbers and text, and
the public `neuromas.compile` (stage selection, pictures of large plans)."""

from __future__ import annotations

import os
import shutil
import struct
import time
from pathlib import Path

import pytest

import neuromas
from neuromas.diagnostics import CompileError, UserError
from neuromas.render import dot

ROOT = Path(__file__).resolve().parent.parent
SPEC = "system s {\n    input q\n    layer a width 1%s\n    a <- q\n    output a\n}\n"


def test_a_byte_order_mark_at_the_start_is_accepted(tmp_path: Path) -> None:
    spec = tmp_path / "bom.nmas"
    spec.write_bytes(b"\xef\xbb\xbf" + (SPEC % "").encode())
    assert len(neuromas.compile(spec).nodes) == 1
    assert len(neuromas.compile("\ufeff" + SPEC % "").nodes) == 1


def test_an_invisible_character_elsewhere_gets_a_hint(tmp_path: Path) -> None:
    spec = tmp_path / "zwsp.nmas"
    spec.write_text((SPEC % "").replace("input q", "input q\u200b"), encoding="utf-8")
    with pytest.raises(CompileError) as raised:
        neuromas.compile(spec)
    assert "U+200B (ZERO WIDTH SPACE): delete it" in raised.value.render()


def test_whole_numbers_may_use_an_exponent() -> None:
    plan = neuromas.compile(SPEC % " { max_tokens 1e3 }" + "")
    assert plan.nodes[0].generation.max_tokens == 1000
    trained = neuromas.compile((SPEC % "").replace("output a\n", "output a\n    train { steps 2.5e3  lr 1e-4 }\n"))
    assert (trained.train.steps, trained.train.lr) == (2500, 1e-4)


@pytest.mark.parametrize("kind", ["character device", "named pipe", "folder"])
def test_only_regular_files_are_read(kind: str, tmp_path: Path) -> None:
    path = {"character device": Path("/dev/zero"), "named pipe": tmp_path / "pipe.nmas", "folder": tmp_path}[kind]
    if kind == "named pipe":
        os.mkfifo(path)
    started = time.monotonic()
    with pytest.raises(UserError, match=rf"cannot read spec '{path}': not a regular file \(a {kind}\)") as raised:
        neuromas.compile(path)
    assert raised.value.exit_code == 2
    assert time.monotonic() - started < 5


def test_a_template_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "node.jinja")
    spec = tmp_path / "s.nmas"
    spec.write_text((SPEC % "").replace("input q", 'template "node.jinja"\n    input q'), encoding="utf-8")
    with pytest.raises(CompileError, match=r"cannot read template 'node.jinja': not a regular file \(a named pipe\)"):
        neuromas.compile(spec)


def test_compile_selects_a_growth_stage() -> None:
    spec = ROOT / "specs" / "growth.nmas"
    whole = neuromas.compile(spec)
    first = whole.growth[0]
    assert neuromas.compile(spec, stage=first.name) == first.plan
    with pytest.raises(UserError, match=r"no growth stage 'nope' \(stages: ") as raised:
        neuromas.compile(spec, stage="nope")
    assert raised.value.exit_code == 2


def _chain(layers: int) -> str:
    names = [f"l{i}" for i in range(layers)]
    body = [f"    layer {name} width 1" for name in names] + ["    l0 <- q"]
    body += [f"    {b} <- {a}" for a, b in zip(names, names[1:])]
    return "system s {\n    input q\n" + "\n".join(body) + f"\n    output {names[-1]}\n}}\n"


def test_a_plan_too_large_to_draw_is_refused_at_once() -> None:
    plan = neuromas.compile(_chain(dot.MAX_PICTURE_NODES + 1))
    started = time.monotonic()
    with pytest.raises(UserError, match=r"1,001 nodes and 1,001 edges, too many to draw") as raised:
        dot.render(plan, "png")
    assert raised.value.exit_code == 2
    assert time.monotonic() - started < 1
    assert dot.to_dot(plan).count("->") == 1002  # the graph as text is still written


def test_compile_to_a_picture_refuses_a_large_plan(tmp_path: Path, capsys) -> None:
    from neuromas.cli import main

    spec = tmp_path / "long.nmas"
    spec.write_text(_chain(3_000), encoding="utf-8")  # as a PNG this took 52 s, 10,000 layers over 150 s
    started = time.monotonic()
    assert main(["compile", str(spec), "-o", str(tmp_path / "x.png")]) == 2
    assert "3,000 nodes and 3,000 edges, too many to draw" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    assert time.monotonic() - started < 30


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_a_png_of_a_long_plan_is_drawn_scaled_down_in_seconds() -> None:
    plan = neuromas.compile(_chain(100))  # a full-size PNG of this took 36 s
    started = time.monotonic()
    data = dot.render(plan, "png")
    assert time.monotonic() - started < 20
    width, height = struct.unpack(">II", data[16:24])  # the PNG header's IHDR chunk
    assert max(width, height) <= dot.MAX_PNG_INCHES * 96


def test_no_compiler_module_is_over_400_lines() -> None:
    modules = [*(ROOT / "neuromas").glob("*.py"), *(ROOT / "neuromas" / "passes").glob("*.py"), *(ROOT / "neuromas" / "render").glob("*.py")]
    long = {path.name: n for path in modules if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400}
    assert len(modules) > 20 and long == {}
