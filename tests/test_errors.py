"""The error corpus: each tests/errors/NAME.nmas against the exact message `neuromas check`
prints for it (tests/errors/NAME.txt), with exit code 2 and never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuromas.cli import main
from neuromas.diagnostics import CompileError

ERRORS = Path(__file__).resolve().parent / "errors"
CASES = sorted(ERRORS.glob("*.nmas"))


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("spec", CASES, ids=[path.stem for path in CASES])
def test_message(spec: Path, golden, capsys, monkeypatch) -> None:
    monkeypatch.chdir(ERRORS)  # messages name the spec as given: NAME.nmas
    assert main(["check", spec.name]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    golden(spec.with_suffix(".txt"), err)


def test_every_message_has_its_spec() -> None:  # after test_message, which writes them under --update-golden
    assert {path.stem for path in ERRORS.glob("*.txt")} == {path.stem for path in CASES}


def test_empty_blocks_are_allowed(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "blocks.nmas"
    spec.write_text("system s {\n    input q\n    layer a width 1 {}\n    a <- q\n    output a\n    growth {}\n}\n", encoding="utf-8")
    assert main(["check", str(spec)]) == 0
    assert capsys.readouterr().out == f"ok {spec}: 1 node, 1 level, 1 call per rollout\n"


def test_debug_lets_the_error_through(tmp_path: Path) -> None:
    spec = tmp_path / "bad.nmas"
    spec.write_text("system s {\n    layr a width 1\n}\n", encoding="utf-8")
    with pytest.raises(CompileError, match="unknown statement 'layr'"):
        main(["--debug", "compile", str(spec)])


def test_check_refuses_what_is_not_a_regular_file_and_goes_on(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "ok.nmas"
    spec.write_text("system s {\n    input q\n    layer a width 1\n    a <- q\n    output a\n}\n", encoding="utf-8")
    assert main(["check", "/dev/zero", str(tmp_path), str(spec)]) == 2
    out, err = capsys.readouterr()
    assert err == (f"error: cannot read spec '/dev/zero': not a regular file (a character device)\n"
                   f"error: cannot read spec '{tmp_path}': not a regular file (a folder)\n")
    assert out == f"ok {spec}: 1 node, 1 level, 1 call per rollout\n"
