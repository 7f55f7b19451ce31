"""The sandbox: verdicts for passing, failing, runaway and misbehaving programs, and cleanup.

Attacks on the verdict and on the machine are in test_sandbox_escapes.py, the layers in test_sandbox_layers.py.
"""

from __future__ import annotations

import socket
import sys
import textwrap

import pytest

from neuromas.runtime.tasks.sandbox import Limits, Outcome, Status, run_python

QUICK = Limits(timeout_s=2.0)
pytestmark = [pytest.mark.sandbox, pytest.mark.usefixtures("sandbox_temp")]


def run(program: str, limits: Limits = QUICK) -> Outcome:
    return run_python(textwrap.dedent(program), limits)


def test_a_correct_solution_passes_and_its_output_is_kept(incr_list):
    outcome = incr_list.judge(incr_list.solution + "print('all good')")
    assert outcome.status is Status.PASSED and outcome.passed, outcome
    assert "all good" in outcome.output
    assert {"rlimits", "uid", "audit"} <= set(outcome.layers)


def test_the_solution_runs_this_interpreter_with_its_packages():
    outcome = run(f"""
        import sys, pluggy
        assert sys.version == {sys.version!r} and sys.prefix == {sys.prefix!r}, (sys.version, sys.prefix)
    """)
    assert outcome.status is Status.PASSED, outcome


def test_a_wrong_solution_fails_with_the_assertion_and_its_line(incr_list):
    outcome = incr_list.judge(incr_list.wrong)
    assert outcome.status is Status.FAILED
    assert outcome.detail.startswith("AssertionError")
    assert "candidate([3, 2, 1])" in outcome.output  # the tester's traceback shows the failing line
    assert "at <tests>:4: assert candidate([3, 2, 1]) == [4, 3, 2]" in outcome.detail


def test_a_result_that_is_no_plain_value_or_too_big_fails_and_says_why(incr_list):
    outcome = incr_list.judge("def incr_list(l):\n    return iter(l)\n")
    assert outcome.status is Status.FAILED and "not a plain value" in outcome.detail
    outcome = incr_list.judge("def incr_list(l):\n    return 'x' * (20 << 20)\n")
    assert outcome.status is Status.FAILED and "a message of 2097" in outcome.detail


def test_an_exception_in_the_solution_fails_and_names_it(incr_list):
    outcome = incr_list.judge("def incr_list(l):\n    raise KeyError('nope')\n")
    assert outcome.status is Status.FAILED
    assert "KeyError" in outcome.detail and "raised by the solution" in outcome.detail


def test_a_solution_without_the_function_or_with_a_syntax_error_fails(incr_list):
    assert "defines no function 'incr_list'" in incr_list.judge("def other():\n    pass\n").detail
    assert incr_list.judge("def incr_list(:\n").detail.startswith("SyntaxError")


def test_values_keep_their_type_across_the_channel(incr_list):
    tests = textwrap.dedent("""
        value = candidate((1, [2.5, None], {"k": {3}}, b"x", 1j, frozenset({True}), 10**30, -10**5000))
        assert value == ((1, [2.5, None], {"k": {3}}, b"x", 1j, frozenset({True}), 10**30, -10**5000),), value
        assert type(value[0]) is tuple and type(value[0][1]) is list and type(value[0][0]) is int
        assert candidate(float("inf")) == (float("inf"),) and candidate(keyword=1) == ((), {"keyword": 1})
    """)
    solution = "def incr_list(*args, **kwargs):\n    return (args, kwargs) if kwargs else args\n"
    outcome = incr_list.judge(solution, tests)
    assert outcome.passed, outcome


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


def test_an_endless_loop_times_out():
    outcome = run("while True:\n    pass", Limits(timeout_s=1.0))
    assert outcome.status is Status.TIMEOUT
    assert 1.0 <= outcome.seconds < 3.0


def test_an_endless_loop_in_the_solution_times_out(incr_list):
    outcome = incr_list.judge("def incr_list(l):\n    while True:\n        pass\n", timeout_s=1.0)
    assert outcome.status is Status.TIMEOUT


def test_a_huge_allocation_runs_out_of_memory(incr_list):
    outcome = run("buffer = bytearray(8 * 2**30)\nbuffer[-1] = 1")
    assert outcome.status is Status.MEMORY
    assert outcome.seconds < 3.0
    assert incr_list.judge("def incr_list(l):\n    return bytearray(8 * 2**30)\n").status is Status.MEMORY


def test_files_inside_the_working_folder_are_allowed():
    outcome = run("""
        import os, tempfile
        with open("scratch.txt", "w") as file:
            file.write("x")
        os.mkdir("folder")
        os.rename("scratch.txt", "folder/moved.txt")
        tempfile.mkstemp()
        with tempfile.TemporaryDirectory() as folder:
            open(os.path.join(folder, "inner"), "w").close()
        print(os.getcwd())
    """)
    assert outcome.status is Status.PASSED, outcome


def test_a_write_outside_is_refused(outside):
    target = outside / "escape.txt"
    outcome = run(f"open({str(target)!r}, 'w').write('escaped')")
    assert outcome.status is Status.FORBIDDEN
    assert str(target) in outcome.detail
    assert not target.exists()


def test_removing_or_renaming_outside_is_refused_even_when_the_error_is_caught(outside):
    victim = outside / "keep" / "file.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    outcome = run(f"""
        import os, shutil
        for attempt in (lambda: os.remove({str(victim)!r}), lambda: shutil.rmtree({str(victim.parent)!r}),
                        lambda: os.rename({str(victim)!r}, "stolen.txt")):
            try:
                attempt()
            except OSError:
                pass
    """)
    assert outcome.status is Status.FORBIDDEN
    assert victim.read_text() == "keep me"


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


def test_a_name_lookup_starting_a_process_or_raising_a_limit_is_refused():
    assert run("import socket\nsocket.getaddrinfo('localhost', 80)").detail.startswith("socket.getaddrinfo")
    assert run("import subprocess\nsubprocess.run(['sleep', '30'])").detail.startswith("subprocess.Popen")
    assert run("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))").status is Status.FORBIDDEN


@pytest.mark.sandbox_layer("netns")
def test_the_network_namespace_has_no_interface_up():
    outcome = run("""
        import ctypes, socket
        names = [name for _, name in socket.if_nameindex()]
        assert names == ["lo"], names
    """)
    assert outcome.status is Status.PASSED, outcome
