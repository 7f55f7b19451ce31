"""A BatchScheduler -> a FastAPI app with OpenAI's /v1/models, /v1/chat/completions and /v1/completions.

Every error answers with OpenAI's JSON error body: 400 for a bad request, 404 for an
unknown model or route, 429 (with Retry-After) when the queue is full, 503 while the
server shuts down, 500 for a failure of the system itself, whose traceback goes to the
server's log and never to the client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from . import openai_api
from .openai_api import ChatRequest, CompletionRequest, RequestError, error_body
from .scheduler import BatchScheduler, QueueFull, SchedulerClosed

SERVER_ERROR = "the system failed while answering; see the server log"


def create_app(scheduler: BatchScheduler, model_name: str) -> FastAPI:
    """The HTTP application serving `scheduler`'s system as the model `model_name`."""
    app = FastAPI(title=f"NeuroMAS: {model_name}", docs_url=None, redoc_url=None, openapi_url=None)
    plan = scheduler.runtime.plan
    created = int(time.time())
    model_card = {"id": model_name, "object": "model", "created": created, "owned_by": "neuromas"}

    @app.get("/health")
    async def health() -> JSONResponse:
        body = {
            "status": "ok",
            "model": model_name,
            "queued": scheduler.queued,
            "running": scheduler.stats.running,
            "batches": scheduler.stats.batches,
            "requests": scheduler.stats.requests,
            "backend_calls": scheduler.runtime.backend.stats.calls,
        }
        return JSONResponse(body)

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [model_card]})

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> JSONResponse:
        _check_model(model_id, model_name)
        return JSONResponse(model_card)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await _answer(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await _answer(request, "completion")

    async def _answer(http_request: Request, kind: Literal["chat", "completion"]) -> Any:
        parsed = await _parse(http_request, ChatRequest if kind == "chat" else CompletionRequest)
        _check_model(parsed.model, model_name)
        system_request = openai_api.system_request(parsed, plan)
        if system_request.runs > scheduler.max_batch_runs:
            raise RequestError(f"this request asks for {system_request.runs} runs of the system (prompts x n); "
                               f"the server runs at most {scheduler.max_batch_runs} in one batch", param="n")
        future = scheduler.submit(system_request)  # QueueFull -> 429 before any byte is sent
        want_trace = parsed.neuromas.trace
        if not parsed.stream:
            try:
                result = await asyncio.wrap_future(future)
            except Exception:  # the batch failed: the scheduler has logged why
                return _server_error()
            build = openai_api.chat_response if kind == "chat" else openai_api.completion_response
            return JSONResponse(build(result, plan, model_name, want_trace))
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
        chunk_id = openai_api.response_id(kind)

        async def events() -> AsyncIterator[str]:
            for chunk in openai_api.stream_opening(kind, chunk_id, model_name, system_request.runs):
                yield _event(chunk)
            try:
                result = await asyncio.wrap_future(future)
            except Exception:  # the batch failed: the scheduler has logged why
                yield _event(error_body(SERVER_ERROR, "server_error"))
                return
            for chunk in openai_api.stream_answer(kind, chunk_id, result, plan, model_name,
                                                  include_usage=include_usage, want_trace=want_trace):
                yield _event(chunk)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.exception_handler(RequestError)
    async def bad_request(_: Request, error: RequestError) -> JSONResponse:
        kind = "invalid_request_error"
        return JSONResponse(error_body(str(error), kind, param=error.param, code=error.code), status_code=error.status)

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, error: QueueFull) -> JSONResponse:
        body = error_body(str(error), "rate_limit_error", code="rate_limit_exceeded")
        return JSONResponse(body, status_code=429, headers={"Retry-After": str(error.retry_after_s)})

    @app.exception_handler(SchedulerClosed)
    async def closing(_: Request, error: SchedulerClosed) -> JSONResponse:
        return JSONResponse(error_body(str(error), "server_error", code="shutting_down"), status_code=503)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        kind = "invalid_request_error" if error.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(error.detail), kind), status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def failure(_: Request, error: Exception) -> JSONResponse:  # a bug of the server itself
        return _server_error()

    return app


async def _parse(request: Request, model: type[ChatRequest] | type[CompletionRequest]) -> Any:
    """The request body as `model`; raises RequestError for bad JSON or fields."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise RequestError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise _request_error(error) from None


def _request_error(error: ValidationError) -> RequestError:
    """The first pydantic error in OpenAI's words."""
    first = error.errors()[0]
    param = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return RequestError(f"Unrecognized request argument supplied: {param}", param=param)
    if first["type"] == "missing":
        return RequestError(f"Missing required parameter: '{param}'", param=param, code="missing_required_parameter")
    return RequestError(f"Invalid value for '{param}': {first['msg']}", param=param, code="invalid_value")


def _server_error() -> JSONResponse:
    return JSONResponse(error_body(SERVER_ERROR, "server_error"), status_code=500)


def _check_model(requested: str, served: str) -> None:
    if requested != served:
        raise RequestError(f"The model '{requested}' does not exist: this server serves '{served}'",
                           param="model", code="model_not_found", status=404)


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
