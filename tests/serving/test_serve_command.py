"""`neuromas serve` as a user starts it: usage errors before the model loads; a trained run
served from its checkpoint until a SIGTERM, which lets the requests already received finish."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serving_helpers.py (pytest runs in importlib mode)
from serving_helpers import SPEC  # noqa: E402

from neuromas.cli import main


def test_usage_errors_exit_2_before_the_model_loads(capsys):
    assert main(["serve", str(SPEC), "--group", "2"]) == 2  # a request's `n` sets the samples
    assert "unrecognized arguments: --group" in capsys.readouterr().err
    assert main(["serve", str(SPEC), "--adapters", "a", "--checkpoint", "b"]) == 2
    assert "give one" in capsys.readouterr().err


def test_a_port_in_use_exits_1_before_the_model_loads(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(SPEC), "--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_missing_packages_name_the_install_line(monkeypatch):
    import importlib.util

    from neuromas.commands import serve
    from neuromas.diagnostics import UserError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "uvicorn" else real(name))
    with pytest.raises(UserError) as caught:
        serve.check_serving_packages()
    assert caught.value.exit_code == 2 and "pip install 'neuromas[serve]'" in str(caught.value)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A run folder after one training step (its checkpoint holds every slot's adapter)."""
    folder = tmp_path_factory.mktemp("serve")
    data = folder / "train.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5"}) + "\n")
    run = folder / "run"
    argv = ["train", str(SPEC), "--task", f"jsonl:{data}", "--steps", "1", "--max-tokens", "2", "--group", "2",
            "--batch", "1", "--out", str(run), "--reward", "numeric_match", "--threads", "1"]
    assert main(argv) == 0
    return run


def test_a_trained_run_is_served_until_sigterm_which_finishes_the_request_in_flight(trained_run):
    from neuromas.runtime.serving.server import free_port

    port = free_port()
    env = {**os.environ, "NEUROMAS_TEST_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "neuromas", "serve", str(SPEC), "--port", str(port), "--threads", "1",
         "--checkpoint", str(trained_run), "--batch-window-ms", "500"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        answers = []
        body = {"model": "neuromas3", "messages": [{"role": "user", "content": "What is 2 + 3?"}], "max_tokens": 4}
        asking = threading.Thread(target=lambda: answers.append(httpx.post(f"{base}/v1/chat/completions", json=body,
                                                                           timeout=300)))
        asking.start()
        while True:  # SIGTERM once the server holds the request
            health = httpx.get(f"{base}/health", timeout=5).json()
            if health["queued"] + health["running"] > 0:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        asking.join(300)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert answers and answers[0].status_code == 200, stderr
    assert answers[0].json()["choices"][0]["message"]["content"] is not None
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
