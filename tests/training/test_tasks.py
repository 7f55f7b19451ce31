"""Task loading (jsonl, reasoning_gym), resumable example order, task options."""

from __future__ import annotations

import json

import pytest

from neuromas.diagnostics import UserError
from neuromas.runtime.tasks.registry import TaskOptions, load_task, parse_task_options


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_jsonl_task_maps_the_question_field_to_the_plans_input(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": f"question {i}", "a": i} for i in range(5)])
    task = load_task(f"jsonl:{path}", TaskOptions(("problem",), question_field="q", answer_field="a"))
    assert len(task) == 5 and task.scorer is None
    example = task.examples[3]
    assert example.inputs == {"problem": "question 3"}
    assert example.answer == "3"  # numbers become text
    assert example.record == {"q": "question 3", "a": 3}


def test_jsonl_task_with_several_inputs_reads_each_by_name(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "context": "c", "answer": "x"}])
    task = load_task(f"jsonl:{path}", TaskOptions(("question", "context")))
    assert task.examples[0].inputs == {"question": "q", "context": "c"}


def test_jsonl_errors_name_the_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}, {"question": "q2"}])
    with pytest.raises(UserError, match=r"d.jsonl:2: no answer field 'answer'"):
        load_task(f"jsonl:{path}", TaskOptions(("question",)))
    with pytest.raises(UserError, match="cannot read"):
        load_task(f"jsonl:{tmp_path / 'missing.jsonl'}", TaskOptions(("question",)))


def test_positions_give_a_seeded_shuffle_per_pass_and_resume_anywhere(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": str(i), "answer": str(i)} for i in range(6)])
    options = TaskOptions(("question",), seed=3)
    task = load_task(f"jsonl:{path}", options)
    first_pass = [e.answer for e in task.batch(0, 6)]
    second_pass = [e.answer for e in task.batch(6, 6)]
    assert sorted(first_pass) == sorted(second_pass) == [str(i) for i in range(6)]
    assert first_pass != second_pass  # each pass reshuffles (seeded)
    again = load_task(f"jsonl:{path}", options)  # a resumed run starts reading at position 4
    assert [e.answer for e in again.batch(4, 4)] == (first_pass + second_pass)[4:8]
    other_seed = load_task(f"jsonl:{path}", TaskOptions(("question",), seed=4))
    assert [e.answer for e in other_seed.batch(0, 6)] != first_pass


def test_reasoning_gym_task_uses_its_own_scorer():
    pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed (pip install reasoning-gym)")
    options = TaskOptions(("question",), seed=1, options={"min_terms": 2, "max_terms": 2, "max_digits": 1})
    task = load_task("reasoning_gym:basic_arithmetic", options)
    example = task.at(0)
    assert set(example.inputs) == {"question"} and example.inputs["question"].startswith("Calculate")
    assert task.scorer is not None
    assert task.scorer(example.answer, example) == 1.0
    assert task.scorer("not a number", example) == 0.0
    assert load_task("reasoning_gym:basic_arithmetic", options).at(0) == example  # seeded


def test_task_reference_errors():
    with pytest.raises(UserError, match="KIND:ARGUMENT"):
        load_task("data.txt", TaskOptions(("question",)))  # a .jsonl path alone is a jsonl task
    with pytest.raises(UserError, match="did you mean 'jsonl'"):
        load_task("jsonlines:x", TaskOptions(("question",)))
    pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed (pip install reasoning-gym)")
    with pytest.raises(UserError, match="reasoning_gym:no_such_generator .*refused it"):
        load_task("reasoning_gym:no_such_generator", TaskOptions(("question",)))
    with pytest.raises(UserError, match="one question"):
        load_task("reasoning_gym:basic_arithmetic", TaskOptions(("question", "context")))


def test_parse_task_options():
    assert parse_task_options(["max_digits=1", "name=abc", "ratio=0.5", "flags=[1,2]", "on=true"]) == {
        "max_digits": 1, "name": "abc", "ratio": 0.5, "flags": [1, 2], "on": True,
    }
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_task_options(["oops"])
