"""A FastAPI app -> a running uvicorn server that drains in-flight requests on SIGTERM.

uvicorn handles SIGTERM and SIGINT: it stops accepting connections, lets the open
requests finish, then runs the app's shutdown, which closes the scheduler after its
queued requests are answered.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from .app import create_app
from .scheduler import BatchScheduler


def build_server(scheduler: BatchScheduler, model_name: str, *, host: str, port: int, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn Server for the scheduler's system; `server.run()` serves until SIGTERM."""
    app = create_app(scheduler, model_name)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        scheduler.close()  # the open requests are done: finish anything still queued

    app.router.lifespan_context = lifespan
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on")
    return uvicorn.Server(config)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
