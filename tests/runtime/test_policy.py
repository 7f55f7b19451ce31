"""What a spec may make NeuroMAS run or read: code rewards only when allowed, Jinja only in
the sandbox, files only from the spec's folder unless allowed."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import msgspec
import pytest

import neuromas
from neuromas.cli import main
from neuromas.diagnostics import CompileError, UserError

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runtime_helpers.py (pytest runs in importlib mode)
from runtime_helpers import compile_small  # noqa: E402

PLUGIN = '''
from pathlib import Path
Path(__file__).with_name("imported.txt").write_text("the module ran")

def first_word(completion, answer):
    return float(completion.split()[:1] == [answer])
'''
SPEC = """system policy {
    input question
    layer answer width 1 { max_tokens 4 }
    answer <- question
    output answer
    train {
        algorithm grpo
        group 2
        reward "%s"
    }
}
"""
TEMPLATE_SPEC = """system templated {
    template "%s"
    input question
    layer answer width 1 { max_tokens 4 }
    answer <- question
    output answer
}
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> tuple[str, Path]:
    """A reward module that leaves a file behind when it is imported."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "policy_reward_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "policy_reward_plugin", raising=False)
    return "policy_reward_plugin:first_word", folder / "imported.txt"


def test_a_code_reward_is_refused_without_allow_code_and_imports_nothing(tmp_path, plugin, capsys):
    name, marker = plugin
    spec = tmp_path / "policy.nmas"
    spec.write_text(SPEC % name)
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"question": "Say 5", "answer": "5"}) + "\n")
    code = main(["train", str(spec), "--task", f"jsonl:{data}", "--steps", "1", "--out", str(tmp_path / "run")])
    assert code == 2  # a usage error
    assert f"reward '{name}' runs code imported from your Python path; pass --allow-code" in capsys.readouterr().err
    assert not marker.exists() and "policy_reward_plugin" not in sys.modules
    assert not (tmp_path / "run").exists()


def test_a_code_reward_runs_with_allow_code(plugin):
    from neuromas.runtime.tasks.rewards import load_reward

    name, marker = plugin
    with pytest.raises(UserError, match="--allow-code"):
        load_reward(name, allow_code=False)
    reward = load_reward(name, allow_code=True)
    assert marker.read_text() == "the module ran"
    assert reward("5 apples", "5") == 1.0 and reward("five", "5") == 0.0


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",  # attribute escapes towards object.__subclasses__()
        "{{ cycler.__init__.__globals__ }}",
        "{{ inputs.question.__class__ }}",
        "{% include '/etc/passwd' %}",  # no file access
        "{% import 'os' as os %}",
        "{{ inputs.clear() }}",  # the values it is given are read-only
        "{{ sources.append(1) }}",
        "{{ range(10 ** 9) | length }}",  # the sandbox caps ranges
    ],
)
def test_jinja_templates_cannot_leave_the_sandbox(loaded, source):
    from neuromas.runtime.generation.prompts import PromptRenderer

    plan = compile_small("single_agent.nmas")
    node = plan.node_map()["answer[0]"]
    jinja_node = msgspec.structs.replace(node, template=msgspec.structs.replace(
        node.template, kind="jinja", source=source, path="escape.jinja"))
    with pytest.raises(UserError, match=r"template 'escape.jinja'.* \(node answer\[0\]\): \w+(Error|NotFound): "):
        PromptRenderer(plan, loaded.tokenizer).render(jinja_node, {"question": "q"}, {})


def test_a_template_file_next_to_the_spec_needs_no_permission(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "answer.jinja").write_text("Q: {{ inputs.question }}")
    spec = tmp_path / "t.nmas"
    spec.write_text(TEMPLATE_SPEC % "prompts/answer.jinja")
    assert neuromas.compile(spec).nodes[0].template.source == "Q: {{ inputs.question }}"


def outside_paths(tmp_path: Path) -> dict[str, str]:
    """Template paths written in a spec in `tmp_path/spec/` that lead out of that folder."""
    outside = tmp_path / "outside.jinja"
    outside.write_text("outside {{ inputs.question }}")
    folder = tmp_path / "spec"
    folder.mkdir()
    (folder / "link.jinja").symlink_to(outside)
    (folder / "linked").symlink_to(tmp_path)  # a folder link
    return {"parent": "../outside.jinja", "absolute": str(outside), "file link": "link.jinja",
            "folder link": "linked/outside.jinja"}


@pytest.mark.parametrize("kind", ["parent", "absolute", "file link", "folder link"])
def test_template_paths_that_leave_the_spec_folder_are_refused_unless_allowed(tmp_path, kind):
    path = outside_paths(tmp_path)[kind]
    spec = tmp_path / "spec" / "t.nmas"
    spec.write_text(TEMPLATE_SPEC % path)
    with pytest.raises(CompileError) as caught:
        neuromas.compile(spec)
    assert f"template '{path}' is outside the spec's folder" in str(caught.value)
    assert "--allow-outside-paths" in str(caught.value)
    plan = neuromas.compile(spec, allow_outside_paths=True)
    assert plan.nodes[0].template.source == "outside {{ inputs.question }}"


def test_commands_that_run_a_spec_take_allow_outside_paths(tmp_path, capsys):
    from neuromas.commands.assemble import load_plan
    from neuromas.commands.options import add_spec_argument, parents

    path = outside_paths(tmp_path)["parent"]
    spec = tmp_path / "spec" / "t.nmas"
    spec.write_text(TEMPLATE_SPEC % path)
    parser = argparse.ArgumentParser(parents=parents("spec", "stage", "sampling"))
    add_spec_argument(parser)
    assert load_plan(parser.parse_args([str(spec), "--allow-outside-paths"])).nodes[0].template.kind == "jinja"
    with pytest.raises(CompileError, match="outside the spec's folder"):
        load_plan(parser.parse_args([str(spec)]))
    assert main(["run", str(spec), "--input", "hi"]) == 2
    assert "help: move it next to the spec, or allow outside paths (--allow-outside-paths)" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_a_link_that_stays_inside_the_spec_folder_is_fine(tmp_path):
    (tmp_path / "real.jinja").write_text("inside")
    (tmp_path / "alias.jinja").symlink_to(tmp_path / "real.jinja")
    spec = tmp_path / "t.nmas"
    spec.write_text(TEMPLATE_SPEC % "alias.jinja")
    assert neuromas.compile(spec).nodes[0].template.source == "inside"
