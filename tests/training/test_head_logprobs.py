"""head_logprobs (log-probs, entropy and the gradient to the hidden states, computed a
chunk of rows at a time without keeping logits) against a plain log-softmax."""

from __future__ import annotations

import pytest
import torch

from neuromas.runtime.training.head_logprobs import CHUNK_ROWS, _distinct_states, head_logprobs

ROWS, HIDDEN, VOCAB = 2 * CHUNK_ROWS + 7, 48, 1000  # more than two chunks' worth


def plain(hidden, weight, bias, targets, temperature):
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    logits = logits / temperature.unsqueeze(1)
    logprobs = torch.log_softmax(logits, dim=1)
    entropy = -(logprobs.exp() * logprobs).sum(dim=1)
    return logprobs.gather(1, targets.unsqueeze(1)).squeeze(1), entropy


@pytest.mark.parametrize("dtype, grad_tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_head_logprobs_equal_a_plain_log_softmax(dtype, grad_tolerance, with_bias):
    torch.manual_seed(0)
    weight = torch.randn(VOCAB, HIDDEN).to(dtype)
    bias = torch.randn(VOCAB).to(dtype) if with_bias else None
    targets = torch.randint(VOCAB, (ROWS,))
    temperature = torch.rand(ROWS) + 0.5
    upstream = torch.randn(ROWS)

    hidden = torch.randn(ROWS, HIDDEN).to(dtype)
    hidden[40:60] = hidden[10]  # one state for 21 tokens, at two temperatures: two rows of logits
    temperature[40:60] = temperature[10]
    temperature[55:60] = 2.0
    hidden[ROWS - 30 :] = hidden[5:35]  # repeats spread over chunks
    temperature[ROWS - 30 :] = temperature[5:35]
    assert len(_distinct_states(hidden, temperature).hidden) == ROWS - 50 + 1
    hidden.requires_grad_()
    scores = head_logprobs(hidden, weight, bias, targets, temperature, with_entropy=True)
    (scores.logprobs * upstream).sum().backward()

    reference = hidden.detach().float().requires_grad_()
    logprobs, entropy = plain(reference, weight, bias, targets, temperature)
    (logprobs * upstream).sum().backward()

    assert scores.logprobs.dtype == torch.float32
    torch.testing.assert_close(scores.logprobs, logprobs.detach(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(scores.entropy, entropy.detach(), atol=1e-4, rtol=1e-5)
    assert hidden.grad.dtype == dtype
    error = (hidden.grad.float() - reference.grad).norm() / reference.grad.norm()
    assert error < grad_tolerance


def test_entropy_only_when_asked_for_and_no_slope_without_grad():
    torch.manual_seed(1)
    weight = torch.randn(VOCAB, HIDDEN)
    hidden = torch.randn(5, HIDDEN)
    targets = torch.randint(VOCAB, (5,))
    scores = head_logprobs(hidden, weight, None, targets, torch.ones(5))
    assert scores.entropy is None and not scores.logprobs.requires_grad
    torch.testing.assert_close(scores.logprobs, plain(hidden, weight, None, targets, torch.ones(5))[0])
