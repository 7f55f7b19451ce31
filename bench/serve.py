"""`neuromas serve` throughput: batching concurrent requests vs running them one at a time.

The bundled model serves NeuroMAS-3 (two hidden nodes, one answer node) twice over one
runtime, through the real HTTP server and the official openai client:
  (a) batched        the server as shipped: requests that arrive together run as one
                     rollout, one backend call per level for all of them;
  (b) one_at_a_time  the same server with batches of one request (--max-batch-runs 1):
                     the naive loop, each request's system run on its own.
For 1, 4 and 16 concurrent clients (each sends its requests back to back), every round
runs a and b in turn at each concurrency, so load from other processes falls on both;
the JSON holds requests/s, completion tokens/s and p50/p95 latency over all rounds.
Target on CPU: a >= 2.5 x b in requests/s at 16 clients.

    python bench/serve.py --threads 1 --out bench/results/serve.json
    python bench/serve.py --threads 1 --rounds 1 --requests-per-client 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "neuromas3.nmas"
QUESTIONS = [f"What is {a} + {b}?" for a in range(3, 9) for b in range(2, 7)]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def start(scheduler, name: str):
    from neuromas.runtime.serving.server import build_server, free_port

    port = free_port()
    server = build_server(scheduler, name, host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}/v1"


def drive(base_url: str, model: str, clients: int, per_client: int, max_tokens: int, offset: int) -> dict:
    """`clients` threads, each sending `per_client` chat requests back to back."""
    import openai

    def client_loop(index: int) -> list[tuple[float, int]]:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
        timings = []
        for k in range(per_client):
            question = QUESTIONS[(offset + index * per_client + k) % len(QUESTIONS)]
            sent = time.perf_counter()
            response = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens
            )
            timings.append((time.perf_counter() - sent, response.usage.completion_tokens))
        return timings

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        per_thread = list(pool.map(client_loop, range(clients)))
    return {"wall_s": time.perf_counter() - started, "timings": [t for thread in per_thread for t in thread]}


def summarize(runs: list[dict]) -> dict:
    latencies = [latency for run in runs for latency, _ in run["timings"]]
    tokens = sum(count for run in runs for _, count in run["timings"])
    wall = sum(run["wall_s"] for run in runs)
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 3),
        "completion_tokens_per_s": round(tokens / wall, 1),
        "p50_latency_s": round(statistics.median(latencies), 3),
        "p95_latency_s": round(percentile(latencies, 0.95), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--max-tokens", type=int, default=16, help="each request's cap on every node (default: 16)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrencies (default: 1 4 16)")
    parser.add_argument("--requests-per-client", type=int, default=2, help="requests each client sends (default: 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args()

    import torch

    import neuromas
    from neuromas.runtime import Runtime, TransformersBackend
    from neuromas.runtime.serving.scheduler import BatchScheduler

    torch.set_num_threads(args.threads)
    plan = neuromas.compile(str(SPEC))
    runtime = Runtime(plan, TransformersBackend.for_plan(plan, threads=args.threads))
    largest = max(args.clients)
    schedulers = {
        "batched": BatchScheduler(runtime, max_queue=4 * largest, max_batch_runs=largest),
        "one_at_a_time": BatchScheduler(runtime, max_queue=4 * largest, max_batch_runs=1),
    }
    servers = {name: start(scheduler, plan.system) for name, scheduler in schedulers.items()}
    drive(servers["batched"][2], plan.system, 2, 1, args.max_tokens, 0)  # warm-up: first-call costs

    runs: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in args.clients} for name in servers}
    for round_index in range(args.rounds):
        for clients in args.clients:
            for name, (_, _, url) in servers.items():  # a and b back to back: the same load falls on both
                run = drive(url, plan.system, clients, args.requests_per_client, args.max_tokens, round_index)
                runs[name][clients].append(run)
                rps = len(run["timings"]) / run["wall_s"]
                print(f"round {round_index + 1} clients {clients:>2} {name:<14} {rps:6.2f} req/s", file=sys.stderr)

    results = {name: {str(c): summarize(per_clients[c]) for c in args.clients} for name, per_clients in runs.items()}
    speedup = {str(c): round(results["batched"][str(c)]["requests_per_s"]
                             / results["one_at_a_time"][str(c)]["requests_per_s"], 2) for c in args.clients}
    report = {
        "benchmark": "neuromas serve: batched vs one request at a time",
        "hardware": f"{os.cpu_count()}-core CPU ({platform.machine()}), shared with other processes",
        "torch_threads": args.threads,
        "model": plan.model,
        "spec": "specs/neuromas3.nmas",
        "max_tokens": args.max_tokens,
        "requests_per_client": args.requests_per_client,
        "rounds": args.rounds,
        "results": results,
        "speedup_requests_per_s": speedup,
        "batches": {name: {"batches": s.stats.batches, "largest_batch": s.stats.largest_batch}
                    for name, s in schedulers.items()},
    }
    for server, thread, _ in servers.values():
        server.should_exit = True
        thread.join(60)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
