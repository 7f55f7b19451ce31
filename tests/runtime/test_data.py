"""JSONL input files: records by the plan's input names, errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuromas.diagnostics import UserError
from neuromas.runtime.tasks.data import read_records


def write(tmp_path, text: str):
    path = tmp_path / "data.jsonl"
    path.write_text(text, encoding="utf-8")
    return path


def test_records_keep_inputs_fields_and_line_numbers(tmp_path):
    path = write(tmp_path, '{"question": "2+3?", "answer": "5"}\n\n{"prompt": "Capital of France?", "id": 7}\n{"input": 12}\n')
    records = read_records(path, ("question",))
    assert [r.line for r in records] == [1, 3, 4]
    assert [r.inputs for r in records] == [{"question": "2+3?"}, {"question": "Capital of France?"}, {"question": "12"}]
    assert records[0].fields == {"question": "2+3?", "answer": "5"}


def test_several_inputs_need_their_own_names(tmp_path):
    path = write(tmp_path, '{"question": "q", "context": "c"}\n{"question": "q"}\n')
    with pytest.raises(UserError, match=r"data.jsonl:2: no field 'context' \(fields: question\)"):
        read_records(path, ("question", "context"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"question": "ok"}\n\n{"question": "unterminated}\n', r"data.jsonl:3: not valid JSON: .*column"),
        ('["question"]\n', r"data.jsonl:1: expected a JSON object like \{\"question\": \"...\"\}, got list"),
        ('{"text": "q"}\n', r"data.jsonl:1: no field 'question' or 'prompt' or 'input' \(fields: text\)"),
        ('{"question": {"nested": 1}}\n', r"data.jsonl:1: field 'question' must be text, got dict"),
        ("\n  \n", r"has no records"),
    ],
)
def test_bad_lines_are_reported_with_their_line_number(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        read_records(write(tmp_path, text), ("question",))


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match=r"cannot read data file '.*missing.jsonl': No such file"):
        read_records(tmp_path / "missing.jsonl", ("question",))
    with pytest.raises(UserError, match=r"cannot read data file"):
        read_records(tmp_path, ("question",))  # a folder
    (tmp_path / "latin1.jsonl").write_bytes(b'{"question": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"cannot read data file .*utf-8"):
        read_records(tmp_path / "latin1.jsonl", ("question",))


def test_a_last_line_cut_off_says_the_file_looks_truncated(tmp_path):
    path = write(tmp_path, '{"question": "2+3?"}\n{"question": "4+4?"}\n{"question": "9+')
    with pytest.raises(UserError) as caught:
        read_records(path, ("question",))
    assert str(caught.value) == (
        f"{path}:3: the last line is not valid JSON and has no newline at its end: the file looks truncated "
        f"(cut off while it was written or copied)\n  fix: write or copy '{path}' again, or delete its last line"
    )
    # a complete last line without its newline is fine, and so are Windows line ends
    assert len(read_records(write(tmp_path, '{"question": "a"}\r\n{"question": "b"}'), ("question",))) == 2


def test_a_bad_line_in_the_middle_names_its_line(tmp_path):
    path = write(tmp_path, '{"question": "a"}\n{"question": "b",\n{"question": "c"}\n')
    with pytest.raises(UserError) as caught:
        read_records(path, ("question",))
    assert str(caught.value).startswith(f"{path}:2: not valid JSON: ")
    assert "fix: make every line one JSON object, like {\"question\": \"...\"}" in str(caught.value)


def test_line_numbers_count_newlines_only(tmp_path):
    """JSON text may hold U+2028 (written by json.dumps(ensure_ascii=False)): it is not a line end."""
    path = write(tmp_path, '{"question": "one\u2028two"}\n{"answer": 1}\n')
    with pytest.raises(UserError, match=r"data.jsonl:2: no field 'question'"):
        read_records(path, ("question",))
    assert read_records(write(tmp_path, '{"question": "one\u2028two"}\n'), ("question",))[0].inputs == {
        "question": "one\u2028two"
    }


def test_rollout_reports_a_truncated_data_file_before_loading_the_model(tmp_path, capsys):
    from neuromas.cli import main

    spec = Path(__file__).resolve().parents[2] / "specs" / "single_agent.nmas"
    path = write(tmp_path, '{"question": "2+3?"}\n{"quest')
    assert main(["rollout", str(spec), "--data", str(path), "-o", str(tmp_path / "traces.jsonl")]) == 1
    assert f"error: {path}:2: the last line is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "traces.jsonl").exists()
