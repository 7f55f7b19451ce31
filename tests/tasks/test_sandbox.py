"""The sandbox: verdicts for passing, failing, runaway and misbehaving programs, and cleanup."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from neuromas.runtime.tasks.sandbox import Limits, Status, run_python, sandbox_layers

QUICK = Limits(timeout_s=1.0)

SOLUTION = '''
def incr_list(l: list):
    """Return list with elements incremented by 1."""
    return [x + 1 for x in l]
'''
WRONG_SOLUTION = '''
def incr_list(l: list):
    return [x + 2 for x in l]
'''
TEST = '''
def check(candidate):
    assert candidate([]) == []
    assert candidate([3, 2, 1]) == [4, 3, 2]
    assert candidate([5, 2, 5, 2, 3, 3, 9, 0, 123]) == [6, 3, 6, 3, 4, 4, 10, 1, 124]

check(incr_list)
'''


def run(program: str, limits: Limits = QUICK, **kwargs) -> object:
    return run_python(textwrap.dedent(program), limits, **kwargs)


def gone(pid: int) -> bool:
    """True once `pid` no longer runs (absent, or a zombie waiting for its reaper)."""
    for _ in range(100):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


def test_a_correct_solution_passes_and_its_output_is_kept():
    outcome = run(SOLUTION + TEST + "print('all good')")
    assert outcome.status is Status.PASSED and outcome.passed
    assert "all good" in outcome.output
    assert {"rlimits", "audit"} <= set(outcome.layers)


def test_a_wrong_solution_fails_with_the_assertion():
    outcome = run(WRONG_SOLUTION + TEST)
    assert outcome.status is Status.FAILED
    assert outcome.detail.startswith("AssertionError")
    assert "candidate([3, 2, 1])" in outcome.output  # the traceback shows the failing line


@pytest.mark.parametrize(
    ("program", "status", "detail"),
    [
        ("def broken(:\n    pass", Status.FAILED, "SyntaxError"),
        ("import sys\nsys.exit(0)\nassert False", Status.FAILED, "exited early"),
        ("import os\nos._exit(0)", Status.CRASHED, "exited with code 0"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", Status.CRASHED, "SIGSEGV"),
    ],
)
def test_only_running_to_the_end_passes(program, status, detail):
    outcome = run(program)
    assert outcome.status is status
    assert detail in outcome.detail


def test_an_endless_loop_times_out_and_leaves_no_process():
    outcome = run("import os\nprint(os.getpid(), flush=True)\nwhile True:\n    pass")
    assert outcome.status is Status.TIMEOUT
    assert 1.0 <= outcome.seconds < 3.0
    assert gone(int(outcome.output.split()[0]))


def test_a_process_started_behind_the_hooks_back_is_killed_with_the_group():
    outcome = run("""
        import ctypes, time
        pid = ctypes.CDLL(None).fork()  # libc's fork: no audit event
        if pid == 0:
            while True:
                time.sleep(1)
        print(pid, flush=True)
    """)
    assert outcome.status is Status.PASSED
    assert gone(int(outcome.output.split()[0]))


def test_a_huge_allocation_runs_out_of_memory():
    outcome = run("buffer = bytearray(8 * 2**30)\nbuffer[-1] = 1")
    assert outcome.status is Status.MEMORY
    assert outcome.seconds < 3.0


def test_files_inside_the_sandbox_are_allowed_and_removed_afterwards():
    outcome = run("""
        import os, tempfile
        with open("scratch.txt", "w") as file:
            file.write("x")
        os.mkdir("folder")
        os.rename("scratch.txt", "folder/moved.txt")
        tempfile.mkstemp()
        print(os.getcwd())
    """)
    assert outcome.status is Status.PASSED
    folder = outcome.output.strip()
    assert folder.startswith(os.path.realpath(os.environ.get("TMPDIR", "/tmp")))
    assert not os.path.exists(folder)


@pytest.mark.parametrize("where", ["tmp", "home"])
def test_a_write_outside_is_refused(tmp_path, where):
    base = tmp_path if where == "tmp" else Path.home()
    target = base / f"neuromas-sandbox-escape-{os.getpid()}-{time.monotonic_ns()}.txt"
    try:
        outcome = run(f"open({str(target)!r}, 'w').write('escaped')")
        assert outcome.status is Status.FORBIDDEN
        assert str(target) in outcome.detail
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_removing_or_renaming_outside_is_refused_even_when_the_error_is_caught(tmp_path):
    victim = tmp_path / "keep" / "file.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    outcome = run(f"""
        import os, shutil
        for attempt in (lambda: os.remove({str(victim)!r}), lambda: shutil.rmtree({str(victim.parent)!r}),
                        lambda: os.rename({str(victim)!r}, "stolen.txt")):
            try:
                attempt()
            except PermissionError:
                pass
    """)
    assert outcome.status is Status.FORBIDDEN
    assert victim.read_text() == "keep me"


def test_a_symlink_does_not_lead_a_write_outside(tmp_path):
    target = tmp_path / "via-link.txt"
    outcome = run(f"""
        import os
        os.symlink({str(target)!r}, "link.txt")
        open("link.txt", "w").write("escaped")
    """)
    assert outcome.status is Status.FORBIDDEN
    assert not target.exists()


def test_a_connection_to_a_listening_local_port_is_refused():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        outcome = run(f"""
            import socket
            with socket.socket() as client:
                client.settimeout(0.5)
                client.connect(("127.0.0.1", {port}))
        """)
        assert outcome.status is Status.FORBIDDEN
        assert outcome.detail.startswith("socket.connect")
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing got through


def test_a_name_lookup_is_refused():
    outcome = run("import socket\nsocket.getaddrinfo('localhost', 80)")
    assert outcome.status is Status.FORBIDDEN
    assert outcome.detail.startswith("socket.getaddrinfo")


def test_starting_a_process_is_refused():
    outcome = run("import subprocess\nsubprocess.run(['sleep', '30'])")
    assert outcome.status is Status.FORBIDDEN
    assert outcome.detail.startswith("subprocess.Popen")


def test_raising_a_limit_is_refused():
    outcome = run("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))")
    assert outcome.status is Status.FORBIDDEN


@pytest.mark.skipif("netns" not in sandbox_layers(), reason="no network namespace on this machine")
def test_the_network_namespace_has_no_interface_but_loopback():
    outcome = run("""
        lines = open("/proc/net/dev").read().splitlines()[2:]
        names = {line.split(":")[0].strip() for line in lines}
        assert names == {"lo"}, names
    """)
    assert outcome.status is Status.PASSED, outcome.detail


def _unprivileged_python() -> str | None:
    if os.geteuid() != 0:
        return None
    for python in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(python) and "uid" in sandbox_layers(python):
            return python
    return None


@pytest.mark.skipif(_unprivileged_python() is None, reason="not root, or no interpreter readable by nobody")
def test_root_runs_the_program_as_an_unprivileged_user():
    outcome = run("import os\nassert os.getuid() != 0 and os.geteuid() != 0\nopen('mine.txt', 'w')",
                  python=_unprivileged_python())
    assert outcome.status is Status.PASSED, outcome.detail
