"""Multiple choice: options rendered as lettered lines, answers mapped to letters, scored by the letter in the output."""

from __future__ import annotations

import json

import pytest

from neuromas.diagnostics import UserError
from neuromas.runtime.generation.answers import extract_choice
from neuromas.runtime.tasks.choices import Choices, answer_letter, read_choices, render_question
from neuromas.runtime.tasks.registry import TaskOptions, load_task

CAPITALS = Choices(["Rome", "Paris", "Berlin"], None)


def test_render_question_letters_the_options():
    assert render_question("Capital of France?\n", CAPITALS.options) == "Capital of France?\n\nA. Rome\nB. Paris\nC. Berlin"


@pytest.mark.parametrize(
    ("answer", "choices", "letter"),
    [
        (1, CAPITALS, "B"),  # a 0-based index (MMLU)
        ("c", CAPITALS, "C"),  # a letter
        ("paris.", CAPITALS, "B"),  # an option's text, normalised
        ("3", Choices(["x", "y", "z"], ["1", "2", "3"]), "C"),  # a label (ARC: "1".."4")
        (0, Choices(["x", "y"], ["0", "1"]), "A"),  # a label that is also an index: the label wins
        ("D", Choices(["x", "y", "z", "w"], ["A", "B", "C", "D"]), "D"),
    ],
)
def test_answer_letter(answer, choices, letter):
    assert answer_letter(answer, choices, "here") == letter


def test_answer_letter_errors_show_the_options():
    with pytest.raises(UserError, match=r"here: answer 'Madrid' is not an option.*\(options: A. Rome, B. Paris, C. Berlin\)"):
        answer_letter("Madrid", CAPITALS, "here")
    with pytest.raises(UserError, match="index 3 is out of range for 3 options"):
        answer_letter(3, CAPITALS, "here")


def test_read_choices_accepts_lists_json_text_and_labelled_objects():
    assert read_choices(["a", 2], "here") == Choices(["a", "2"], None)
    assert read_choices('["a", "b"]', "here") == Choices(["a", "b"], None)
    assert read_choices("['a', 'b']", "here") == Choices(["a", "b"], None)  # as pandas writes a list to CSV
    assert read_choices({"text": ["a", "b"], "label": ["A", "B"]}, "here") == Choices(["a", "b"], ["A", "B"])
    for value, message in (
        ("a or b", "the choices field is text"),
        (["only"], "1 options; a multiple-choice question needs 2 to 5"),
        (list("abcdef"), "6 options"),
        ({"label": ["A"]}, "need a 'text' list"),
        ({"text": ["a", "b"], "label": ["A"]}, "one label per option"),
        (3, "must be a list of texts, got int"),
    ):
        with pytest.raises(UserError, match=message):
            read_choices(value, "here")


def test_a_jsonl_multiple_choice_task_renders_maps_and_scores(tmp_path):
    rows = [
        {"question": "Capital of France?", "options": ["Rome", "Paris"], "answer": 1},
        {"question": "Largest planet?", "options": ["Mars", "Jupiter", "Venus"], "answer": "Jupiter"},
    ]
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = load_task(f"jsonl:{path}", TaskOptions(("question",), choices_field="options"))
    first, second = task.examples
    assert first.inputs == {"question": "Capital of France?\n\nA. Rome\nB. Paris"} and first.answer == "B"
    assert second.answer == "B" and "C. Venus" in second.inputs["question"]
    assert task.scorer is not None and task.is_scored_on_text
    assert task.scorer("Paris is the capital.\nThe answer is (B).", first) == 1.0
    assert task.scorer("**B**", first) == 1.0
    assert task.scorer("The answer is A.", first) == 0.0
    assert task.scorer("I am not sure.", first) == 0.0
    assert extract_choice(first.inputs["question"] + "\nAnswer: B") == "B"


def test_a_jsonl_multiple_choice_task_errors_name_the_line(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "A"}) + "\n")
    with pytest.raises(UserError, match=r"mc.jsonl:1: no choices field 'options' \(fields: question, answer\)"):
        load_task(f"jsonl:{path}", TaskOptions(("question",), choices_field="options"))
    path.write_text(json.dumps({"question": "q", "options": ["x", "y"], "answer": "z"}) + "\n")
    with pytest.raises(UserError, match="mc.jsonl:1: answer 'z' is not an option"):
        load_task(f"jsonl:{path}", TaskOptions(("question",), choices_field="options"))


def test_an_hf_multiple_choice_task_in_the_arc_layout(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the datasets package is not installed")
    datasets.disable_progress_bars()
    rows = [{"question": "Which is a mammal?", "answerKey": "2",
             "choices": {"text": ["trout", "whale", "shark"], "label": ["1", "2", "3"]}}]
    path = tmp_path / "arc.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    task = load_task(f"hf:json:{path}", TaskOptions(("question",), answer_field="answerKey", choices_field="choices"))
    datasets.enable_progress_bars()
    example = task.examples[0]
    assert example.inputs["question"] == "Which is a mammal?\n\nA. trout\nB. whale\nC. shark" and example.answer == "B"
    assert task.scorer("Answer: B", example) == 1.0


def test_jsonl_tasks_refuse_settings(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(UserError, match="jsonl tasks take no --task-option settings \\(got split\\)"):
        load_task(f"jsonl:{path}", TaskOptions(("question",), options={"split": "test"}))
