"""A sandbox job on stdin -> limits and isolation on this fresh interpreter, then the untrusted program.

Started by `neuromas.runtime.tasks.sandbox` as `python -I -B sandbox_child.py`; never imported.
Standard library only, so it runs under any interpreter. It reads one JSON message from
stdin (the program, a nonce, the limits, the sandbox directory, the report descriptor),
then, before any untrusted code runs: sets resource limits, enters a new network
namespace where the kernel allows, gives up root for an unprivileged user where the
interpreter's files stay readable, and installs an audit hook. Lines written to the
report descriptor: `layers ...` (which of those took effect), `forbidden <event> <what>`
(each refused operation, the first few) and finally `<nonce> <status> <detail>`, which
only this code knows how to write.
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import json
import linecache
import os
import resource
import sys
import traceback

PROGRAM_NAME = "<program>"
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
ALWAYS_WRITABLE = frozenset({"/dev/null"})
MAX_REPORTED_VIOLATIONS = 5

# Audit event -> (position of a path, position of its dir_fd or None, follow a final symlink).
PATH_EVENTS: dict[str, tuple[tuple[int, int | None, bool], ...]] = {
    "os.remove": ((0, 1, False),),
    "os.rmdir": ((0, 1, False),),
    "os.mkdir": ((0, 2, False),),
    "os.rename": ((0, 2, False), (1, 3, False)),
    "os.link": ((0, 2, False), (1, 3, False)),
    "os.symlink": ((1, 2, False),),
    "os.truncate": ((0, None, True),),
    "os.chmod": ((0, 2, True),),
    "os.chown": ((0, 3, True),),
    "os.utime": ((0, 3, True),),
    "os.setxattr": ((0, None, True),),
    "os.removexattr": ((0, None, True),),
    "shutil.rmtree": ((0, 1, False),),
    "sqlite3.connect": ((0, None, True),),
}
NETWORK_EVENTS = frozenset(
    {
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "socket.getnameinfo",
        "socket.sethostname",
    }
)
PROCESS_EVENTS = frozenset(
    {
        "os.fork",
        "os.forkpty",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.system",
        "os.killpg",
        "subprocess.Popen",
        "pty.spawn",
        "resource.setrlimit",
        "resource.prlimit",
    }
)


class Report:
    """Writes lines to the parent's report file; the closing verdict carries the nonce."""

    def __init__(self, fd: int, nonce: str) -> None:
        self._fd = fd
        self._nonce = nonce
        self._write = os.write
        self._exit = os._exit
        self.violations = 0

    def line(self, text: str) -> None:
        self._write(self._fd, (" ".join(text.split()) + "\n").encode("utf-8", "replace"))

    def forbidden(self, event: str, what: str) -> None:
        self.violations += 1
        if self.violations <= MAX_REPORTED_VIOLATIONS:
            self.line(f"forbidden {event} {what[:300]}")

    def finish(self, status: str, detail: str = "") -> None:
        """Write the verdict and end the process at once (no atexit hooks, no waiting for threads)."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        self.line(f"{self._nonce} {status} {detail[:500]}")
        self._exit(0)


def limit(kind: int, soft: int, hard: int | None = None) -> None:
    """Set a resource limit, never above the hard limit we were started with."""
    hard = soft if hard is None else hard
    _, current = resource.getrlimit(kind)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(kind, (soft, hard))


def set_limits(job: dict) -> None:
    limit(resource.RLIMIT_CORE, 0)
    cpu = int(job["cpu_seconds"])
    limit(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU first, SIGKILL a second later
    limit(resource.RLIMIT_FSIZE, job["file_bytes"])


def unshare(flags: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(flags) == 0
    except (OSError, AttributeError):
        return False


def enter_user_network_namespace() -> bool:
    """A new user and network namespace for an unprivileged process, the same ids inside."""
    uid, gid = os.geteuid(), os.getegid()
    if not unshare(CLONE_NEWUSER | CLONE_NEWNET):
        return False
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                       ("/proc/self/gid_map", f"{gid} {gid} 1")):
        try:
            with open(path, "w") as file:
                file.write(text)
        except OSError:
            pass  # still isolated from the network; ids just show as the overflow id
    return True


def drop_privileges(uid: int, gid: int, root: str) -> bool:
    """Become `uid` for good, but only if every import path stays readable and the sandbox
    directory writable for it (an interpreter under /root would not be)."""
    if os.geteuid() != 0:
        return False
    folders = [entry for entry in sys.path if os.path.isdir(entry)]  # decided as root
    groups = os.getgroups()
    os.setgroups([])
    os.setegid(gid)
    os.seteuid(uid)
    try:
        usable = all(os.access(folder, os.R_OK | os.X_OK, effective_ids=True) for folder in folders) and os.access(
            root, os.W_OK | os.X_OK, effective_ids=True
        )
    finally:
        os.seteuid(0)
        os.setegid(0)
    if not usable:
        os.setgroups(groups)
        return False
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    return True


def make_hook(root: str, report: Report):
    """An audit hook refusing network use, process creation, limit changes, and writes or
    removals outside `root`; each refusal is reported before it raises PermissionError."""
    realpath, normpath, join, split, isabs = (os.path.realpath, os.path.normpath, os.path.join,
                                              os.path.split, os.path.isabs)
    fsdecode, getcwd, readlink, getpid = os.fsdecode, os.getcwd, os.readlink, os.getpid

    def resolve(path: object, dir_fd: object, follow: bool) -> str | None:
        if isinstance(path, int):
            return None  # an open descriptor: opening it was checked
        try:
            text = fsdecode(path)
            if not isabs(text):
                has_fd = isinstance(dir_fd, int) and dir_fd >= 0
                text = join(readlink(f"/proc/self/fd/{dir_fd}") if has_fd else getcwd(), text)
            if follow:
                return realpath(text)
            head, tail = split(normpath(text))
            return normpath(join(realpath(head), tail))
        except (OSError, TypeError, ValueError):
            return "<unresolvable path>"

    def outside(path: str | None) -> bool:
        return path is not None and path != root and not path.startswith(root + os.sep) and path not in ALWAYS_WRITABLE

    def refuse(event: str, what: str) -> None:
        report.forbidden(event, what)
        raise PermissionError(errno.EACCES, f"sandbox: {event} is not allowed ({what})")

    def hook(event: str, args: tuple) -> None:  # what it calls raises no audit events itself
        if event == "open":
            path, _mode, flags = args
            if isinstance(flags, int) and flags & WRITE_FLAGS:
                resolved = resolve(path, None, True)
                if outside(resolved):
                    refuse(event, f"write to {resolved}")
        elif event in PATH_EVENTS:
            for position, fd_position, follow in PATH_EVENTS[event]:
                dir_fd = args[fd_position] if fd_position is not None and fd_position < len(args) else None
                resolved = resolve(args[position], dir_fd, follow)
                if outside(resolved):
                    refuse(event, f"on {resolved}")
        elif event in NETWORK_EVENTS:
            refuse(event, repr(args[1] if event in ("socket.connect", "socket.bind") else args)[:200])
        elif event in PROCESS_EVENTS:
            refuse(event, repr(args)[:200])
        elif event == "os.kill" and args[0] != getpid():
            refuse(event, f"pid {args[0]}")

    return hook


def run_program(source: str, report: Report) -> None:
    """Execute the program as __main__ and finish with its verdict: passed only when it runs
    to the end (sys.exit() anywhere counts as failed)."""
    linecache.cache[PROGRAM_NAME] = (len(source), None, source.splitlines(True), PROGRAM_NAME)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(source, PROGRAM_NAME, "exec"), namespace)
    except MemoryError:
        report.finish("memory", "MemoryError")
    except SystemExit as exc:
        report.finish("failed", f"exited early: SystemExit({exc.code!r})")
    except BaseException as exc:
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        try:
            traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)  # from the program's frame
            detail = f"{type(exc).__name__}: {exc}"
        except BaseException:
            detail = type(exc).__name__
        report.finish("failed", detail)
    report.finish("passed")


def main() -> None:
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # Python < 3.11 puts this script's folder first; keep its modules out
    job = json.loads(sys.stdin.buffer.read())
    report = Report(job["report_fd"], job["nonce"])
    root = job["root"]
    set_limits(job)
    layers = ["rlimits"]
    network = os.geteuid() == 0 and unshare(CLONE_NEWNET)
    if job.get("uid") is not None and drop_privileges(job["uid"], job["gid"], root):
        layers.append("uid")
        limit(resource.RLIMIT_NPROC, job["processes"])
    network = network or enter_user_network_namespace()
    if network:
        layers.append("netns")
    limit(resource.RLIMIT_AS, job["memory_bytes"])
    sys.addaudithook(make_hook(root, report))
    layers.append("audit")
    report.line("layers " + " ".join(layers))
    run_program(job["program"], report)


if __name__ == "__main__":
    main()
