"""A plan, a backend and a task -> trained adapters: rollout -> reward -> advantages -> loss -> step -> log.

One step: sample `group` runs of the whole system on `batch` inputs; score each run's
final answer; turn the rewards into one advantage per run; give that advantage to every
token every node wrote in that run; update every node's adapter in one optimiser step;
write one metrics row. Checkpoints make `resume` continue exactly where a run stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch

from neuromas.diagnostics import UserError
from neuromas.plan import Plan, Train
from . import distributed
from .checkpoint import (
    TrainState,
    checkpoint_path,
    clean_checkpoints,
    list_checkpoints,
    load_checkpoint,
    newest_verified,
    plan_fingerprint,
    prune_checkpoints,
    reject_checkpoint,
    save_checkpoint,
)
from .loss import compute_advantages
from ..tasks.rewards import RewardScores, load_reward, safe_rewards
from ..generation.rollout import Answer, Rollout, Runtime
from ..tasks.registry import Example, Task
from .update import (
    DEFAULT_TOKEN_BUDGET,
    CompletionRow,
    UpdateConfig,
    UpdateStats,
    make_optimizer,
    micro_batches,
    prepare_for_update,
    score_batches,
    update_step,
)

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"  # one run per step, to read what the system writes
PLAN_FILE = "plan.json"
CORRECT = 1.0  # a sample whose reward reaches this counts toward accuracy

AnswerScorer = Callable[[Answer, Example], float]  # (a run's answer, its example) -> reward

logger = logging.getLogger(__name__)


class TrainSettings(NamedTuple):
    """Run settings that are not part of the plan."""

    steps: int
    seed: int = 0
    token_budget: int = DEFAULT_TOKEN_BUDGET  # padded tokens per micro-batch
    save_every: int = 10  # checkpoint every N steps (and always after the last)
    keep_checkpoints: int = 2  # newest checkpoints kept (< 1: all)
    log_kl: bool = False  # measure the KL to the base even when the plan's kl is 0 (one more pass)


@dataclass
class TrainSession:
    """Everything one run holds: built once by `start_session`, then stepped by `train`."""

    plan: Plan
    runtime: Runtime
    model: Any  # the PeftModel being trained
    task: Task
    score: AnswerScorer
    settings: TrainSettings
    out: Path
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    state: TrainState

    @property
    def config(self) -> Train:
        assert self.plan.train is not None
        return self.plan.train


def start_session(
    plan: Plan,
    runtime: Runtime,
    task: Task,
    settings: TrainSettings,
    out: Path,
    *,
    reward: str | None = None,
    allow_code: bool = False,
    resume: bool = False,
) -> TrainSession:
    """Prepare a run in `out`: the optimiser, the scorer, and (with `resume`) the state of
    the newest checkpoint that verifies; newer ones that fail are moved to
    `checkpoints/rejected/` with a warning. Raises UserError for a plan without training
    settings or adapters, an `out` that holds another run, a run whose checkpoints all
    fail verification, or a checkpoint of another plan.

    reward: a reward name overriding the plan's; by default a task with its own scorer
    (reasoning_gym) uses it, any other task the plan's `reward`.
    """
    if plan.train is None:
        raise UserError("the spec has no train block: add `train { algorithm grpo ... }` to train it")
    if not plan.adapters:
        raise UserError("every node of this system is frozen: there is no adapter to train")
    score = make_scorer(plan.train.reward, task, reward, allow_code)
    model = runtime.backend.model
    slots = [slot.name for slot in plan.adapters]
    out = Path(out)
    check_out_folder(out, resume)
    params = prepare_for_update(model)
    optimizer = make_optimizer(params, plan.train.lr)
    fingerprint = plan_fingerprint(plan)
    state = TrainState(step=0, data_position=0, seed=settings.seed, plan_fingerprint=fingerprint)
    group = distributed.current()
    checkpoint = None
    if resume and (group is None or group.is_main):  # rank 0 tidies; the others wait, then read
        clean_checkpoints(out)  # unfinished writes of a crashed run
        checkpoint = resume_checkpoint(out)
    if group is not None:
        group.barrier()
        checkpoint = resume_checkpoint(out) if resume else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, slots, optimizer)
        if state.plan_fingerprint != fingerprint:
            raise UserError(
                f"'{checkpoint}' was trained from another plan ({state.plan_fingerprint}, now {fingerprint}): "
                "resume with the same spec and settings, or choose another --out"
            )
        if state.seed != settings.seed:
            raise UserError(f"'{checkpoint}' was trained with --seed {state.seed}, not {settings.seed}")
    if group is None or group.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _keep_metrics_until(out / METRICS_FILE, state.step)
        _keep_metrics_until(out / SAMPLES_FILE, state.step)
        (out / PLAN_FILE).write_text(plan.to_pretty_json())
    return TrainSession(
        plan=plan,
        runtime=runtime,
        model=model,
        task=task,
        score=score,
        settings=settings,
        out=out,
        optimizer=optimizer,
        params=params,
        state=state,
    )


def resume_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint under `out` that verifies (None when there is none). Newer ones
    that fail are moved to `checkpoints/rejected/`, each reported with its reason, so the
    steps they held are trained again. Raises UserError when checkpoints exist but none verifies."""
    checkpoint, skipped = newest_verified(out)
    if checkpoint is None and skipped:
        reasons = "; ".join(item.reason for item in skipped)
        raise UserError(f"no checkpoint in '{out}' verifies ({reasons}): start a new run with another --out")
    for item in skipped:
        moved = reject_checkpoint(item.path)
        logger.warning("\nresuming from %s, not the newer %s (moved to %s): %s", checkpoint.name, item.path.name, moved,
                       item.reason)
    return checkpoint


def check_out_folder(out: Path, resume: bool) -> None:
    """Refuse to start a new run over another one (UserError); cheap, so callers can
    check before loading a model."""
    if not resume and (list_checkpoints(out) or (Path(out) / METRICS_FILE).exists()):
        raise UserError(f"'{out}' already holds a run: pass --resume to continue it, or choose another --out")


class StopRequest(Protocol):
    """Anything with a `requested` flag, such as `neuromas.runtime.training.stop.StopSignals`."""

    @property
    def requested(self) -> bool: ...


def train(
    session: TrainSession,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    stop: StopRequest | None = None,
) -> list[dict[str, Any]]:
    """Run steps until `settings.steps` updates are done, or until `stop.requested` is set
    (checked between steps; the finished step is then checkpointed); returns this call's
    metrics rows."""
    rows = []
    while session.state.step < session.settings.steps:
        if is_stop_requested(stop):
            save_if_unsaved(session)
            break
        metrics = train_step(session)
        rows.append(metrics)
        if on_step is not None:
            on_step(metrics)
    return rows


def is_stop_requested(stop: StopRequest | None) -> bool:
    """Whether to stop before the next step; under torchrun every rank stops when any
    rank was asked to (a collective: every rank must call it)."""
    if stop is None:
        return False
    group = distributed.current()
    return stop.requested if group is None else group.any(stop.requested)


def save_if_unsaved(session: TrainSession) -> None:
    """Checkpoint the session's step unless a checkpoint of it exists (step 0 has nothing
    to save); under torchrun rank 0 writes and the others wait."""
    state = session.state
    if state.step == 0 or checkpoint_path(session.out, state.step).is_dir():
        return
    group = distributed.current()
    if group is None or group.is_main:
        save_checkpoint(session.out, session.model, [slot.name for slot in session.plan.adapters],
                        session.optimizer, state)
        prune_checkpoints(session.out, session.settings.keep_checkpoints)
    if group is not None:
        group.barrier()


def train_step(session: TrainSession) -> dict[str, Any]:
    """One step: rollout -> reward -> advantages -> loss and update -> adapter sync -> log.

    Under torchrun (runtime.distributed) each rank rolls out its share of the step's
    inputs; rewards are gathered so advantages and metrics cover the whole step, the
    update averages gradients over ranks, and rank 0 alone writes logs and checkpoints.
    """
    config, settings, state = session.config, session.settings, session.state
    group = distributed.current()  # None in a single process
    step_started = time.perf_counter()
    if group is not None:
        check_batch_for_ranks(config.batch, group.world_size)
        group.broadcast_once(session.params)  # every rank starts from rank 0's adapters

    # 1. Rollout: `group` independent runs of the whole system on each input (on this
    # rank's contiguous share of the inputs: a GRPO group never straddles ranks).
    examples = session.task.batch(state.data_position, config.batch)
    share = range(len(examples)) if group is None else group.shard(len(examples))
    local = [examples[i] for i in share]
    seed = rollout_seed(state.seed, state.step)
    rollout = session.runtime.rollout(
        [example.inputs for example in local],
        group=config.group,
        seed=seed if group is None else distributed.rank_seed(seed, group.rank),
    )
    rollout_s = time.perf_counter() - step_started

    # 2. Reward: the final answer of each run, input-major: run j of input i is i * group + j.
    answers = [rollout.answer(i, j) for i in range(len(local)) for j in range(config.group)]
    targets = [example for example in local for _ in range(config.group)]
    scores = safe_rewards(session.score, answers, targets, name="reward")
    counts = rollout_counts(rollout)
    if group is not None:  # the whole step's rewards: rank shares concatenate in input order
        scores = merge_scores(group.gather(scores))
        counts = dict(zip(counts, (int(total) for total in group.sum(list(counts.values()))), strict=True))
    rewards = torch.tensor(scores.rewards, dtype=torch.float32)  # (B,)

    # 3. Advantages: one per run, from the whole step's rewards; every token of every
    # node of the run receives it. A rank keeps its own runs' advantages.
    advantages = compute_advantages(config.algorithm, rewards, config.group)  # (B,)
    advantages = advantages[share.start * config.group : share.stop * config.group]  # (B_rank,)
    rows = completion_rows(rollout, session.plan)
    row_advantages = advantages[[row.sample for row in rows]]  # (R,)

    # 4. Loss and step. Old log-probs are the training model's own, taken before the
    # update, so the importance ratio starts at exactly 1 (the sampler's log-probs come
    # from another numeric path, and from another engine with vLLM). With one pass the
    # first forward pass gives them (update_step's old_logprobs=None).
    update_started = time.perf_counter()
    batches = micro_batches(rows, settings.token_budget)
    stats = None
    has_rows = bool(batches) if group is None else group.any(bool(batches))  # every rank updates, or none
    if has_rows:
        old_logprobs = score_batches(session.model, batches) if config.epochs > 1 else None
        needs_reference = config.kl != 0.0 or settings.log_kl
        ref_logprobs = score_batches(session.model, batches, use_adapters=False) if needs_reference else None
        update = UpdateConfig(clip=config.clip, kl_coef=config.kl, loss_norm=config.loss_norm, grad_clip=config.grad_clip)
        epochs = [
            update_step(session.model, session.optimizer, session.params, batches, old_logprobs, ref_logprobs,
                        row_advantages, update, group)
            for _ in range(config.epochs)
        ]
        stats = _mean_stats(epochs)
    update_s = time.perf_counter() - update_started

    # 5. Adapter sync: the generating engine must sample from the updated adapters.
    sync_started = time.perf_counter()
    sync_adapters(session)
    sync_s = time.perf_counter() - sync_started

    # 6. Log, then checkpoint (rank 0 writes; the other ranks wait until it has).
    session.state = state._replace(step=state.step + 1, data_position=state.data_position + len(examples))
    metrics = metrics_row(session, counts, rewards, scores, stats, rollout_s, update_s, sync_s)
    metrics["step_s"] = round(time.perf_counter() - step_started, 4)
    is_main = group is None or group.is_main
    if is_main:
        with (session.out / METRICS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics) + "\n")
        with (session.out / SAMPLES_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(sample_row(session.state.step, local[0], answers[0], scores.rewards[0])) + "\n")
    is_last = session.state.step >= settings.steps
    if is_last or session.state.step % max(settings.save_every, 1) == 0:
        if is_main:
            slots = [slot.name for slot in session.plan.adapters]
            save_checkpoint(session.out, session.model, slots, session.optimizer, session.state)
            prune_checkpoints(session.out, settings.keep_checkpoints)
        if group is not None:
            group.barrier()
    return metrics


def check_batch_for_ranks(batch: int, world_size: int) -> None:
    """Raise UserError when a step has fewer inputs than there are ranks (a rank would have none)."""
    if batch < world_size:
        raise UserError(
            f"the step's batch of {batch} input(s) cannot be shared by {world_size} processes: "
            f"every process needs at least one input; pass --batch {world_size} or more, or start fewer processes"
        )


def merge_scores(per_rank: list[RewardScores]) -> RewardScores:
    """The ranks' reward scores, in rank order, as one step's scores."""
    return RewardScores(
        rewards=[reward for scores in per_rank for reward in scores.rewards],
        failures=sum(scores.failures for scores in per_rank),
        errors=tuple(error for scores in per_rank for error in scores.errors),
    )


def rollout_counts(rollout: Rollout) -> dict[str, int]:
    """What a rollout produced, for the metrics row (summed over ranks under torchrun)."""
    records = list(rollout.records())
    return {
        "completions": len(records),
        "length_truncations": sum(record.finish_reason == "length" for record in records),
        "prompt_truncations": rollout.truncations,
    }


def rollout_seed(seed: int, step: int) -> int:
    """Each step's rollout seed depends only on the run's seed and the step, so a resumed
    run samples exactly what an uninterrupted one would."""
    return seed * 1_000_003 + step


def make_scorer(plan_reward: str, task: Task, reward: str | None, allow_code: bool) -> AnswerScorer:
    """The step's reward of one run's answer (the plan's first output).

    A task with its own scorer (reasoning_gym) gets the answer extracted with the
    output's `format` (its scorers compare answers exactly); a named reward (the plan's,
    or `reward` overriding it) gets the output's full text and extracts for itself.
    """
    task_scorer = task.scorer
    if reward is None and task_scorer is not None:

        def score_extracted(answer: Answer, example: Example) -> float:
            is_text = task.is_scored_on_text or answer.answer is None  # code and choice scorers read it all
            return task_scorer(answer.text if is_text else answer.answer, example)

        return score_extracted
    function = load_reward(reward or plan_reward, allow_code=allow_code)

    def score_text(answer: Answer, example: Example) -> float:
        return function(answer.text, example.answer)

    return score_text


def completion_rows(rollout: Rollout, plan: Plan) -> list[CompletionRow]:
    """Every trainable node's completion in every run, tagged with its run's index."""
    nodes = plan.node_map()
    rows = []
    for per_input in rollout.samples:
        for sample in per_input:
            for record in sample.records.values():
                if record.adapter is None:
                    continue  # a frozen node has nothing to train
                node = nodes[record.node]
                rows.append(
                    CompletionRow(
                        sample=sample.input_index * rollout.group + sample.sample,
                        node=node.id,
                        level=node.level,
                        adapter=record.adapter,
                        prompt_ids=record.prompt_ids,
                        completion_ids=record.completion_ids,
                        temperature=node.generation.temperature,
                    )
                )
    return rows


def sync_adapters(session: TrainSession) -> None:
    """Make the backend generate with the updated adapters: nothing to do when it runs the
    trained model itself (transformers); an engine that publishes versions (vLLM) gets a
    new version; any other backend loads freshly saved folders."""
    backend = session.runtime.backend
    if hasattr(backend, "publish"):
        backend.publish(session.model)
        return
    if getattr(backend, "model", None) is session.model:
        return
    from ..models.adapters import save_adapters

    folder = session.out / "sync"
    shutil.rmtree(folder, ignore_errors=True)
    backend.set_adapters(save_adapters(session.model, folder, [slot.name for slot in session.plan.adapters]))


def metrics_row(
    session: TrainSession,
    counts: dict[str, int],
    rewards: torch.Tensor,
    scores: RewardScores,
    stats: UpdateStats | None,
    rollout_s: float,
    update_s: float,
    sync_s: float,
) -> dict[str, Any]:
    """One flat row per step; the update's fields are null when no row had tokens, and
    grad_norm is null when it was not finite (the step was skipped). counts: `rollout_counts`."""
    update_fields = ("loss", "kl", "entropy", "clip_fraction", "ratio", "grad_norm")
    row: dict[str, Any] = {
        "step": session.state.step,
        "stage": session.plan.stage,  # the growth stage, None without growth
        "data_position": session.state.data_position,
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std(unbiased=False).item(),  # the batch's spread, not an estimate
        "accuracy": (rewards >= CORRECT).float().mean().item(),
        **{name: (None if stats is None else _finite(getattr(stats, name))) for name in update_fields},
        "tokens": 0 if stats is None else stats.tokens,
        **counts,
        "reward_failures": scores.failures,
        "reward_error": scores.errors[0] if scores.errors else None,  # the first, to see what failed
        "rollout_s": round(rollout_s, 4),
        "update_s": round(update_s, 4),
        "sync_s": round(sync_s, 4),
    }
    is_kl_measured = stats is not None and (session.config.kl != 0.0 or session.settings.log_kl)
    if not is_kl_measured:
        row["kl"] = None
    return row


def sample_row(step: int, example: Example, answer: Answer, reward: float) -> dict[str, Any]:
    """The first run of a step as a JSON-ready row: inputs, reference, output, reward."""
    return {
        "step": step,
        "inputs": example.inputs,
        "reference": example.answer,
        "output": answer.text,
        "answer": answer.answer,
        "reward": reward,
    }


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop rows (of metrics or samples) logged after the checkpoint a run resumes from
    (a crash can leave some)."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    lines = path.read_text().splitlines()
    if lines and not _is_json(lines[-1]):
        lines.pop()  # a row cut short by a crash while it was written
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    staging = path.with_name(f".{path.name}.tmp")  # replaced atomically: a crash now keeps the old file
    staging.write_text("".join(line + "\n" for line in kept))
    os.replace(staging, path)


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _mean_stats(epochs: list[UpdateStats]) -> UpdateStats:
    """Average each field over the optimisation passes of one step."""
    fields = {name: sum(getattr(s, name) for s in epochs) / len(epochs) for name in UpdateStats._fields}
    return UpdateStats(**{**fields, "tokens": epochs[0].tokens, "rows": epochs[0].rows})


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
