"""Per-row sampling inside transformers' `generate`: temperature, top-p, one draw a row,
and the drawn token's log-probability, recorded for the update's importance weights.

`RowSampler` is the last logits processor. It draws each row's token itself and hands
`generate` a point mass on it, so `generate` runs greedy and none of its own warpers
reshape the distribution. A draw is an inverse CDF over the row's unnormalised
probabilities, exp(score - max), in two levels: the mass of each block of BLOCK tokens
picks the block, then the running sum inside that block picks the token. Over a 49k
vocabulary on one CPU core this costs about 2 ms a step at 16 rows, where a full
log-softmax, its exponent and a running sum over the whole vocabulary cost about 6, and
`torch.multinomial` about 25. The log-probability of the drawn token alone is
score - max - log(total mass); no (rows x vocabulary) log-softmax is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import LogitsProcessor

BLOCK = 1024  # tokens per block of the two-level inverse CDF (49,152 = 48 blocks)


class RowSampler(LogitsProcessor):
    """Per-row temperature and top-p; draws each row's token and records its log-probability.

    Called once per decoding step with scores (B, V); returns a point mass on the token it
    drew, which `generate` (greedy) then appends. Temperature 0 makes a row greedy: its
    distribution is a point mass (log-prob 0).
    """

    def __init__(self, temperatures: Sequence[float], top_ps: Sequence[float], device: Any):
        temperature = torch.tensor(temperatures, dtype=torch.float32, device=device)
        self.is_greedy = temperature <= 0  # (B,)
        self.has_greedy = bool(self.is_greedy.any())
        self.temperature = torch.where(self.is_greedy, torch.ones_like(temperature), temperature)[:, None]  # (B, 1)
        self.has_temperature = bool((self.temperature != 1.0).any())
        top_p = torch.tensor(top_ps, dtype=torch.float32, device=device)
        self.top_p = torch.where(top_p < 1.0, top_p, torch.full_like(top_p, float("inf")))[:, None]  # (B, 1)
        self.has_top_p = bool((top_p < 1.0).any())
        self.steps: list[Tensor] = []  # each (B,): the log-probs of one step's drawn tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        if self.has_temperature:
            scores = scores / self.temperature
        if self.has_greedy:
            greedy = point_mass(scores, scores.argmax(dim=-1, keepdim=True))
            scores = torch.where(self.is_greedy[:, None], greedy, scores)
        if self.has_top_p:
            scores = nucleus(scores, self.top_p)
        tokens, logprobs = draw(scores)
        self.steps.append(logprobs)
        return point_mass(scores, tokens)

    def sampled_logprobs(self, completions: Tensor) -> Tensor:
        """(B, T) log-probs of the T sampled tokens `completions` (B, T)."""
        if not self.steps:
            return torch.zeros(completions.shape, dtype=torch.float32)
        return torch.stack(self.steps[: completions.shape[1]], dim=1).cpu()


def draw(scores: Tensor) -> tuple[Tensor, Tensor]:
    """One token per row (B, 1) drawn from softmax(scores) (B, V), and its log-probability (B,).

    Searches go right, so they never land inside a run of zero-probability tokens (their
    running sum equals their predecessor's). A uniform that rounds up to a block's or the
    row's whole mass can still end on one (or on the padding past V): that row takes its
    argmax instead."""
    rows, vocab = scores.shape
    top = scores.max(dim=-1, keepdim=True).values  # (B, 1)
    weights = (scores - top).exp_()  # (B, V): unnormalised probabilities, 0 where impossible
    blocks = -(-vocab // BLOCK)
    if blocks * BLOCK != vocab:
        weights = F.pad(weights, (0, blocks * BLOCK - vocab))
    by_block = weights.view(rows, blocks, BLOCK)
    block_mass = by_block.sum(dim=-1)  # (B, blocks)
    block_end = block_mass.cumsum(dim=-1)  # (B, blocks)
    total = block_end[:, -1:]  # (B, 1)
    uniform = torch.rand(rows, 1, device=scores.device) * total
    block = torch.searchsorted(block_end, uniform, right=True).clamp_(max=blocks - 1)  # (B, 1)
    block_start = block_end.gather(1, block) - block_mass.gather(1, block)  # (B, 1)
    inside = by_block[torch.arange(rows, device=scores.device), block.squeeze(1)]  # (B, BLOCK)
    offset = torch.searchsorted(inside.cumsum(dim=-1) + block_start, uniform, right=True).clamp_(max=BLOCK - 1)
    tokens = block * BLOCK + offset  # (B, 1)
    impossible = weights.gather(1, tokens) == 0
    if bool(impossible.any()):
        tokens = torch.where(impossible, scores.argmax(dim=-1, keepdim=True), tokens)
    logprobs = (scores.gather(1, tokens) - top - total.log()).squeeze(1)
    return tokens, logprobs


def point_mass(scores: Tensor, tokens: Tensor) -> Tensor:
    """Scores (B, V) that put all mass on `tokens` (B, 1): 0 there, -inf elsewhere."""
    return torch.full_like(scores, float("-inf")).scatter(1, tokens, 0.0)


def nucleus(scores: Tensor, top_p: Tensor) -> Tensor:
    """Keep, per row, the most likely tokens until their mass reaches top_p (B, 1); mask the rest."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    probs = sorted_scores.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = mass_before >= top_p  # the most likely token always stays (mass_before = 0)
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))
