"""The built wheel works on its own: a fresh virtual environment with the core
dependencies only (no torch), the `neuromas` command run from outside the source tree.

Marked slow (it builds, makes a venv and installs the four core packages from the
package index): `.ci/run` runs it with `-m slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a build, a venv and pip downloads: 15-60 s, and the network

ROOT = Path(__file__).resolve().parent.parent
# Not copied into the build: outputs of earlier builds (a stale build/lib would put
# modules that no longer exist into the wheel), caches and run folders.
NOT_SOURCE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
                                    ".pytest_cache", ".venv", "runs", ".carry", ".whl")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "neuromas"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(dist), str(source)], check=True, timeout=300)
    (built,) = dist.glob("neuromas-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (not --system-site-packages) with the wheel and its core dependencies."""
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, str(wheel)], check=True, timeout=600)
    return folder


def test_the_wheel_holds_every_package_and_the_grammar(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "neuromas/grammar/neuromas.lark" in names
    for module in ("neuromas/cli.py", "neuromas/commands/train.py", "neuromas/commands/options.py",
                   "neuromas/runtime/training/__init__.py", "neuromas/runtime/tasks/registry.py",
                   "neuromas/runtime/backends/factory.py", "neuromas/passes/__init__.py"):
        assert module in names, module
    # Every package folder of the source tree is in the wheel.
    for folder in ("neuromas", "runtime"):
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.relative_to(ROOT).as_posix()
            installed = relative if folder == "neuromas" else "neuromas/" + relative
            assert installed in names, installed


def test_the_installed_command_runs_outside_the_source_tree(venv: Path, tmp_path: Path) -> None:
    spec = tmp_path / "neuromas3.nmas"
    shutil.copy(ROOT / "specs" / "neuromas3.nmas", spec)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    def neuromas(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "neuromas"), *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    python = subprocess.run([str(venv / "bin" / "python"), "-c", "import neuromas, importlib.util as u; "
                             "print(neuromas.__file__, u.find_spec('torch') is None)"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    location, torch_missing = python.stdout.split()
    assert Path(location).is_relative_to(venv) and torch_missing == "True"

    check = neuromas("check", spec.name)
    assert (check.returncode, check.stderr) == (0, "")
    assert check.stdout.startswith("ok neuromas3.nmas: 3 nodes")

    compiled = neuromas("compile", spec.name, "--format", "json")
    assert compiled.returncode == 0, compiled.stderr
    assert json.loads(compiled.stdout)["system"] == "neuromas3"

    help_text = neuromas("train", "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "--task" in help_text.stdout and "--out DIR" in help_text.stdout
