"""`--task hf:...`: local data files and folders through datasets.load_dataset / load_from_disk, and its errors."""

from __future__ import annotations

import json

import pytest

datasets = pytest.importorskip("datasets", reason="the datasets package is not installed (pip install 'neuromas[tasks]')")

from neuromas.diagnostics import UserError  # noqa: E402
from neuromas.runtime.tasks.hf_data import parse_source  # noqa: E402
from neuromas.runtime.tasks.registry import TaskOptions, load_task  # noqa: E402

ROWS = [{"problem": f"What is {i} + 1?", "solution": i + 1, "source": "made"} for i in range(4)]


@pytest.fixture(autouse=True)
def no_progress_bars():
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def options(**changes) -> TaskOptions:
    return TaskOptions(("question",), **{"question_field": "problem", "answer_field": "solution", **changes})


def test_a_json_file_through_load_dataset(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    task = load_task(f"hf:json:{path}", options())
    assert task.name == f"hf:json:{path}" and len(task) == 4 and task.scorer is None
    assert task.examples[2].inputs == {"question": "What is 2 + 1?"}
    assert task.examples[2].answer == "3" and task.examples[2].record == ROWS[2]


def test_csv_and_parquet_files_and_a_split(tmp_path):
    csv = tmp_path / "data.csv"
    csv.write_text("problem,solution\nWhat is 1 + 1?,2\nWhat is 2 + 2?,4\n")
    assert [e.answer for e in load_task(f"hf:csv:{csv}", options()).examples] == ["2", "4"]
    parquet = tmp_path / "data.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(parquet))
    assert len(load_task(f"hf:parquet:{parquet}", options())) == 4
    with pytest.raises(UserError, match=r"split 'test'.*Unknown split"):
        load_task(f"hf:parquet:{parquet}", options(options={"split": "test"}))


def test_a_folder_of_data_files_and_save_to_disk_folders(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS[:3])
    write_jsonl(folder / "test.jsonl", ROWS[3:])
    assert len(load_task(f"hf:{folder}", options())) == 3
    assert load_task(f"hf:{folder}", options(options={"split": "test"})).examples[0].answer == "4"

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    assert len(load_task(f"hf:{tmp_path / 'one'}", options())) == 4
    splits = datasets.DatasetDict({"validation": datasets.Dataset.from_list(ROWS[:2])})
    splits.save_to_disk(str(tmp_path / "dict"))
    assert len(load_task(f"hf:{tmp_path / 'dict'}", options(options={"split": "validation"}))) == 2
    with pytest.raises(UserError, match=r"no split 'train' \(splits: validation\); choose one with --task-option"):
        load_task(f"hf:{tmp_path / 'dict'}", options())


def test_sources_are_told_apart(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert parse_source(f"json:{path}") == ("file", str(path), "json")
    assert parse_source(str(tmp_path)) == ("folder", str(tmp_path), None)
    assert parse_source("openai/gsm8k") == ("hub", "openai/gsm8k", None)
    with pytest.raises(UserError, match=rf"is a file: name its format, e.g. hf:json:{path}"):
        parse_source(str(path))
    with pytest.raises(UserError, match="no folder './missing'"):
        parse_source("./missing")
    with pytest.raises(UserError, match="no file"):
        parse_source(f"csv:{tmp_path / 'missing.csv'}")


def test_missing_fields_list_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    columns = r"\(columns: problem, solution, source\)"
    with pytest.raises(UserError, match=rf"no question column 'text' {columns}; choose one with --question-field"):
        load_task(f"hf:json:{path}", options(question_field="text"))
    with pytest.raises(UserError, match=rf"no answer column 'answer' {columns}; choose one with --answer-field"):
        load_task(f"hf:json:{path}", options(answer_field="answer"))
    with pytest.raises(UserError, match=rf"no choices column 'options' {columns}"):
        load_task(f"hf:json:{path}", options(choices_field="options"))
    with pytest.raises(UserError, match="no column 'context' for the input of that name"):
        load_task(f"hf:json:{path}", TaskOptions(("problem", "context"), answer_field="solution"))


def test_unknown_settings_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(UserError, match="unknown: splt; did you mean 'split'"):
        load_task(f"hf:json:{path}", options(options={"splt": "test"}))


def test_an_unreachable_hub_says_so_and_suggests_a_local_copy(monkeypatch):
    """Offline mode is how the hub is unreachable here: load_dataset fails the same way
    (ConnectionError) as without a network, but at once instead of after its retries."""
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError) as raised:
        load_task("hf:neuromas-test/no-such-dataset", options(options={"config": "main", "split": "test"}))
    message = str(raised.value)
    assert "cannot reach the Hugging Face Hub to load 'neuromas-test/no-such-dataset'" in message
    assert "no network access" in message and "hf:json:FILE.jsonl" in message and "jsonl:FILE" in message
