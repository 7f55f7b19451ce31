"""(sample, node) completions and their advantages -> one optimiser step on every node's LoRA adapter.

Every row goes through its own node's adapter in the same forward pass: peft's
mixed-adapter batches (`adapter_names=[...]`), which peft allows only outside
training mode. So the model stays in eval mode while gradients are enabled on the
LoRA weights alone; its gradients equal per-adapter passes (tests/training/test_update.py).
Frozen nodes (adapter None) go through the base model (`__base__`) and get no gradient.

Base weights stay frozen in their own dtype (bf16); the adapters are trained in fp32,
and the output head is computed in fp32 so that log-probs are not rounded to bf16.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

from ..failures import in_phase
from .loss import LossNorm, policy_terms, reduce_loss

if TYPE_CHECKING:
    from .distributed import DataParallel

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch
DEFAULT_TOKEN_BUDGET = 4096  # padded tokens per micro-batch


class CompletionRow(NamedTuple):
    """One node's completion in one sample: what the update learns from.

    sample: index of the sample in the step (input * group + j); its advantage applies.
    adapter: the node's adapter slot; None for a frozen node.
    prompt_ids / completion_ids: token ids exactly as generated (completion: (T_i,)).
    temperature: the node's sampling temperature (log-probs are taken at it).
    """

    sample: int
    node: str
    level: int
    adapter: str | None
    prompt_ids: Sequence[int]
    completion_ids: Sequence[int]
    temperature: float


class MicroBatch(NamedTuple):
    """Rows padded into one forward pass: prompts left-padded to one length P, completions
    right-padded to one length T, so every completion starts at column P.

    rows: indices into the step's row list; input_ids, attention_mask, position_ids: (B, P + T);
    completion_ids, completion_mask: (B, T); temperatures: (B, 1); adapter_names: B names.
    """

    rows: tuple[int, ...]
    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    temperatures: Tensor
    adapter_names: list[str]

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel()

    def to(self, device: torch.device) -> MicroBatch:
        """The same micro-batch with its tensors on `device` (no copy when already there)."""
        return self._replace(**{name: getattr(self, name).to(device) for name in _TENSOR_FIELDS})


_TENSOR_FIELDS = ("input_ids", "attention_mask", "position_ids", "completion_ids", "completion_mask", "temperatures")


class TokenScores(NamedTuple):
    """logprobs: (B, T) of the completion tokens, with grad when computed with grad;
    entropy: (B, T) of the sampling distribution, detached (None unless asked for)."""

    logprobs: Tensor
    entropy: Tensor | None


class UpdateConfig(NamedTuple):
    clip: float
    kl_coef: float
    loss_norm: LossNorm
    grad_clip: float  # <= 0: no clipping (the norm is still measured)


class UpdateStats(NamedTuple):
    """Means over the step's completion tokens, except loss (the optimised value) and
    grad_norm (before clipping)."""

    loss: float
    kl: float
    entropy: float
    clip_fraction: float
    ratio: float
    grad_norm: float
    tokens: int
    rows: int


def micro_batches(rows: Sequence[CompletionRow], token_budget: int = DEFAULT_TOKEN_BUDGET) -> list[MicroBatch]:
    """Pack rows level by level into micro-batches of at most `token_budget` padded tokens
    (a row longer than the budget gets a micro-batch of its own). Rows without completion
    tokens are left out: there is nothing to learn from them."""
    batches: list[MicroBatch] = []
    for level in sorted({row.level for row in rows}):
        # Longest first, so each micro-batch holds rows of similar length and pads little.
        members = sorted(
            (i for i, row in enumerate(rows) if row.level == level and len(row.completion_ids) > 0),
            key=lambda i: (-(len(rows[i].prompt_ids) + len(rows[i].completion_ids)), i),
        )
        current: list[int] = []
        prompt_len = completion_len = 0
        for index in members:
            row = rows[index]
            new_prompt = max(prompt_len, len(row.prompt_ids))
            new_completion = max(completion_len, len(row.completion_ids))
            if current and (len(current) + 1) * (new_prompt + new_completion) > token_budget:
                batches.append(collate(rows, current))
                current, new_prompt, new_completion = [], len(row.prompt_ids), len(row.completion_ids)
            current.append(index)
            prompt_len, completion_len = new_prompt, new_completion
        if current:
            batches.append(collate(rows, current))
    return batches


def collate(rows: Sequence[CompletionRow], indices: Sequence[int], pad_id: int = 0) -> MicroBatch:
    """Pad the chosen rows into one MicroBatch (pad tokens are masked out, so any id works)."""
    chosen = [rows[i] for i in indices]
    prompt_len = max(len(row.prompt_ids) for row in chosen)
    completion_len = max(len(row.completion_ids) for row in chosen)
    input_ids = torch.full((len(chosen), prompt_len + completion_len), pad_id, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros_like(input_ids)  # (B, L)
    completion_ids = torch.full((len(chosen), completion_len), pad_id, dtype=torch.long)  # (B, T)
    completion_mask = torch.zeros((len(chosen), completion_len), dtype=torch.float32)  # (B, T)
    for b, row in enumerate(chosen):
        start = prompt_len - len(row.prompt_ids)
        end = prompt_len + len(row.completion_ids)
        input_ids[b, start:end] = torch.tensor([*row.prompt_ids, *row.completion_ids])
        attention_mask[b, start:end] = 1
        completion_ids[b, : len(row.completion_ids)] = torch.tensor(row.completion_ids)
        completion_mask[b, : len(row.completion_ids)] = 1.0
    # Positions count real tokens only, as in generation with left padding.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, L)
    # A temperature of 0 (greedy) has no sampling distribution; score it at 1.
    temperatures = torch.tensor([[row.temperature if row.temperature > 0 else 1.0] for row in chosen])  # (B, 1)
    return MicroBatch(
        rows=tuple(indices),
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        temperatures=temperatures,
        adapter_names=[row.adapter or BASE_ADAPTER for row in chosen],
    )


def token_logprobs(model: nn.Module, batch: MicroBatch, *, use_adapters: bool = True, with_entropy: bool = False) -> TokenScores:
    """Log-probs (and entropy) of each completion token under its row's adapter, or under
    the base model for every row when `use_adapters` is False. Grad follows the caller's
    grad mode."""
    batch = batch.to(model_device(model))
    completion_len = batch.completion_ids.shape[1]
    names = batch.adapter_names if use_adapters else [BASE_ADAPTER] * len(batch.adapter_names)
    with _fp32_output_head(model):
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            adapter_names=names,
            use_cache=False,
            # The logits at column P - 1 + t predict completion token t: keep T + 1, drop the last.
            logits_to_keep=completion_len + 1,
        ).logits[:, :-1]  # (B, T, V), fp32
    # The policy that sampled each row is softmax(logits / temperature). Its top-p cut is
    # left out, as is usual for policy-gradient log-probs: the sampled tokens lie inside
    # the nucleus, and the cut has no gradient.
    logits = logits / batch.temperatures.unsqueeze(-1)  # (B, T, V)
    logprobs = selective_log_softmax(logits, batch.completion_ids)  # (B, T)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach())  # (B, T)
    return TokenScores(logprobs=logprobs * batch.completion_mask, entropy=entropy)


@torch.no_grad()
@in_phase("update")
def score_batches(model: nn.Module, batches: Sequence[MicroBatch], *, use_adapters: bool = True) -> list[Tensor]:
    """Log-probs of every micro-batch without grad: the old policy (adapters on, taken
    before the update) or the reference (adapters off, for the KL). Each: (B, T)."""
    return [token_logprobs(model, batch, use_adapters=use_adapters).logprobs for batch in batches]


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
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


@in_phase("update")
def update_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    batches: Sequence[MicroBatch],
    old_logprobs: Sequence[Tensor] | None,
    ref_logprobs: Sequence[Tensor] | None,
    row_advantages: Tensor,
    config: UpdateConfig,
    group: DataParallel | None = None,
) -> UpdateStats:
    """One optimiser step over all micro-batches: forward and backward per micro-batch,
    gradients accumulated, clipped over all adapter parameters, then AdamW.

    old_logprobs / ref_logprobs: one (B, T) tensor per micro-batch; row_advantages: (R,),
    one per row of the step (indexed by MicroBatch.rows). old_logprobs None means the
    model has not changed since the rollout (the first pass over it): the forward pass's
    own log-probs, detached, are then the old ones, the very numbers a separate no-grad
    pass would give, for one forward pass fewer.

    group: data-parallel ranks (runtime.distributed), each with its share of the step's
    rows; every rank must call this, even with no micro-batch. The normalisers then
    count every rank's rows, each rank's loss is scaled by the world size and the
    gradients are averaged before clipping, so every rank takes the single-process step.
    """
    # The normalisers cover the whole step, so the accumulated loss is the full-batch loss.
    total_tokens = int(sum(batch.completion_mask.sum().item() for batch in batches))
    total_rows = sum(len(batch.rows) for batch in batches)
    scale = 1.0
    if group is not None:
        total_tokens, total_rows = (int(count) for count in group.sum([total_tokens, total_rows]))
        scale = float(group.world_size)  # mean over ranks of (world size x share) = the sum of the shares
    device = model_device(model)
    optimizer.zero_grad(set_to_none=True)
    sums = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clipped": 0.0, "ratio": 0.0}
    for index, batch in enumerate(batches):
        batch = batch.to(device)
        scores = token_logprobs(model, batch, with_entropy=True)
        advantages = row_advantages[list(batch.rows)].to(device)  # (B,)
        old = scores.logprobs.detach() if old_logprobs is None else old_logprobs[index]
        terms = policy_terms(
            scores.logprobs,
            old,
            advantages,
            clip=config.clip,
            ref_logprobs=None if ref_logprobs is None else ref_logprobs[index],
            kl_coef=config.kl_coef,
        )
        loss = reduce_loss(terms.loss, batch.completion_mask, config.loss_norm, total_tokens, total_rows)
        (loss * scale if scale != 1.0 else loss).backward()
        mask = batch.completion_mask
        sums["loss"] += loss.item()
        sums["kl"] += (terms.kl * mask).sum().item()
        sums["entropy"] += (scores.entropy * mask).sum().item()  # type: ignore[operator]
        sums["clipped"] += (terms.is_clipped * mask).sum().item()
        sums["ratio"] += (terms.ratio * mask).sum().item()
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
    per_token = max(total_tokens, 1)
    return UpdateStats(
        loss=sums["loss"],
        kl=sums["kl"] / per_token,
        entropy=sums["entropy"] / per_token,
        clip_fraction=sums["clipped"] / per_token,
        ratio=sums["ratio"] / per_token,
        grad_norm=grad_norm,
        tokens=total_tokens,
        rows=total_rows,
    )


@contextlib.contextmanager
def _fp32_output_head(model: nn.Module) -> Iterator[None]:
    """Recompute the output head in fp32 while in this context: with a bf16 base, bf16
    logits put errors of up to ~0.05 nats into log-probs (measured on SmolLM2-135M)."""
    head = model.get_output_embeddings()
    if head is None or head.weight.dtype == torch.float32:
        yield
        return

    def to_fp32(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        bias = None if module.bias is None else module.bias.float()
        return F.linear(inputs[0].float(), module.weight.float(), bias)

    handle = head.register_forward_hook(to_fp32)
    try:
        yield
    finally:
        handle.remove()
