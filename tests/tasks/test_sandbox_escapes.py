"""Attacks on the sandbox: forging the verdict, and reaching the machine past the audit hook (ctypes, raw calls)."""

from __future__ import annotations

import os
import socket
import struct
import sys
import textwrap
import time
from pathlib import Path

import pytest

from neuromas.runtime.tasks.sandbox import Limits, Outcome, Status, run_python, run_tests, sandbox_probe

QUICK = Limits(timeout_s=3.0)
pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("sandbox_temp")]
LIBC = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def run(program: str, limits: Limits = QUICK) -> Outcome:
    return run_python(textwrap.dedent(program), limits)


# --- the verdict cannot be forged -------------------------------------------------------------

FORGERIES = {
    "the report object, found with gc": """
        import gc
        next(o for o in gc.get_objects() if type(o).__name__ == 'Report').finish('passed')
    """,
    "any object that reports, found with gc": """
        import gc
        for o in gc.get_objects():
            for name in ('finish', 'line', 'verdict'):
                try:
                    getattr(o, name)('passed')
                except BaseException:
                    pass
    """,
    "the bootstrap's functions patched": """
        import sys
        boot = sys.modules['__main__']
        boot.send(3, {'end': ['passed', '']})
        boot.send(3, {'return': boot.encode([])})
        boot.encode = lambda value, depth=0: [4, 3, 2]
        boot.serve = lambda function: None
    """,
    "os._exit(0) early": "import os\nos._exit(0)\n",
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "sys.exit(0) in the function": "import sys\ndef incr_list(l):\n    sys.exit(0)\n",
    "the verdict's words on every descriptor": """
        import os, struct, json
        for text in (b'verdict passed\\n', b'passed\\n'):
            for fd in range(0, 64):
                try:
                    os.write(fd, text)
                except OSError:
                    pass
        frame = json.dumps({'end': ['passed', '']}).encode()
        os.write(3, struct.pack('>I', len(frame)) + frame)
    """,
    "SystemExit raised in __del__": """
        class Bomb:
            def __del__(self):
                raise SystemExit(0)
        bombs = [Bomb() for _ in range(3)]
        del bombs
        def incr_list(l):
            Bomb()
            return [x + 2 for x in l]
    """,
    "builtins and assert patched": """
        import builtins, sys
        builtins.AssertionError = type('AssertionError', (Warning,), {})
        builtins.len = builtins.abs = lambda value: 0
        sys.settrace(lambda *args: None)
        sys.excepthook = lambda *args: None
    """,
    "a result whose __eq__ is always true": """
        class Equal:
            def __eq__(self, other):
                return True
        def incr_list(l):
            return Equal()
    """,
    "a list subclass whose __eq__ is always true": """
        class Equal(list):
            def __eq__(self, other):
                return True
        def incr_list(l):
            return Equal([0])
    """,
    "an int subclass whose __eq__ is always true": """
        class Equal(int):
            def __eq__(self, other):
                return True
        def incr_list(l):
            return Equal(0)
    """,
    "SIGKILL to every process it can see, past the hook": """
        import ctypes, os
        libc = ctypes.CDLL(None)
        for pid in [-1] + [pid for pid in range(1, 300) if pid != os.getpid()]:
            libc.kill(pid, 9)
    """,
}


@pytest.mark.parametrize("attack", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_failing_solution_cannot_forge_a_pass(attack, incr_list):
    attack = textwrap.dedent(attack)
    outcome = incr_list.judge(incr_list.wrong + attack if "def incr_list" not in attack else attack)
    assert not outcome.passed, outcome


def test_the_same_tricks_leave_a_correct_solution_passing(incr_list):
    """The forgeries above fail because they cannot reach the verdict, not because they crash the sandbox."""
    patched = "import builtins\nbuiltins.AssertionError = type('AssertionError', (Warning,), {})\n"
    assert incr_list.judge(incr_list.solution + patched).passed
    reporters = textwrap.dedent(FORGERIES["any object that reports, found with gc"])
    assert incr_list.judge(incr_list.solution + reporters).passed


def test_the_solution_never_holds_the_tests(incr_list):
    marker_tests, marker_solution = "TESTS-ARE-HIDDEN-3141", "SOLUTION-IS-VISIBLE-2718"
    tests = f"# {marker_tests}\n" + incr_list.tests
    solution = incr_list.solution + textwrap.dedent(f"""
        import gc, sys
        # {marker_solution}
        def texts():
            frame = sys._getframe()
            while frame is not None:
                yield from map(repr, frame.f_locals.values())
                frame = frame.f_back
            for module in list(sys.modules.values()):
                yield from map(repr, vars(module).values())
            for item in gc.get_objects():
                yield repr(item)[:100000] if isinstance(item, (dict, list, tuple)) else ""
        seen = " ".join(texts())
        for parts in ({[marker_tests[:6], marker_tests[6:]]!r}, {[marker_solution[:6], marker_solution[6:]]!r}):
            marker = "".join(parts)  # joined only now, so no constant in the source holds it
            print("FOUND", marker[:5] if marker in seen else "nothing")
    """)
    outcome = run_tests(solution, tests, "incr_list", QUICK)
    assert outcome.passed, outcome
    assert "FOUND SOLUT" in outcome.output  # the search works
    assert "FOUND TESTS" not in outcome.output


def test_the_solution_holds_no_descriptor_but_its_own():
    outcome = run(LIBC + textwrap.dedent("""
        open_fds = [fd for fd in range(0, 4096) if libc.fcntl(fd, 1) != -1]  # F_GETFD
        assert open_fds == [0, 1, 2, 3], open_fds  # stdin, output twice, the channel: no report
    """))
    assert outcome.status is Status.PASSED, outcome


@pytest.mark.sandbox_layer("pidns")
def test_the_solution_sees_no_other_process():
    outcome = run(LIBC + textwrap.dedent("""
        import errno, os
        visible = [pid for pid in range(1, 4096) if libc.kill(pid, 0) == 0 or ctypes.get_errno() == errno.EPERM]
        assert visible == sorted({1, os.getpid()}), visible  # its init and itself: no tester, no host
    """))
    assert outcome.status is Status.PASSED, outcome


# --- privileges -------------------------------------------------------------------------------

def test_the_solution_runs_unprivileged_and_cannot_read_secrets():
    outcome = run("""
        import os
        assert os.getuid() != 0 and os.geteuid() != 0 and os.getgroups() in ([], [os.getgid()])
        for attempt in (lambda: os.setuid(0), lambda: open("/etc/shadow").read()):
            try:
                attempt()
            except OSError:
                continue
            raise SystemExit("escaped")
    """)
    assert outcome.status is Status.PASSED, outcome
    if os.geteuid() == 0:
        assert "uid" in outcome.layers and "no_new_privs" in outcome.layers


# --- escapes past the audit hook ---------------------------------------------------------------

def test_posixsubprocess_fork_exec_runs_no_shell_that_reaches_the_host(outside):
    target = outside / "from-a-shell.txt"
    outcome = run(f"""
        import _posixsubprocess, os, subprocess
        errpipe_read, errpipe_write = os.pipe()
        try:
            pid = _posixsubprocess.fork_exec(
                [b"/bin/sh", b"-c", b"echo pwned > {target}"], [b"/bin/sh"], True, (errpipe_write,), None, None,
                -1, -1, -1, -1, -1, -1, errpipe_read, errpipe_write, False, False, -1, None, None, None, -1, None,
                subprocess._USE_VFORK)
            os.close(errpipe_write)
            failure = os.read(errpipe_read, 1000)
            print("exec:", failure or "started", flush=True)
            os.waitpid(pid, 0)
        except OSError as exc:
            print("exec:", exc, flush=True)
    """)
    assert not target.exists()
    if "seccomp" in outcome.layers:
        assert "exec:" in outcome.output and "started" not in outcome.output, outcome.output


def test_ctypes_system_and_open_write_nothing_outside(outside):
    targets = [outside / "system.txt", outside / "open.txt", Path("/tmp") / f"neuromas-escape-{os.getpid()}.txt"]
    try:
        outcome = run(LIBC + textwrap.dedent(f"""
            print("system:", libc.system(b"echo pwned > {targets[0]}; echo pwned > {targets[2]}"), flush=True)
            for path in ({str(targets[1])!r}, {str(targets[2])!r}):
                print("open:", libc.open(path.encode(), 0o101, 0o644), ctypes.get_errno(), flush=True)
        """))
        assert [target for target in targets if target.exists()] == []  # /tmp in there is not this /tmp
        assert "open: -1" in outcome.output.splitlines()[1], outcome.output
    finally:
        targets[2].unlink(missing_ok=True)


@pytest.mark.sandbox_layer("mountns")
def test_the_host_filesystem_is_out_of_reach_and_the_rest_read_only():
    probe = Path(os.path.realpath(sys.prefix)) / f"neuromas-sandbox-probe-{os.getpid()}"
    outcome = run(LIBC + textwrap.dedent(f"""
        import os
        assert not {{"etc", "proc", "sys", "home", "work", "var", "run"}} & set(os.listdir("/")), os.listdir("/")
        for path in ({str(probe)!r}, "/usr/neuromas-probe", "/sandbox/sandbox_solution.py", "/dev/neuromas-probe"):
            assert libc.open(path.encode(), 0o101, 0o644) == -1, path
        open("/tmp/mine.txt", "w").write("the private /tmp is writable")
        open("/dev/null", "w").write("and the null device")
        assert len(open("/dev/urandom", "rb").read(8)) == 8
    """))
    assert outcome.status is Status.PASSED, outcome
    assert not probe.exists()


def connect_past_the_hook(addresses: list[tuple[int, bytes]]) -> str:
    """A program connecting with libc's socket() and connect(), which raise no audit event, to
    each (family, raw sockaddr); it prints 'connect: RESULT' for each."""
    return LIBC + textwrap.dedent(f"""
        for family, address in {[(int(family), address) for family, address in addresses]!r}:
            fd = libc.socket(family, 1, 0)  # SOCK_STREAM
            print("connect:", libc.connect(fd, address, len(address)), ctypes.get_errno(), flush=True)
    """)


def unix_address(name: bytes) -> bytes:
    return struct.pack("=H", socket.AF_UNIX) + name + (b"" if name.startswith(b"\0") else b"\0")


def connections(servers: list[socket.socket]) -> int:
    count = 0
    for server in servers:
        try:
            server.accept()[0].close()
            count += 1
        except BlockingIOError:
            pass
    return count


@pytest.mark.sandbox_layer("netns")
@pytest.mark.sandbox_layer("mountns")
def test_sockets_outside_cannot_be_reached_past_the_hook(tmp_path, capsys):
    """A Unix socket by path and by abstract name, and TCP on the loopback: the same program
    that connects to all three from here reaches none of them from the sandbox."""
    servers = [socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX), socket.socket()]
    try:
        path, abstract = str(tmp_path / "listener.sock").encode(), f"\0neuromas-sandbox-{os.getpid()}".encode()
        servers[0].bind(path)
        servers[1].bind(abstract)
        servers[2].bind(("127.0.0.1", 0))
        for server in servers:
            server.listen()
            server.setblocking(False)
        port = servers[2].getsockname()[1]
        tcp = struct.pack("=H", socket.AF_INET) + struct.pack(">H", port) + bytes([127, 0, 0, 1]) + bytes(8)
        program = connect_past_the_hook([(socket.AF_UNIX, unix_address(path)),
                                         (socket.AF_UNIX, unix_address(abstract)), (socket.AF_INET, tcp)])
        exec(compile(program, "<host control>", "exec"), {})
        assert capsys.readouterr().out.count("connect: 0 ") == 3 and connections(servers) == 3  # the program works
        outcome = run(program)
        assert outcome.output.count("connect: -1") == 3, outcome
        assert connections(servers) == 0  # nothing got through
    finally:
        for server in servers:
            server.close()


def processes_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def wait_until_gone(name: str, seconds: float = 3.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := processes_named(name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


DETACHED_CHILD = LIBC + """
pid = libc.fork()  # libc's fork: no audit event
if pid == 0:
    libc.setsid()
    if libc.fork() == 0:  # and a grandchild, for good measure
        libc.setsid()
    libc.prctl(15, {name!r}.encode(), 0, 0, 0)  # PR_SET_NAME, so the host can find it
    libc.sleep(20)
    libc.system(b"touch /tmp/late; touch {late}")
    libc._exit(0)
print("forked", pid, flush=True)
"""


@pytest.mark.sandbox_layer("pidns")
@pytest.mark.parametrize("ending", ["ends", "times out"])
def test_a_detached_child_dies_with_the_sandbox(ending, outside):
    name = f"nm-esc-{os.getpid() % 100000}-{len(ending)}"
    late = outside / "late.txt"
    program = DETACHED_CHILD.format(name=name, late=late) + ("while True:\n    pass\n" if ending == "times out" else "")
    outcome = run_python(program, Limits(timeout_s=2.0))
    assert "forked" in outcome.output, outcome
    assert outcome.status is (Status.TIMEOUT if ending == "times out" else Status.PASSED)
    assert wait_until_gone(name) == [], "a child of the sandbox outlived it"
    assert not late.exists()


def test_signalling_the_parent_through_a_pidfd_harms_no_one():
    outcome = run("""
        import os, signal
        for pid in (os.getppid(), 1):
            try:
                signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL)
                print("signalled", pid, flush=True)
            except OSError as exc:
                print("refused", pid, exc.errno, flush=True)
    """)
    assert outcome.status is Status.PASSED, outcome  # the run ended normally: nothing it needs was killed
    assert "signalled" not in outcome.output, outcome.output  # and this process lives; sandbox_temp checks cleanup


def test_the_probe_matches_a_fresh_run():
    assert run("pass").layers == sandbox_probe().layers
