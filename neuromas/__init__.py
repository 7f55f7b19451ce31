"""NeuroMAS: multi-agent LLM systems as neural networks, compiled from .nmas specs.

Writing and compiling specs needs no ML stack: this package never imports torch.
The runtime (rollouts, training, growth) is `neuromas.runtime`.
"""

from __future__ import annotations

import os
from pathlib import Path

from neuromas.diagnostics import CompileError, Diagnostic, UserError
from neuromas.plan import Plan, PlanFormatError

__all__ = ["CompileError", "Diagnostic", "Plan", "PlanFormatError", "UserError", "compile", "read_spec"]
__version__ = "0.1.0"


def read_spec(path: str | os.PathLike[str]) -> str:
    """The text of a spec file (a UTF-8 byte order mark is dropped); raises CompileError
    for bytes that are not UTF-8, UserError for a file that cannot be read or is not a
    regular file."""
    from neuromas.files import read_regular_file
    from neuromas.syntax import decode_source

    try:
        data = read_regular_file(path)
    except OSError as err:
        raise UserError(f"cannot read spec '{path}': {err.strerror or err}", exit_code=2) from None
    return decode_source(data, str(path))


def compile(
    spec: str | os.PathLike[str],
    *,
    stage: str | None = None,
    allow_outside_paths: bool = False,
) -> Plan:
    """Compile a spec (a path to a .nmas file, or spec text) into its execution Plan.

    `stage` names a growth stage: its plan is returned instead of the spec's own.
    Raises CompileError listing every problem in the spec, and UserError (exit code 2)
    for a file that cannot be read or a stage the spec does not have.
    """
    from neuromas.pipeline import compile_source

    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and "{" not in spec):
        source, file, base_dir = read_spec(spec), str(spec), Path(spec).parent
    else:
        source, file, base_dir = spec, "<spec>", Path.cwd()
    plan = compile_source(source, file, base_dir=base_dir, allow_outside_paths=allow_outside_paths)
    if stage is None:
        return plan
    try:
        return plan.stage_plan(stage).plan
    except KeyError as err:
        raise UserError(err.args[0], exit_code=2) from None
