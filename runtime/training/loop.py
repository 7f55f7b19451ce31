"""A training session -> steps: rollout -> reward -> advantages -> loss and update -> sync -> log.

One step samples `group` runs of the whole system on `batch` inputs, scores each run's
final answer, turns the rewards into one advantage per run, gives that advantage to
every token every node wrote in that run, updates every node's adapter in one optimiser
step and writes one metrics row. `train` repeats steps; growth runs (`schedule`) use the
same loop with a hook that grows the system between steps.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch

from neuromas.diagnostics import UserError
from neuromas.plan import Plan
from . import distributed
from .diagnostics import node_diagnostics, node_kl
from .loss import compute_advantages, zero_std_fraction
from .metrics import mean_stats, metrics_row, sample_row
from .scoring import merge_scores
from .session import METRICS_FILE, SAMPLES_FILE, TrainSession, append_row, save_if_unsaved, save_step
from ..generation.rollout import Rollout
from ..tasks.rewards import safe_rewards
from .update import CompletionRow, UpdateConfig, micro_batches, score_batches, update_step

RowHook = Callable[[dict[str, Any]], None]  # receives each finished metrics row, after it is written


class StopRequest(Protocol):
    """Anything with a `requested` flag, such as `neuromas.runtime.training.stop.StopSignals`."""

    @property
    def requested(self) -> bool: ...


def train(
    session: TrainSession,
    on_step: RowHook | None = None,
    stop: StopRequest | None = None,
    before_step: Callable[[TrainSession], None] | None = None,
) -> list[dict[str, Any]]:
    """Run steps until `settings.steps` updates are done, or until `stop.requested` is set
    (checked between steps; the finished step is then checkpointed); returns this call's
    metrics rows.

    on_step: called with each step's metrics row once it is in metrics.jsonl (progress
    bars, trackers). before_step: called before each step; it may change the session in
    place (growth swaps in the grown system).
    """
    rows = []
    try:
        while session.state.step < session.settings.steps:
            if is_stop_requested(stop):
                save_if_unsaved(session)
                break
            if before_step is not None:
                before_step(session)
            metrics = train_step(session)
            rows.append(metrics)
            if on_step is not None:
                on_step(metrics)
    except BaseException:
        session.close()  # a failed run hands its folder (and its checkpoints) to the next writer
        raise
    return rows


def is_stop_requested(stop: StopRequest | None) -> bool:
    """Whether to stop before the next step; under torchrun every rank stops when any
    rank was asked to (a collective: every rank must call it)."""
    if stop is None:
        return False
    group = distributed.current()
    return stop.requested if group is None else group.any(stop.requested)


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
    rewards = torch.tensor(scores.rewards, dtype=torch.float64)  # (B,)

    # 3. Advantages: one per run, from the whole step's rewards; every token of every
    # node of the run receives it. A rank keeps its own runs' advantages.
    advantages = compute_advantages(config.algorithm, rewards, config.group)  # (B,)
    advantages = advantages[share.start * config.group : share.stop * config.group]  # (B_rank,)
    rows = completion_rows(rollout, session.plan)
    row_advantages = advantages[[row.sample for row in rows]].float()  # (R,)

    # 4. Loss and step. Old log-probs are the training model's own, taken before the
    # update, so the importance ratio starts at exactly 1 (the sampler's log-probs come
    # from another numeric path, and from another engine with vLLM). With one pass the
    # first forward pass gives them (update_step's old_logprobs=None).
    update_started = time.perf_counter()
    batches = micro_batches(rows, settings.token_budget)
    stats, kl_by_node = None, {}
    has_rows = bool(batches) if group is None else group.any(bool(batches))  # every rank updates, or none
    is_kl_measured = config.kl != 0.0 or settings.log_kl
    if has_rows:
        old_logprobs = score_batches(session.model, batches) if config.epochs > 1 else None
        ref_logprobs = score_batches(session.model, batches, use_adapters=False) if is_kl_measured else None
        if ref_logprobs is not None:
            kl_by_node = node_kl(rows, batches, ref_logprobs)
        update = UpdateConfig(clip=config.clip, kl_coef=config.kl, loss_norm=config.loss_norm, grad_clip=config.grad_clip)
        epochs = [
            update_step(session.model, session.optimizer, session.params, batches, old_logprobs, ref_logprobs,
                        row_advantages, update, group)
            for _ in range(config.epochs)
        ]
        stats = mean_stats(epochs)
    update_s = time.perf_counter() - update_started

    # 5. Adapter sync: the generating engine must sample from the updated adapters.
    sync_started = time.perf_counter()
    sync_adapters(session)
    sync_s = time.perf_counter() - sync_started

    # 6. Log, then checkpoint (rank 0 writes; the other ranks wait until it has).
    session.state = state._replace(step=state.step + 1, data_position=state.data_position + len(examples))
    metrics = metrics_row(
        step=session.state.step,
        stage=session.plan.stage,
        data_position=session.state.data_position,
        scores=scores,
        stats=stats,
        counts=counts,
        zero_std_fraction=zero_std_fraction(rewards, config.group),
        is_kl_measured=stats is not None and is_kl_measured,
        timings_s={"rollout_s": rollout_s, "update_s": update_s, "sync_s": sync_s,
                   "step_s": time.perf_counter() - step_started},
    ) | node_diagnostics(rollout) | kl_by_node  # this process's runs only, under torchrun
    if session.is_main:
        append_row(session.out / METRICS_FILE, metrics)
        append_row(session.out / SAMPLES_FILE, sample_row(session.state.step, local[0], answers[0], scores.rewards[0]))
    is_last = session.state.step >= settings.steps
    if is_last or session.state.step % max(settings.save_every, 1) == 0:
        save_step(session)
    return metrics


def check_batch_for_ranks(batch: int, world_size: int) -> None:
    """Raise UserError when a step has fewer inputs than there are ranks (a rank would have none)."""
    if batch < world_size:
        raise UserError(
            f"the step's batch of {batch} input(s) cannot be shared by {world_size} processes: "
            f"every process needs at least one input; pass --batch {world_size} or more, or start fewer processes"
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
                        # The sampler's own log-probs, for the update's importance correction;
                        # not where it sampled from another distribution (greedy, a top-p cut).
                        sampler_logprobs=record.logprobs if _is_plain_sampling(node.generation) else None,
                    )
                )
    return rows


def _is_plain_sampling(generation: Any) -> bool:
    return generation.temperature > 0 and generation.top_p >= 1.0


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
    backend.set_adapters(save_adapters(session.model, folder, session.slots))
