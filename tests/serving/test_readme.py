"""The README's "Serving a trained system" curl line and openai snippet run as written
(against the test server: only its port differs from the README's 8000)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def section_blocks(language: str) -> list[str]:
    text = README.read_text()
    section = text[text.index("## Serving a trained system"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


def on_live_port(code: str, live) -> str:
    return code.replace("http://127.0.0.1:8000", live.base_url.removesuffix("/v1"))


def test_the_curl_line_runs_as_written(live):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    [curl] = [block for block in section_blocks("bash") if block.startswith("curl")]
    argv = shlex.split(on_live_port(curl, live).replace("\\\n", " "))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    body = json.loads(done.stdout)
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]


def test_the_openai_snippet_runs_as_written(live):
    [snippet] = section_blocks("python")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(on_live_port(snippet, live), "README.md", "exec"), {})
    lines = printed.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines[-3:]] == ["hidden[0]", "hidden[1]", "answer[0]"]
