"""Failures of a running command (out of memory, a full disk) -> UserErrors that say what to do.

The CLI passes every exception a command raises to `explain`; the ones recognised here
become a UserError naming what failed, where, and the settings or steps that fix it.
Functions of the runtime mark their phase with `@in_phase("rollout")` so that an
out-of-memory error can name the settings that shrink that phase. Nothing here imports
torch: a torch error can only exist once torch is loaded, so `sys.modules` is checked.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from neuromas.diagnostics import UserError

Function = TypeVar("Function", bound=Callable[..., Any])

PHASE_ATTRIBUTE = "neuromas_phase"
PHASES = {
    "rollout": "the rollout (generating every node's completion)",
    "update": "the update (the training forward and backward passes)",
}
# What each setting shrinks, for the flags a command has.
ROLLOUT_FLAGS = {
    "batch": "inputs per batch",
    "group": "samples per input",
    "max_tokens": "tokens each node writes",
}
UPDATE_FLAGS = {"token_budget": "padded tokens per training micro-batch"}
DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than this process may write (file size limit)",
}
_OS_ERROR_NUMBER = re.compile(r"os error (\d+)")
# Writers whose errors do not carry the file, and the argument that holds its path.
_WRITER_ARGUMENTS = {
    ("torch.serialization", "save"): "f",
    ("safetensors.torch", "save_file"): "filename",
    **{(module, method): "self" for module in ("pathlib", "pathlib._local") for method in ("write_text", "write_bytes")},
}


def in_phase(name: str) -> Callable[[Function], Function]:
    """Decorate a runtime function: exceptions leaving it carry `name` as their phase
    (the innermost phase wins)."""
    if name not in PHASES:
        raise ValueError(f"unknown phase {name!r} (expected one of: {', '.join(PHASES)})")

    def decorate(function: Function) -> Function:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except Exception as err:
                if getattr(err, PHASE_ATTRIBUTE, None) is None:
                    with contextlib.suppress(AttributeError):  # an exception type with __slots__
                        setattr(err, PHASE_ATTRIBUTE, name)
                raise

        return wrapper  # type: ignore[return-value]

    return decorate


def explain(err: BaseException, command: str | None = None, options: dict[str, Any] | None = None) -> UserError | None:
    """The UserError for a failure the user can act on, or None for any other exception.

    command: the CLI command that ran ("train", "rollout", ...); options: its parsed
    options (`vars(args)`), to name the flags it has and their values.
    """
    options = options or {}
    if is_out_of_memory(err):
        return out_of_memory_error(err, command, options)
    reason = disk_full_reason(err)
    if reason is not None:
        return disk_full_error(err, reason, command, options)
    return None


def is_out_of_memory(err: BaseException) -> bool:
    """Python's MemoryError, torch's OutOfMemoryError (GPU), or torch's CPU allocator failing."""
    if isinstance(err, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(err)


def disk_full_reason(err: BaseException) -> str | None:
    """Why writing failed when the disk (or the file size limit) is the cause, else None.

    Python writes raise OSError with the errno; safetensors says "os error N"; torch's
    zip writer reports a failed or short write without one.
    """
    if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
        return DISK_ERRNOS[err.errno]
    message = str(err)
    if type(err).__name__ == "SafetensorError":
        match = _OS_ERROR_NUMBER.search(message)
        if match and int(match.group(1)) in DISK_ERRNOS:
            return DISK_ERRNOS[int(match.group(1))]
    if isinstance(err, RuntimeError) and "inline_container.cc" in message and (
        "unexpected pos" in message or "failed writing" in message
    ):
        return "torch could not finish writing it (most likely the disk is full)"
    return None


def out_of_memory_error(err: BaseException, command: str | None, options: dict[str, Any]) -> UserError:
    """Name the phase that ran out of memory, the settings that shrink it, and (training)
    the checkpoint to resume from."""
    phase = getattr(err, PHASE_ATTRIBUTE, None)
    where = PHASES.get(phase, "the run") if phase else "the run"
    device = "GPU" if type(err).__name__ == "OutOfMemoryError" else "CPU"
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    first_line = first_line.partition("DefaultCPUAllocator: ")[2] or first_line  # drop torch's enforce prefix
    lines = [f"out of {device} memory during {where}: {first_line}"]
    if phase == "update":
        flags = _flags(UPDATE_FLAGS, options)
    else:
        flags = _flags(ROLLOUT_FLAGS, options) if phase else _flags({**ROLLOUT_FLAGS, **UPDATE_FLAGS}, options)
    if command == "train":
        line, rerun = _checkpoint_line(options.get("out"))
        lines.append(line)
        if phase == "update":
            lines.append(f"  fix: lower {flags}, then {rerun} (the update settings are not part of the plan)")
        else:
            lines.append(
                f"  fix: {rerun} on a machine with more memory, or lower {flags}: "
                "those change the plan, so a run with them lowered starts afresh in another --out"
            )
    else:
        lines.append(f"  fix: lower {flags or 'the sizes of the run'}, or use a machine with more memory")
    return UserError("\n".join(lines))


def disk_full_error(err: BaseException, reason: str, command: str | None, options: dict[str, Any]) -> UserError:
    """Name the file that could not be written, say what was kept, and where to go on."""
    path = written_file(err)
    what = f"'{path}'" if path else "a file"
    lines = [f"could not write {what}: {reason}"]
    make_room = "raise the file size limit (ulimit -f)" if reason == DISK_ERRNOS[errno.EFBIG] else "free space on that disk"
    if command == "train":
        if path and _is_unfinished_checkpoint(path):
            lines.append("  the checkpoint being written was discarded (checkpoints are written to a temporary "
                         "folder and renamed only when complete)")
        line, rerun = _checkpoint_line(options.get("out"))
        lines.append(line)
        lines.append(f"  fix: {make_room} and {rerun}, or train into another --out")
    else:
        out = options.get("out") or options.get("output")
        elsewhere = f" (now '{out}')" if out else ""
        lines.append(f"  {what} is incomplete; files written before it are unchanged")
        lines.append(f"  fix: {make_room}, or write somewhere else{elsewhere}")
    return UserError("\n".join(lines))


def written_file(err: BaseException) -> str | None:
    """The file a failed write was writing: the error's own filename, else the path given
    to torch.save, safetensors' save_file or Path.write_text/write_bytes, else a file
    object open in our own code."""
    filename = getattr(err, "filename", None)
    if filename:
        return str(filename)
    frames = list(_frames(err.__traceback__))
    for frame in reversed(frames):  # innermost first
        module = frame.f_globals.get("__name__", "")
        argument = _WRITER_ARGUMENTS.get((module, frame.f_code.co_name))
        if argument is not None and isinstance(frame.f_locals.get(argument), (str, Path)):
            return str(frame.f_locals[argument])
    for frame in reversed(frames):
        if not frame.f_globals.get("__name__", "").startswith("neuromas"):
            continue
        for value in frame.f_locals.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
    return None


def _frames(traceback: TracebackType | None) -> Iterator[Any]:
    while traceback is not None:
        yield traceback.tb_frame
        traceback = traceback.tb_next


def _flags(known: dict[str, str], options: dict[str, Any]) -> str:
    """`--batch (inputs per batch, now 4)` for each flag the command has, joined with "or"."""
    parts = []
    for name, meaning in known.items():
        if name not in options:
            continue
        value = options[name]
        now = f", now {value}" if value is not None else ""
        parts.append(f"--{name.replace('_', '-')} ({meaning}{now})")
    return " or ".join(parts)


def _checkpoint_line(out: str | None) -> tuple[str, str]:
    """Which checkpoint survives under the run folder `out`, and how to go on from it."""
    from .training.checkpoint import list_checkpoints

    checkpoints = list_checkpoints(Path(out)) if out else []
    if not checkpoints:
        return f"  no checkpoint was written to '{out}' yet", "rerun"
    return f"  the last checkpoint, '{checkpoints[-1]}', is intact", "rerun with --resume to continue from it"


def _is_unfinished_checkpoint(path: str) -> bool:
    """A path inside a checkpoint's temporary folder (`checkpoints/.step-...`)."""
    from .training.checkpoint import PREFIX

    return any(part.startswith(f".{PREFIX}") for part in Path(path).parts)
