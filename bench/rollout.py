"""Rollout throughput on the bundled model: level-batched runtime vs one call per node vs raw generate.

The same plan and inputs run three ways:
  (a) level_batched  the Runtime as shipped: one backend call per plan Call, every node,
                     input and sample of a level in one mixed-adapter batch;
  (b) per_node       the same Runtime on the plan split into one Call per node (what a
                     multi-agent framework that calls each agent on its own does);
  (c) raw_flat       no runtime: per level, one `model.generate` on the prompt ids that (a)
                     rendered, with the same adapter names (the upper bound for (a)).
Each repeat runs a, b, c in turn; the table shows medians. Targets on CPU for a width-4
system: a >= 2.5 x b and a >= 0.85 x c.

    python bench/rollout.py                      # 1 question, group 1, width-4 system
    python bench/rollout.py --inputs 4 --group 2 --max-tokens 48 --out bench/results/r.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import msgspec
import torch

import neuromas
from neuromas.plan import Call, Level, Plan
from neuromas.runtime import Runtime, TransformersBackend, attach_adapters, load_model
from neuromas.runtime.backends.transformers import BASE_ADAPTER, left_pad
from neuromas.runtime.rollout import Rollout

WIDTH4_SPEC = """
system width4 {
    model "smollm2-135m-instruct"
    adapter lora(rank = 16, alpha = 32, targets = [q_proj, k_proj, v_proj, o_proj])
    input question
    layer first width 4 { max_tokens MAX_TOKENS  temperature 1.0 }
    layer second width 4 { max_tokens MAX_TOKENS  temperature 1.0 }
    first <- question
    second <- first dense, question
    output second vote
}
"""
QUESTIONS = [
    "A farmer has 17 sheep and buys 5 more, then sells 8. How many sheep are left? Explain step by step.",
    "Why is the sky blue? Explain it to a child in a few sentences.",
    "List three ways to keep a small garden healthy during a dry summer, and say why each helps.",
    "What is 12 times 7, and how can you check the result with addition?",
    "Describe how a bicycle stays upright when it moves.",
    "Write two sentences about the history of the printing press.",
    "If a train leaves at 3 pm and travels 120 km at 60 km/h, when does it arrive? Show the steps.",
    "What are the differences between a lake and a sea?",
]
TARGETS = {"level_batched / per_node": 2.5, "level_batched / raw_flat": 0.85}


def per_node_plan(plan: Plan) -> Plan:
    """The plan with every call split into one call per node."""
    levels = tuple(
        Level(
            index=level.index,
            calls=tuple(
                Call(level=call.level, nodes=(node_id,), generation=call.generation,
                     shared_prefix=call.shared_prefix, split_reason="benchmark: one call per node")
                for call in level.calls
                for node_id in call.nodes
            ),
        )
        for level in plan.levels
    )
    return msgspec.structs.replace(plan, levels=levels)


def run_runtime(plan: Plan, backend: TransformersBackend, inputs: list[str], group: int, seed: int) -> tuple[dict, Rollout]:
    started = time.perf_counter()
    rollout = Runtime(plan, backend).rollout(inputs, group=group, seed=seed)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": rollout.completion_tokens, "calls": rollout.calls}, rollout


def run_raw(plan: Plan, backend: TransformersBackend, rollout: Rollout, seed: int) -> dict:
    """One bare generate per level over the prompts `rollout` used, in its row order."""
    model, tokenizer = backend.model, backend.tokenizer
    eos = tokenizer.eos_token_id
    torch.manual_seed(seed)
    seconds, tokens, calls = 0.0, 0, 0
    for level in plan.levels:
        node_ids = [node_id for call in level.calls for node_id in call.nodes]
        records = [s.records[node_id] for node_id in node_ids for per_input in rollout.samples for s in per_input]
        generation = level.calls[0].generation
        input_ids, attention_mask = left_pad([r.prompt_ids for r in records], tokenizer.pad_token_id, model.device)
        names = [r.adapter or BASE_ADAPTER for r in records]
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, adapter_names=names, do_sample=True,
                temperature=generation.temperature, top_k=0, top_p=generation.top_p,
                max_new_tokens=generation.max_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
            )
        seconds += time.perf_counter() - started
        calls += 1
        for row in out[:, input_ids.shape[1] :].tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
    return {"seconds": seconds, "tokens": tokens, "calls": calls}


def summarize(runs: list[dict]) -> dict:
    rates = [run["tokens"] / run["seconds"] for run in runs]
    return {
        "tokens_per_s": statistics.median(rates),
        "tokens_per_s_all": [round(rate, 2) for rate in rates],
        "seconds_median": statistics.median(run["seconds"] for run in runs),
        "tokens_median": statistics.median(run["tokens"] for run in runs),
        "calls": runs[0]["calls"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", help="a .nmas file (default: a built-in width-4, depth-2 system)")
    parser.add_argument("--inputs", type=int, default=1, help="questions per rollout (default: 1)")
    parser.add_argument("--group", type=int, default=1, help="samples per question (default: 1)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every node (default: 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each mode (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/rollout.json", help="where to write the JSON results")
    args = parser.parse_args(argv)

    from neuromas.runtime.rollout import cap_max_tokens

    if args.spec:
        plan = cap_max_tokens(neuromas.compile(args.spec), args.max_tokens)
    else:
        plan = neuromas.compile(WIDTH4_SPEC.replace("MAX_TOKENS", str(args.max_tokens)))
    inputs = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.inputs)]
    loaded = load_model(plan.model, dtype=args.dtype, threads=args.threads)
    backend = TransformersBackend(attach_adapters(loaded.model, plan), loaded.tokenizer, source=loaded.source)
    split = per_node_plan(plan)

    print(f"warming up ({plan.system}: {len(plan.nodes)} nodes, {plan.depth} levels)...", file=sys.stderr)
    _, warm = run_runtime(plan, backend, inputs, args.group, args.seed)
    run_raw(plan, backend, warm, args.seed)
    runs: dict[str, list[dict]] = {"level_batched": [], "per_node": [], "raw_flat": []}
    for repeat in range(args.repeats):
        seed = args.seed + repeat
        result, rollout = run_runtime(plan, backend, inputs, args.group, seed)
        runs["level_batched"].append(result)
        runs["per_node"].append(run_runtime(split, backend, inputs, args.group, seed)[0])
        runs["raw_flat"].append(run_raw(plan, backend, rollout, seed))
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)

    modes = {name: summarize(mode_runs) for name, mode_runs in runs.items()}
    rate = {name: mode["tokens_per_s"] for name, mode in modes.items()}
    ratios = {
        "level_batched / per_node": rate["level_batched"] / rate["per_node"],
        "level_batched / raw_flat": rate["level_batched"] / rate["raw_flat"],
    }
    results = {
        "system": plan.system,
        "nodes": len(plan.nodes),
        "levels": plan.depth,
        "inputs": args.inputs,
        "group": args.group,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "machine": f"{platform.processor() or platform.machine()}, {torch.__version__}",
        "modes": modes,
        "ratios": ratios,
        "targets": TARGETS,
        "targets_met": {name: ratios[name] >= target for name, target in TARGETS.items()},
    }
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def print_table(results: dict) -> None:
    print(
        f"{results['system']}: {results['nodes']} nodes, {results['levels']} levels; "
        f"{results['inputs']} input(s) x group {results['group']}, max_tokens {results['max_tokens']}, "
        f"{results['threads']} thread(s), {results['dtype']}, median of {results['repeats']}"
    )
    print(f"{'mode':<16}{'calls':>7}{'tokens':>9}{'seconds':>10}{'tokens/s':>11}")
    for name, mode in results["modes"].items():
        print(f"{name:<16}{mode['calls']:>7}{mode['tokens_median']:>9.0f}{mode['seconds_median']:>10.2f}"
              f"{mode['tokens_per_s']:>11.1f}")
    for name, value in results["ratios"].items():
        target = results["targets"][name]
        verdict = "ok" if results["targets_met"][name] else "below target"
        print(f"{name:<26}{value:>6.2f}x   (target >= {target}x: {verdict})")


if __name__ == "__main__":
    sys.exit(main())
