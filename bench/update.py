"""Update throughput on real rollout rows of a width-4 level: today's path against the old one.

A width-4 system (four voters, one adapter each) is rolled out once on the bundled
model (random non-zero adapters, so the four differ); its rows, with GRPO advantages of
a graded reward, are then updated again and again by each variant, interleaved:

  baseline_path   update.py of commit 8b6beb2: peft mixed-adapter rows, full sequences,
                  entropy always, the bf16 head computed and discarded for an fp32 one
  new_path        today's update_step: shared prompts, zero-advantage rows skipped,
                  shared-prompt batches without their padding (flat tokens)
  no_flat         today's, shared-prompt batches padded
  no_shared       today's, every row with its full prompt
  no_skip         today's, zero-advantage rows computed
  no_fast_paths   today's kernels alone (neither shared prompts nor skipping)
  batched         every row under its own adapter, in one pass (no skipping: all tokens)
  single_adapter  the same rows and tokens, all under one adapter
  per_node        the same rows, one node's rows per forward pass (a loop over nodes)

`--constant-groups` sets that share of the inputs' rewards to one value, so their
advantages are exactly 0 (what exact-match rewards do to most groups). Update tokens
per second count completion tokens. Targets: new_path >= 3x baseline_path; batched
>= 0.8x single_adapter and >= 2x per_node.

    python bench/update.py                # 2 inputs x group 4 x 4 nodes, 48 tokens
    python bench/update.py --quick        # 1 input x group 2, 12 tokens, 2 rounds
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

import neuromas
from neuromas.runtime import Runtime, TransformersBackend, attach_adapters, load_model
from neuromas.runtime.training import update
from neuromas.runtime.training.loss import compute_advantages
from neuromas.runtime.training.loop import completion_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_code import BEFORE, before_update  # noqa: E402
from timing import interleaved, machine, medians  # noqa: E402

SYSTEM = """
system width4 {
    model "smollm2-135m-instruct"
    adapter lora(rank = 16, alpha = 32, targets = [q_proj, k_proj, v_proj, o_proj])
    input question
    layer voters width 4 { max_tokens MAX_TOKENS  temperature 1.0 }
    voters <- question
    output voters vote
}
"""
QUESTIONS = [
    "What is 12 times 7? Answer with a number.",
    "A farmer has 17 sheep and buys 5 more, then sells 8. How many sheep are left?",
    "What is 45 + 38? Show the steps.",
    "If a train travels 120 km at 60 km/h, how many hours does it take?",
]
TARGETS = {"new_path / baseline_path": 3.0, "batched / single_adapter": 0.8, "batched / per_node": 2.0}


def graded_reward(text: str) -> float:
    """1 / (1 + distance of the first number to 84): graded, so samples of a group differ."""
    match = re.search(r"-?\d+", text)
    return 0.0 if match is None else 1.0 / (1.0 + abs(int(match.group()) - 84))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=2)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--constant-groups", type=float, default=0.5, help="share of inputs with constant rewards")
    parser.add_argument("--min-rounds", type=int, default=3)
    parser.add_argument("--max-rounds", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=0.1, help="relative width of the ratios' 95%% intervals")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1 input x group 2, 12 tokens, 2 rounds")
    parser.add_argument("--out", default="bench/results/update.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.inputs, args.group, args.max_tokens, args.min_rounds, args.max_rounds = 1, 2, 12, 1, 2

    plan = neuromas.compile(SYSTEM.replace("MAX_TOKENS", str(args.max_tokens)))
    loaded = load_model(plan.model, threads=args.threads)
    model = attach_adapters(loaded.model, plan, base_model=loaded.source)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    params = update.prepare_for_update(model)
    backend = TransformersBackend(model, loaded.tokenizer, source=loaded.source)
    inputs = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.inputs)]
    print("rolling out...", file=sys.stderr)
    rollout = Runtime(plan, backend).rollout(inputs, group=args.group, seed=args.seed)
    rows = completion_rows(rollout, plan)
    rewards = [graded_reward(rollout.answer(i, j).text) for i in range(args.inputs) for j in range(args.group)]
    constant = round(args.constant_groups * args.inputs)
    for i in range(constant):
        rewards[i * args.group : (i + 1) * args.group] = [0.5] * args.group
    advantages = compute_advantages("grpo", torch.tensor(rewards, dtype=torch.float64), args.group).float()
    advantages = torch.where(advantages.abs() < 1e-6, torch.zeros_like(advantages), advantages)  # constant groups: 0
    row_advantages = advantages[[row.sample for row in rows]]
    tokens = sum(len(row.completion_ids) for row in rows)
    single = [row._replace(adapter=rows[0].adapter) for row in rows]
    optimizer = update.make_optimizer(params, lr=0.0)  # every step's work, adapters unchanged
    old_optimizer = torch.optim.AdamW(params, lr=0.0)  # the baseline's
    config = update.UpdateConfig(clip=0.2, kl_coef=0.0, loss_norm="token", grad_clip=1.0)
    old = before_update()
    old_config = old.UpdateConfig(clip=0.2, kl_coef=0.0, loss_norm="token", grad_clip=1.0)
    old_rows = [old.CompletionRow(*row[: len(old.CompletionRow._fields)]) for row in rows]

    def new_step(chosen=rows, *, shared=True, skip=True, per_node=False, flat=True):
        if per_node:
            batches = [b for node in dict.fromkeys(r.node for r in chosen)
                       for b in update.micro_batches([r if r.node == node else r._replace(completion_ids=())
                                                      for r in chosen], shared_prompt=shared)]
        else:
            batches = update.micro_batches(chosen, shared_prompt=shared)
        update.update_step(model, optimizer, params, batches, None, None, row_advantages,
                           config._replace(skip_zero_advantage=skip, flat_tokens=flat))
        return tokens

    def baseline_step():
        old.update_step(model, old_optimizer, params, old.micro_batches(old_rows), None, None, row_advantages,
                        old_config)
        return tokens

    variants = {
        "baseline_path": baseline_step,
        "new_path": new_step,
        "no_flat": lambda: new_step(flat=False),
        "no_shared": lambda: new_step(shared=False),
        "no_skip": lambda: new_step(skip=False),
        "no_fast_paths": lambda: new_step(shared=False, skip=False),
        "batched": lambda: new_step(skip=False),
        "single_adapter": lambda: new_step(single, skip=False),
        "per_node": lambda: new_step(skip=False, per_node=True),
    }
    ratios = [("new_path / baseline_path", "new_path", "baseline_path"),
              ("batched / single_adapter", "batched", "single_adapter"),
              ("batched / per_node", "batched", "per_node"),
              ("flat tokens (new_path / no_flat)", "new_path", "no_flat"),
              ("shared prompts (no_skip / no_fast_paths)", "no_skip", "no_fast_paths"),
              ("zero-advantage skipping (no_shared / no_fast_paths)", "no_shared", "no_fast_paths")]
    print("warming up...", file=sys.stderr)
    new_step()
    baseline_step()
    measured = interleaved(variants, ratios, min_rounds=args.min_rounds, max_rounds=args.max_rounds,
                           tolerance=args.tolerance)
    times = {name: medians(runs) for name, runs in measured["runs"].items()}
    results = {
        "system": "width-4 level (4 voters, one adapter each)",
        "rows": len(rows), "completion_tokens": tokens, "inputs": args.inputs, "group": args.group,
        "max_tokens": args.max_tokens, "constant_groups": constant,
        "rows_with_zero_advantage": int((row_advantages == 0).sum()),
        "threads": torch.get_num_threads(), "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "machine": machine(),
        "baseline": f"runtime/training/update.py at {BEFORE}",
        "rounds": measured["rounds"],
        "baseline_path_s": times["baseline_path"]["wall_s"],
        "new_path_s": times["new_path"]["wall_s"],
        "batched_tok_s": tokens / times["batched"]["wall_s"],
        "single_adapter_tok_s": tokens / times["single_adapter"]["wall_s"],
        "per_node_tok_s": tokens / times["per_node"]["wall_s"],
        "variants": {name: {**t, "tok_s": tokens / t["wall_s"], "tok_per_cpu_s": tokens / t["cpu_s"]}
                     for name, t in times.items()},
        "ratios": measured["ratios"],
        "targets": TARGETS,
        "targets_met": {name: measured["ratios"][name]["wall"] >= target for name, target in TARGETS.items()},
        "targets_met_cpu_time": {name: measured["ratios"][name]["cpu"] >= target for name, target in TARGETS.items()},
        "runs": measured["runs"],
    }
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def print_table(results: dict) -> None:
    print(f"{results['system']}: {results['rows']} rows, {results['completion_tokens']} completion tokens, "
          f"{results['rows_with_zero_advantage']} with zero advantage; {results['machine']}; "
          f"median of {results['rounds']} interleaved rounds")
    print(f"{'variant':<16}{'wall s':>9}{'cpu s':>9}{'tok/s':>9}{'tok/cpu-s':>11}")
    for name, row in results["variants"].items():
        print(f"{name:<16}{row['wall_s']:>9.2f}{row['cpu_s']:>9.2f}{row['tok_s']:>9.1f}{row['tok_per_cpu_s']:>11.1f}")
    for name, ratio in results["ratios"].items():
        low, high = ratio["wall_interval"]
        target = results["targets"].get(name)
        verdict = "" if target is None else f"   target >= {target}x: {'ok' if ratio['wall'] >= target else 'below'}"
        print(f"{name:<52}{ratio['wall']:>6.2f}x wall [{low:.2f}, {high:.2f}], {ratio['cpu']:>5.2f}x cpu{verdict}")


if __name__ == "__main__":
    sys.exit(main())
