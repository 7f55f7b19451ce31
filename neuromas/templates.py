"""Jinja template paths named by a spec -> their text, read from inside the spec's folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from neuromas import ir
from neuromas.diagnostics import Diagnostic
from neuromas.lower import SpanIndex


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
    """Read every Jinja template the spec names. A path that leaves `base_dir` (the
    spec's folder) is an error unless `allow_outside_paths`."""
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
            texts[template.path] = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            found.append(Diagnostic(spans.find(path), f"cannot read template '{template.path}': {reason}"))
    return texts, found
