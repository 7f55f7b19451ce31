"""Helpers the serving tests share: the spec they serve, and the real server in a thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "specs" / "neuromas3.nmas"
MAX_TOKENS = 4


class LiveServer(NamedTuple):
    base_url: str  # http://127.0.0.1:PORT/v1
    scheduler: object  # the BatchScheduler behind it
    model: str


def start_server(runtime, *, max_queue: int = 64, window_s: float = 0.01, max_batch_runs: int = 64):
    """A uvicorn server for `runtime` in a thread; returns (LiveServer, stop())."""
    from neuromas.runtime.serving.scheduler import BatchScheduler
    from neuromas.runtime.serving.server import build_server, free_port

    scheduler = BatchScheduler(runtime, max_queue=max_queue, window_s=window_s, max_batch_runs=max_batch_runs)
    port = free_port()
    server = build_server(scheduler, runtime.plan.system, host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(60)

    return LiveServer(f"http://127.0.0.1:{port}/v1", scheduler, runtime.plan.system), stop
