"""The server backend's request building, response parsing and row placement, and what a
real server cannot be made to do on demand: several servers at once, a second rank that
only follows, refusals, malformed answers and a server that never answers.

The fake servers check each body as vLLM's `CompletionRequest` would see it and answer
deterministically; the real vLLM server runs in tests/vllm_engine/test_server.py (CPU) and
tests/gpu/test_server.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from neuromas.diagnostics import UserError
from neuromas.plan import Generation
from neuromas.runtime.models.adapter_versions import AdapterVersion, AdapterVersions
from neuromas.runtime.backends.base import GenRequest
from neuromas.runtime.backends.server import ServerBackend, ServerError, served_base_model
from neuromas.runtime.backends.server_protocol import (
    ServerResponseError,
    assign_servers,
    completion_body,
    parse_completion,
)

BASE = "smol-base"
SAMPLED = Generation(max_tokens=3, temperature=0.7, top_p=0.9, stop=("\n\n",))
GREEDY = Generation(max_tokens=2, temperature=0.0, top_p=1.0)


def request(prompt, adapter="a", generation=SAMPLED) -> GenRequest:
    return GenRequest(tuple(prompt), adapter, generation)


def version(slot: str, number: int = 1) -> AdapterVersion:
    return AdapterVersion(slot, number, number, Path(f"/adapters/v{number}/{slot}"))


# --- request bodies and responses ---------------------------------------------------------


def test_a_sampled_row_asks_for_token_ids_and_the_sampled_log_probs():
    body = completion_body(request([5, 6, 7]), 3, BASE, {"a": version("a", 2)}, seed=11)
    assert body["model"] == "a@v2" and body["prompt"] == [5, 6, 7]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop"]) == (3, 0.7, 0.9, ["\n\n"])
    assert body["logprobs"] == 0 and body["return_token_ids"] is True and body["return_tokens_as_token_ids"] is True
    assert body["include_stop_str_in_output"] is False and body["n"] == 1
    # Rows get distinct seeds derived from the call's seed; the same row and call, the same seed.
    other = completion_body(request([5, 6, 7]), 4, BASE, {"a": version("a", 2)}, seed=11)
    assert body["seed"] != other["seed"]
    assert body["seed"] == completion_body(request([5, 6, 7]), 3, BASE, {"a": version("a", 2)}, seed=11)["seed"]


def test_a_greedy_frozen_row_runs_the_base_model_without_log_probs_or_seed():
    body = completion_body(request([1], adapter=None, generation=GREEDY), 0, BASE, {}, seed=5)
    assert body["model"] == BASE and body["temperature"] == 0.0
    assert "logprobs" not in body and "seed" not in body


def test_unpublished_adapters_and_empty_prompts_are_refused():
    with pytest.raises(ValueError, match="adapter slot 'b' has no published version"):
        completion_body(request([1], adapter="b"), 0, BASE, {"a": version("a")}, seed=None)
    with pytest.raises(ValueError, match="request 2 has an empty prompt"):
        completion_body(request([]), 2, BASE, {"a": version("a")}, seed=None)


def choice(**fields) -> dict:
    return {"choices": [{"index": 0, "text": "hi", "finish_reason": "stop", **fields}]}


def test_responses_become_gen_results():
    logprobs = {"tokens": ["token_id:8", "token_id:9"], "token_logprobs": [-0.5, -1.25]}
    result = parse_completion(request([1, 2]), choice(token_ids=[8, 9], logprobs=logprobs))
    assert result.prompt_ids == (1, 2) and result.completion_ids == (8, 9)
    assert result.logprobs == (-0.5, -1.25) and result.text == "hi" and result.finish_reason == "stop"
    # Without token_ids, the ids come from the log-prob tokens; greedy rows get 0.0 log-probs.
    assert parse_completion(request([1]), choice(logprobs=logprobs)).completion_ids == (8, 9)
    assert parse_completion(request([1]), choice(token_ids=[4], logprobs=None)).logprobs == (0.0,)


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (choice(token_ids=None, logprobs=None), "no token ids"),
        (choice(token_ids=[1, 2], logprobs={"token_logprobs": [-1.0]}), "1 log-probs for 2 tokens"),
        (choice(token_ids=[1], logprobs={"token_logprobs": [None]}), "null log-prob"),
        (choice(token_ids=[1], finish_reason="abort"), "finish_reason 'abort'"),
        (choice(logprobs={"tokens": ["hello"], "token_logprobs": [-1.0]}), "not 'token_id:<id>'"),
        ({"choices": []}, "expected one choice"),
    ],
)
def test_malformed_responses_say_what_is_missing(response, message):
    with pytest.raises(ServerResponseError, match=message):
        parse_completion(request([1]), response)


# --- placing rows on servers ----------------------------------------------------------------


def test_rows_split_into_balanced_runs_that_keep_group_samples_together():
    # 4 inputs x 3 samples of one node: samples of one input share the whole prompt.
    rows = [request([9, 9, 9, i, i, i, i, i]) for i in range(4) for _ in range(3)]
    servers = assign_servers(rows, 2)
    assert servers == [0] * 6 + [1] * 6
    # With 3 servers the boundaries move to input boundaries rather than split a group.
    three = assign_servers(rows, 3)
    assert all(len({three[i * 3 + j] for j in range(3)}) == 1 for i in range(4))
    assert sorted(set(three)) == [0, 1, 2]
    assert assign_servers(rows, 1) == [0] * 12


def test_a_boundary_prefers_an_adapter_change():
    # The even split would fall between rows 4 and 5 (which share 3 prompt tokens); the
    # adapter changes one row later, where nothing cached could be shared.
    rows = [request([1, 2, 3, i], adapter="a") for i in range(6)] + [request([1, 2, 3, 9], adapter="b") for _ in range(4)]
    assert assign_servers(rows, 2) == [0] * 6 + [1] * 4


# --- the backend against local servers ------------------------------------------------------


class FakeVLLM:
    """One fake server: a base model, LoRA adapters loaded at run time, deterministic completions."""

    def __init__(self):
        self.adapters: dict[str, str] = {}
        self.completions: list[dict] = []
        self.delay_s = 0.0  # seconds before every answer
        self.reply_override: tuple[int, object] | None = None  # answer every completion with this
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def _reply(self, status: int, body) -> None:
                data = (json.dumps(body) if not isinstance(body, str) else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the timeout test)

            def do_GET(self):
                if self.path != "/v1/models":
                    return self._reply(404, {"message": "not found"})
                data = [{"id": BASE, "parent": None}] + [{"id": name, "parent": BASE} for name in outer.adapters]
                self._reply(200, {"object": "list", "data": data})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, answer = outer.handle(self.path, body)
                self._reply(status, answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def handle(self, path: str, body: dict):
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.reply_override is not None and path == "/v1/completions":
            return self.reply_override
        if path == "/v1/load_lora_adapter":
            if body["lora_name"] in self.adapters:
                return 400, {"message": f"The lora adapter '{body['lora_name']}' has already been loaded."}
            if not (Path(body["lora_path"]) / "adapter_model.safetensors").is_file():
                return 400, {"message": f"no adapter at {body['lora_path']}"}
            self.adapters[body["lora_name"]] = body["lora_path"]
            return 200, f"Success: LoRA adapter '{body['lora_name']}' added successfully."
        if path == "/v1/unload_lora_adapter":
            if self.adapters.pop(body["lora_name"], None) is None:
                return 404, {"message": f"The lora adapter '{body['lora_name']}' cannot be found."}
            return 200, "Success"
        if path == "/v1/completions":
            if body["model"] != BASE and body["model"] not in self.adapters:
                return 404, {"message": f"The model `{body['model']}` does not exist."}
            assert all(isinstance(token, int) for token in body["prompt"]) and body["return_token_ids"]
            self.completions.append(body)
            tokens = [body["prompt"][-1] + 1 + n for n in range(body["max_tokens"])]
            logprobs = None
            if body.get("logprobs") is not None:
                logprobs = {"tokens": [f"token_id:{t}" for t in tokens], "token_logprobs": [-0.25] * len(tokens)}
            text = f"{body['model']}:{len(tokens)}"
            return 200, {"choices": [{"index": 0, "text": text, "token_ids": tokens, "logprobs": logprobs,
                                      "finish_reason": "length"}]}
        return 404, {"message": "not found"}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers():
    running = [FakeVLLM(), FakeVLLM()]
    yield running
    for server in running:
        server.close()


def saved_adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


def test_generation_spreads_rows_over_servers_and_versions_replace_each_other_on_all(servers, tmp_path):
    assert served_base_model(servers[0].url) == BASE
    versions = AdapterVersions(tmp_path / "versions", ["a", "b"], session="s1")
    backend = ServerBackend([s.url for s in servers], BASE, None, versions, concurrency=4)
    first = {slot: saved_adapter(tmp_path / "first" / slot) for slot in ("a", "b")}
    backend.set_adapters(first)
    assert all(server.adapters.keys() == {"a@s1-v1", "b@s1-v1"} for server in servers)

    rows = [request([10 * i + 1, 10 * i + 2], adapter="a" if i < 2 else "b") for i in range(4) for _ in range(2)]
    rows.append(request([7], adapter=None, generation=GREEDY))
    results = backend.generate(rows, seed=3)
    assert [r.completion_ids[0] for r in results] == [r.prompt_ids[-1] + 1 for r in rows]  # request order kept
    assert results[0].text == "a@s1-v1:3" and results[0].logprobs == (-0.25,) * 3
    assert results[-1].text == f"{BASE}:2" and results[-1].logprobs == (0.0, 0.0)
    assert len(servers[0].completions) + len(servers[1].completions) == len(rows)
    assert servers[0].completions and servers[1].completions  # both servers got work
    assert backend.stats.requests == len(rows) and backend.stats.completion_tokens == 4 * 2 * 3 + 2

    # A new version is loaded everywhere, the old one unloaded, its folder deleted.
    old_folder = versions.current("a").path
    backend.set_adapters({"a": saved_adapter(tmp_path / "second" / "a")})
    assert all(server.adapters.keys() == {"a@s1-v2", "b@s1-v1"} for server in servers)
    assert not old_folder.exists()
    assert backend.generate([rows[0]])[0].text == "a@s1-v2:3"
    servers[0].adapters["a@other-v1"] = "another session's"  # not ours: neither listed nor unloaded
    assert backend.loaded_adapters() == {server.url: {"a@s1-v2", "b@s1-v1"} for server in servers}
    assert backend.stats.adapter_syncs == 2
    backend.close()  # every server drops this session's adapters
    assert servers[0].adapters.keys() == {"a@other-v1"} and not servers[1].adapters


def test_server_errors_name_the_server_and_the_fix(servers, tmp_path):
    versions = AdapterVersions(tmp_path / "versions", ["a"])
    backend = ServerBackend([servers[0].url], BASE, None, versions)
    folder = tmp_path / "broken" / "a"
    saved_adapter(folder)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match="is not a saved adapter"):
        backend.set_adapters({"a": folder})
    with pytest.raises(UserError, match="no adapter slot"):
        backend.set_adapters({"zzz": folder})
    servers[0].adapters["a@v1"] = "taken"  # the server refuses a name it already has
    with pytest.raises(ServerError, match="already been loaded"):
        backend.set_adapters({"a": saved_adapter(tmp_path / "ok" / "a")})
    broken = {"choices": [{"text": "x", "finish_reason": "stop"}]}  # no token ids, no log-probs
    servers[0].reply_override = (200, broken)
    with pytest.raises(ServerResponseError, match="no token ids"):
        backend.generate([request([1], adapter=None)])
    servers[0].reply_override = None
    with pytest.raises(UserError, match="cannot reach the server.*\n  fix: start the server"):
        served_base_model("http://127.0.0.1:9")
    with pytest.raises(UserError, match="at least one server URL"):
        ServerBackend([], BASE, None, versions)
    backend.close()


def test_a_rank_that_does_not_publish_uses_the_publishers_adapter_names(servers, tmp_path):
    urls = [s.url for s in servers]
    publisher = ServerBackend(urls, BASE, None, AdapterVersions(tmp_path / "rank0", ["a"]))
    follower = ServerBackend(urls, BASE, None, AdapterVersions(tmp_path / "rank1", ["a"]), is_publisher=False)

    class Model:  # publish() reads only which slots the model has, and saves nothing here
        peft_config = {"a": None}

    publisher.set_adapters({"a": saved_adapter(tmp_path / "saved" / "a")})
    sync = follower.publish(Model())
    assert (sync.version, sync.slots) == (1, 1) and not (tmp_path / "rank1").exists()
    assert all(server.adapters.keys() == {"a@v1"} for server in servers)  # loaded once, by the publisher
    assert follower.generate([request([3])])[0].text == "a@v1:3"
    publisher.close()
    follower.close()


def test_a_server_that_does_not_answer_in_time_fails_the_call(servers, tmp_path):
    backend = ServerBackend([servers[0].url], BASE, None, AdapterVersions(tmp_path, ["a"]), timeout_s=0.2)
    servers[0].delay_s = 1.0
    start = time.monotonic()
    with pytest.raises(ServerError, match=r"no answer within 0.2 s"):
        backend.generate([request([1], adapter=None)])
    assert time.monotonic() - start < 1.0
    servers[0].delay_s = 0.0
    backend.close()
