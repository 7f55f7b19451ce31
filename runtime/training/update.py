"""(sample, node) completions and their advantages -> one optimiser step on every node's LoRA adapter.

Every row goes through its own node's adapter in the same forward pass: the stacked
per-row LoRA of `backends.lora_rows` (the code generation samples with), or peft's
mixed-adapter batches (`adapter_names=[...]`), which peft allows only outside training
mode. So the model stays in eval mode while gradients are enabled on the LoRA weights
alone; its gradients equal per-adapter passes (tests/training/test_update.py). Frozen
nodes (adapter None) go through the base model (`__base__`) and get no gradient.

Base weights stay frozen in their own dtype (bf16 where the CPU computes it natively,
so the base's matmuls run in bf16); the adapters are trained in fp32, their deltas are
computed in fp32 (backward in the base's dtype, as the base's own), and the frozen
output head runs in fp32 on the real completion tokens only (`head_logprobs`: no
(tokens x vocabulary) logits are kept), so that log-probs are not rounded to bf16,
exactly as during sampling.

Where rows carry the sampler's log-probs, each token's loss is weighted by the truncated
importance ratio min(pi_old / pi_sampler, cap): in bf16 the base model's rounding alone
(prefill and decoding shapes differ) leaves a gap of a few hundredths of a nat per token.

Four fast paths, each with a gradient-parity test against plain per-row passes:
prompt starts shared by a group's samples are computed once (`packing.SharedPromptBatch`);
on a CPU such a batch's real tokens go through the model without its padding
(`flat_tokens`); rows whose advantage is exactly zero leave the step when the loss has
no KL term (they contribute no gradient; the normalisers still count them); and entropy
is computed only when asked for. A step with no signal at all skips `optimizer.step()`.

On a CPU the update's attention is `backends.attention`'s grouped matmuls, as in
sampling: torch's CPU flash-attention backward costs about 3x its forward (a quarter of
a NeuroMAS-3 update); plain matmuls' backward does not, and is as accurate (bf16
gradients lie 5.6% from the fp32 ones with either; in fp32 the two agree to 5e-6).
Other devices keep their kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from torch import Tensor, nn

from ..backends.attention import FLAT_NAME, NAME, cpu_attention
from ..backends.lora_rows import head_skipped, row_adapters
from ..backends.transformers import cache_argument
from ..failures import in_phase
from .flat_tokens import flat_hidden_states
from .head_logprobs import head_logprobs
from .loss import LossNorm, policy_terms, reduce_loss
from .packing import (
    BASE_ADAPTER,
    DEFAULT_TOKEN_BUDGET,
    Batch,
    CompletionRow,
    MicroBatch,
    SharedPromptBatch,
    collate,
    collate_shared,
    micro_batches,
)

if TYPE_CHECKING:
    from .distributed import DataParallel

__all__ = [
    "BASE_ADAPTER", "DEFAULT_TOKEN_BUDGET", "CompletionRow", "MicroBatch", "SharedPromptBatch", "collate",
    "collate_shared", "micro_batches", "token_logprobs", "score_batches", "update_step", "prepare_for_update",
    "make_optimizer", "lora_parameters", "UpdateConfig", "UpdateStats", "TokenScores",
]

LoraRows = Literal["stacked", "peft"]


class TokenScores(NamedTuple):
    """logprobs: (B, T) of the completion tokens, with grad when computed with grad;
    entropy: (B, T) of the sampling distribution, detached (None unless asked for)."""

    logprobs: Tensor
    entropy: Tensor | None


class UpdateConfig(NamedTuple):
    """clip, kl_coef, loss_norm: the loss (loss.py); grad_clip <= 0: no clipping (the norm
    is still measured). entropy: measure the policy's entropy (about 10% of the update).
    skip_zero_advantage: leave rows with an advantage of exactly 0 out when the loss has
    no KL term. lora_rows: "stacked" (the sampler's LoRA code) or "peft". sampler_cap:
    truncated importance sampling, each token's loss weighted by min(pi_old / pi_sampler,
    cap) where rows carry their sampler's log-probs (<= 0: off); it corrects for the
    sampler's numerics (bf16 rounding, another engine) differing from the trainer's.
    flat_tokens: shared-prompt batches without their padding on a CPU (`flat_tokens`)."""

    clip: float
    kl_coef: float
    loss_norm: LossNorm
    grad_clip: float
    entropy: bool = False
    skip_zero_advantage: bool = True
    lora_rows: LoraRows = "stacked"
    sampler_cap: float = 2.0
    flat_tokens: bool = True


class UpdateStats(NamedTuple):
    """loss: the optimised value (the full step's, skipped rows included, which add 0);
    grad_norm: before clipping. kl, entropy, clip_fraction, ratio: means over the
    completion tokens the step computed (entropy NaN unless asked for, kl and ratio NaN
    when nothing was computed). tokens, rows: the step's; rows_skipped: rows left out
    for a zero advantage; optimizer_skipped: no row had a signal, so AdamW did not step."""

    loss: float
    kl: float
    entropy: float
    clip_fraction: float
    ratio: float
    grad_norm: float
    tokens: int
    rows: int
    rows_skipped: int = 0
    optimizer_skipped: bool = False


def token_logprobs(
    model: nn.Module,
    batch: Batch,
    *,
    use_adapters: bool = True,
    with_entropy: bool = False,
    lora_rows: LoraRows = "stacked",
    flat_tokens: bool = True,
) -> TokenScores:
    """Log-probs (and entropy) of each completion token under its row's adapter, or under
    the base model for every row when `use_adapters` is False. Grad follows the caller's
    grad mode; in a shared-prompt batch it flows back through the shared prompts' keys
    and values to the LoRA weights that made them. flat_tokens: a shared-prompt batch
    goes through the model without its padding where the model is on a CPU."""
    is_flat = flat_tokens and isinstance(batch, SharedPromptBatch)
    with cpu_attention(model, FLAT_NAME if is_flat else NAME) as switched:
        batch = batch.to(model_device(model))
        return _token_logprobs(model, batch, use_adapters, with_entropy, lora_rows, is_flat and switched)


def _token_logprobs(
    model: nn.Module, batch: Batch, use_adapters: bool, with_entropy: bool, lora_rows: LoraRows, is_flat: bool = False
) -> TokenScores:
    prefer_peft = lora_rows == "peft"

    def names(adapters: list[str]) -> list[str]:
        return adapters if use_adapters else [BASE_ADAPTER] * len(adapters)

    with head_skipped(model) as head:
        if is_flat:
            hidden = flat_hidden_states(model, batch, names, prefer_peft)  # (B, T, H)
        else:
            hidden = _completion_hidden_states(model, batch, names, prefer_peft)
    mask = batch.completion_mask.bool()  # (B, T)
    # The policy that sampled each row is softmax(logits / temperature). Its top-p cut is
    # left out, as is usual for policy-gradient log-probs: the sampled tokens lie inside
    # the nucleus, and the cut has no gradient.
    temperature = batch.temperatures.expand(mask.shape)[mask]  # (N,)
    scores = head_logprobs(hidden[mask], head.weight, head.bias, batch.completion_ids[mask], temperature,
                           with_entropy=with_entropy)
    zeros = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    entropy = None if scores.entropy is None else zeros.masked_scatter(mask, scores.entropy)
    return TokenScores(logprobs=zeros.masked_scatter(mask, scores.logprobs), entropy=entropy)


def _completion_hidden_states(
    model: nn.Module, batch: Batch, names: Callable[[list[str]], list[str]], prefer_peft: bool
) -> Tensor:
    """The final hidden states (B, T, H) whose head outputs predict the T completion
    tokens of each row (the output head skipped)."""
    if isinstance(batch, SharedPromptBatch):
        from transformers import DynamicCache

        cache = DynamicCache()
        context, extra = row_adapters(model, names(batch.prefix_adapters), prefer_peft=prefer_peft)
        with context:
            model(
                input_ids=batch.prefix_ids,
                attention_mask=batch.prefix_mask,
                position_ids=batch.prefix_positions,
                use_cache=True,
                logits_to_keep=1,
                **{cache_argument(): cache},
                **extra,
            )
        if batch.row_prefix.tolist() != list(range(batch.prefix_ids.shape[0])):
            cache.batch_select_indices(batch.row_prefix)  # (U, ...) -> (B, ...), differentiable
        attention_mask = torch.cat([batch.prefix_mask[batch.row_prefix], batch.suffix_mask], dim=1)
        context, extra = row_adapters(model, names(batch.adapter_names), prefer_peft=prefer_peft)
        with context:
            return model(
                input_ids=batch.suffix_ids,
                attention_mask=attention_mask,
                position_ids=batch.suffix_positions,
                use_cache=True,
                **{cache_argument(): cache},
                **extra,
            ).logits[:, batch.rest_len - 1 :]  # from the prompt's last token: column t predicts completion token t
    completion_len = batch.completion_ids.shape[1]
    context, extra = row_adapters(model, names(batch.adapter_names), prefer_peft=prefer_peft)
    with context:
        return model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            # The state at column P - 1 + t predicts completion token t: keep T + 1, drop the last.
            logits_to_keep=completion_len + 1,
            **extra,
        ).logits[:, :-1]


@torch.no_grad()
@in_phase("update")
def score_batches(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    use_adapters: bool = True,
    lora_rows: LoraRows = "stacked",
    flat_tokens: bool = True,
) -> list[Tensor]:
    """Log-probs of every micro-batch without grad: the old policy (adapters on, taken
    before the update) or the reference (adapters off, for the KL). Each: (B, T)."""
    return [token_logprobs(model, batch, use_adapters=use_adapters, lora_rows=lora_rows,
                           flat_tokens=flat_tokens).logprobs for batch in batches]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every LoRA weight of every adapter, in a stable order."""
    return [param for name, param in model.named_parameters() if "lora_" in name]


def prepare_for_update(model: nn.Module) -> list[nn.Parameter]:
    """Freeze the base, make every LoRA weight a trainable fp32 parameter, put the model
    in eval mode, and return the LoRA parameters.

    Eval mode is what lets peft mix adapters in one batch. It also turns LoRA dropout
    off: the samples came from the dropout-free policy, and dropout would push the
    importance ratio off 1 at the first pass (departs from supervised LoRA recipes).
    """
    model.eval()
    for name, param in model.named_parameters():
        is_lora = "lora_" in name
        param.requires_grad_(is_lora)
        if is_lora and param.dtype != torch.float32:
            param.data = param.data.float()  # peft casts each layer's input to the adapter's dtype
    return lora_parameters(model)


def make_optimizer(params: Sequence[nn.Parameter], lr: float) -> torch.optim.AdamW:
    # No weight decay: decay would pull every adapter toward zero (the base model),
    # a regulariser the plan does not ask for; the KL term is the explicit one.
    # torch's fused AdamW: one kernel for all adapters (3x faster than its per-tensor loop on a CPU).
    fused = all(param.device.type in ("cpu", "cuda") for param in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused or None)


def rows_with_signal(batch: Batch, row_advantages: Tensor, config: UpdateConfig) -> list[int]:
    """Positions in `batch` of the rows that give a gradient: all of them, unless
    zero-advantage skipping is on and the loss has no KL term, then those with A != 0
    (a row with A = 0 adds exactly 0 to the loss: -ratio * 0 = 0, clipped or not)."""
    positions = list(range(len(batch.rows)))
    if not config.skip_zero_advantage or config.kl_coef != 0.0:
        return positions
    return [b for b in positions if row_advantages[batch.rows[b]].item() != 0.0]


@in_phase("update")
def update_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    batches: Sequence[Batch],
    old_logprobs: Sequence[Tensor] | None,
    ref_logprobs: Sequence[Tensor] | None,
    row_advantages: Tensor,
    config: UpdateConfig,
    group: DataParallel | None = None,
) -> UpdateStats:
    """One optimiser step over all micro-batches: forward and backward per micro-batch,
    gradients accumulated, clipped over all adapter parameters, then AdamW.

    old_logprobs / ref_logprobs: one (B, T) tensor per micro-batch; row_advantages: (R,),
    one per row of the step (indexed by the batches' rows). old_logprobs None means the
    model has not changed since the rollout (the first pass over it): the forward pass's
    own log-probs, detached, are then the old ones, the very numbers a separate no-grad
    pass would give, for one forward pass fewer.

    Rows without a signal (`rows_with_signal`) are not computed; the normalisers still
    count them, so loss and gradient are those of the full step. When no row of the
    step has a signal, there is no forward pass and no `optimizer.step()` (AdamW's
    momentum would otherwise move the adapters on a step with nothing to learn).

    group: data-parallel ranks (runtime.distributed), each with its share of the step's
    rows; every rank must call this, even with no micro-batch. The normalisers then
    count every rank's rows, each rank's loss is scaled by the world size and the
    gradients are averaged before clipping, so every rank takes the single-process step.
    """
    # The normalisers cover the whole step, so the accumulated loss is the full-batch loss.
    total_tokens = int(sum(batch.completion_mask.sum().item() for batch in batches))
    total_rows = sum(len(batch.rows) for batch in batches)
    kept = [rows_with_signal(batch, row_advantages, config) for batch in batches]
    kept_rows = sum(len(positions) for positions in kept)
    global_kept = kept_rows
    scale = 1.0
    if group is not None:
        counts = group.sum([total_tokens, total_rows, kept_rows])
        total_tokens, total_rows, global_kept = (int(count) for count in counts)
        scale = float(group.world_size)  # mean over ranks of (world size x share) = the sum of the shares
    optimizer.zero_grad(set_to_none=True)
    if global_kept == 0:
        return UpdateStats(loss=0.0, kl=math.nan, entropy=math.nan, clip_fraction=0.0, ratio=math.nan,
                           grad_norm=0.0, tokens=total_tokens, rows=total_rows, rows_skipped=total_rows,
                           optimizer_skipped=True)
    device = model_device(model)
    sums = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clipped": 0.0, "ratio": 0.0, "tokens": 0.0}
    for index, (batch, positions) in enumerate(zip(batches, kept, strict=True)):
        if not positions:
            continue
        old = None if old_logprobs is None else old_logprobs[index]
        ref = None if ref_logprobs is None else ref_logprobs[index]
        if len(positions) < len(batch.rows):
            batch = batch.select(positions)
            width = batch.completion_ids.shape[1]
            old = None if old is None else old[positions, :width]
            ref = None if ref is None else ref[positions, :width]
        batch = batch.to(device)
        scores = token_logprobs(model, batch, with_entropy=config.entropy, lora_rows=config.lora_rows,
                                flat_tokens=config.flat_tokens)
        advantages = row_advantages[list(batch.rows)].to(device)  # (B,)
        terms = policy_terms(
            scores.logprobs,
            scores.logprobs.detach() if old is None else old.to(device),
            advantages,
            clip=config.clip,
            ref_logprobs=None if ref is None else ref.to(device),
            kl_coef=config.kl_coef,
        )
        per_token = terms.loss
        if config.sampler_cap > 0 and batch.sampler_logprobs is not None:
            old_policy = scores.logprobs.detach() if old is None else old.to(device)
            weight = torch.exp(old_policy - batch.sampler_logprobs).clamp(max=config.sampler_cap)  # (B, T)
            per_token = per_token * weight * batch.completion_mask
        loss = reduce_loss(per_token, batch.completion_mask, config.loss_norm, total_tokens, total_rows)
        (loss * scale if scale != 1.0 else loss).backward()
        mask = batch.completion_mask
        sums["loss"] += loss.item()
        sums["kl"] += (terms.kl * mask).sum().item()
        if scores.entropy is not None:
            sums["entropy"] += (scores.entropy * mask).sum().item()
        sums["clipped"] += (terms.is_clipped * mask).sum().item()
        sums["ratio"] += (terms.ratio * mask).sum().item()
        sums["tokens"] += mask.sum().item()
    if group is not None:
        group.average_gradients(params)
        sums = dict(zip(sums, group.sum(list(sums.values())), strict=True))
    max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm).item()
    if math.isfinite(grad_norm):
        optimizer.step()
    # else: a NaN or inf gradient would corrupt every adapter and the optimiser's
    # moments; the step is skipped, and the non-finite norm shows it in the metrics.
    optimizer.zero_grad(set_to_none=True)
    computed = max(sums["tokens"], 1.0)
    return UpdateStats(
        loss=sums["loss"],
        kl=sums["kl"] / computed,
        entropy=sums["entropy"] / computed if config.entropy else math.nan,
        clip_fraction=sums["clipped"] / computed,
        ratio=sums["ratio"] / computed,
        grad_norm=grad_norm,
        tokens=total_tokens,
        rows=total_rows,
        rows_skipped=total_rows - global_kept,
    )
