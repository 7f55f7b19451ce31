"""Spec text -> Plan: the whole compiler, pass by pass."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neuromas import ir, plan
from neuromas.diagnostics import CompileError, Diagnostic
from neuromas.emit import emit_plan
from neuromas.growth import GrownStage, grow, origins
from neuromas.lower import lower
from neuromas.passes.assign_adapters import assign_adapters
from neuromas.passes.assign_levels import assign_levels
from neuromas.passes.batch_levels import batch_levels
from neuromas.passes.expand_repeats import expand_repeats
from neuromas.passes.order_prompts import order_prompts
from neuromas.passes.prune_unreachable import prune_unreachable
from neuromas.passes.resolve_edges import resolve_edges
from neuromas.passes.verify import verify_ir
from neuromas.spans import SpanIndex
from neuromas.syntax import parse_text
from neuromas.templates import load_templates
from neuromas.validate import check_graph, check_system

# In order. The node-level checks run between resolve_edges and prune_unreachable.
FRONT_PASSES: tuple[Callable[[Any], Any], ...] = (expand_repeats, resolve_edges)
BACK_PASSES: tuple[Callable[[Any], Any], ...] = (
    prune_unreachable,
    assign_levels,
    assign_adapters,
    batch_levels,
    order_prompts,
)
PASSES = FRONT_PASSES + BACK_PASSES


def run_passes(value: Any, passes: Sequence[Callable[[Any], Any]], verify: bool) -> Any:
    for compiler_pass in passes:
        value = compiler_pass(value)
        if verify:
            verify_ir(value, after=compiler_pass.__name__)
    return value


def compile_source(
    source: str,
    file: str = "<spec>",
    *,
    base_dir: Path | None = None,
    allow_outside_paths: bool = False,
    verify: bool | None = None,
) -> plan.Plan:
    """Compile spec text; raises CompileError with every problem found.

    `base_dir` is the folder relative paths (templates) resolve against; `verify`
    (default: env NEUROMAS_VERIFY=1) checks the IR after every pass. The spec's system
    and each grown stage's system go through the same chain: `checked_graph`, then
    `emit`.
    """
    if verify is None:
        verify = os.environ.get("NEUROMAS_VERIFY") == "1"
    with _collector_paused():
        spec = parse_text(source, file)
        system, spans = lower(spec)
        graph = checked_graph(system, spans, source, verify)
        stages, problems = grow(expand_repeats(system), spans)
        _raise_errors(problems, source)
        templates, problems = load_templates(system, spans, base_dir or Path.cwd(), allow_outside_paths)
        _raise_errors(problems, source)
        base = emit(graph, templates, verify)
        return plan.Plan(**{**_fields(base), "growth": _compile_stages(stages, spans, source, templates, verify)})


def checked_graph(system: ir.System, spans: SpanIndex, source: str, verify: bool, stage: str | None = None) -> ir.Graph:
    """The first half of the chain: layer rules, edges resolved, graph rules; raises
    CompileError. Problems of a grown stage's system say which stage grew them."""
    problems = check_system(system, spans)
    if not _has_errors(problems):
        graph = run_passes(system, FRONT_PASSES, verify)
        problems += check_graph(graph, spans, system)
    if stage is not None:
        problems = [Diagnostic(d.span, f"after growth stage '{stage}': {d.message}", d.hint, d.severity) for d in problems]
    _raise_errors(problems, source)
    return graph


def emit(graph: ir.Graph, templates: dict[str, str], verify: bool, stage: str | None = None) -> plan.Plan:
    """The second half of the chain: the back passes, then the plan."""
    return emit_plan(run_passes(graph, BACK_PASSES, verify), templates, stage=stage)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The passes build many small objects and no garbage cycles: pausing Python's
    cyclic collector while they run saves about a third of a large system's time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _compile_stages(
    stages: list[GrownStage], spans: SpanIndex, source: str, templates: dict[str, str], verify: bool
) -> tuple[plan.GrowthStage, ...]:
    compiled: list[plan.GrowthStage] = []
    trained: plan.Plan | None = None
    for index, grown in enumerate(stages):
        name = grown.stage.name
        where = SpanIndex(spans.file)  # a grown system's problems are reported at its stage
        where.add((), spans.find(("growth", index)))
        stage_plan = emit(checked_graph(grown.system, where, source, verify, stage=name), templates, verify, stage=name)
        stage_origins, untrained = origins(grown, stage_plan, trained)
        if untrained and trained is not None:
            message = f"growth stage '{name}' copies {', '.join(untrained)}, which stage '{trained.stage}' removed (its text reaches no output): it has no trained adapter"
            _raise_errors([Diagnostic(spans.find(("growth", index)), message, "copy a layer, or a node whose text reaches an output")], source)
        compiled.append(
            plan.GrowthStage(
                name=name,
                after_steps=grown.stage.after_steps,
                plateau_evals=grown.stage.plateau_evals,
                plan=stage_plan,
                origins=stage_origins,
            )
        )
        trained = stage_plan
    return tuple(compiled)


def _fields(struct: Any) -> dict[str, Any]:
    return {name: getattr(struct, name) for name in struct.__struct_fields__}


def _has_errors(diagnostics: list[Diagnostic]) -> bool:
    return any(d.severity == "error" for d in diagnostics)


def _raise_errors(diagnostics: list[Diagnostic], source: str) -> None:
    if _has_errors(diagnostics):
        raise CompileError(diagnostics, source)
