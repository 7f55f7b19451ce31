"""Rewards and per-token log-probs -> advantages and the clipped policy-gradient loss.

Pure tensor functions, no model: each is tested on hand-computed tensors.

Layout used throughout: a step samples `group` completions for each of `inputs`
inputs, and rewards are flattened input-major, so sample `j` of input `i` sits at
`i * group + j`. Rows of token tensors are (sample, node) completions; `mask` marks
real completion tokens (1) against padding (0).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from neuromas.vocabulary import Algorithm, LossNorm

GROUP_STD_EPS = 1e-4
CONSTANT_SPREAD = 1e-9  # rewards whose max - min is at most this count as equal: their advantages are exactly 0


def batch_mean_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE with a batch-mean baseline (the paper's): A = r - mean(r) over the whole step.

    rewards: (B,) -> (B,). No scaling by the standard deviation, as in the paper. Computed
    in float64; a batch of equal rewards gets advantages of exactly 0.
    """
    wide = rewards.double()
    advantages = wide - wide.mean()
    if _spread(wide) <= CONSTANT_SPREAD:
        advantages = torch.zeros_like(wide)
    return advantages.to(rewards.dtype)


def group_advantages(rewards: Tensor, group_size: int, eps: float = GROUP_STD_EPS) -> Tensor:
    """GRPO: A = (r - mean_group) / (std_group + eps), each input's samples forming a group.

    rewards: (B,) with B = inputs * group_size -> (B,). The std is the unbiased sample
    std (divides by G - 1), as in the GRPO reference code. Computed in float64; a group
    whose rewards are all equal gets advantages of exactly 0 (in float32 the rounding of
    its mean would leave them at about 1e-4 / eps, all of one sign).
    """
    grouped = _grouped(rewards, group_size).double()  # (N, G)
    mean = grouped.mean(dim=1, keepdim=True)  # (N, 1)
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    advantages = (grouped - mean) / (std + eps)  # (N, G)
    advantages = advantages.masked_fill(constant_groups(rewards, group_size).unsqueeze(1), 0.0)
    return advantages.reshape(-1).to(rewards.dtype)


def leave_one_out_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO: A_i = r_i - mean of the other G - 1 rewards of the same input.

    rewards: (B,) with B = inputs * group_size -> (B,). Raises ValueError for a group of 1
    (there is no other sample to form the baseline).
    """
    if group_size < 2:
        raise ValueError("rloo needs a group of at least 2 samples per input")
    grouped = _grouped(rewards, group_size).double()  # (N, G)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # (N, G)
    advantages = (grouped - others_mean).masked_fill(constant_groups(rewards, group_size).unsqueeze(1), 0.0)
    return advantages.reshape(-1).to(rewards.dtype)


def constant_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Which groups' rewards are all equal (to within CONSTANT_SPREAD): (B,) -> (N,) bool.
    Such a group carries no learning signal; its advantages are exactly 0."""
    grouped = _grouped(rewards, group_size).double()  # (N, G)
    return (grouped.amax(dim=1) - grouped.amin(dim=1)) <= CONSTANT_SPREAD


def zero_std_fraction(rewards: Tensor, group_size: int) -> float:
    """The fraction of the step's groups (each input's samples) whose rewards are all equal."""
    return constant_groups(rewards, group_size).double().mean().item()


def compute_advantages(algorithm: Algorithm, rewards: Tensor, group_size: int) -> Tensor:
    """The advantage of each sample under `algorithm`; rewards and result: (B,)."""
    if algorithm == "reinforce":
        return batch_mean_advantages(rewards)
    if algorithm == "grpo":
        return group_advantages(rewards, group_size)
    if algorithm == "rloo":
        return leave_one_out_advantages(rewards, group_size)
    raise ValueError(f"unknown algorithm {algorithm!r} (expected grpo, reinforce or rloo)")


def _spread(rewards: Tensor) -> float:
    return (rewards.max() - rewards.min()).item() if rewards.numel() else 0.0


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.ndim != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    return rewards.reshape(-1, group_size)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token KL(policy || reference), k3 estimator: exp(ref - lp) - (ref - lp) - 1 >= 0.

    Both: (B, T) log-probs of the sampled tokens -> (B, T). Unbiased for the KL when the
    tokens were sampled from the policy, and never negative (unlike ref - lp itself).
    """
    delta = ref_logprobs - logprobs  # (B, T)
    return torch.exp(delta) - delta - 1.0


class PolicyTerms(NamedTuple):
    """Per-token pieces of the loss; every field is (B, T).

    loss: what the optimiser minimises per token, -clipped surrogate + kl_coef * kl.
    ratio: pi / pi_old; is_clipped: 1.0 where the clipped branch was taken.
    kl: the k3 estimate (zeros when there is no reference).
    """

    loss: Tensor
    ratio: Tensor
    is_clipped: Tensor
    kl: Tensor


def policy_terms(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    clip: float,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
) -> PolicyTerms:
    """The PPO-style clipped surrogate per token, plus the optional KL penalty.

    logprobs: (B, T), with grad; old_logprobs, ref_logprobs: (B, T), no grad;
    advantages: (B,), one per row, broadcast to every token of the row (the terminal
    reward's advantage goes to every token a node wrote). `clip` <= 0 turns the
    clipping off (the loss is then plain ratio * advantage).
    """
    advantages = advantages.unsqueeze(1)  # (B, 1)
    ratio = torch.exp(logprobs - old_logprobs.detach())  # (B, T)
    unclipped = ratio * advantages  # (B, T)
    if clip > 0:
        clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
        surrogate = torch.minimum(unclipped, clipped)
        is_clipped = (clipped < unclipped).float()
    else:
        surrogate = unclipped
        is_clipped = torch.zeros_like(unclipped)
    loss = -surrogate
    if ref_logprobs is not None and kl_coef != 0.0:
        kl = k3_kl(logprobs, ref_logprobs.detach())
        loss = loss + kl_coef * kl
    elif ref_logprobs is not None:
        kl = k3_kl(logprobs.detach(), ref_logprobs)
    else:
        kl = torch.zeros_like(logprobs)
    return PolicyTerms(loss=loss, ratio=ratio.detach(), is_clipped=is_clipped, kl=kl.detach())


def reduce_loss(
    per_token: Tensor,
    mask: Tensor,
    loss_norm: LossNorm,
    total_tokens: int,
    total_rows: int,
) -> Tensor:
    """Sum a micro-batch's per-token loss with the whole step's normaliser, so that
    accumulating the results over micro-batches gives exactly the full-batch loss.

    per_token, mask: (B, T). total_tokens / total_rows: real tokens / rows in the whole
    step (every micro-batch of every level), not just this micro-batch.

    token: sum of every token's loss / total_tokens; every token weighs the same, so long
        completions weigh more (DAPO-style; the paper does not say which it used).
    sequence: each row's mean token loss, averaged over rows; every completion weighs
        the same whatever its length (the original GRPO normalisation).
    """
    masked = per_token * mask  # (B, T)
    if loss_norm == "token":
        return masked.sum() / max(total_tokens, 1)
    if loss_norm == "sequence":
        row_lengths = mask.sum(dim=1).clamp(min=1)  # (B,)
        return (masked.sum(dim=1) / row_lengths).sum() / max(total_rows, 1)
    raise ValueError(f"unknown loss_norm {loss_norm!r} (expected token or sequence)")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over the real tokens; values, mask: (B, T) -> scalar (0 if no token)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)
