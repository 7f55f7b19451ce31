"""A node, the system inputs and upstream messages -> the node's prompt token ids.

The built-in template is structural and role-free: a node is told only where it sits
(layer, index, width, depth of the system) and what it received. Sources appear in the
node's `reads` order, which the compiler chose so that what a call shares comes first;
the node's own position comes last, so nodes of one call share the longest prefix.

A Jinja template (`Template(kind="jinja", source=...)`) replaces the user turn. It is
rendered in Jinja's immutable sandbox (no attribute escapes, no unsafe calls, no changes to
the values it is given; no file access: it cannot include or import other templates) and
under a time and size limit (see neuromas/jinja_sandbox.py), with these variables (the
built-in template uses the same; `jinja_sandbox.VARIABLES` lists them):

    system   .name, .depth (levels), .node_count, .inputs (names)
    node     .id, .layer, .index, .width, .level (0-based), .layer_number (level + 1),
             .position (index + 1), .is_output, .answer_format
    sources  list, in reads order, of .kind ("input" | "node"), .name (input name or
             node id), .label ("question" or "From hidden[1] (layer 1)"), .text,
             .layer_number (0 for inputs), .is_truncated
    inputs   {input name: text}          messages  {node id: text} (what the node reads)
    answer_format  the output's answer format, or None
    answer_instruction  how the built-in template asks for that format ("" if none)

Both are rendered through the model's chat template after the same system message.
Prompts longer than `plan.max_prompt_tokens` are shortened (see `PromptRenderer`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from neuromas import jinja_sandbox
from neuromas.diagnostics import UserError
from neuromas.plan import Node, Plan

TRUNCATION_MARK = " [...] "
ANSWER_INSTRUCTIONS = {
    "number": "End with a last line of the form 'Answer: <number>'.",
    "choice": "End with a last line of the form 'Answer: <letter>' (one letter).",
    "text": "End with a last line of the form 'Answer: <short answer>'.",
}


class Prompt(NamedTuple):
    """A rendered prompt.

    ids: (P,) token ids, chat template applied, P <= plan.max_prompt_tokens.
    text: the same prompt as text.
    truncated: names of the sources (input names or node ids) that were shortened.
    """

    ids: tuple[int, ...]
    text: str
    truncated: tuple[str, ...]


@dataclass(frozen=True)
class SourceText:
    """One source of a node's prompt, as the templates see it."""

    kind: str  # "input" | "node"
    name: str
    label: str
    text: str
    layer_number: int
    is_truncated: bool = False


class PromptRenderer:
    """Renders and tokenizes node prompts for one plan with one tokenizer.

    Truncation policy, when a prompt has more than `plan.max_prompt_tokens` tokens:
    the longest upstream node messages are shortened first, all down to a common
    length (the longest lose the most, short ones are untouched), keeping each one's
    beginning and end around a " [...] " mark. Only if the prompt still does not fit
    with every node message emptied are the system inputs shortened the same way.
    A template longer than the limit by itself raises UserError.
    """

    def __init__(self, plan: Plan, tokenizer: Any):
        self.plan = plan
        self.tokenizer = tokenizer
        self.nodes = plan.node_map()
        self.output_format = {node_id: out.answer_format for out in plan.outputs for node_id in out.nodes}
        self._jinja: dict[str, Any] = {}

    def render(self, node: Node, inputs: Mapping[str, str], messages: Mapping[str, str]) -> Prompt:
        """The prompt of `node` given the system inputs and the texts of the nodes it reads."""
        sources = self.sources(node, inputs, messages)
        ids, text = self._encode(node, sources)
        limit = self.plan.max_prompt_tokens
        if len(ids) <= limit:
            return Prompt(ids, text, ())
        for kind in ("node", "input"):
            # Cut from the texts before this round, asking for more each time the marks
            # (and tokens merging at the cuts) leave the prompt still too long.
            base, needed = sources, len(ids) - limit
            for _ in range(8):
                sources = self._shorten(base, kind, needed)
                ids, text = self._encode(node, sources)
                if len(ids) <= limit:
                    break
                needed += len(ids) - limit
            if len(ids) <= limit:
                break
        if len(ids) > limit:
            raise UserError(
                f"node {node.id}: the prompt template alone needs {len(ids)} tokens, "
                f"more than max_prompt_tokens ({limit})"
            )
        return Prompt(ids, text, tuple(s.name for s in sources if s.is_truncated))

    def sources(self, node: Node, inputs: Mapping[str, str], messages: Mapping[str, str]) -> list[SourceText]:
        """The node's sources in reads order, labeled by name or by position."""
        result = []
        for source in node.reads:
            if source.kind == "input":
                result.append(SourceText("input", source.name, source.name, inputs[source.name], 0))
            else:
                upstream = self.nodes[source.name]
                layer_number = upstream.level + 1
                label = f"From {source.name} (layer {layer_number})"
                result.append(SourceText("node", source.name, label, messages[source.name], layer_number))
        return result

    def variables(self, node: Node, sources: Sequence[SourceText]) -> dict[str, Any]:
        """The template variables documented in the module docstring."""
        answer_format = node.answer_format or self.output_format.get(node.id)
        return {
            "system": {
                "name": self.plan.system,
                "depth": self.plan.depth,
                "node_count": len(self.plan.nodes),
                "inputs": list(self.plan.inputs),
            },
            "node": {
                "id": node.id,
                "layer": node.layer,
                "index": node.index,
                "width": node.width,
                "level": node.level,
                "layer_number": node.level + 1,
                "position": node.index + 1,
                "is_output": node.is_output,
                "answer_format": answer_format,
            },
            "sources": list(sources),
            "inputs": {s.name: s.text for s in sources if s.kind == "input"},
            "messages": {s.name: s.text for s in sources if s.kind == "node"},
            "answer_format": answer_format,
            "answer_instruction": answer_instruction(answer_format) if node.is_output else "",
        }

    def system_message(self) -> str:
        plan = self.plan
        return (
            f"You are one node of a layered system of {len(plan.nodes)} language-model nodes "
            f"in {plan.depth} layers. Each node reads the texts it is given and writes one message; "
            "nodes in later layers read what nodes in earlier layers wrote."
        )

    def user_message(self, node: Node, sources: Sequence[SourceText]) -> str:
        variables = self.variables(node, sources)
        if node.template.kind == "jinja":
            try:
                return jinja_sandbox.render(self._jinja_template(node.template.source or ""), variables)
            except Exception as err:  # the template's own code: syntax, undefined names, sandbox refusals, limits, 1/0
                number = jinja_sandbox.template_line(err)
                line = f", line {number}" if number else ""
                where = node.template.path or "jinja template"
                raise UserError(f"template '{where}'{line} (node {node.id}): {type(err).__name__}: {err}") from None
        return builtin_user_message(variables)

    def _encode(self, node: Node, sources: Sequence[SourceText]) -> tuple[tuple[int, ...], str]:
        system, user = self.system_message(), self.user_message(node, sources)
        text = chat_text(self.tokenizer, system, user)
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"]), text

    def _shorten(self, sources: list[SourceText], kind: str, excess: int) -> list[SourceText]:
        """Cut the longest sources of `kind` down to one common length that saves `excess` tokens."""
        ids = {i: self._token_ids(s.text) for i, s in enumerate(sources) if s.kind == kind}
        cap = water_level([len(tokens) for tokens in ids.values()], excess)
        result = list(sources)
        for i, tokens in ids.items():
            if len(tokens) > cap:
                result[i] = replace(sources[i], text=self._keep_ends(tokens, cap), is_truncated=True)
        return result

    def _keep_ends(self, tokens: list[int], keep: int) -> str:
        if keep <= 0:
            return TRUNCATION_MARK.strip()
        head, tail = math.ceil(keep / 2), keep // 2
        end = self.tokenizer.decode(tokens[len(tokens) - tail :]) if tail else ""
        return self.tokenizer.decode(tokens[:head]) + TRUNCATION_MARK + end

    def _token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _jinja_template(self, source: str) -> Any:
        if source not in self._jinja:
            self._jinja[source] = jinja_sandbox.compile_template(source)
        return self._jinja[source]


def builtin_user_message(variables: Mapping[str, Any]) -> str:
    """The built-in role-free user turn: the sources, then where the node sits."""
    node, system = variables["node"], variables["system"]
    parts = [f"{source.label}:\n{source.text.strip()}" for source in variables["sources"]]
    position = (
        f"You are node {node['id']}: node {node['position']} of {node['width']} in layer "
        f"{node['layer_number']} of {system['depth']}."
    )
    if node["is_output"]:
        task = "Your message is the final answer of the system."
        if variables["answer_instruction"]:
            task += " " + variables["answer_instruction"]
    else:
        task = f"Write your message for layer {node['layer_number'] + 1}."
    parts.append(f"{position} {task}")
    return "\n\n".join(parts)


def answer_instruction(answer_format: str | None) -> str:
    if answer_format is None:
        return ""
    return ANSWER_INSTRUCTIONS.get(answer_format, f"Answer format: {answer_format}.")


def chat_text(tokenizer: Any, system: str, user: str) -> str:
    """The prompt through the model's chat template, ready for the assistant's reply.

    Models whose template rejects a system turn get it prepended to the user turn;
    models without a chat template get the two texts on their own.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        return f"{system}\n\n{user}\n\n"
    from jinja2 import TemplateError

    try:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError:
        messages = [{"role": "user", "content": f"{system}\n\n{user}"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def water_level(lengths: Sequence[int], excess: int) -> int:
    """The largest cap C >= 0 such that cutting every length above C down to C saves at
    least `excess` tokens (0 when even emptying everything does not)."""
    if excess <= 0 or not lengths:
        return max(lengths, default=0)
    low, high = 0, max(lengths)
    while low < high:  # binary search: savings shrink as the cap grows
        cap = (low + high + 1) // 2
        if sum(max(0, length - cap) for length in lengths) >= excess:
            low = cap
        else:
            high = cap - 1
    return low
