"""Two training steps on a fixed rollout, as one process or as one rank of a torchrun job.

    python tests/distributed/worker.py OUT                          # the single-process reference
    torchrun --nproc-per-node 2 tests/distributed/worker.py OUT     # two ranks, gloo

Every process trains on replays of one fixed rollout of every question (written out, not
sampled), so the runs differ only in how the update is split. Step 1 runs in one session and is checkpointed; step 2
resumes from that checkpoint in a new session. Each rank writes its final adapters to
OUT/adapters-rank<R>.pt; rank 0 also writes metrics.jsonl and the checkpoints.

Float32, and one row per micro-batch (token budget 1), so that a row's forward and
backward are the same computation in both settings. Padded differently (rows batched on
one rank vs on two), the gradients differ by float noise of ~1e-6 relative, and AdamW's
first steps (about lr x sign(g) per weight) turn that into lr-sized differences wherever
a weight's gradient is near zero: 1e-3 after one step in float32, more in bf16.
"""

from __future__ import annotations

import copy
import dataclasses
import faulthandler
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from neuromas.runtime.training import distributed  # noqa: E402
from neuromas.runtime.models.adapters import attach_adapters  # noqa: E402
from neuromas.runtime.backends.transformers import TransformersBackend  # noqa: E402
from neuromas.runtime.models.loading import load_model  # noqa: E402
from neuromas.runtime.generation.rollout import Answer, NodeRecord, Rollout, Sample  # noqa: E402
from neuromas.runtime.tasks.registry import Example, Task  # noqa: E402
from neuromas.runtime.training.loop import train  # noqa: E402
from neuromas.runtime.training.scoring import make_scorer  # noqa: E402
from neuromas.runtime.training.session import TrainSettings, start_session  # noqa: E402
from tests.training.conftest import neuromas3_plan  # noqa: E402

QUESTIONS = ["What is 2 + 3?", "Name a fruit.", "What is 10 - 4?", "Spell cat.", "Say hi."]
GROUP = 2
BATCH = 3  # uneven over two ranks: inputs 0-1 on rank 0, input 2 on rank 1


def vowel_share(completion: str, answer: str) -> float:
    """A reward that varies from sample to sample, so the update is never zero."""
    letters = [c for c in completion.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


WORDS = ["five", "apple", "six", "cat", "hello", "no", "idea", "sure", "blue", "one"]


def fixed_rollout(plan, tokenizer) -> Rollout:
    """Every question's `GROUP` runs, written out by hand instead of sampled: short
    prompts and completions keep the update cheap, and every process gets the very same
    samples. Completions differ from run to run, so the rewards (and the update) do too."""
    samples = []
    for i, question in enumerate(QUESTIONS):
        per_input = []
        for j in range(GROUP):
            sample = Sample(input_index=i, sample=j)
            for k, node in enumerate(plan.nodes):
                prompt = tokenizer(f"{node.id} reads: {question}", add_special_tokens=False)["input_ids"]
                text = " ".join(WORDS[(i + 3 * j + k + n) % len(WORDS)] for n in range(1 + (i + j + k) % 3))
                completion = tokenizer(text, add_special_tokens=False)["input_ids"]
                sample.records[node.id] = NodeRecord(
                    node.id, node.adapter, i, j, tuple(prompt), tuple(completion), (0.0,) * len(completion),
                    text, "stop", (),
                )
            sample.answers[plan.outputs[0].layer] = Answer(plan.outputs[0].layer, text, None, {})
            per_input.append(sample)
        samples.append(per_input)
    return Rollout(plan, [{"question": q} for q in QUESTIONS], GROUP, 0, samples, calls=0, truncations=0)


class ReplayRuntime:
    """A Runtime stand-in that answers every rollout from the fixed rollout of all the
    questions, re-indexed for the inputs asked for."""

    def __init__(self, recorded: Rollout, backend: TransformersBackend):
        self.recorded = recorded
        self.backend = backend
        self.plan = recorded.plan

    def rollout(self, inputs, group: int = 1, *, seed: int | None = None) -> Rollout:
        assert group == self.recorded.group
        positions = [self.recorded.inputs.index(dict(values)) for values in inputs]
        samples = [
            [dataclasses.replace(sample, input_index=new) for sample in self.recorded.samples[old]]
            for new, old in enumerate(positions)
        ]
        return dataclasses.replace(self.recorded, inputs=[dict(v) for v in inputs], samples=samples)


HANG_S = 240  # under the test's limit: a hung process prints where each thread is, then exits


def main(out: Path) -> None:
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    torch.set_num_threads(1)
    group = distributed.init_from_env()
    rank = 0 if group is None else group.rank
    plan = neuromas3_plan(max_tokens=4, algorithm="reinforce", group=GROUP, batch=BATCH, lr=1e-3,
                          reward="tests.distributed.worker:vowel_share")
    base = load_model(plan.model, dtype="float32", threads=1)
    recorded = fixed_rollout(plan, base.tokenizer)
    task = Task("questions", [Example({"question": q}, "", {}) for q in QUESTIONS], seed=0)

    def session(steps: int, resume: bool):
        torch.manual_seed(1)  # the adapters' random init; rank 0's is broadcast anyway
        model = attach_adapters(copy.deepcopy(base.model), plan)
        runtime = ReplayRuntime(recorded, TransformersBackend(model, base.tokenizer))
        settings = TrainSettings(steps=steps, save_every=1, keep_checkpoints=0, token_budget=1)
        score = make_scorer(plan.train.reward, task, allow_code=True)
        return start_session(plan, runtime, task, settings, out, score=score, resume=resume)

    train(session(1, resume=False))
    print(f"rank {rank}: step 1 done", flush=True)
    final = session(2, resume=True)
    train(final)
    print(f"rank {rank}: step 2 done", flush=True)
    lora = {name: p.detach().clone() for name, p in final.model.named_parameters() if "lora_" in name}
    torch.save(lora, out / f"adapters-rank{rank}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
