"""`neuromas check`, `fmt` and `compile` through `neuromas.cli.main`, and the installed command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from neuromas.cli import main
from neuromas.plan import Plan

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
NEUROMAS3 = str(SPECS / "neuromas3.nmas")
GROWTH = str(SPECS / "growth.nmas")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")

UNFORMATTED = "system s {\n  input q   # the question\n\n\n  layer a width 1 {max_tokens 8}\n  a<-q\n  output a\n}"
FORMATTED = "system s {\n    input q  # the question\n\n    layer a width 1 { max_tokens 8 }\n    a <- q\n    output a\n}\n"
BROKEN = "system s {\n    input q\n    layer a width 0\n    a <- q\n    output a\n}\n"


@pytest.fixture
def spec(tmp_path: Path):
    def write(text: str, name: str = "spec.nmas") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# check ---------------------------------------------------------------------------------------


def test_check_ok(capsys) -> None:
    assert run(capsys, "check", NEUROMAS3) == (0, f"ok {NEUROMAS3}: 3 nodes, 2 levels, 2 calls per rollout\n", "")


def test_check_reports_every_spec_and_fails_if_one_is_bad(capsys, spec) -> None:
    bad = spec(BROKEN)
    code, out, err = run(capsys, "check", str(bad), NEUROMAS3)
    assert code == 2
    assert out == f"ok {NEUROMAS3}: 3 nodes, 2 levels, 2 calls per rollout\n"
    assert err.startswith(f"{bad}:3:19: error: width must be at least 1, found 0\n")


def test_check_prints_warnings(capsys, spec) -> None:
    pruned = spec("system s {\n    input q\n    layer a width 2\n    layer b width 1\n    a <- q\n    b <- a[0]\n    output b\n}\n")
    code, _, err = run(capsys, "check", str(pruned))
    assert code == 0
    assert err == f"{pruned}: warning: removed 1 node(s) whose text reaches no output: a[1]\n"


def test_check_a_missing_file(capsys, tmp_path: Path) -> None:
    missing = tmp_path / "missing.nmas"
    assert run(capsys, "check", str(missing)) == (2, "", f"error: cannot read spec '{missing}': No such file or directory\n")


def test_usage_errors_exit_2(capsys) -> None:
    for argv in ([], ["check"], ["frobnicate"], ["compile", NEUROMAS3, "--format", "pdf"], ["fmt", "--write", "--check", NEUROMAS3]):
        assert main(argv) == 2, argv
    assert "usage: neuromas" in capsys.readouterr().err


# fmt -----------------------------------------------------------------------------------------------


def test_fmt_prints_the_canonical_form(capsys, spec) -> None:
    path = spec(UNFORMATTED)
    assert run(capsys, "fmt", str(path)) == (0, FORMATTED, "")
    assert path.read_text() == UNFORMATTED


def test_fmt_check(capsys, spec) -> None:
    messy, tidy = spec(UNFORMATTED, "messy.nmas"), spec(FORMATTED, "tidy.nmas")
    assert run(capsys, "fmt", "--check", str(tidy)) == (0, "", "")
    assert run(capsys, "fmt", "--check", str(messy), str(tidy)) == (1, "", f"not formatted: {messy}\n")


def test_fmt_write_replaces_the_file_keeping_its_mode(capsys, spec) -> None:
    path = spec(UNFORMATTED)
    path.chmod(0o640)
    inode = path.stat().st_ino
    assert run(capsys, "fmt", "--write", str(path)) == (0, "", "")
    assert path.read_text() == FORMATTED
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["spec.nmas"]


def test_fmt_write_leaves_a_formatted_file_untouched(capsys, spec) -> None:
    path = spec(FORMATTED)
    inode = path.stat().st_ino
    assert run(capsys, "fmt", "--write", str(path)) == (0, "", "")
    assert path.stat().st_ino == inode


def test_fmt_write_that_fails_keeps_the_spec_and_cleans_up(capsys, spec, monkeypatch) -> None:
    path = spec(UNFORMATTED)

    def refuse(source, target):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    assert run(capsys, "fmt", "--write", str(path)) == (1, "", f"error: cannot write '{path}': Permission denied\n")
    assert path.read_text() == UNFORMATTED
    assert sorted(p.name for p in path.parent.iterdir()) == ["spec.nmas"]


def test_fmt_a_spec_with_a_syntax_error(capsys, spec) -> None:
    path = spec("system s {\n    layer a 1\n}\n")
    code, out, err = run(capsys, "fmt", str(path))
    assert (code, out) == (2, "")
    assert err.startswith(f"{path}:2:13: error: expected 'width', found the number 1\n")


# compile ------------------------------------------------------------------------------------------------


def test_compile_prints_the_plan_summary(capsys) -> None:
    code, out, err = run(capsys, "compile", NEUROMAS3)
    assert (code, err) == (0, "")
    assert out.startswith("system neuromas3: 3 nodes, 2 levels, 5 edges, 3 trainable adapters\n")


def test_compile_json_round_trips(capsys) -> None:
    code, out, _ = run(capsys, "compile", NEUROMAS3, "--format", "json")
    assert code == 0
    plan = Plan.from_json(out)
    assert json.loads(out)["system"] == "neuromas3"
    assert [node.id for node in plan.nodes] == ["hidden[0]", "hidden[1]", "answer[0]"]


def test_compile_dot(capsys) -> None:
    code, out, _ = run(capsys, "compile", NEUROMAS3, "--format", "dot")
    assert code == 0
    assert out.startswith("digraph neuromas3 {") and '"hidden[0]" -> "answer[0]"' in out


def test_compile_writes_to_a_file(capsys, tmp_path: Path) -> None:
    target = tmp_path / "plan.json"
    assert run(capsys, "compile", NEUROMAS3, "--format", "json", "-o", str(target)) == (0, "", "")
    assert Plan.from_json(target.read_bytes()).system == "neuromas3"


@needs_dot
def test_compile_images(capsys, tmp_path: Path) -> None:
    svg, png, inferred = tmp_path / "plan.svg", tmp_path / "plan.png", tmp_path / "inferred.svg"
    assert run(capsys, "compile", NEUROMAS3, "--format", "svg", "-o", str(svg)) == (0, "", "")
    assert run(capsys, "compile", NEUROMAS3, "--format", "png", "-o", str(png)) == (0, "", "")
    assert run(capsys, "compile", NEUROMAS3, "-o", str(inferred)) == (0, "", "")  # format from the suffix
    assert b"<svg" in svg.read_bytes() and b"<svg" in inferred.read_bytes()
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_compile_png_needs_an_output_file(capsys) -> None:
    assert run(capsys, "compile", NEUROMAS3, "--format", "png") == (2, "", "error: --format png is binary: give a file with -o\n")


def test_compile_to_an_unwritable_place(capsys, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "plan.txt"
    assert run(capsys, "compile", NEUROMAS3, "-o", str(target)) == (
        2, "", f"error: -o '{target}' is under '{target.parent}', which is a file, not a folder\n")
    made = tmp_path / "new" / "plan.txt"
    assert run(capsys, "compile", NEUROMAS3, "-o", str(made)) == (0, "", "")
    assert made.read_text().startswith("system neuromas3:")


def test_compile_a_stage(capsys) -> None:
    code, out, _ = run(capsys, "compile", GROWTH, "--stage", "neuromas5")
    assert code == 0
    assert out.startswith("system growth, stage neuromas5: 5 nodes, 3 levels,")
    code, out, _ = run(capsys, "compile", GROWTH, "--stage", "neuromas7", "--format", "json")
    assert Plan.from_json(out).stage == "neuromas7"


def test_compile_an_unknown_stage(capsys) -> None:
    assert run(capsys, "compile", GROWTH, "--stage", "neuromas9") == (
        2, "", "error: no growth stage 'neuromas9' (stages: neuromas3, neuromas5, neuromas7)\n",
    )


def test_compile_a_bad_spec(capsys, spec) -> None:
    path = spec(BROKEN)
    code, out, err = run(capsys, "compile", str(path))
    assert (code, out) == (2, "")
    assert err.endswith("1 error found\n") and "Traceback" not in err


# the installed command ------------------------------------------------------------------------------------


def test_the_installed_entry_point(tmp_path: Path) -> None:
    command = shutil.which("neuromas") or pytest.fail("the `neuromas` command is not installed: pip install -e .")
    ok = subprocess.run([command, "check", NEUROMAS3], capture_output=True, text=True)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"ok {NEUROMAS3}: 3 nodes, 2 levels, 2 calls per rollout\n", "")
    bad = tmp_path / "bad.nmas"
    bad.write_text(BROKEN)
    failed = subprocess.run([command, "compile", str(bad)], capture_output=True, text=True)
    assert (failed.returncode, failed.stdout) == (2, "")
    assert failed.stderr.startswith(f"{bad}:3:19: error: width must be at least 1") and "Traceback" not in failed.stderr
