"""What the solution process installs on itself before the untrusted source runs: a seccomp filter and an audit hook.

Loaded by path by `sandbox_solution.py`; standard library only.

- The seccomp filter (x86_64 and aarch64) makes the kernel refuse, with EPERM, starting
  programs (execve, execveat), debugging or reading other processes (ptrace,
  process_vm_readv/writev), mounting, changing root or namespaces, and the rarely needed
  kernel interfaces that widen the attack surface (bpf, perf events, keyrings,
  userfaultfd, io_uring, modules, kexec, file handles). No library call gets around it;
  forks and threads stay allowed (the PID namespace contains them).
- The audit hook (PEP 578) refuses, at the Python level, network use, process creation,
  signals to other processes, rlimit changes, and writes outside the working directory,
  and reports each refusal so the run counts as "forbidden". It lives in the same
  interpreter as the untrusted code, so ctypes or patching get past it: it reports intent,
  the kernel layers are the guarantee.
"""

from __future__ import annotations

import ctypes
import errno
import os

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x06
X32_SYSCALL_BIT = 0x40000000
# machine -> (audit architecture, refused system calls by number)
REFUSED_SYSCALLS = {
    "x86_64": (0xC000003E, {
        "execve": 59, "execveat": 322, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308,
        "bpf": 321, "perf_event_open": 298, "add_key": 248, "request_key": 249, "keyctl": 250,
        "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "name_to_handle_at": 303, "open_by_handle_at": 304, "open_tree": 428,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433}),
    "aarch64": (0xC00000B7, {
        "execve": 221, "execveat": 281, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268,
        "bpf": 280, "perf_event_open": 241, "add_key": 217, "request_key": 218, "keyctl": 219,
        "userfaultfd": 282, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "name_to_handle_at": 264, "open_by_handle_at": 265, "open_tree": 428,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433}),
}


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def seccomp_program(machine: str) -> list[tuple[int, int, int, int]]:
    """The BPF program as (code, jt, jf, k): another architecture is killed, a refused
    call (or any x32 call) gets EPERM, the rest is allowed."""
    arch, refused = REFUSED_SYSCALLS[machine]
    numbers = sorted(set(refused.values()))
    checks = [(BPF_JGE_K, X32_SYSCALL_BIT)] if machine == "x86_64" else []
    checks += [(BPF_JEQ_K, number) for number in numbers]
    program = [(BPF_LD_W_ABS, 0, 0, 4), (BPF_JEQ_K, 1, 0, arch), (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
               (BPF_LD_W_ABS, 0, 0, 0)]
    for index, (code, k) in enumerate(checks):
        program.append((code, len(checks) - index, 0, k))  # jump over the rest and the allow, to the refusal
    program += [(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW), (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM)]
    return program


def install_seccomp() -> bool:
    """Install the filter on this process (and all it starts); False where unsupported."""
    machine = os.uname().machine
    if machine not in REFUSED_SYSCALLS:
        return False
    program = seccomp_program(machine)
    filters = (SockFilter * len(program))(*(SockFilter(*instruction) for instruction in program))
    fprog = SockFprog(len(program), ctypes.cast(filters, ctypes.POINTER(SockFilter)))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) == 0


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
ALWAYS_WRITABLE = frozenset({"/dev/null", "/dev/full", "/dev/zero"})
MAX_REPORTED = 5
# Audit event -> (position of a path, position of its dir_fd or None, follow a final symlink).
PATH_EVENTS: dict[str, tuple[tuple[int, int | None, bool], ...]] = {
    "os.remove": ((0, 1, False),), "os.rmdir": ((0, 1, False),), "os.mkdir": ((0, 2, False),),
    "os.rename": ((0, 2, False), (1, 3, False)), "os.link": ((0, 2, False), (1, 3, False)),
    "os.symlink": ((1, 2, False),), "os.truncate": ((0, None, True),), "os.chmod": ((0, 2, True),),
    "os.chown": ((0, 3, True),), "os.utime": ((0, 3, True),), "os.setxattr": ((0, None, True),),
    "os.removexattr": ((0, None, True),), "shutil.rmtree": ((0, 1, False),), "sqlite3.connect": ((0, None, True),),
}
NETWORK_EVENTS = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
                            "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo", "socket.sethostname"})
PROCESS_EVENTS = frozenset({"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.killpg",
                            "subprocess.Popen", "pty.spawn", "resource.setrlimit", "resource.prlimit"})


def make_hook(root: str, notify):
    """An audit hook refusing network use, process creation, limit changes, signals to other
    processes, and writes or removals outside `root`; each refusal goes to `notify` (the
    first few) before PermissionError is raised."""
    realpath, normpath, join, split, isabs = (os.path.realpath, os.path.normpath, os.path.join,
                                              os.path.split, os.path.isabs)
    fsdecode, getcwd, readlink, getpid = os.fsdecode, os.getcwd, os.readlink, os.getpid
    refusals = [0]

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
            return None  # e.g. a dir_fd without /proc to name it: the read-only root still holds

    def outside(path: str | None) -> bool:
        return path is not None and path != root and not path.startswith(root + os.sep) and path not in ALWAYS_WRITABLE

    def refuse(event: str, what: str) -> None:
        refusals[0] += 1
        if refusals[0] <= MAX_REPORTED:
            notify(" ".join(f"{event} {what}"[:300].split()))
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
