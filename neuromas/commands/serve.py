"""`neuromas serve SPEC`: serve a (trained) system as one model behind an OpenAI-compatible HTTP API.

The server is FastAPI on uvicorn (`neuromas[serve]`); requests that arrive together run
as one rollout, one backend call per plan call for all of them. fastapi, uvicorn and
torch load only inside `run`.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import socket
import sys
from typing import Any

from neuromas.commands.assemble import build_runtime, check_adapters, check_backend, load_plan, use_checkpoint
from neuromas.commands.options import COUNT, add_spec_argument, command_parser, whole_number
from neuromas.diagnostics import UserError

EXAMPLES = """examples:
  neuromas serve specs/neuromas3.nmas --checkpoint runs/n3
  neuromas serve specs/neuromas3.nmas --adapters runs/n3/checkpoints/step-50/adapters --port 8080
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "neuromas3", "messages": [{"role": "user", "content": "What is 12 * 7?"}]}'

API: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, GET /health.
The model is named after the spec's system. The last user message (or the prompt) is the
system's input; a system with several inputs takes a JSON object naming each one.
`max_tokens` caps every node, `temperature`, `top_p` and `stop` replace the output
layer's, `n` runs the whole system n times; `"neuromas": {"trace": true}` in the body
adds every node's message to the answer.

exit status: 0 ok, 2 bad spec or usage, 1 runtime failure (model, adapters, port in use),
143 stopped by SIGTERM (after answering every request already received)"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = command_parser(subparsers, "serve", help="serve a system behind an OpenAI-compatible HTTP API",
                            description="Serve a .nmas system (and its trained adapters) as one model: "
                                        "OpenAI-compatible chat and completion endpoints.",
                            epilog=EXAMPLES, groups=("spec", "stage", "model", "runtime", "checkpoint", "backend"))
    add_spec_argument(parser)
    group = parser.add_argument_group("serving")
    group.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    group.add_argument("--port", type=whole_number(0, 65535), default=8000,
                       help="port to listen on (default: 8000; 0: any free port)")
    group.add_argument("--name", metavar="MODEL", help="the model name clients use (default: the spec's system name)")
    group.add_argument("--max-queue", type=COUNT, default=64, metavar="N",
                       help="requests waiting for a batch before the server answers 429 (default: 64)")
    group.add_argument("--batch-window-ms", type=whole_number(0, 60_000), default=10, metavar="MS",
                       help="how long an idle server waits for more requests to batch with the first (default: 10)")
    group.add_argument("--max-batch-runs", type=COUNT, default=64, metavar="N",
                       help="system runs (requests x n) per batch (default: 64)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_serving_packages()
    use_checkpoint(args)  # a request's `n` sets how many answers it gets: serve takes no --group
    plan = load_plan(args)
    choice = check_backend(args)
    check_adapters(plan, args)
    listener = _listen(args.host, args.port)  # a port in use fails before the model loads
    runtime = build_runtime(plan, choice, args.seed)

    from neuromas.runtime.serving.scheduler import BatchScheduler
    from neuromas.runtime.serving.server import build_server

    scheduler = BatchScheduler(runtime, max_queue=args.max_queue, window_s=args.batch_window_ms / 1000,
                               max_batch_runs=args.max_batch_runs)
    name = args.name or plan.system
    server = build_server(scheduler, name, host=args.host, port=args.port)
    host, port = listener.getsockname()[:2]
    print(f"serving {name} at http://{host}:{port}/v1 (Ctrl-C or SIGTERM stops it)", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _stopped_by_sigterm)  # uvicorn re-raises it once every request is answered
    server.run(sockets=[listener])
    return 0


def check_serving_packages() -> None:
    """Raise UserError (exit 2) with the install line when fastapi or uvicorn is missing."""
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"neuromas serve needs {' and '.join(missing)}: pip install 'neuromas[serve]'", exit_code=2)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as err:
        listener.close()
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    listener.listen(2048)
    return listener


def _stopped_by_sigterm(signum: int, frame: Any) -> None:
    print("stopped by SIGTERM after answering every open request", file=sys.stderr, flush=True)
    sys.exit(143)
