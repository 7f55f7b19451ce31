"""Untrusted Python source -> an Outcome (passed, failed, timeout, ...) from isolated processes.

For scoring code a model wrote. `run_tests` runs the solution in a jailed process and the
(trusted) tests in a separate tester process, which calls the solution's function across a
channel that carries plain values only; the verdict is the tester's, written where the
solution cannot write. `run_python` runs a whole program and reports how it ended, which is
the program's own claim: never use it to score code against tests that live in the same
source. Each run starts `sandbox_child.py` (the supervisor), which sets up these layers;
`Outcome.layers` names those that took effect and `Outcome.notes` says why others did not:

- "mountns": a new root holding only the system and interpreter folders (read-only), a few
  devices, and a private tmpfs as /tmp, the only writable place; the host's files,
  including its Unix sockets and /proc, are out of reach.
- "netns": new network, IPC and UTS namespaces, no interface up (abstract Unix sockets
  are per network namespace too).
- "pidns": a new PID namespace; when the solution ends or the run is over, its init ends
  and the kernel kills every process left in it (setsid or a double fork do not escape).
- "uid": the solution runs as `nobody`, with no capabilities, or as the caller when that is
  not root. "no_new_privs": no set-user-id program can raise that.
- "rlimits": address space, CPU time, file size, no core files; processes per user.
- "seccomp": the kernel refuses exec, ptrace, mounts, namespace changes and other rare
  calls; "audit": an audit hook reports refused operations, so the run is "forbidden".

Without root, or as root without CAP_SYS_ADMIN (as in many containers), the namespaces
come from a user namespace where the kernel allows one. Without "uid" the sandbox refuses to run (SandboxUnavailable); without the
others it warns once. The verdict cannot come from the solution: the tester only sees
plain values, and what the solution says (its output, its notes) can lower an outcome,
never raise it. The solution can still burn its time and memory limits, read the system
and interpreter folders, and learn what the tests send it.
"""

from __future__ import annotations

import enum
import fcntl
import functools
import json
import math
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from neuromas.diagnostics import UserError

CHILD = Path(__file__).with_name("sandbox_child.py")
OUTPUT_TAIL_BYTES = 8192
UNPRIVILEGED_USER = "nobody"
REQUIRED_LAYERS = ("uid",)
EXPECTED_LAYERS = ("mountns", "netns", "pidns", "uid", "no_new_privs", "rlimits", "seccomp", "audit")


class Status(str, enum.Enum):
    """How a sandboxed run ended."""

    PASSED = "passed"  # the tests passed (run_tests), or the program ran to its end (run_python)
    FAILED = "failed"  # an uncaught exception (a failed assert), a syntax error, sys.exit()
    TIMEOUT = "timeout"  # past the wall-clock or CPU time limit
    MEMORY = "memory"  # MemoryError: past the address-space limit
    FORBIDDEN = "forbidden"  # tried an operation the sandbox refuses
    CRASHED = "crashed"  # died without a verdict: a signal, os._exit(), a broken interpreter


class SandboxUnavailable(UserError):
    """This machine cannot run untrusted code without privileges; nothing was scored."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run."""

    timeout_s: float = 10.0  # wall clock, interpreter start included
    memory_mb: int = 1024  # address space, for the solution and for the tester
    file_mb: int = 16  # any one file written, captured output included; /tmp holds 4x this
    processes: int = 256  # RLIMIT_NPROC for the unprivileged user (only with the "uid" layer)


@dataclass(frozen=True)
class Outcome:
    """The verdict of one run: status, a one-line reason, wall time, and output."""

    status: Status
    detail: str  # e.g. "AssertionError: ...", "socket.connect ('127.0.0.1', 9)", "killed by SIGSEGV"
    seconds: float
    output: str  # the last few KiB of stdout and stderr together
    layers: tuple[str, ...]  # isolation layers that took effect (see the module docstring)
    notes: tuple[str, ...] = ()  # why a layer did not take effect

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED


def run_tests(solution: str, tests: str, entry_point: str, limits: Limits = Limits(), *, setup: str = "",
              python: str | None = None) -> Outcome:
    """Judge the function `entry_point` that `solution` (untrusted source) defines.

    The tester runs `setup` (trusted definitions, e.g. helpers the tests use), then `tests`,
    with `candidate` and `entry_point` bound to a stand-in that calls the solution's function
    in its own process. Arguments and results cross as plain values. Passed only when the
    tests run to their end. Raises SandboxUnavailable (see the module docstring), and
    OSError only if the interpreter (`python`, default this one) cannot be started.
    """
    return _run({"solution": solution, "entry_point": entry_point, "setup": setup, "tests": tests}, limits, python)


def run_python(program: str, limits: Limits = Limits(), *, python: str | None = None) -> Outcome:
    """Run `program` (Python source) in the sandbox: passed when it runs to its end, which
    the program itself reports (so it is no verdict on tests it contains)."""
    return _run({"solution": program, "entry_point": None, "setup": "", "tests": None}, limits, python)


@functools.lru_cache(maxsize=None)
def sandbox_probe(python: str | None = None) -> Outcome:
    """One run of an empty program, to learn which layers hold on this machine (cached)."""
    return _run({"solution": "", "entry_point": None, "setup": "", "tests": None}, Limits(), python, strict=False)


def sandbox_layers(python: str | None = None) -> tuple[str, ...]:
    """The isolation layers a run gets on this machine."""
    return sandbox_probe(python).layers


def require_sandbox(python: str | None = None) -> tuple[str, ...]:
    """The layers a run gets here; raises SandboxUnavailable, or warns, as a run would."""
    outcome = sandbox_probe(python)
    _check_layers(outcome)
    return outcome.layers


def _run(job: dict, limits: Limits, python: str | None, strict: bool = True) -> Outcome:
    start = time.monotonic()
    ids = _unprivileged_ids()
    folder = os.path.realpath(tempfile.mkdtemp(prefix="neuromas-sandbox-"))
    try:
        with tempfile.TemporaryFile() as report, tempfile.TemporaryFile() as output:
            for file in (report, output):
                fcntl.fcntl(file.fileno(), fcntl.F_SETFL, fcntl.fcntl(file.fileno(), fcntl.F_GETFL) | os.O_APPEND)
            if ids is not None:
                os.chown(folder, *ids)  # the working folder when no mount namespace takes effect
            job.update(folder=folder, report_fd=report.fileno(), uid=ids[0] if ids else None,
                       gid=ids[1] if ids else None, memory_bytes=limits.memory_mb << 20,
                       file_bytes=limits.file_mb << 20, tmp_bytes=limits.file_mb << 22,
                       cpu_seconds=math.ceil(limits.timeout_s) + 1, processes=limits.processes)
            process = subprocess.Popen(
                [python or sys.executable, "-I", "-B", "-S", str(CHILD)], stdin=subprocess.PIPE, stdout=output,
                stderr=subprocess.STDOUT, cwd=folder, env=_environment(), pass_fds=(report.fileno(),),
                start_new_session=True)
            try:
                _send(process, json.dumps(job).encode())
                timed_out = not _wait_unreaped(process.pid, start + limits.timeout_s)
            finally:
                _kill_group(process.pid)  # the supervisor, the tester and init: the namespace dies with init
                process.wait()
            outcome = _judge(_read(report), process.returncode, timed_out, limits, time.monotonic() - start,
                             _tail(output))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if strict:
        _check_layers(outcome)
    return outcome


def _check_layers(outcome: Outcome) -> None:
    missing = [layer for layer in REQUIRED_LAYERS if layer not in outcome.layers]
    if missing:
        raise SandboxUnavailable(
            "the code sandbox cannot drop root privileges here, so it runs no untrusted code ("
            + ("; ".join(outcome.notes) or "no reason given") + "); nothing was scored. Run as a user other "
            "than root, or where the interpreter is readable by 'nobody' or mount namespaces are allowed")
    weaker = tuple(layer for layer in EXPECTED_LAYERS if layer not in outcome.layers)
    if weaker:
        _warn_once(weaker, outcome.notes)


@functools.lru_cache(maxsize=None)
def _warn_once(missing: tuple[str, ...], notes: tuple[str, ...]) -> None:
    warnings.warn(f"the code sandbox runs without {', '.join(missing)} on this machine"
                  + (f" ({'; '.join(notes)})" if notes else ""), RuntimeWarning, stacklevel=4)


def _unprivileged_ids() -> tuple[int, int] | None:
    """(uid, gid) of `nobody` when we are root (the solution drops to them), else None."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        return (65534, 65534)
    return (entry.pw_uid, entry.pw_gid)


def _environment() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def _send(process: subprocess.Popen, message: bytes) -> None:
    assert process.stdin is not None
    try:
        process.stdin.write(message)
        process.stdin.close()
    except BrokenPipeError:
        pass  # the supervisor died before reading; judged as crashed


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


def _judge(report: str, returncode: int, timed_out: bool, limits: Limits, seconds: float, output: str) -> Outcome:
    """The report lines (written by trusted processes only) -> an Outcome; a refused
    operation outranks everything, then the timeout, then the tester's verdict, then how
    the solution's process ended."""
    layers: list[str] = []
    notes: list[str] = []
    forbidden: list[str] = []
    verdict: tuple[Status, str] | None = None
    exit_code: int | None = None
    for line in report.splitlines():
        word, _, rest = line.partition(" ")
        if word == "layers":
            layers += [layer for layer in rest.split() if layer not in layers]
        elif word == "note":
            notes.append(rest)
        elif word == "forbidden":
            forbidden.append(rest)
        elif word == "verdict" and verdict is None:
            status, _, detail = rest.partition(" ")
            verdict = (Status(status), detail)
        elif word == "exit":
            exit_code = int(rest)
    if forbidden:
        status, detail = Status.FORBIDDEN, forbidden[0]
    elif timed_out:
        status, detail = Status.TIMEOUT, f"no verdict within {limits.timeout_s:g} s (wall clock)"
    elif verdict is not None:
        status, detail = verdict
    elif exit_code == -signal.SIGXCPU:
        status, detail = Status.TIMEOUT, "past the CPU time limit"
    elif exit_code is not None and exit_code < 0:
        status, detail = Status.CRASHED, f"killed by {_signal_name(-exit_code)}"
    elif exit_code is not None:
        status, detail = Status.CRASHED, f"exited with code {exit_code} before its end"
    else:
        status, detail = Status.CRASHED, "the sandbox ended without a verdict" + (f" ({notes[-1]})" if notes else "")
    ordered = tuple(layer for layer in EXPECTED_LAYERS if layer in layers)
    return Outcome(status, detail, seconds, output, ordered, tuple(notes))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
