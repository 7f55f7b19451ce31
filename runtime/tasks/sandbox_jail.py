"""Kernel isolation for the sandbox: namespaces, a read-only root with a private /tmp, privilege drops.

Loaded by path by `sandbox_child.py` before any untrusted code exists; standard library only.
Every function raises OSError naming the step that failed, so the supervisor can report a
layer as missing instead of pretending it holds.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# statvfs f_flag bits -> mount flags a remount must keep (the kernel refuses to clear locked ones)
KEPT_FLAGS = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
              os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME}
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEVICES = ("null", "zero", "full", "random", "urandom")
SCRIPTS = "/sandbox"  # read-only folder in the new root holding the solution's bootstrap
WORKDIR = "/tmp"  # the only writable place in the new root

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)


def _check(result: int, what: str) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def mount(source: str | None, target: str, kind: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_bytes(source), _bytes(target), _bytes(kind), flags, _bytes(data)), f"mount {target}")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), f"prctl {option}")


NAMESPACE_NAMES = {CLONE_NEWUSER: "user", CLONE_NEWNS: "mount", CLONE_NEWNET: "network", CLONE_NEWIPC: "IPC",
                   CLONE_NEWUTS: "UTS", CLONE_NEWPID: "PID"}


def unshare(flags: int) -> None:
    names = ", ".join(name for flag, name in NAMESPACE_NAMES.items() if flags & flag)
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare ({names} namespaces)")


def enter_namespaces(unprivileged: tuple[int, int] | None) -> None:
    """New mount, network (no interfaces up, so also no abstract Unix sockets shared with the
    host), IPC and UTS namespaces. As root directly, or, where root may not (no
    CAP_SYS_ADMIN, as in many containers), inside a new user namespace mapping root and the
    `unprivileged` (uid, gid) to themselves; not as root, inside one mapping only our own
    ids, so nothing run later gains a privilege outside."""
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    uid, gid = os.geteuid(), os.getegid()
    if uid != 0:
        unshare(CLONE_NEWUSER | flags)
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as file:
                file.write(text)
        return
    try:
        unshare(flags)
    except OSError as exc:
        if exc.errno != errno.EPERM or unprivileged is None:
            raise
        _enter_mapped_user_namespace(flags, unprivileged)


def _enter_mapped_user_namespace(flags: int, unprivileged: tuple[int, int]) -> None:
    """Root without CAP_SYS_ADMIN: a user namespace where ids 0 and `unprivileged` are
    themselves. Mapping more than one's own id takes CAP_SETUID in the parent namespace,
    which we lose on entering, so a forked helper that stays outside writes the maps."""
    parent, (ready_read, ready_write), (done_read, done_write) = os.getpid(), os.pipe(), os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(ready_write)
        os.close(done_read)
        status = 1
        try:
            if os.read(ready_read, 1) == b"1":
                for name, id_ in (("uid_map", unprivileged[0]), ("gid_map", unprivileged[1])):
                    with open(f"/proc/{parent}/{name}", "w") as file:
                        file.write(f"0 0 1\n{id_} {id_} 1")
                status = 0
        finally:
            os._exit(status)
    os.close(ready_read)
    os.close(done_write)
    try:
        unshare(CLONE_NEWUSER | flags)
        os.write(ready_write, b"1")
    finally:
        os.close(ready_write)
        os.close(done_read)
        _, status = os.waitpid(helper, 0)
    if status != 0:
        raise OSError(errno.EPERM, "user namespace: could not map the unprivileged user")


def enter_pid_namespace() -> None:
    """Children forked from now on live in a new PID namespace; when its first one (the
    sandbox's init) ends, the kernel kills every process left in it."""
    unshare(CLONE_NEWPID)


def enter_jail(folder: str, read_only: list[str], files: dict[str, bytes], tmp_bytes: int) -> None:
    """Make `folder` (an empty directory) the root of this mount namespace: a small tmpfs
    holding read-only binds of the system folders and of `read_only`, the devices null, zero,
    full, random and urandom, `files` under SCRIPTS, and a fresh tmpfs of `tmp_bytes` at
    WORKDIR. The old root is detached afterwards: nothing else of the host is reachable."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "size=8m,mode=755")
    bound: list[str] = []
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), folder + path)
        elif os.path.isdir(path):
            _bind(path, folder + path)
            bound.append(path)
    for path in sorted(set(read_only), key=len):
        covering = [done for done in bound if path == done or path.startswith(done + "/")]
        if not covering or os.stat(path).st_dev != os.stat(covering[-1]).st_dev:  # binds do not take submounts
            _bind(path, folder + path)
            bound.append(path)
    os.mkdir(folder + "/dev", 0o755)
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            open(f"{folder}/dev/{name}", "w").close()
            mount(f"/dev/{name}", f"{folder}/dev/{name}", None, MS_BIND)
            mount(None, f"{folder}/dev/{name}", None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC)
    os.mkdir(folder + WORKDIR)
    mount("tmpfs", folder + WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_bytes},mode=1777")
    os.mkdir(folder + SCRIPTS, 0o755)
    for name, data in files.items():
        with open(f"{folder}{SCRIPTS}/{name}", "wb") as file:
            file.write(data)
        os.chmod(f"{folder}{SCRIPTS}/{name}", 0o644)
    _pivot_root(folder)
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _bind(source: str, target: str) -> None:
    """A read-only bind of the folder `source` at `target` (created 0755 with its parents)."""
    os.makedirs(target, 0o755, exist_ok=True)
    mount(source, target, None, MS_BIND)
    kept = os.statvfs(source).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    flags |= sum(flag for bit, flag in KEPT_FLAGS.items() if kept & bit)
    mount(None, target, None, flags)


def _pivot_root(folder: str) -> None:
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(errno.ENOSYS, f"pivot_root: no system call number known for {os.uname().machine}")
    os.chdir(folder)
    _check(_libc.syscall(ctypes.c_long(number), b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount the old root")  # the old root was stacked under "."
    os.chdir("/")


def can_act_as(uid: int, gid: int, readable: list[str], writable: list[str]) -> str | None:
    """None when `uid`/`gid` can read (and traverse) every path in `readable` and write to
    every one in `writable`; else the first path it cannot use. Needs root."""
    os.setegid(gid)
    os.seteuid(uid)
    try:
        for paths, mode in ((readable, os.R_OK), (writable, os.W_OK | os.X_OK)):
            for path in paths:
                wanted = mode | (os.X_OK if os.path.isdir(path) else 0)
                if not os.access(path, wanted, effective_ids=True):
                    return path
        return None
    finally:
        os.seteuid(0)
        os.setegid(0)


def drop_privileges(uid: int, gid: int) -> None:
    """Become `uid`/`gid` for good, with no supplementary groups (root only). The kernel
    clears every capability when all of root's user ids change."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def forbid_new_privileges() -> None:
    """No set-user-id bit or file capability can raise the privileges of what this process runs."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def die_with_parent(parent: int | None) -> None:
    """SIGKILL this process when its parent ends, and end now if the parent (pid `parent`;
    None when it lies outside our PID namespace, where getppid() says 0) already has."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)
