"""Untrusted Python source -> an Outcome (passed, failed, timeout, ...) from a separate, limited process.

For scoring code a model wrote against a test program. Each run gets a fresh
interpreter (`python -I -B`, so no user site, no environment overrides, no bytecode
writes) in its own session and process group, a new empty temporary directory as its
working directory, HOME and TMPDIR, and a minimal environment. Before the program runs,
`sandbox_child.py` applies these layers; `Outcome.layers` names the ones that took effect:

- "rlimits": address space (RLIMIT_AS: a huge allocation raises MemoryError), CPU time
  (RLIMIT_CPU, a backstop to the wall-clock timeout), size of written files (RLIMIT_FSIZE,
  which also caps captured output), no core files.
- "netns": a new network namespace with no interfaces up, not even loopback: as root
  with CLONE_NEWNET, otherwise with an unprivileged user namespace where the kernel
  allows one.
- "uid": when started as root, the program runs as `nobody` (then RLIMIT_NPROC caps
  that user's processes), but only where the interpreter's files are readable for it.
- "audit": an audit hook (PEP 578) that refuses socket connect/bind/send and name
  lookups, fork/exec/spawn/subprocess, signals to other processes, rlimit changes, and
  opening for writing, creating, removing, renaming, linking or changing files outside
  the temporary directory (/dev/null aside). A refusal raises PermissionError in the
  program and is reported, so the run counts as "forbidden" even if the program
  catches the error.

The wall-clock timeout kills the whole process group, and so does every normal end.
A run passes only if the program runs to its end: sys.exit() anywhere, or any uncaught
exception, counts as failed.

Limits, honestly: this guards against a model's accidents and sloppy code (an endless
loop, a runaway allocation, a stray file write, a network call), not against a
determined attacker. Reads are not restricted. The audit hook lives in the same
interpreter as the program, so ctypes (which can call libc directly), inspecting
the bootstrap's frames, or patching the modules the hook uses get past it; `os.mkfifo`
and `os.mknod` raise no audit event; a path given to `os.open` relative to a dir_fd
is judged relative to the working directory. A process started behind the hook's back
that leaves the process group survives the kill. Without the "netns" and "uid" layers
(no root, no user namespaces), the hook is the only guard for the network and files.
For hostile code use a container or VM boundary (gVisor, Firecracker, nsjail) instead.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import os
import pwd
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CHILD = Path(__file__).with_name("sandbox_child.py")
OUTPUT_TAIL_BYTES = 8192
UNPRIVILEGED_USER = "nobody"


class Status(str, enum.Enum):
    """How a sandboxed run ended."""

    PASSED = "passed"  # ran to its end
    FAILED = "failed"  # an uncaught exception (a failed assert), a syntax error, sys.exit()
    TIMEOUT = "timeout"  # past the wall-clock or CPU time limit
    MEMORY = "memory"  # MemoryError: past the address-space limit
    FORBIDDEN = "forbidden"  # tried an operation the sandbox refuses
    CRASHED = "crashed"  # died without a verdict: a signal, os._exit(), a broken interpreter


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run."""

    timeout_s: float = 10.0  # wall clock, interpreter start included
    memory_mb: int = 1024  # address space
    file_mb: int = 16  # any one file written, captured output included
    processes: int = 256  # RLIMIT_NPROC for the unprivileged user (only with the "uid" layer)


@dataclass(frozen=True)
class Outcome:
    """The verdict of one run: status, a one-line reason, wall time, and output."""

    status: Status
    detail: str  # e.g. "AssertionError: ...", "socket.connect ('127.0.0.1', 9)", "killed by SIGSEGV"
    seconds: float
    output: str  # the last few KiB of stdout and stderr together
    layers: tuple[str, ...]  # isolation layers that took effect (see the module docstring)

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED


def run_python(program: str, limits: Limits = Limits(), *, python: str | None = None) -> Outcome:
    """Run `program` (Python source) in a fresh sandboxed interpreter and judge it.

    python: the interpreter to use (default: this one). Raises OSError only if the
    interpreter cannot be started at all.
    """
    nonce = secrets.token_hex(16)
    ids = _unprivileged_ids()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="neuromas-sandbox-", ignore_cleanup_errors=True) as folder, \
            tempfile.TemporaryFile() as report, tempfile.TemporaryFile() as output:
        root = os.path.realpath(folder)
        if ids is not None:
            os.chown(root, *ids)
        job = {
            "program": program,
            "nonce": nonce,
            "root": root,
            "report_fd": report.fileno(),
            "memory_bytes": limits.memory_mb << 20,
            "file_bytes": limits.file_mb << 20,
            "cpu_seconds": math.ceil(limits.timeout_s) + 1,
            "processes": limits.processes,
            "uid": ids[0] if ids else None,
            "gid": ids[1] if ids else None,
        }
        process = subprocess.Popen(
            [python or sys.executable, "-I", "-B", str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=_environment(root),
            pass_fds=(report.fileno(),),
            start_new_session=True,
        )
        try:
            _send(process, json.dumps(job).encode())
            timed_out = not _wait_unreaped(process.pid, start + limits.timeout_s)
        finally:
            _kill_group(process.pid)
            process.wait()
        seconds = time.monotonic() - start
        return _judge(_read(report), nonce, process.returncode, timed_out, limits, seconds, _tail(output))


@functools.lru_cache(maxsize=None)
def sandbox_layers(python: str | None = None) -> tuple[str, ...]:
    """The isolation layers a run gets on this machine (runs an empty program once)."""
    return run_python("", python=python).layers


def _unprivileged_ids() -> tuple[int, int] | None:
    """(uid, gid) of `nobody` when we are root (the child drops to them), else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        return (65534, 65534)
    return (entry.pw_uid, entry.pw_gid)


def _environment(root: str) -> dict[str, str]:
    threads = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return {"PATH": "/usr/bin:/bin", "HOME": root, "TMPDIR": root, "LANG": "C.UTF-8", **threads}


def _send(process: subprocess.Popen, message: bytes) -> None:
    assert process.stdin is not None
    try:
        process.stdin.write(message)
        process.stdin.close()
    except BrokenPipeError:
        pass  # the interpreter died before reading; judged as crashed


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait until `pid` exits, leaving it a zombie so its process group id cannot be reused
    before the group is killed; False at the deadline."""
    pause = 0.001
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, 0.025)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read().decode("utf-8", "replace")


def _tail(file: IO[bytes]) -> str:
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - OUTPUT_TAIL_BYTES))
    return file.read().decode("utf-8", "replace")


def _judge(report: str, nonce: str, returncode: int, timed_out: bool, limits: Limits, seconds: float,
           output: str) -> Outcome:
    """The report lines and the way the process ended -> an Outcome; a refused operation
    outranks everything, then the timeout, then the child's own verdict."""
    layers: tuple[str, ...] = ()
    forbidden: list[str] = []
    verdict: tuple[Status, str] | None = None
    for line in report.splitlines():
        word, _, rest = line.partition(" ")
        if word == "layers":
            layers = tuple(rest.split())
        elif word == "forbidden":
            forbidden.append(rest)
        elif word == nonce:
            status, _, detail = rest.partition(" ")
            verdict = (Status(status), detail)
    if forbidden:
        status, detail = Status.FORBIDDEN, forbidden[0]
    elif timed_out:
        status, detail = Status.TIMEOUT, f"no verdict within {limits.timeout_s:g} s (wall clock)"
    elif verdict is not None:
        status, detail = verdict
    elif returncode == -signal.SIGXCPU:
        status, detail = Status.TIMEOUT, "past the CPU time limit"
    elif returncode < 0:
        status, detail = Status.CRASHED, f"killed by {_signal_name(-returncode)}"
    else:
        status, detail = Status.CRASHED, f"exited with code {returncode} before its end"
    return Outcome(status, detail, seconds, output, layers)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
