"""What the real-engine tests (tests/vllm_engine, tests/gpu) share: questions, plans with changed
sampling, random non-zero adapters, saved adapter folders and token-for-token comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

import neuromas
from neuromas.plan import Plan

QUESTIONS = [
    "What is 17 + 25?",
    "Name the largest planet in the solar system.",
    "If a train travels 60 km in 1.5 hours, what is its average speed?",
    "What is the capital of Australia?",
    "Write the next number: 2, 4, 8, 16, ...",
    "How many minutes are in 3.5 hours?",
    "Which is heavier, a kilogram of iron or a kilogram of feathers?",
    "What is 12 times 13?",
]
ADAPTER_SCALE = 0.02  # std of the random lora_B (and lora_A) entries: a clear but sane change
ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
CLI_TIMEOUT_S = 900


def spec(name: str) -> Path:
    """A bundled spec, e.g. spec("neuromas3")."""
    return SPECS / f"{name}.nmas"


def with_generation(plan: Plan, **changes: object) -> Plan:
    """The plan with every node's (and call's) generation settings changed."""
    replace = msgspec.structs.replace
    nodes = tuple(replace(node, generation=replace(node.generation, **changes)) for node in plan.nodes)
    levels = tuple(
        replace(level, calls=tuple(replace(c, generation=replace(c.generation, **changes)) for c in level.calls))
        for level in plan.levels
    )
    return replace(plan, nodes=nodes, levels=levels)


def greedy_plan(name: str = "neuromas3", max_tokens: int = 24) -> Plan:
    """A bundled system, greedy, with short completions (compared token for token)."""
    return with_generation(neuromas.compile(spec(name)), temperature=0.0, max_tokens=max_tokens)


def randomize_adapters(model, seed: int) -> None:
    """Give every LoRA weight of every slot random non-zero values (B = 0 would be the base model)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                noise = torch.randn(param.shape, generator=generator) * ADAPTER_SCALE
                param.copy_(noise.to(param.device, param.dtype))


def save_random_adapters(plan: Plan, folder: Path, seed: int) -> dict[str, Path]:
    """Random non-zero adapters for every slot of `plan`, saved as peft folders `folder/<slot>/`."""
    from neuromas.runtime.models.adapters import attach_adapters, save_adapters
    from neuromas.runtime.models.loading import load_model

    base = load_model(plan.model, dtype="float32")
    model = attach_adapters(base.model, plan, base_model=base.source)
    randomize_adapters(model, seed)
    return save_adapters(model, folder)


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where two token sequences differ (a length difference counts); None if equal."""
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def compare(label: str, ours: Sequence[Sequence[int]], theirs: Sequence[Sequence[int]]) -> float:
    """Print and return the share of identical sequences, and where the others first differ."""
    diffs = [first_difference(a, b) for a, b in zip(ours, theirs, strict=True)]
    identical = sum(d is None for d in diffs) / len(diffs)
    positions = sorted(d for d in diffs if d is not None)
    where = f"first differ at tokens {positions}" if positions else "no differences"
    print(f"\n[{label}] {identical:.0%} of {len(diffs)} completions identical token for token; {where}")
    return identical


def neuromas_cli(*args: str, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`neuromas ARGS` in a fresh process with this interpreter; fails the test with its output on error."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "neuromas", *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=ROOT, env=os.environ | {"TQDM_DISABLE": "1"})
    print(f"\n[cli] neuromas {args[0]} ... {args[args.index('--backend') + 1]}: "
          f"exit {done.returncode} in {time.monotonic() - start:.1f} s")
    assert done.returncode == 0, f"neuromas {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def write_task(folder: Path) -> Path:
    """A four-question jsonl task (one-digit sums) in `folder`."""
    task = folder / "arithmetic.jsonl"
    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in [(2, 3), (4, 4), (7, 1), (5, 6)]]
    task.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return task
