"""The server backend against a real vLLM OpenAI-compatible server on loopback (conftest.py):
rollouts, adapter versions replacing each other, unloading on close and on SIGTERM, a
crashed session's leftovers, and `neuromas run/train/eval --backend server` run again
and again against the same long-lived server."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_helpers import (  # noqa: E402
    QUESTIONS,
    greedy_plan,
    neuromas_cli,
    save_random_adapters,
    spec,
    with_generation,
    write_task,
)

from neuromas.runtime.backends.server import ServerBackend, ServerError, post_json, served_models  # noqa: E402
from neuromas.runtime.models.adapter_versions import session_of  # noqa: E402


@pytest.fixture(scope="module")
def plan3():
    return greedy_plan("neuromas3")


@pytest.fixture(scope="module")
def saved(plan3, tmp_path_factory) -> dict[str, Path]:
    return save_random_adapters(plan3, tmp_path_factory.mktemp("saved-adapters"), seed=1)


def adapter_names(url: str) -> set[str]:
    """Every adapter name the server serves (any session's)."""
    return set(served_models(url)[1:])


def test_a_session_generates_replaces_its_versions_and_unloads_them_on_close(server, plan3, saved):
    from neuromas.runtime.generation.rollout import Runtime

    backend = ServerBackend.for_plan(plan3, [server.url], exit_on_sigterm=False)
    session = backend.versions.session
    backend.set_adapters(saved)
    first = {version.name for version in backend.versions.published().values()}
    assert all(session_of(name) == session for name in first) and len(first) == 3
    assert backend.loaded_adapters() == {server.url: first}

    greedy = list(Runtime(plan3, backend).rollout(QUESTIONS[:2], seed=0).records())
    assert len(greedy) == 2 * 3
    assert all(r.completion_ids and r.logprobs == (0.0,) * len(r.completion_ids) for r in greedy)
    sampled = list(Runtime(with_generation(plan3, temperature=0.8), backend).rollout(QUESTIONS[:2], group=2, seed=1)
                   .records())
    values = [value for r in sampled for value in r.logprobs]
    assert values and all(math.isfinite(v) and v <= 0.0 for v in values) and min(values) < -0.01

    backend.set_adapters(saved)  # a new version of every slot: new names, the old ones unloaded
    second = {version.name for version in backend.versions.published().values()}
    assert second.isdisjoint(first)
    assert backend.loaded_adapters() == {server.url: second}
    old = sorted(first)[0]
    with pytest.raises(ServerError, match="404"):
        post_json(f"{server.url}/v1/completions", {"model": old, "prompt": [1, 2], "max_tokens": 1}, 60)

    root = backend.versions.root
    backend.close()
    assert adapter_names(server.url).isdisjoint(first | second)
    assert not root.exists()
    backend.close()  # a second close does nothing


SESSION_SCRIPT = """
import sys, time
from pathlib import Path
import neuromas
from neuromas.runtime.backends.server import ServerBackend
from neuromas.runtime.models.adapters import adapter_folders

plan = neuromas.compile(sys.argv[2])
backend = ServerBackend.for_plan(plan, [sys.argv[1]])
backend.set_adapters(adapter_folders(Path(sys.argv[3]), [slot.name for slot in plan.adapters]))
print(backend.versions.session, flush=True)
while True:
    time.sleep(0.1)
"""


def start_session(server, saved) -> tuple[subprocess.Popen, str]:
    """A separate process that loads the adapters under its own session and waits; and its session id."""
    folder = next(iter(saved.values())).parent
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SESSION_SCRIPT), server.url, str(spec("neuromas3")), str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    session = process.stdout.readline().strip()
    if not session:
        process.kill()
        pytest.fail(f"the session process failed:\n{process.stderr.read()[-3000:]}")
    return process, session


def sessions_served(url: str) -> set[str | None]:
    return {session_of(name) for name in adapter_names(url)}


def test_sigterm_unloads_the_sessions_adapters(server, saved):
    process, session = start_session(server, saved)
    assert session in sessions_served(server.url)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    assert session not in sessions_served(server.url)


def test_a_killed_sessions_leftovers_never_collide_with_a_new_session(server, plan3, saved):
    crashed, session = start_session(server, saved)
    crashed.kill()  # SIGKILL: nothing runs, its adapters stay on the server
    crashed.wait(timeout=60)
    assert session in sessions_served(server.url)
    backend = ServerBackend.for_plan(plan3, [server.url], exit_on_sigterm=False)
    try:
        backend.set_adapters(saved)  # the same slots, loaded again: no "already been loaded"
        results = backend.generate([request for request in first_rows(plan3, backend)], seed=0)
        assert all(result.completion_ids for result in results)
    finally:
        backend.close()
    assert session in sessions_served(server.url)  # the crashed session's names are left alone


def first_rows(plan, backend):
    from neuromas.runtime.backends.base import GenRequest
    from neuromas.runtime.generation.prompts import PromptRenderer

    renderer = PromptRenderer(plan, backend.tokenizer)
    return [
        GenRequest(renderer.render(node, {"question": question}, {}).ids, node.adapter, node.generation)
        for node in plan.nodes if node.level == 0
        for question in QUESTIONS[:2]
    ]


def test_run_twice_train_restart_and_eval_against_one_server(server, tmp_path):
    before = adapter_names(server.url)
    backend = ["--backend", "server", "--server", server.url, "--max-tokens", "12", "--seed", "0"]
    for _ in range(2):  # the second run used to fail: "adapter 'node-hidden-0@v1' has already been loaded"
        neuromas_cli("run", str(spec("neuromas3")), "--input", "What is 12 * 7?", *backend)
    task = write_task(tmp_path)
    out = tmp_path / "run"
    train = ["train", str(spec("neuromas3")), "--task", f"jsonl:{task}", "--out", str(out), "--group", "2",
             "--batch", "2", "--save-every", "1", "--dtype", "float32", *backend]
    neuromas_cli(*train, "--steps", "1")
    neuromas_cli(*train, "--steps", "2", "--resume")  # a restart: a new process, the same server
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [row["step"] for row in steps] == [1, 2]
    neuromas_cli("eval", str(spec("neuromas3")), "--task", f"jsonl:{task}", "--n", "2", "--checkpoint", str(out),
                 *backend)
    assert adapter_names(server.url) == before  # every process unloaded what it loaded
