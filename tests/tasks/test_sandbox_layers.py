"""Which sandbox layers hold here, why the others do not, and no scoring without an unprivileged layer."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import warnings

import pytest

from neuromas.runtime.tasks.sandbox import (EXPECTED_LAYERS, Limits, Outcome, SandboxUnavailable, Status, _check_layers,
                                            run_tests, sandbox_probe)


def test_each_missing_kernel_layer_comes_with_its_reason():
    probe = sandbox_probe()
    assert probe.status is Status.PASSED, probe
    assert set(probe.layers) <= set(EXPECTED_LAYERS)
    missing = {"mountns", "netns", "pidns", "uid"} - set(probe.layers)
    assert not missing or probe.notes, (probe.layers, probe.notes)


def test_a_run_without_an_unprivileged_layer_raises_and_with_one_returns(incr_list):
    if "uid" in sandbox_probe().layers:
        assert run_tests(incr_list.solution, incr_list.tests, "incr_list", Limits(timeout_s=3.0)).passed
    else:
        with pytest.raises(SandboxUnavailable, match="nothing was scored"):
            run_tests(incr_list.solution, incr_list.tests, "incr_list", Limits(timeout_s=3.0))


def test_the_refusal_names_the_reason_and_missing_weaker_layers_warn():
    refused = Outcome(Status.PASSED, "", 0.1, "", ("rlimits", "audit"), ("the unprivileged user cannot use /root/x",))
    with pytest.raises(SandboxUnavailable, match="cannot drop root privileges.*cannot use /root/x.*nothing was scored"):
        _check_layers(refused)
    weaker = Outcome(Status.PASSED, "", 0.1, "", ("uid", "rlimits"), ("no jail: mount: Operation not permitted",))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _check_layers(weaker)
    assert any("without mountns" in str(item.message) and "Operation not permitted" in str(item.message)
               for item in caught)


WITHOUT_NAMESPACES = """
import ctypes, json, os, sys
from neuromas.runtime.tasks import sandbox, sandbox_guard as guard

# A seccomp filter on this process and its children: unshare(2) fails with EPERM, as in many containers.
arch, numbers = guard.REFUSED_SYSCALLS[os.uname().machine]
program = [(guard.BPF_LD_W_ABS, 0, 0, 0), (guard.BPF_JEQ_K, 0, 1, numbers["unshare"]),
           (guard.BPF_RET_K, 0, 0, guard.SECCOMP_RET_ERRNO | 1), (guard.BPF_RET_K, 0, 0, guard.SECCOMP_RET_ALLOW)]
filters = (guard.SockFilter * len(program))(*(guard.SockFilter(*step) for step in program))
fprog = guard.SockFprog(len(program), ctypes.cast(filters, ctypes.POINTER(guard.SockFilter)))
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
assert libc.prctl(guard.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
assert libc.prctl(guard.PR_SET_SECCOMP, guard.SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) == 0
probe = sandbox.sandbox_probe()
try:
    sandbox.run_python("import os\\nprint(os.getuid())")
    refused = None
except sandbox.SandboxUnavailable as exc:
    refused = str(exc)
print(json.dumps({"layers": probe.layers, "notes": probe.notes, "refused": refused}))
"""


@pytest.mark.skipif(os.uname().machine not in ("x86_64", "aarch64"),
                    reason="the test's seccomp filter knows system call numbers for x86_64 and aarch64 only")
def test_where_namespaces_are_refused_the_sandbox_says_so_and_refuses_root():
    result = subprocess.run([sys.executable, "-c", WITHOUT_NAMESPACES], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not {"mountns", "netns", "pidns"} & set(report["layers"]), report
    assert any(note.startswith("no jail: unshare") for note in report["notes"]), report
    assert any(note.startswith("no PID namespace") for note in report["notes"]), report
    if "uid" in report["layers"]:
        assert report["refused"] is None
    else:  # root, with an interpreter that `nobody` cannot read (a mode-0700 home)
        assert os.geteuid() == 0 and "cannot use" in report["refused"] and "nothing was scored" in report["refused"]


WITHOUT_SYS_ADMIN = """
import ctypes, json
from neuromas.runtime.tasks import sandbox
libc = ctypes.CDLL(None, use_errno=True)
plain = libc.unshare(0x00020000)  # CLONE_NEWNS as root without CAP_SYS_ADMIN: refused
probe = sandbox.sandbox_probe()
uid = sandbox.run_python("import os\\nprint(os.getuid())").output.strip()
print(json.dumps({"plain": plain, "layers": probe.layers, "notes": probe.notes, "uid": uid}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("capsh") is None,
                    reason="needs root, and capsh to drop a capability")
def test_root_without_cap_sys_admin_gets_the_jail_through_a_user_namespace():
    command = ["capsh", "--drop=cap_sys_admin", "--", "-c", 'exec "$0" -', sys.executable]
    result = subprocess.run(command, input=WITHOUT_SYS_ADMIN, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["plain"] == -1, "capsh did not drop CAP_SYS_ADMIN: this test would prove nothing"
    if any("(user," in note for note in report["notes"]):
        pytest.skip(f"the kernel allows no user namespace here: {report['notes']}")
    assert {"mountns", "netns", "pidns", "uid"} <= set(report["layers"]), report
    assert report["uid"] == str(pwd.getpwnam("nobody").pw_uid), report
