"""One training step, split into phases, against pure generation plus pure update of the same work.

NeuroMAS-3 by default (group 4, batch 2, max tokens 64), on arithmetic questions with a
graded reward (1 / (1 + |first number - answer|), so groups have variance). Each round
runs, interleaved:

  step           a training step with today's code (`loop.train_step`; its metrics row
                 gives rollout_s and update_s)
  baseline_step  the same step with the update and sampler of commit 8b6beb2
  pure_generate  one bare `model.generate` per level on the prompts of a rollout of the
                 same size (no runtime, no rewards)
  pure_update    today's `update_step` alone on that rollout's rows

overhead_ratio = step_s / (pure_generate_s + pure_update_s). Targets: overhead_ratio
<= 1.3, update_s <= 0.8 x rollout_s, step >= 2x faster than baseline_step.

    python bench/train_step.py                                   # NeuroMAS-3
    python bench/train_step.py --spec specs/single_agent.nmas --group 8 --max-tokens 32 \\
        --out bench/results/train_step_single.json
    python bench/train_step.py --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

import msgspec
import torch

import neuromas
from neuromas.runtime import Runtime, TransformersBackend, attach_adapters, load_model
from neuromas.runtime.generation.rollout import cap_max_tokens
from neuromas.runtime.tasks.registry import Example, Task
from neuromas.runtime.training import loop, update
from neuromas.runtime.training.loss import compute_advantages
from neuromas.runtime.training.session import TrainSettings, start_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_code import BEFORE, before_backend, before_update  # noqa: E402
from rollout import run_raw  # noqa: E402
from timing import interleaved, machine, medians  # noqa: E402

TARGETS = {"overhead_ratio": 1.3, "update_over_rollout": 0.8, "step_speedup": 2.0}


def arithmetic_task(count: int = 64, seed: int = 0) -> Task:
    """Two-term sums and products with a graded reward on the whole output text."""
    import random

    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        op = rng.choice(["+", "*"])
        answer = a + b if op == "+" else a * b
        examples.append(Example({"question": f"What is {a} {op} {b}? Answer with a number."}, str(answer), None))

    def graded(text: str, example: Example) -> float:
        match = re.search(r"-?\d+", text)
        return 0.0 if match is None else 1.0 / (1.0 + abs(int(match.group()) - int(example.answer)))

    return Task("arithmetic", examples, seed=seed, scorer=graded, is_scored_on_text=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="specs/neuromas3.nmas")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--min-rounds", type=int, default=3)
    parser.add_argument("--max-rounds", type=int, default=6)
    parser.add_argument("--tolerance", type=float, default=0.15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-baseline", action="store_true", help="skip the commit-8b6beb2 step")
    parser.add_argument("--quick", action="store_true", help="group 2, batch 1, 12 tokens, 1 round")
    parser.add_argument("--out", default="bench/results/train_step.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.group, args.batch, args.max_tokens, args.min_rounds, args.max_rounds = 2, 1, 12, 1, 1

    plan = cap_max_tokens(neuromas.compile(args.spec), args.max_tokens)
    assert plan.train is not None, f"{args.spec} has no train block"
    plan = msgspec.structs.replace(plan, train=msgspec.structs.replace(
        plan.train, group=args.group, batch=args.batch, lr=args.lr, steps=10_000))
    loaded = load_model(plan.model, threads=args.threads)
    task = arithmetic_task(seed=args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="train-step-bench-"))
    settings = TrainSettings(steps=10_000, seed=args.seed, save_every=10_000, keep_checkpoints=1)

    def session_for(name: str, backend_class):
        model = attach_adapters(copy.deepcopy(loaded.model), plan, base_model=loaded.source)
        backend = backend_class(model, loaded.tokenizer, source=loaded.source)
        return start_session(plan, Runtime(plan, backend), task, settings, scratch / name)

    new_session = session_for("new", TransformersBackend)
    rows_seen: dict = {}

    def step() -> dict:
        metrics = loop.train_step(new_session)
        rows_seen["new"] = metrics
        return metrics

    variants = {"step": step}
    if not args.no_baseline:
        old = before_update()
        baseline_session = session_for("baseline", before_backend())

        def old_update_step(*step_args, **kwargs):
            stats = old.update_step(*step_args, **kwargs)
            return update.UpdateStats(**stats._asdict())

        def baseline_step() -> dict:
            names = ("CompletionRow", "UpdateConfig", "micro_batches", "score_batches", "update_step")
            saved = {name: getattr(loop, name) for name in names}
            replacements = {name: getattr(old, name) for name in names[1:-1]} | {
                "update_step": old_update_step,
                # the old rows had no sampler log-probs
                "CompletionRow": lambda sampler_logprobs=None, **fields: old.CompletionRow(**fields),
            }
            for name, value in replacements.items():
                setattr(loop, name, value)
            try:
                return loop.train_step(baseline_session)
            finally:
                for name, value in saved.items():
                    setattr(loop, name, value)

        variants["baseline_step"] = baseline_step

    pure_model = new_session.model
    pure_backend = new_session.runtime.backend
    optimizer = torch.optim.AdamW(new_session.params, lr=0.0)
    config = update.UpdateConfig(clip=plan.train.clip, kl_coef=plan.train.kl, loss_norm=plan.train.loss_norm,
                                 grad_clip=plan.train.grad_clip)
    work: dict = {}

    def prepare_pure_work() -> None:
        examples = task.batch(0, args.batch)
        rollout = new_session.runtime.rollout([e.inputs for e in examples], group=args.group, seed=args.seed)
        answers = [rollout.answer(i, j).text for i in range(len(examples)) for j in range(args.group)]
        rewards = torch.tensor([task.scorer(a, e) for a, e in zip(answers, [e for e in examples
                                                                            for _ in range(args.group)])])
        advantages = compute_advantages(plan.train.algorithm, rewards.double(), args.group).float()
        advantages = torch.where(advantages.abs() < 1e-6, torch.zeros_like(advantages), advantages)
        rows = loop.completion_rows(rollout, plan)
        work.update(rollout=rollout, rows=rows, advantages=advantages[[row.sample for row in rows]])

    def pure_generate() -> None:
        run_raw(plan, pure_backend, work["rollout"], args.seed, "stacked")

    def pure_update() -> None:
        update.update_step(pure_model, optimizer, new_session.params, update.micro_batches(work["rows"]), None, None,
                           work["advantages"], config)

    variants["pure_generate"] = pure_generate
    variants["pure_update"] = pure_update
    print("warming up...", file=sys.stderr)
    prepare_pure_work()
    pure_generate()
    ratios = [("step_speedup", "step", "baseline_step")] if "baseline_step" in variants else []
    measured = interleaved(variants, ratios, min_rounds=args.min_rounds, max_rounds=args.max_rounds,
                           tolerance=args.tolerance)
    times = {name: medians(runs) for name, runs in measured["runs"].items()}

    def metric(name: str, field: str) -> float:
        return statistics.median(run["value"][field] for run in measured["runs"][name])

    step_s = times["step"]["wall_s"]
    pure_s = times["pure_generate"]["wall_s"] + times["pure_update"]["wall_s"]
    results = {
        "spec": args.spec, "group": args.group, "batch": args.batch, "max_tokens": args.max_tokens,
        "threads": torch.get_num_threads(), "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "machine": machine(),
        "reward": "graded: 1 / (1 + |first number - answer|)",
        "rounds": measured["rounds"],
        "step_s": step_s,
        "rollout_s": metric("step", "rollout_s"),
        "update_s": metric("step", "update_s"),
        "pure_generate_s": times["pure_generate"]["wall_s"],
        "pure_update_s": times["pure_update"]["wall_s"],
        "overhead_ratio": step_s / pure_s,
        "overhead_ratio_cpu": times["step"]["cpu_s"] / (times["pure_generate"]["cpu_s"] + times["pure_update"]["cpu_s"]),
        "times": times,
        "ratios": measured["ratios"],
        "metrics_rows": [run["value"] for run in measured["runs"]["step"]],
    }
    results["update_over_rollout"] = results["update_s"] / results["rollout_s"]
    if "baseline_step" in variants:
        results.update(
            baseline=f"update.py, transformers.py and lora_rows.py at {BEFORE}",
            baseline_step_s=times["baseline_step"]["wall_s"],
            baseline_rollout_s=metric("baseline_step", "rollout_s"),
            baseline_update_s=metric("baseline_step", "update_s"),
            step_speedup=measured["ratios"]["step_speedup"]["wall"],
            step_speedup_cpu=measured["ratios"]["step_speedup"]["cpu"],
        )
    results["targets"] = TARGETS
    results["targets_met"] = {
        "overhead_ratio": results["overhead_ratio"] <= TARGETS["overhead_ratio"],
        "update_over_rollout": results["update_over_rollout"] <= TARGETS["update_over_rollout"],
        **({"step_speedup": results["step_speedup"] >= TARGETS["step_speedup"]} if "step_speedup" in results else {}),
    }
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def print_table(results: dict) -> None:
    print(f"{results['spec']}: group {results['group']}, batch {results['batch']}, max tokens "
          f"{results['max_tokens']}; {results['machine']}; median of {results['rounds']} interleaved rounds")
    print(f"{'variant':<16}{'wall s':>9}{'cpu s':>9}")
    for name, row in results["times"].items():
        print(f"{name:<16}{row['wall_s']:>9.2f}{row['cpu_s']:>9.2f}")
    print(f"step: rollout_s {results['rollout_s']:.2f}, update_s {results['update_s']:.2f} "
          f"(update / rollout {results['update_over_rollout']:.2f}, target <= 0.8)")
    print(f"overhead_ratio {results['overhead_ratio']:.2f} wall, {results['overhead_ratio_cpu']:.2f} cpu (target <= 1.3)")
    if "step_speedup" in results:
        print(f"step vs baseline {results['step_speedup']:.2f}x wall, {results['step_speedup_cpu']:.2f}x cpu "
              f"(target >= 2x); baseline rollout_s {results['baseline_rollout_s']:.2f}, "
              f"update_s {results['baseline_update_s']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
