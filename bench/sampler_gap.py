"""Per-token log-prob gap between the sampler and the trained policy, before and after one LoRA path.

For a trained run (its plan.json and newest checkpoint's adapters), in each dtype:
sample a rollout with the transformers backend, which records the log-prob of every
sampled token; score the same tokens with the update's `token_logprobs`; report
|sampler - trainer| per completion token (mean, p99, max). "before" runs both sides
with the code of commit 8b6beb2 (bf16 LoRA deltas and bf16 logits while sampling;
peft's fp32 LoRA and an fp32 head in the update); "after" with the working tree's
(the same stacked fp32 LoRA and fp32 head on both sides).

    python bench/sampler_gap.py --run runs/neuromas3 --inputs 2 --group 4 --max-tokens 48
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

from neuromas.plan import Plan
from neuromas.runtime import Runtime, TransformersBackend, attach_adapters, load_model
from neuromas.runtime.models.adapters import adapter_folders, load_adapters
from neuromas.runtime.training import update as current_update
from neuromas.runtime.training.checkpoint import list_checkpoints
from neuromas.runtime.training.loop import completion_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_code import BEFORE, before_backend, before_update  # noqa: E402
QUESTIONS = [
    "What is 12 times 7? Answer with a number.",
    "A farmer has 17 sheep and buys 5 more, then sells 8. How many sheep are left?",
    "What is 45 + 38?",
    "If a train travels 120 km at 60 km/h, how many hours does it take?",
]


def gaps(plan: Plan, backend, update_module, inputs: list[str], group: int, seed: int) -> list[float]:
    rollout = Runtime(plan, backend).rollout(inputs, group=group, seed=seed)
    rows = completion_rows(rollout, plan)
    sampled = [record.logprobs for per_input in rollout.samples for sample in per_input
               for record in sample.records.values() if record.adapter is not None]
    rows_as = [update_module.CompletionRow(*row[: len(update_module.CompletionRow._fields)]) for row in rows]
    batches = update_module.micro_batches(rows_as)
    scores = update_module.score_batches(backend.model, batches)
    result = []
    for batch, logprobs in zip(batches, scores, strict=True):
        for b, row_index in enumerate(batch.rows):
            length = len(rows[row_index].completion_ids)
            trainer = logprobs[b, :length].tolist()
            result.extend(abs(s - t) for s, t in zip(sampled[row_index], trainer, strict=True))
    return result


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "tokens": len(ordered),
        "mean": statistics.fmean(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max": ordered[-1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a training run folder (plan.json, checkpoints/)")
    parser.add_argument("--inputs", type=int, default=2)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one input, group 2, 16 tokens")
    parser.add_argument("--out", default="bench/results/sampler_gap.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.inputs, args.group, args.max_tokens = 1, 2, 16

    from neuromas.runtime.generation.rollout import cap_max_tokens

    run = Path(args.run)
    plan = cap_max_tokens(Plan.from_json((run / "plan.json").read_text()), args.max_tokens)
    checkpoint = list_checkpoints(run)[-1]
    folders = adapter_folders(checkpoint / "adapters", [slot.name for slot in plan.adapters], plan.adapter)
    old_backend_class, old_update = before_backend(), before_update()
    inputs = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.inputs)]
    results: dict = {"run": str(run), "checkpoint": checkpoint.name, "system": plan.system, "inputs": args.inputs,
                     "group": args.group, "max_tokens": args.max_tokens, "threads": args.threads,
                     "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
                     "before": BEFORE, "gaps": {}}
    for dtype in args.dtypes:
        loaded = load_model(plan.model, dtype=dtype, threads=args.threads)
        model = attach_adapters(loaded.model, plan, base_model=loaded.source)
        load_adapters(model, folders)
        current_update.prepare_for_update(model)  # the training model: fp32 adapters, eval mode
        for version, backend_class, update_module in (("before", old_backend_class, old_update),
                                                      ("after", TransformersBackend, current_update)):
            backend = backend_class(model, loaded.tokenizer, source=loaded.source)
            with torch.no_grad():
                values = gaps(plan, backend, update_module, inputs, args.group, args.seed)
            results["gaps"][f"{dtype}/{version}"] = summary(values)
            print(f"{dtype}/{version} done", file=sys.stderr)
    print(f"{plan.system}, checkpoint {checkpoint.name}: |sampler - trainer| log-prob per completion token")
    print(f"{'dtype/code':<20}{'tokens':>8}{'mean':>10}{'p99':>10}{'max':>10}")
    for name, row in results["gaps"].items():
        print(f"{name:<20}{row['tokens']:>8}{row['mean']:>10.4f}{row['p99']:>10.4f}{row['max']:>10.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
