"""Hidden states of completion tokens -> their log-probs (and entropy) under the frozen
output head, without ever holding the (tokens x vocabulary) logits.

The update needs, for each completion token, log softmax(h @ W.T / temperature)[token].
Done plainly, that makes fp32 logits over the whole 49k vocabulary at every padded
position, and the log-softmax and its backward each pass over them several times: about
a quarter of a NeuroMAS-3 update on a CPU. Here only the real tokens are computed, a
chunk of rows at a time (each chunk's logits stay in cache), and since the head is
frozen the gradient with respect to the hidden state,

    d logp / d h = (W[token] - softmax(logits) @ W) / temperature,

is formed in the same pass. Backward is then one multiply; the logits are neither kept
nor recomputed. Tokens with the same hidden state and temperature (a group's samples
predicting their first tokens from one prompt) share one row of logits: 6% of a single
agent's rows, 3% of NeuroMAS-3's.

Numerics are those of sampling: logits in fp32 from the fp32 copy of the head
(`lora_rows.fp32_copy`), through `packed_linear` on a CPU; softmax @ W in the head's
own dtype (in bf16 the gradient to the hidden states is a bf16 one, as it would be from
the bf16 layers below).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..backends.lora_rows import fp32_copy
from ..backends.packed_linear import packed_linear

CHUNK_ROWS = 128  # tokens per chunk: (128, 49152) fp32 logits are 25 MB; 64 rows run 25% slower


class HeadScores(NamedTuple):
    """logprobs: (N,) fp32, with grad to the hidden states when they require it;
    entropy: (N,) fp32 of the sampling distribution, detached (None unless asked for)."""

    logprobs: Tensor
    entropy: Tensor | None


def head_logprobs(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    temperature: Tensor,
    *,
    with_entropy: bool = False,
) -> HeadScores:
    """hidden: (N, H) final hidden states; weight: (V, H) the frozen head (bias: (V,) or
    None); targets: (N,) the token each row predicts; temperature: (N,) each row's sampling
    temperature (the logits are divided by it, as the sampler's are)."""
    scores = _HeadLogprobs.apply(hidden, weight, bias, targets, temperature.float(), with_entropy)
    logprobs, entropy = scores
    return HeadScores(logprobs=logprobs, entropy=entropy if with_entropy else None)


class _HeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                temperature: Tensor, with_entropy: bool) -> tuple[Tensor, Tensor]:
        weight_fp32 = weight if weight.dtype == torch.float32 else fp32_copy(weight)
        bias_fp32 = None if bias is None else bias.float()
        needs_grad = ctx.needs_input_grad[0]
        rows = hidden.shape[0]
        states = _distinct_states(hidden, temperature)
        logprobs = torch.empty(rows, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty(rows if with_entropy else 0, dtype=torch.float32, device=hidden.device)
        slope = torch.empty((rows, hidden.shape[1]) if needs_grad else (0,), dtype=torch.float32,
                            device=hidden.device)  # d logprob / d hidden
        for chunk, tokens in states.chunks():
            divisor = states.temperature[chunk].unsqueeze(1)  # (n, 1)
            logits = packed_linear(states.hidden[chunk].contiguous(), weight_fp32, bias_fp32).div_(divisor)  # (n, V)
            log_probs = torch.log_softmax(logits, dim=1)  # (n, V): one kernel, 2-4x faster than logsumexp and a sub
            state = states.index[tokens] - chunk.start  # (k,) each token's row of this chunk
            logprobs[tokens] = log_probs[state, targets[tokens]]
            if with_entropy:  # H = -E_p[log p]: non-negative terms, no cancellation
                probs = log_probs.exp()
                entropy[tokens] = -(probs * log_probs).sum(dim=1)[state]
            if needs_grad:
                if not with_entropy:
                    probs = log_probs.exp_()
                mean_row = (probs.to(weight.dtype) @ weight).float()  # (n, H): E_p[W]
                slope[tokens] = (weight_fp32[targets[tokens]] - mean_row[state]) / divisor[state]
        if needs_grad:
            ctx.save_for_backward(slope)
        ctx.hidden_dtype = hidden.dtype
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx: Any, grad_logprobs: Tensor, _grad_entropy: Tensor) -> tuple[Any, ...]:
        (slope,) = ctx.saved_tensors
        grad_hidden = (grad_logprobs.unsqueeze(1) * slope).to(ctx.hidden_dtype)
        return grad_hidden, None, None, None, None, None


class _States(NamedTuple):
    """The distinct (hidden state, temperature) pairs of N tokens: hidden (M, H) in fp32
    (exact), temperature (M,), and index (N,), each token's pair."""

    hidden: Tensor
    temperature: Tensor
    index: Tensor

    def chunks(self) -> Iterator[tuple[slice, Tensor]]:
        """(pairs, the tokens that have them): at most CHUNK_ROWS pairs a chunk, in chunks
        of even size (a short last one runs slower per row)."""
        count = self.hidden.shape[0]
        size = -(-count // -(-count // CHUNK_ROWS)) if count else 1
        order = torch.argsort(self.index, stable=True)
        ends = torch.bincount(self.index, minlength=count).cumsum(0).tolist()
        for start in range(0, count, size):
            stop = min(start + size, count)
            first = ends[start - 1] if start else 0
            yield slice(start, stop), order[first : ends[stop - 1]]


def _distinct_states(hidden: Tensor, temperature: Tensor) -> _States:
    pairs = torch.cat([hidden.detach().float(), temperature.unsqueeze(1)], dim=1)  # (N, H + 1)
    distinct, index = torch.unique(pairs, dim=0, return_inverse=True)
    return _States(hidden=distinct[:, :-1], temperature=distinct[:, -1], index=index)
