"""Jinja template paths named by a spec -> their text, read from inside the spec's folder
and checked before anything renders (syntax errors, unknown variables, at `file:line`)."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

from neuromas import ir
from neuromas.diagnostics import Diagnostic
from neuromas.files import read_regular_file
from neuromas.spans import Span, SpanIndex
from neuromas.syntax import BOM


def _template_uses(system: ir.System) -> Iterator[tuple[tuple, ir.Template]]:
    def layer_uses(path: tuple, layer: ir.Layer) -> Iterator[tuple[tuple, ir.Template]]:
        yield (*path, "template"), layer.template
        for j, node in enumerate(layer.nodes):
            yield (*path, "nodes", j, "template"), node.template

    for i, layer in enumerate(system.layers):
        yield from layer_uses(("layers", i), layer)
    for s, stage in enumerate(system.growth):
        for j, op in enumerate(stage.ops):
            if isinstance(op, ir.Insert):
                yield from layer_uses(("growth", s, "ops", j, "layer"), op.layer)


def load_templates(
    system: ir.System, spans: SpanIndex, base_dir: Path, allow_outside_paths: bool
) -> tuple[dict[str, str], list[Diagnostic]]:
    """Read and check every Jinja template the spec names. A path that leaves `base_dir`
    (the spec's folder) is an error unless `allow_outside_paths`; so is anything but a
    regular file."""
    texts: dict[str, str] = {}
    found: list[Diagnostic] = []
    tried: set[str] = set()  # a path many layers share is read, and reported, once
    root = base_dir.resolve()
    for path, template in _template_uses(system):
        if template.kind != "jinja" or template.path is None or template.path in tried:
            continue
        tried.add(template.path)
        file = (root / template.path).resolve()
        if not allow_outside_paths and not file.is_relative_to(root):
            found.append(Diagnostic(spans.find(path), f"template '{template.path}' is outside the spec's folder", "move it next to the spec, or allow outside paths (--allow-outside-paths)"))
            continue
        try:
            texts[template.path] = read_regular_file(file).decode("utf-8").removeprefix(BOM)
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            found.append(Diagnostic(spans.find(path), f"cannot read template '{template.path}': {reason}"))
            continue
        found += _check_template(template.path, texts[template.path], spans, path)
    return texts, found


def _check_template(name: str, text: str, spans: SpanIndex, path: tuple) -> list[Diagnostic]:
    """A template's syntax errors and undefined variables, at `file:line` of the template,
    each with a hint naming where the spec uses it. Skipped without jinja2 (it comes with
    the runtime, which is what renders templates)."""
    if importlib.util.find_spec("jinja2") is None:
        return []
    from neuromas.jinja_sandbox import template_problems

    used = spans.find(path)
    spec = Path(spans.file)
    shown = name if spans.file.startswith("<") else str(spec.parent / name)
    where = f"the spec uses this template at {spans.file}:{used.line}" if used is not None else None
    found = []
    for line, message, hint, word in template_problems(text):
        line_text = _line(text, line)
        at = re.search(rf"\b{re.escape(word)}\b", line_text) if word else None
        span = Span.point(shown, line, at.start() + 1, len(word)) if at else Span.point(shown, line, 1, max(1, len(line_text)))
        found.append(Diagnostic(span, message, "; ".join(part for part in (hint, where) if part) or None, text=text))
    return found


def _line(text: str, number: int) -> str:
    lines = text.splitlines()
    return lines[number - 1] if 1 <= number <= len(lines) else ""
