"""Rollout throughput on the bundled model: level-batched runtime vs one call per node vs raw generate.

The same plan and inputs run three ways:
  (a) level_batched  the Runtime as shipped: one backend call per plan Call, every node,
                     input and sample of a level in one mixed-adapter batch;
  (b) per_node       the same Runtime on the plan split into one Call per node (what a
                     multi-agent framework that calls each agent on its own does);
  (c) raw_flat       no runtime: per level, one bare `model.generate` on the prompt ids
                     that (a) rendered, rows under the same adapters by the same
                     mechanism (the upper bound for (a));
  (d) raw_flat_peft  (c) with peft's own mixed-adapter batches (`adapter_names=`) and
                     nothing else: what plain transformers + peft gives;
  (e) unshared       (a) with every row prefilling its own prompt (`share_prompts=False`):
                     what the shared prefill of a group's common prompts saves;
  (f) plain_kernels  (a) with torch's own CPU kernels (`cpu_kernels=False`): what the
                     packed weights and grouped attention save.
Each round runs a to f once, in a rotated order; ratios are taken within a round
(same load on a shared machine), and rounds go on until each ratio's 95% interval is
within --tolerance of its median. Wall and CPU time (this process's) are both reported.
Targets on CPU for a width-4 system: a >= 0.85 x c, and a never slower than b, at
1 x 1 and 2 x 4 (inputs x group).

    python bench/rollout.py                      # width-4, depth-2 system; sizes 1x1 and 2x4
    python bench/rollout.py --system width4_depth1 --out bench/results/rollout_depth1.json
    python bench/rollout.py --sizes 4x2 --max-tokens 48 --out bench/results/r.json
    python bench/rollout.py --quick              # a short check that every mode runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import msgspec
import torch
from transformers import StaticCache

import neuromas
from neuromas.plan import Call, Level, Plan
from neuromas.runtime import Runtime, TransformersBackend, attach_adapters, load_model
from neuromas.runtime.backends.lora_rows import fp32_output_head
from neuromas.runtime.backends.transformers import BASE_ADAPTER, cache_argument, left_pad, sampling_kernels
from neuromas.runtime.generation.rollout import Rollout

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, machine  # noqa: E402

SYSTEMS = {
    # Two width-4 layers, the second reading all of the first (long prompts at level 1).
    "width4_depth2": """
system width4_depth2 {
    model "smollm2-135m-instruct"
    adapter lora(rank = 16, alpha = 32, targets = [q_proj, k_proj, v_proj, o_proj])
    input question
    layer first width 4 { max_tokens MAX_TOKENS  temperature 1.0 }
    layer second width 4 { max_tokens MAX_TOKENS  temperature 1.0 }
    first <- question
    second <- first dense, question
    output second vote
}
""",
    # One width-4 layer voting: short prompts, so decoding dominates.
    "width4_depth1": """
system width4_depth1 {
    model "smollm2-135m-instruct"
    adapter lora(rank = 16, alpha = 32, targets = [q_proj, k_proj, v_proj, o_proj])
    input question
    layer voters width 4 { max_tokens MAX_TOKENS  temperature 1.0 }
    voters <- question
    output voters vote
}
""",
}
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
# level-batched vs per node: >= 2.5x for a width-4 system on 1 x 1; never slower (1.0) at any size.
TARGETS = {"level_batched / per_node": 1.0, "level_batched / raw_flat": 0.85}
REPORTED = {
    "level_batched / unshared": "the shared prefill's gain (no target)",
    "level_batched / plain_kernels": "the CPU kernels' gain (no target)",
}


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


def run_runtime(
    plan: Plan, backend: TransformersBackend, inputs: list[str], group: int, seed: int
) -> tuple[dict, Rollout]:
    started, cpu_started = time.perf_counter(), time.process_time()
    rollout = Runtime(plan, backend).rollout(inputs, group=group, seed=seed)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    result = {"seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": rollout.completion_tokens, "calls": rollout.calls}
    return result, rollout


def run_raw(plan: Plan, backend: TransformersBackend, rollout: Rollout, seed: int, lora_rows: str) -> dict:
    """One bare generate per level over the prompts `rollout` used, in its row order."""
    model, tokenizer = backend.model, backend.tokenizer
    eos = tokenizer.eos_token_id
    torch.manual_seed(seed)
    seconds, cpu_seconds, tokens, calls = 0.0, 0.0, 0, 0
    for level in plan.levels:
        node_ids = [node_id for call in level.calls for node_id in call.nodes]
        records = [s.records[node_id] for node_id in node_ids for per_input in rollout.samples for s in per_input]
        generation = level.calls[0].generation
        input_ids, attention_mask = left_pad([r.prompt_ids for r in records], tokenizer.pad_token_id, model.device)
        if lora_rows == "peft":  # peft as it comes
            context, extra = nullcontext(), {"adapter_names": [r.adapter or BASE_ADAPTER for r in records]}
            head = kernels = nullcontext()
        else:  # the backend's mechanisms (adapter rows, kernels, output layer, cache), without the backend
            context, extra = backend.adapter_rows([r.adapter for r in records])
            head = fp32_output_head(model, packed=True)
            kernels = sampling_kernels(model)
            extra[cache_argument()] = StaticCache(
                config=model.config.get_text_config(), max_cache_len=input_ids.shape[1] + generation.max_tokens
            )
        started, cpu_started = time.perf_counter(), time.process_time()
        with torch.inference_mode(), kernels, context, head:
            out = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, **extra, do_sample=True,
                temperature=generation.temperature, top_k=0, top_p=generation.top_p,
                max_new_tokens=generation.max_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
            )
        seconds += time.perf_counter() - started
        cpu_seconds += time.process_time() - cpu_started
        calls += 1
        for row in out[:, input_ids.shape[1] :].tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": tokens, "calls": calls}


def switched_off(feature: str, plan: Plan, backend: TransformersBackend, inputs: list[str], group: int, seed: int) -> dict:
    """(a) with one of the backend's features (`share_prompts`, `cpu_kernels`) off."""
    setattr(backend, feature, False)
    try:
        return run_runtime(plan, backend, inputs, group, seed)[0]
    finally:
        setattr(backend, feature, True)


def summarize(runs: list[dict]) -> dict:
    rates = [run["value"]["tokens"] / run["wall_s"] for run in runs]
    cpu_rates = [run["value"]["tokens"] / run["cpu_s"] for run in runs]
    return {
        "tokens_per_s": statistics.median(rates),
        "tokens_per_s_all": [round(rate, 2) for rate in rates],
        "tokens_per_cpu_s": statistics.median(cpu_rates),
        "tokens_per_cpu_s_all": [round(rate, 2) for rate in cpu_rates],
        "seconds_median": statistics.median(run["wall_s"] for run in runs),
        "cpu_seconds_median": statistics.median(run["cpu_s"] for run in runs),
        "tokens_median": statistics.median(run["value"]["tokens"] for run in runs),
        "calls": runs[0]["value"]["calls"],
    }


class Tokens(float):
    """A mode's token count as the number `timing.interleaved` divides by its time, with
    the mode's own numbers kept beside it."""

    def __new__(cls, result: dict):
        value = super().__new__(cls, result["tokens"])
        value.result = result
        return value


def measure(plan: Plan, backend: TransformersBackend, inputs: list[str], group: int, args: argparse.Namespace) -> dict:
    """The four modes on one size, interleaved until the ratios' intervals are tight."""
    split = per_node_plan(plan)
    print(f"warming up ({plan.system}: {len(plan.nodes)} nodes, {plan.depth} levels, "
          f"{len(inputs)} x {group})...", file=sys.stderr)
    _, last = run_runtime(plan, backend, inputs, group, args.seed)
    run_raw(plan, backend, last, args.seed, "stacked")
    state = {"rollout": last, "round": 0}

    def level_batched() -> Tokens:
        result, state["rollout"] = run_runtime(plan, backend, inputs, group, args.seed + state["round"])
        state["round"] += 1
        return Tokens(result)

    variants = {
        "level_batched": level_batched,
        "per_node": lambda: Tokens(run_runtime(split, backend, inputs, group, args.seed + state["round"])[0]),
        "raw_flat": lambda: Tokens(run_raw(plan, backend, state["rollout"], args.seed + state["round"], "stacked")),
        "raw_flat_peft": lambda: Tokens(run_raw(plan, backend, state["rollout"], args.seed + state["round"], "peft")),
        "unshared": lambda: Tokens(switched_off("share_prompts", plan, backend, inputs, group, args.seed + state["round"])),
        "plain_kernels": lambda: Tokens(switched_off("cpu_kernels", plan, backend, inputs, group, args.seed + state["round"])),
    }
    ratios = [(name, *name.split(" / ")) for name in [*TARGETS, *REPORTED]]
    measured = interleaved(variants, ratios, min_rounds=args.min_rounds, max_rounds=args.max_rounds,
                           tolerance=args.tolerance)
    for runs in measured["runs"].values():
        for run in runs:
            run["value"] = run["value"].result
    modes = {name: summarize(runs) for name, runs in measured["runs"].items()}
    ratio_values = {name: item["wall"] for name, item in measured["ratios"].items()}
    cpu_ratios = {name: item["cpu"] for name, item in measured["ratios"].items()}
    return {
        "inputs": len(inputs),
        "group": group,
        "rounds": measured["rounds"],
        "modes": modes,
        "ratios": ratio_values,
        "ratio_intervals": {name: item["wall_interval"] for name, item in measured["ratios"].items()},
        "cpu_time_ratios": cpu_ratios,
        "cpu_time_ratio_intervals": {name: item["cpu_interval"] for name, item in measured["ratios"].items()},
        "targets_met": {name: ratio_values[name] >= target for name, target in TARGETS.items()},
        "targets_met_cpu_time": {name: cpu_ratios[name] >= target for name, target in TARGETS.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", choices=sorted(SYSTEMS), default="width4_depth2", help="built-in system to run")
    parser.add_argument("--spec", help="a .nmas file instead of a built-in system")
    parser.add_argument("--sizes", nargs="+", default=["1x1", "2x4"],
                        help="inputs x group per rollout, each measured on its own (default: 1x1 2x4)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every node (default: 64)")
    parser.add_argument("--min-rounds", type=int, default=3, help="interleaved rounds at least (default: 3)")
    parser.add_argument("--max-rounds", type=int, default=10, help="rounds at most (default: 10)")
    parser.add_argument("--tolerance", type=float, default=0.1,
                        help="stop when each ratio's 95%% interval is this close, relatively (default: 0.1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="16 tokens, 1x1 and 1x2, 2 rounds")
    parser.add_argument("--out", default="bench/results/rollout.json", help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_tokens, args.sizes, args.min_rounds, args.max_rounds = 16, ["1x1", "1x2"], 1, 2
    sizes = []
    for size in args.sizes:
        inputs, _, group = size.partition("x")
        if not (inputs.isdigit() and group.isdigit() and int(inputs) > 0 and int(group) > 0):
            parser.error(f"--sizes: '{size}' is not INPUTSxGROUP, e.g. 2x4")
        sizes.append((int(inputs), int(group)))

    from neuromas.runtime.generation.rollout import cap_max_tokens

    if args.spec:
        plan = cap_max_tokens(neuromas.compile(args.spec), args.max_tokens)
    else:
        plan = neuromas.compile(SYSTEMS[args.system].replace("MAX_TOKENS", str(args.max_tokens)))
    loaded = load_model(plan.model, dtype=args.dtype, threads=args.threads)
    backend = TransformersBackend(attach_adapters(loaded.model, plan), loaded.tokenizer, source=loaded.source)
    results = {
        "system": plan.system,
        "nodes": len(plan.nodes),
        "levels": plan.depth,
        "max_tokens": args.max_tokens,
        "threads": torch.get_num_threads(),
        "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "machine": machine(),
        "targets": TARGETS,
        "sizes": {},
    }
    for inputs, group in sizes:
        questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(inputs)]
        results["sizes"][f"{inputs}x{group}"] = measure(plan, backend, questions, group, args)
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def print_table(results: dict) -> None:
    for size, result in results["sizes"].items():
        print(
            f"{results['system']}: {results['nodes']} nodes, {results['levels']} levels; {size} (inputs x group), "
            f"max_tokens {results['max_tokens']}, {results['threads']} thread(s), {results['dtype']}, "
            f"median of {result['rounds']} interleaved rounds"
        )
        print(f"{'mode':<16}{'calls':>6}{'tokens':>8}{'wall s':>9}{'tokens/s':>10}{'cpu s':>9}{'tokens/cpu-s':>14}")
        for name, mode in result["modes"].items():
            print(f"{name:<16}{mode['calls']:>6}{mode['tokens_median']:>8.0f}{mode['seconds_median']:>9.2f}"
                  f"{mode['tokens_per_s']:>10.1f}{mode['cpu_seconds_median']:>9.2f}{mode['tokens_per_cpu_s']:>14.1f}")
        for name, target in results["targets"].items():
            wall, cpu = result["ratios"][name], result["cpu_time_ratios"][name]
            low, high = result["ratio_intervals"][name]
            verdict = "ok" if result["targets_met"][name] else "below target"
            print(f"{name:<26}{wall:>6.2f}x wall [{low:.2f}, {high:.2f}], {cpu:>5.2f}x cpu time   "
                  f"(target >= {target}x: {verdict} on wall time)")
        for name, meaning in REPORTED.items():
            wall, cpu = result["ratios"][name], result["cpu_time_ratios"][name]
            low, high = result["ratio_intervals"][name]
            print(f"{name:<26}{wall:>6.2f}x wall [{low:.2f}, {high:.2f}], {cpu:>5.2f}x cpu time   ({meaning})")


if __name__ == "__main__":
    sys.exit(main())
