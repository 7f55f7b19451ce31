"""A short run on the real bundled model learns: held-out reward rises far beyond its
step-0 spread and the adapter moves (`specs/quick.nmas`, the README's training example).
Frozen nodes staying the base model is checked in test_train.py.

The reward is the spec's graded `number_answer`, so step 0 already has variance:
arithmetic questions make the untrained model answer with numbers now and then, and a
few GRPO steps make it answer with a number alone.
"""

from __future__ import annotations

import copy
import math
import random
import statistics
from pathlib import Path

import pytest
import torch

import neuromas
from neuromas.runtime.backends.transformers import TransformersBackend
from neuromas.runtime.generation.rollout import Runtime
from neuromas.runtime.models.adapters import attach_adapters
from neuromas.runtime.tasks.registry import Example, Task
from neuromas.runtime.tasks.rewards import number_answer
from neuromas.runtime.training.loop import train
from neuromas.runtime.training.session import TrainSettings, start_session

REPO = Path(__file__).resolve().parents[2]
STEPS = 12  # held-out gain over training seeds 0-3: 0.59, 0.57, 0.27, 0.57 (0 is the one run here)
HELD_OUT = 8  # questions, each answered EVAL_GROUP times with the same seed before and after
EVAL_GROUP = 2


def arithmetic(seed: int, n: int) -> list[Example]:
    rng = random.Random(seed)
    pairs = [(rng.randint(1, 9), rng.randint(1, 9), rng.choice("+-*")) for _ in range(n)]
    return [Example({"question": f"Calculate {a} {op} {b}."}, str(eval(f"{a} {op} {b}")), {}) for a, b, op in pairs]


def held_out_rewards(runtime: Runtime, examples: list[Example]) -> list[float]:
    """Every held-out answer's reward, with the same sampling seed each time."""
    rollout = runtime.rollout([example.inputs for example in examples], group=EVAL_GROUP, seed=4321)
    return [number_answer(rollout.answer(i, j).text, examples[i].answer)
            for i in range(len(examples)) for j in range(EVAL_GROUP)]


@pytest.fixture
def one_thread():
    """As `--threads 1`: on a busy 2-core machine more threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_short_grpo_run_raises_held_out_reward(base_model, tmp_path, one_thread):
    torch.manual_seed(0)
    plan = neuromas.compile(REPO / "specs" / "quick.nmas")  # one node, 8 tokens, group 4, batch 2, lr 2e-3
    assert plan.train.reward == "number_answer"
    model = attach_adapters(copy.deepcopy(base_model.model), plan)
    runtime = Runtime(plan, TransformersBackend(model, base_model.tokenizer))
    held_out = arithmetic(seed=1000, n=HELD_OUT)
    before_lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    before = held_out_rewards(runtime, held_out)

    task = Task("arithmetic", arithmetic(seed=0, n=64), seed=0)
    session = start_session(plan, runtime, task, TrainSettings(steps=STEPS, save_every=STEPS), tmp_path)
    rows = train(session)
    after = held_out_rewards(session.runtime, held_out)

    spread = statistics.pstdev(before) / math.sqrt(len(before))  # the step-0 mean's standard error
    gain = statistics.fmean(after) - statistics.fmean(before)
    assert rows[0]["reward_std"] > 0  # graded: step 0 has a signal
    assert gain > 0.3 and gain > 4 * spread, (statistics.fmean(before), statistics.fmean(after), spread, rows)

    after_lora = {n: p.detach() for n, p in session.model.named_parameters() if "lora_" in n}
    for slot in (slot.name for slot in plan.adapters):  # every trainable node's adapter moved
        assert any(not torch.equal(before_lora[n], after_lora[n]) for n in after_lora if f".{slot}." in n), slot
