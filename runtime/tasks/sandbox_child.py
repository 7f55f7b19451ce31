"""The sandbox supervisor: a job on stdin -> a jail, the untrusted solution in it, and the tester that judges it.

Started by `neuromas.runtime.tasks.sandbox` as `python -I -B -S sandbox_child.py` (as the
caller's user); never imported; standard library only. Everything here is trusted and runs
before, or apart from, the untrusted code:

1. New mount, network, IPC and UTS namespaces (`sandbox_jail.py`), and a new root: the
   system and interpreter folders read-only, a private tmpfs as /tmp, nothing else.
2. The tester forks off: it drops to the unprivileged user and runs the (trusted) tests,
   or, for a plain program, waits for its end. It alone writes the verdict.
3. A new PID namespace; its init forks the solution, which sets rlimits, drops to the
   unprivileged user, forbids new privileges and starts a fresh interpreter on
   `sandbox_solution.py`, holding only stdin (/dev/null), the output and its channel to
   the tester. When the solution ends, or the tester is done, init ends, and the kernel
   kills whatever the solution left behind.

Lines on the report descriptor (held by these trusted processes only): `layers ...`
(the isolation that took effect), `note ...` (why a layer did not), `forbidden ...`,
`exit N` (how the solution's process ended) and `verdict STATUS DETAIL`.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import linecache
import os
import resource
import signal
import site
import socket
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
STATUSES = frozenset({"passed", "failed", "memory"})
SOLUTION_LAYERS = frozenset({"audit", "seccomp"})
BOOTSTRAP = ("sandbox_solution.py", "sandbox_guard.py")  # copied into the jail for the solution
INIT_GRACE_S = 1.0  # after the tester is done, how long the solution may take to end by itself


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Report:
    """One line per write(2) to the parent's report file (opened for appending)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def line(self, word: str, text: str = "") -> None:
        os.write(self.fd, (" ".join(f"{word} {text}".split())[:1000] + "\n").encode("utf-8", "replace"))


class SolutionGone(Exception):
    """The solution's process ended or broke the protocol: the tests cannot pass."""


class SolutionRaised(Exception):
    """The solution's function raised; the message names the exception it raised."""


class Candidate:
    """Stands in for the solution's function in the tester: each call crosses to the
    solution's process as plain values and comes back as plain values."""

    def __init__(self, protocol, fd: int, report: Report) -> None:
        self._protocol, self._fd, self._report = protocol, fd, report
        self.broken: str | None = None  # why no call can succeed any more
        self.ended = False  # because the process ended: how it ended is the better reason
        self.out_of_memory = False

    def __call__(self, *args, **kwargs):
        if self.broken is not None:
            raise SolutionGone(self.broken)
        self._protocol.send(self._fd, {"call": [self._protocol.encode(list(args)), self._protocol.encode(kwargs)]})
        while True:
            message = self.receive()
            if "forbidden" in message:
                continue
            if "return" in message:
                try:
                    return self._protocol.decode(message["return"])
                except self._protocol.ProtocolError as exc:
                    self.broken = f"the solution returned {exc}"
                    raise SolutionGone(self.broken) from None
            if "raise" in message and _is_pair_of_text(message["raise"]):
                name, detail = message["raise"]
                self.out_of_memory = self.out_of_memory or name == "MemoryError"
                raise SolutionRaised(detail or name)
            self.broken = "the solution sent an unexpected message"
            raise SolutionGone(self.broken)

    def receive(self) -> dict:
        """The next message, with `forbidden` notes reported on the way; SolutionGone at the end."""
        try:
            message = self._protocol.receive(self._fd)
        except (self._protocol.ProtocolError, OSError) as exc:
            self.broken = f"the solution sent {exc}"
            raise SolutionGone(self.broken) from None
        if message is None:
            self.broken, self.ended = "the solution's process ended", True
            raise SolutionGone(self.broken)
        if "forbidden" in message:
            self._report.line("forbidden", str(message["forbidden"]))
        return message


def _is_pair_of_text(value: object) -> bool:
    return type(value) is list and len(value) == 2 and all(type(item) is str for item in value)


def run_tester(job: dict, fd: int, report: Report, protocol) -> None:
    """Send the solution its job, then judge: run `setup` and `tests` with `candidate` (and
    the entry point's name) bound to the stand-in, or, for a plain program, take its end."""
    candidate = Candidate(protocol, fd, report)
    protocol.send(fd, {"job": {"source": job["solution"], "entry_point": job["entry_point"],
                               "workdir": job["workdir"], "site_packages": site_packages()}})
    try:
        hello = candidate.receive()
        if "hello" in hello and type(hello["hello"]) is list:
            report.line("layers", " ".join(name for name in hello["hello"] if name in SOLUTION_LAYERS))
        while "ready" not in (message := candidate.receive()):
            if "end" in message and _is_pair_of_text(message["end"]):
                status, detail = message["end"]
                if job["tests"] is not None and status == "passed":
                    status, detail = "failed", "the solution ended instead of serving its function"
                report.line("verdict", f"{status if status in STATUSES else 'failed'} {detail}")
                return
            if "forbidden" not in message:
                report.line("verdict", "failed the solution sent an unexpected message")
                return
        if job["tests"] is None:
            report.line("verdict", "failed the program sent an unexpected message")
            return
    except SolutionGone:
        return report_broken(candidate, report)
    namespace = {"__name__": "__main__"}
    for name in ("setup", "tests"):
        linecache.cache[f"<{name}>"] = (len(job[name]), None, job[name].splitlines(True), f"<{name}>")
    try:
        exec(compile(job["setup"], "<setup>", "exec"), namespace)
        namespace["candidate"] = namespace[job["entry_point"]] = candidate
        exec(compile(job["tests"], "<tests>", "exec"), namespace)
    except SolutionGone:
        return report_broken(candidate, report)
    except BaseException as exc:
        if candidate.broken is not None:
            return report_broken(candidate, report)
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
        status = "memory" if candidate.out_of_memory else "failed"
        report.line("verdict", f"{status} {describe_failure(exc)}")
        return
    if candidate.broken is None:
        report.line("verdict", "passed")
    else:
        report_broken(candidate, report)


def report_broken(candidate: Candidate, report: Report) -> None:
    """A protocol violation is the verdict; for a process that ended, the parent gives how it ended."""
    if not candidate.ended:
        report.line("verdict", f"failed {candidate.broken}")


def describe_failure(exc: BaseException) -> str:
    """'Type: message', then where the tests stopped, e.g. 'at <tests>:4: assert f(1) == 2'."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, SolutionRaised):
        text = f"{exc} (raised by the solution)"
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename in ("<tests>", "<setup>")]
    if frames:
        text += f" at {frames[-1].filename}:{frames[-1].lineno}: {(frames[-1].line or '').strip()}"
    return text[:500]


def reason(exc: OSError) -> str:
    """An OSError as 'what: why (file)', without the errno number."""
    if not exc.strerror:
        return str(exc)
    return exc.strerror + (f" ({exc.filename})" if exc.filename else "")


def limit(kind: int, soft: int) -> None:
    """Lower a resource limit, never above the hard limit we were started with."""
    _, hard = resource.getrlimit(kind)
    value = soft if hard == resource.RLIM_INFINITY else min(soft, hard)
    resource.setrlimit(kind, (value, value))


def set_limits(job: dict) -> None:
    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_CPU, int(job["cpu_seconds"]))
    limit(resource.RLIMIT_FSIZE, job["file_bytes"])
    limit(resource.RLIMIT_AS, job["memory_bytes"])


def become_unprivileged(job: dict, jail, readable: list[str], writable: list[str], report: Report | None) -> bool:
    """Drop to the job's unprivileged user when we are root and it can use the paths given;
    True when not root afterwards. Says why not on `report`."""
    if os.geteuid() != 0:
        return True
    blocked = "no unprivileged user to run as" if job["uid"] is None else None
    if blocked is None and (path := jail.can_act_as(job["uid"], job["gid"], readable, writable)) is not None:
        blocked = f"the unprivileged user cannot use {path}"
    if blocked is not None:
        if report is not None:
            report.line("note", blocked)
        return False
    jail.drop_privileges(job["uid"], job["gid"])
    return True


def interpreter_folders() -> list[str]:
    """The folders the solution's interpreter reads: its prefixes (with its shared library),
    its own folder, the standard library and the site-packages (this supervisor runs with
    -S, the solution without)."""
    prefixes = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    folders = [*prefixes, os.path.dirname(os.path.realpath(sys.executable)), *sys.path, *site.getsitepackages()]
    return sorted({os.path.realpath(folder) for folder in folders if os.path.isdir(folder)})


def site_packages() -> list[str]:
    """The interpreter's site-packages folders, for the solution's sys.path."""
    return [folder for folder in site.getsitepackages() if os.path.isdir(folder)]


def start_solution(job: dict, jail, fd: int, report: Report, output: int) -> None:
    """In the fork that becomes the solution: limits, privileges, descriptors, then exec."""
    try:
        python, script = os.path.realpath(sys.executable), job["script"]
        readable = [python, script] + interpreter_folders()
        set_limits(job)
        layers = ["rlimits"]
        if become_unprivileged(job, jail, readable, [job["workdir"]], report):
            layers.append("uid")
            limit(resource.RLIMIT_NPROC, job["processes"])
        jail.forbid_new_privileges()
        layers.append("no_new_privs")
        report.line("layers", " ".join(layers))
        os.chdir(job["workdir"])
        sources = (os.open(os.devnull, os.O_RDONLY), output, output, fd)
        moved = [fcntl.fcntl(source, fcntl.F_DUPFD, 100) for source in sources]  # clobbers nothing
        for target, source in enumerate(moved):
            os.dup2(source, target)
        os.closerange(4, resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # the report too
        environment = {"PATH": "/usr/bin:/bin", "HOME": job["workdir"], "TMPDIR": job["workdir"],
                       "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        os.execve(python, [python, "-I", "-B", "-S", script], environment)  # the bootstrap adds site-packages
    except BaseException as exc:
        report.line("note", f"the solution could not start: {type(exc).__name__}: {exc}")
    os._exit(2)


def run_init(job: dict, jail, fd: int, report: Report, in_pid_namespace: bool) -> None:
    """PID 1 of the sandbox: fork the solution, reap whatever it leaves, end when it ends."""
    jail.die_with_parent(None if in_pid_namespace else job["supervisor"])
    solution = os.fork()
    if solution == 0:
        start_solution(job, jail, fd, report, output=1)
    os.close(fd)
    while True:
        pid, status = os.wait()
        if pid == solution:
            report.line("exit", str(os.waitstatus_to_exitcode(status)))
            os._exit(0)  # as init: the kernel now kills every process left in the namespace


def main() -> None:
    job = json.loads(sys.stdin.buffer.read())
    report = Report(job["report_fd"])
    jail, protocol = load("sandbox_jail"), load("sandbox_solution")
    os.umask(0o022)
    layers: list[str] = []
    job.update(supervisor=os.getpid(), script=os.path.join(HERE, "sandbox_solution.py"), workdir=job["folder"])
    try:
        jail.enter_namespaces(None if job["uid"] is None else (job["uid"], job["gid"]))
        layers.append("netns")
        files = {name: open(os.path.join(HERE, name), "rb").read() for name in BOOTSTRAP}
        jail.enter_jail(job["folder"], interpreter_folders(), files, job["tmp_bytes"])
        layers.append("mountns")
        job.update(script=f"{jail.SCRIPTS}/sandbox_solution.py", workdir=jail.WORKDIR)
    except OSError as exc:
        report.line("note", f"no jail: {reason(exc)}")
    tester_end, solution_end = socket.socketpair()
    tester = os.fork()
    if tester == 0:
        solution_end.close()
        try:
            set_limits(job)
            become_unprivileged(job, jail, interpreter_folders(), [], None)  # it needs no privilege either
            jail.die_with_parent(job["supervisor"])
            run_tester(job, tester_end.fileno(), report, protocol)
        except BaseException as exc:
            report.line("note", f"the tester failed: {type(exc).__name__}: {exc}")
        os._exit(0)
    tester_end.close()
    try:
        jail.enter_pid_namespace()
        layers.append("pidns")
    except OSError as exc:
        report.line("note", f"no PID namespace: {reason(exc)}")
    report.line("layers", " ".join(layers))
    init = os.fork()
    if init == 0:
        run_init(job, jail, solution_end.fileno(), report, "pidns" in layers)
    solution_end.close()
    os.waitpid(tester, 0)
    deadline = time.monotonic() + INIT_GRACE_S  # the solution sees its channel close and ends
    while os.waitpid(init, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(init, signal.SIGKILL)
            os.waitpid(init, 0)  # returns once the namespace is empty
            break
        time.sleep(0.005)


if __name__ == "__main__":
    main()
