"""Batched GenRequests -> GenResults from one or more running `vllm serve` servers (OpenAI-compatible HTTP).

Start each server with LoRA and runtime adapter loading on, for example:

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve MODEL --enable-lora --max-lora-rank 16 \\
        --max-loras 4 --max-cpu-loras 16 --enable-prefix-caching --logprobs-mode processed_logprobs

`generate` spreads one call's rows over the servers (`server_protocol.assign_servers`:
balanced load, a node's group samples kept on one server for its prefix cache) and
sends every row as its own `/v1/completions` request, all at once from a thread pool,
so each server batches them continuously. Adapters are published like the in-process
backend's (`runtime.adapter_versions`): each update is saved as a new version folder,
loaded on every server under a new name (`POST /v1/load_lora_adapter`), and the
versions it replaces are unloaded (`POST /v1/unload_lora_adapter`) and deleted. The
servers read the folders by path: they must see this machine's `adapters_root` (the
same machine, or a shared filesystem).

A session owns its adapter names. Servers outlive the processes that use them, so every
name carries this process's session id (`<slot>@<session>-v<n>`, see
`runtime.adapter_versions`): a second run, or a restart after a crash, never asks for a
name a server already has. `close()` unloads the session's adapters from every server;
it also runs at interpreter exit, and `for_plan` turns a SIGTERM (whose default would
end the process without cleanup) into a normal exit that runs it. Under torchrun all
ranks share rank 0's session id, and only the publishing rank loads and unloads.
"""

from __future__ import annotations

import atexit
import json
import shutil
import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from neuromas.diagnostics import UserError
from neuromas.plan import Plan

from ..models.adapter_versions import AdapterVersions, Publication, new_session_id
from ..models.adapters import WEIGHTS_FILE
from .base import GenRequest, GenResult
from .server_protocol import assign_servers, completion_body, parse_completion
from .vllm import AdapterSync, VLLMStats
from .vllm_options import adapter_slots

DEFAULT_TIMEOUT_S = 600.0  # one request: a long completion on a busy server
DEFAULT_CONCURRENCY = 256  # requests in flight per server
CLOSE_TIMEOUT_S = 10.0  # one unload request when a session closes


class ServerError(RuntimeError):
    """A server refused a request or could not be reached."""


def post_json(url: str, body: Mapping[str, Any] | None, timeout_s: float) -> Any:
    """POST (or GET when `body` is None) JSON and return the decoded answer; raises ServerError
    with the server's own message for an HTTP error, and for a server that cannot be reached."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:500]
        raise ServerError(f"{url}: HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError):
            raise ServerError(f"{url}: no answer within {timeout_s:g} s (the server is busy or hung)") from None
        raise ServerError(f"{url}: cannot reach the server ({reason})") from None
    try:
        return json.loads(text) if text.strip().startswith(("{", "[")) else text
    except ValueError:
        return text


class ServerBackend:
    """vLLM servers behind the Backend protocol. `urls`: server base URLs (http://host:port);
    `base_model`: the name the servers serve the base model under; `tokenizer`: a Hugging
    Face tokenizer of the same model; `versions`: the adapter registry. `owns_root`:
    delete `versions.root` on `close()`. `is_publisher` False (data-parallel ranks other
    than 0): `publish` only advances the registry to the names the publishing rank loads,
    saving and loading nothing; the caller makes the ranks wait for it (EngineWithTrainer)."""

    def __init__(
        self,
        urls: Sequence[str],
        base_model: str,
        tokenizer: Any,
        versions: AdapterVersions,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        concurrency: int = DEFAULT_CONCURRENCY,
        owns_root: bool = False,
        is_publisher: bool = True,
    ):
        if not urls:
            raise UserError("the server backend needs at least one server URL (--server http://HOST:PORT)")
        self.urls = [url.rstrip("/") for url in urls]
        self.base_model = base_model
        self.tokenizer = tokenizer
        self.versions = versions
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.owns_root = owns_root
        self.is_publisher = is_publisher
        self.stats = VLLMStats()
        self._pool = ThreadPoolExecutor(max_workers=concurrency * len(self.urls), thread_name_prefix="neuromas-http")
        self._closed = False
        self._sigterm_installed = False
        atexit.register(self.close)

    @classmethod
    def for_plan(
        cls,
        plan: Plan,
        urls: Sequence[str],
        *,
        model: str | None = None,
        adapters_root: Path | None = None,
        is_publisher: bool = True,
        exit_on_sigterm: bool = True,
    ) -> ServerBackend:
        """Connect to the servers (each must answer /v1/models and serve the same base model)
        and load the tokenizer of the plan's model (or `model`) here, under a new session id
        (rank 0's under torchrun). `exit_on_sigterm`: when SIGTERM has its default handler,
        make it a normal exit (status 143) so that `close()` unloads this session's adapters.
        Raises UserError for a server that cannot be reached or serves another model."""
        from transformers import AutoTokenizer

        from ..models.loading import prepare_tokenizer, resolve_model

        base_models = {url: served_base_model(url) for url in urls}
        if len(set(base_models.values())) > 1:
            listing = ", ".join(f"{url}: {name}" for url, name in base_models.items())
            raise UserError(f"the servers serve different base models ({listing}): start them with the same model")
        source = resolve_model(model or plan.model)
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(source))
        owns_root = adapters_root is None
        root = Path(tempfile.mkdtemp(prefix="neuromas-server-adapters-")) if owns_root else Path(adapters_root)
        versions = AdapterVersions(root, adapter_slots(plan), session=shared_session_id())
        backend = cls(urls, next(iter(base_models.values())), tokenizer, versions, owns_root=owns_root,
                      is_publisher=is_publisher)
        if exit_on_sigterm:
            backend._install_sigterm_exit()
        return backend

    # --- generation -------------------------------------------------------------------

    def generate(self, requests: Sequence[GenRequest], *, seed: int | None = None) -> list[GenResult]:
        """Every row as its own request, spread over the servers, all in flight at once;
        results in request order. Raises ServerError when a server fails a request."""
        if not requests:
            return []
        published = self.versions.published()
        bodies = [completion_body(r, row, self.base_model, published, seed) for row, r in enumerate(requests)]
        servers = assign_servers(requests, len(self.urls))
        futures = [
            self._pool.submit(post_json, f"{self.urls[server]}/v1/completions", body, self.timeout_s)
            for server, body in zip(servers, bodies, strict=True)
        ]
        results = [parse_completion(request, future.result()) for request, future in zip(requests, futures, strict=True)]
        self.stats.engine_calls += len(set(servers))
        self.stats.record(results)
        return results

    # --- adapters ---------------------------------------------------------------------

    def publish(self, model: Any, slots: Iterable[str] | None = None) -> AdapterSync:
        """Save the PeftModel's adapters for `slots` (default: every plan slot the model has)
        as a new version each, load them on every server, and unload the versions they replace."""
        from ..models.adapters import save_adapters

        names = list(slots) if slots is not None else [
            slot for slot in self.versions.slots if slot in getattr(model, "peft_config", {})
        ]
        if not names:
            raise ValueError("the model has none of the plan's adapter slots: nothing to publish")
        if not self.is_publisher:  # the same version numbers, hence names, as the publishing rank's
            publication = self.versions.publish({name: self.versions.next_folder() / name for name in names})
            return AdapterSync(publication.version, len(publication.added), 0.0, 0.0, 0.0)
        start = time.perf_counter()
        folders = save_adapters(model, self.versions.next_folder(), names)
        return self._register(self.versions.publish(folders), time.perf_counter() - start)

    def set_adapters(self, adapters: Mapping[str, Path]) -> None:
        """Publish saved peft folders (slot -> folder), copied under the registry's root first."""
        unknown = [slot for slot in adapters if slot not in self.versions.slots]
        if unknown:
            raise UserError(f"the plan has no adapter slot(s) {', '.join(unknown)} (slots: {', '.join(self.versions.slots)})")
        for folder in adapters.values():
            if not (Path(folder) / WEIGHTS_FILE).is_file():
                raise UserError(f"'{folder}' is not a saved adapter (no {WEIGHTS_FILE})")
        if not self.is_publisher:
            self.versions.publish({slot: self.versions.next_folder() / slot for slot in adapters})
            return
        start = time.perf_counter()
        target = self.versions.next_folder()
        copies = {slot: Path(shutil.copytree(folder, target / slot, dirs_exist_ok=True)) for slot, folder in adapters.items()}
        self._register(self.versions.publish(copies), time.perf_counter() - start)

    def _register(self, publication: Publication, save_s: float) -> AdapterSync:
        start = time.perf_counter()
        loads = [
            self._pool.submit(post_json, f"{url}/v1/load_lora_adapter",
                              {"lora_name": version.name, "lora_path": str(version.path.resolve())}, self.timeout_s)
            for url in self.urls
            for version in publication.added
        ]
        _wait_all(loads, "loading an adapter (start the servers with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "
                  "and --enable-lora, on a machine that sees this folder)")
        loaded = time.perf_counter()
        unloads = [
            self._pool.submit(post_json, f"{url}/v1/unload_lora_adapter", {"lora_name": version.name}, self.timeout_s)
            for url in self.urls
            for version in publication.dropped
        ]
        _wait_all(unloads, "unloading an old adapter version")
        self.versions.remove_folders(publication.dropped)
        sync = AdapterSync(publication.version, len(publication.added), save_s, loaded - start, time.perf_counter() - loaded)
        self.stats.record_sync(sync)
        return sync

    def loaded_adapters(self) -> dict[str, set[str]]:
        """Server URL -> the names of this session's adapters the server serves now (from
        /v1/models: an unloaded one is gone; one vLLM evicted from memory, which it keeps
        at most --max-cpu-loras of, is still served, reloaded from its folder on use)."""
        return {url: {name for name in served_models(url) if self.versions.owns(name)} for url in self.urls}

    # --- ending the session -----------------------------------------------------------

    def close(self) -> None:
        """Unload this session's adapters from every server (the publishing rank; servers
        that cannot be reached are skipped), stop the request threads, and delete the
        adapter versions' folder when this backend made it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._restore_sigterm()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.is_publisher:
            for url in self.urls:
                for version in self.versions.published().values():
                    try:  # one at a time: at interpreter exit the thread pool takes no new work
                        post_json(f"{url}/v1/unload_lora_adapter", {"lora_name": version.name}, CLOSE_TIMEOUT_S)
                    except ServerError:
                        pass  # already gone (404), or the server is: nothing left to unload
        if self.owns_root:
            shutil.rmtree(self.versions.root, ignore_errors=True)

    def _install_sigterm_exit(self) -> None:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
            self._sigterm_installed = True

    def _restore_sigterm(self) -> None:
        if self._sigterm_installed and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._sigterm_installed = False


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM -> SystemExit(143): the interpreter then exits normally and runs `close()`."""
    raise SystemExit(128 + signum)


def shared_session_id() -> str:
    """A new adapter-name session id; under torch.distributed, rank 0's for every rank
    (they must use the names the publishing rank loads)."""
    session = new_session_id()
    try:
        import torch.distributed as dist
    except ImportError:
        return session
    if dist.is_available() and dist.is_initialized():
        box = [session]
        dist.broadcast_object_list(box, src=0)
        session = box[0]
    return session


def served_models(url: str, timeout_s: float = 30.0) -> list[str]:
    """The model names a server serves (base model first, then LoRA adapters), from GET /v1/models."""
    answer = post_json(f"{url.rstrip('/')}/v1/models", None, timeout_s)
    if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
        raise ServerError(f"{url}/v1/models: not an OpenAI model list: {str(answer)[:200]}")
    entries = answer["data"]
    return [entry["id"] for entry in entries if not entry.get("parent")] + [
        entry["id"] for entry in entries if entry.get("parent")
    ]


def served_base_model(url: str) -> str:
    """The base model a server serves; raises UserError for a server that cannot be reached."""
    try:
        names = served_models(url)
    except ServerError as err:
        raise UserError(
            f"{err}\n  fix: start the server with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve MODEL "
            "--enable-lora, and pass its base URL (http://HOST:PORT) to --server"
        ) from None
    if not names:
        raise UserError(f"{url} serves no model")
    return names[0]


def _wait_all(futures: Sequence[Any], what: str) -> None:
    errors = []
    for future in futures:
        try:
            future.result()
        except ServerError as err:
            errors.append(str(err))
    if errors:
        raise ServerError(f"{what} failed: {'; '.join(errors[:3])}")
