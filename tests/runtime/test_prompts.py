"""Prompt rendering: the role-free built-in template, Jinja templates, and the truncation policy."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import msgspec
import pytest

from neuromas.diagnostics import UserError
from neuromas.runtime.generation.prompts import TRUNCATION_MARK, PromptRenderer, water_level

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runtime_helpers.py (pytest runs in importlib mode)
from runtime_helpers import compile_small  # noqa: E402

ROLE_WORDS = re.compile(r"\b(critic|planner|solver|verifier|judge|reviewer|expert|manager|debater)\b", re.I)
NUMBER_SPEC = """
system numbered {
    model "smollm2-135m-instruct"
    input question
    layer hidden width 2 { max_tokens 8 }
    layer answer width 1 { max_tokens 8 }
    hidden <- question
    answer <- hidden dense, question
    output answer format "number"
}
"""


def words(count: int, start: int = 0) -> str:
    return " ".join(f"w{n}" for n in range(start, start + count))


@pytest.fixture
def tokenizer(loaded):
    return loaded.tokenizer


def test_builtin_prompt_is_structural_role_free_and_in_reads_order(tokenizer):
    plan = compile_small(NUMBER_SPEC)
    renderer = PromptRenderer(plan, tokenizer)
    nodes = plan.node_map()
    answer = nodes["answer[0]"]
    messages = {"hidden[0]": "first message", "hidden[1]": "second message"}
    prompt = renderer.render(answer, {"question": "What is 6 * 7?"}, messages)
    text = prompt.text
    expected_order = [f"{source.name}" for source in answer.reads]
    positions = [text.index("question:\nWhat is 6 * 7?") if name == "question" else text.index(f"From {name} (layer 1):")
                 for name in expected_order]
    assert positions == sorted(positions)
    assert "From hidden[1] (layer 1):\nsecond message" in text
    assert "You are node answer[0]: node 1 of 1 in layer 2 of 2." in text
    assert "Answer: <number>" in text  # the output's format
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert prompt.ids == tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) and prompt.truncated == ()

    hidden = renderer.render(nodes["hidden[1]"], {"question": "What is 6 * 7?"}, {})
    assert "node 2 of 2 in layer 1 of 2. Write your message for layer 2." in hidden.text
    assert "Answer:" not in hidden.text
    for rendered in (text, hidden.text):
        assert not ROLE_WORDS.search(rendered)
        assert "SmolLM" not in rendered  # our system turn replaces the model's default one
    # Nodes of one call share everything up to their own position line.
    other = renderer.render(nodes["hidden[0]"], {"question": "What is 6 * 7?"}, {})
    before_position = hidden.text.split("You are node")[0]
    assert other.text.split("You are node")[0] == before_position
    shared = len(_common_prefix(other.ids, hidden.ids))
    assert shared >= len(tokenizer(before_position, add_special_tokens=False)["input_ids"]) - 1


def _common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def test_jinja_template_gets_the_documented_variables(tokenizer, tmp_path):
    (tmp_path / "node.jinja").write_text(
        "{{ system.name }} depth={{ system.depth }} {{ node.id }} {{ node.layer }} {{ node.position }}/{{ node.width }}"
        " layer {{ node.layer_number }}{% for s in sources %} | {{ s.label }}={{ s.text }}{% endfor %}"
        " | q={{ inputs.question }} | n={{ messages | length }} | fmt={{ answer_format }}"
    )
    spec = tmp_path / "t.nmas"
    spec.write_text(NUMBER_SPEC.replace('model "smollm2-135m-instruct"', 'model "smollm2-135m-instruct"\n    template "node.jinja"'))
    plan = compile_small(str(spec))
    answer = plan.node_map()["answer[0]"]
    assert answer.template.kind == "jinja"
    prompt = PromptRenderer(plan, tokenizer).render(answer, {"question": "Q?"}, {"hidden[0]": "a", "hidden[1]": "b"})
    assert (
        "numbered depth=2 answer[0] answer 1/1 layer 2 | question=Q? | From hidden[0] (layer 1)=a"
        " | From hidden[1] (layer 1)=b | q=Q? | n=2 | fmt=number"
    ) in prompt.text


def test_jinja_templates_run_in_a_sandbox(tokenizer):
    plan = compile_small("neuromas3.nmas")
    node = plan.node_map()["hidden[0]"]
    for source, message in (("{{ ''.__class__.__mro__ }}", "unsafe"), ("{{ nothing_here }}", "undefined")):
        jinja_node = msgspec.structs.replace(node, template=msgspec.structs.replace(node.template, kind="jinja", source=source))
        with pytest.raises(UserError, match=message):
            PromptRenderer(plan, tokenizer).render(jinja_node, {"question": "q"}, {})


def test_the_template_variables_are_the_documented_ones():
    from neuromas.jinja_sandbox import VARIABLES  # what `neuromas check` lets a template use

    plan = compile_small("neuromas3.nmas")
    node = plan.node_map()["answer[0]"]
    assert tuple(PromptRenderer(plan, tokenizer=None).variables(node, [])) == VARIABLES


def test_jinja_templates_render_under_time_and_size_limits(tokenizer):
    plan = compile_small("neuromas3.nmas")
    node = plan.node_map()["hidden[0]"]
    for source, message in (
        ("{{ node.id }}\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", r"line 2 .*ran longer than 2 s"),
        ("{{ ((10**1000)**1000)**1000 }}", r"line 1 .*bits; the limit is 100,000"),
        ("{{ 'x'*10**10 }}", r"line 1 .*10,000,000,000 characters or items; the limit is 1,000,000"),
    ):
        jinja_node = msgspec.structs.replace(node, template=msgspec.structs.replace(node.template, kind="jinja", path="node.jinja", source=source))
        started = time.monotonic()
        with pytest.raises(UserError, match=rf"template 'node.jinja', {message}"):
            PromptRenderer(plan, tokenizer).render(jinja_node, {"question": "q"}, {})
        assert time.monotonic() - started < 10


def test_truncation_cuts_the_longest_upstream_message_first(tokenizer):
    plan = compile_small("neuromas3.nmas")
    answer = plan.node_map()["answer[0]"]
    messages = {"hidden[0]": words(300), "hidden[1]": words(30, start=1000)}
    full = PromptRenderer(plan, tokenizer).render(answer, {"question": "Q?"}, messages)
    assert full.truncated == ()

    limit = len(full.ids) - 150
    short = PromptRenderer(msgspec.structs.replace(plan, max_prompt_tokens=limit), tokenizer)
    prompt = short.render(answer, {"question": "Q?"}, messages)
    assert len(prompt.ids) <= limit and len(prompt.ids) >= limit - 10  # cut no more than needed
    assert prompt.truncated == ("hidden[0]",)
    assert messages["hidden[1]"] in prompt.text  # the short message is untouched
    assert "w0 w1" in prompt.text and "w299" in prompt.text and TRUNCATION_MARK in prompt.text  # both ends kept


def test_truncation_levels_long_messages_then_cuts_inputs(tokenizer):
    plan = compile_small("neuromas3.nmas")
    answer = plan.node_map()["answer[0]"]
    messages = {"hidden[0]": words(300), "hidden[1]": words(200, start=1000)}
    full = PromptRenderer(plan, tokenizer).render(answer, {"question": "Q?"}, messages)
    renderer = PromptRenderer(msgspec.structs.replace(plan, max_prompt_tokens=len(full.ids) - 500), tokenizer)
    prompt = renderer.render(answer, {"question": "Q?"}, messages)
    assert set(prompt.truncated) == {"hidden[0]", "hidden[1]"}
    cut = [text for text in re.findall(r"\(layer 1\):\n(.*?)\n\n", prompt.text, re.S)]
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in cut]
    assert abs(lengths[0] - lengths[1]) <= 3  # both cut down to one common length

    question = words(400, start=5000)
    empty = PromptRenderer(plan, tokenizer).render(answer, {"question": question}, messages)
    template_only = PromptRenderer(plan, tokenizer).render(answer, {"question": ""}, {"hidden[0]": "", "hidden[1]": ""})
    limit = len(template_only.ids) + 100
    tight = PromptRenderer(msgspec.structs.replace(plan, max_prompt_tokens=limit), tokenizer)
    prompt = tight.render(answer, {"question": question}, messages)
    assert len(prompt.ids) <= limit < len(empty.ids)
    assert set(prompt.truncated) == {"question", "hidden[0]", "hidden[1]"}

    with pytest.raises(UserError, match="template alone needs"):
        PromptRenderer(msgspec.structs.replace(plan, max_prompt_tokens=20), tokenizer).render(
            answer, {"question": "Q?"}, messages
        )


def test_water_level():
    assert water_level([300, 30], 100) == 200
    assert water_level([300, 200], 300) == 100
    assert water_level([10, 10], 50) == 0
    assert water_level([5], 0) == 5
