"""Advantages, KL and the clipped policy loss on hand-computed tensors."""

import math

import pytest
import torch

from neuromas.runtime.training.loss import (
    batch_mean_advantages,
    compute_advantages,
    group_advantages,
    k3_kl,
    leave_one_out_advantages,
    masked_mean,
    policy_terms,
    reduce_loss,
)


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float32), torch.as_tensor(expected, dtype=torch.float32), atol=tol, rtol=0
    )


def test_reinforce_subtracts_the_batch_mean_only():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 2.0, 3.0])  # mean 1.0
    close(batch_mean_advantages(rewards), [0, -1, -1, 0, 0, -1, 1, 2])


def test_grpo_normalises_within_each_group_with_the_sample_std():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 2.0])
    # group (1, 0): mean 0.5, sample std sqrt(0.5) = 0.70711 -> +-0.5 / (0.70711 + 1e-4)
    # group (1, 1): all equal -> 0; group (0, 2): mean 1, std sqrt(2) -> +-1 / (1.41421 + 1e-4)
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    b = 1.0 / (math.sqrt(2.0) + 1e-4)
    close(group_advantages(rewards, 2), [a, -a, 0, 0, -b, b])


def test_grpo_group_of_three():
    rewards = torch.tensor([3.0, 0.0, 0.0])  # mean 1, sample std sqrt((4 + 1 + 1) / 2) = sqrt(3)
    s = math.sqrt(3.0) + 1e-4
    close(group_advantages(rewards, 3), [2 / s, -1 / s, -1 / s])


def test_rloo_uses_the_mean_of_the_other_samples():
    rewards = torch.tensor([1.0, 0.0, 0.0, 3.0, 3.0, 0.0])
    # 1 - (0+0)/2 = 1; 0 - (1+0)/2 = -0.5 ... 3 - (3+0)/2 = 1.5; 0 - (3+3)/2 = -3
    close(leave_one_out_advantages(rewards, 3), [1.0, -0.5, -0.5, 1.5, 1.5, -3.0])


def test_rloo_needs_two_samples_and_groups_must_divide():
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_advantages(torch.tensor([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="groups of 2"):
        group_advantages(torch.tensor([1.0, 2.0, 3.0]), 2)
    with pytest.raises(ValueError, match="unknown algorithm"):
        compute_advantages("ppo", torch.ones(2), 2)  # type: ignore[arg-type]


def test_compute_advantages_dispatches():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    close(compute_advantages("reinforce", rewards, 2), [0.75, -0.25, -0.25, -0.25])
    close(compute_advantages("rloo", rewards, 2), [1.0, -1.0, 0.0, 0.0])
    close(compute_advantages("grpo", rewards, 2), group_advantages(rewards, 2))


def test_k3_kl_by_hand():
    logprobs = torch.log(torch.tensor([[0.5, 0.2]]))
    ref = torch.log(torch.tensor([[0.25, 0.2]]))
    # delta = log(0.25 / 0.5) = -ln 2: exp(delta) - delta - 1 = 0.5 + 0.693147 - 1
    close(k3_kl(logprobs, ref), [[0.5 + math.log(2) - 1, 0.0]])


def test_ratio_starts_at_one_and_the_gradient_is_minus_the_advantage():
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    advantages = torch.tensor([2.0, -1.0])
    terms = policy_terms(logprobs, logprobs.detach().clone(), advantages, clip=0.2)
    close(terms.ratio, [[1, 1], [1, 1]])
    close(terms.loss, [[-2, -2], [1, 1]])
    terms.loss.sum().backward()
    close(logprobs.grad, [[-2, -2], [1, 1]])  # d(-ratio*A)/dlp = -ratio*A = -A


@pytest.mark.parametrize(
    "advantage, ratio, surrogate, is_clipped",
    [
        (1.0, 1.5, 1.2, True),  # positive advantage, ratio above 1 + clip: capped
        (-1.0, 1.5, -1.5, False),  # negative advantage, ratio up: keep the worse (unclipped) value
        (1.0, 0.5, 0.5, False),  # positive advantage, ratio down: unclipped is lower
        (-1.0, 0.5, -0.8, True),  # negative advantage, ratio below 1 - clip: capped
        (2.0, 1.1, 2.2, False),  # inside the trust region
    ],
)
def test_clipped_surrogate(advantage, ratio, surrogate, is_clipped):
    old = torch.tensor([[-1.0]])
    logprobs = (old + math.log(ratio)).requires_grad_(True)
    terms = policy_terms(logprobs, old, torch.tensor([advantage]), clip=0.2)
    close(terms.loss, [[-surrogate]])
    close(terms.is_clipped, [[float(is_clipped)]])
    terms.loss.sum().backward()
    expected_grad = 0.0 if is_clipped else -ratio * advantage
    close(logprobs.grad, [[expected_grad]])


def test_clip_zero_turns_clipping_off():
    old = torch.tensor([[0.0]])
    terms = policy_terms(torch.tensor([[math.log(3.0)]]), old, torch.tensor([1.0]), clip=0.0)
    close(terms.loss, [[-3.0]])
    close(terms.is_clipped, [[0.0]])


def test_kl_penalty_adds_to_the_loss_and_its_gradient():
    logprobs = torch.log(torch.tensor([[0.5]])).requires_grad_(True)
    ref = torch.log(torch.tensor([[0.25]]))
    terms = policy_terms(logprobs, logprobs.detach(), torch.tensor([0.0]), clip=0.2, ref_logprobs=ref, kl_coef=0.1)
    kl = 0.5 + math.log(2) - 1
    close(terms.kl, [[kl]])
    close(terms.loss, [[0.1 * kl]])
    terms.loss.sum().backward()
    # d/dlp [exp(ref - lp) - (ref - lp) - 1] = -exp(ref - lp) + 1 = 1 - 0.5
    close(logprobs.grad, [[0.1 * 0.5]])
    # without a coefficient the KL is still reported, but adds nothing
    terms = policy_terms(logprobs, logprobs.detach(), torch.tensor([0.0]), clip=0.2, ref_logprobs=ref, kl_coef=0.0)
    close(terms.kl, [[kl]])
    close(terms.loss, [[0.0]])


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [6.0, 0.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])


def test_token_normalisation_divides_by_all_tokens():
    # (1 + 2 + 3 + 4 + 6 + 0) / 6 real tokens
    close(reduce_loss(PER_TOKEN, MASK, "token", total_tokens=6, total_rows=3), 16 / 6)


def test_sequence_normalisation_averages_row_means():
    # rows: mean(1,2,3) = 2, mean(4) = 4, mean(6,0) = 3 -> (2 + 4 + 3) / 3
    close(reduce_loss(PER_TOKEN, MASK, "sequence", total_tokens=6, total_rows=3), 3.0)


@pytest.mark.parametrize("loss_norm", ["token", "sequence"])
def test_micro_batches_accumulate_to_the_full_batch_loss(loss_norm):
    full = reduce_loss(PER_TOKEN, MASK, loss_norm, total_tokens=6, total_rows=3)
    parts = sum(
        reduce_loss(PER_TOKEN[rows], MASK[rows], loss_norm, total_tokens=6, total_rows=3) for rows in ([0], [1, 2])
    )
    close(parts, full.item())


def test_masked_mean_and_unknown_norm():
    close(masked_mean(PER_TOKEN, MASK), 16 / 6)
    close(masked_mean(PER_TOKEN, torch.zeros_like(MASK)), 0.0)
    with pytest.raises(ValueError, match="loss_norm"):
        reduce_loss(PER_TOKEN, MASK, "row", 6, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0.3, 0.1, 0.7, 1.0 / 3.0])
def test_a_constant_group_gets_exactly_zero_advantages(value):
    # float32 rounding of the mean of eight 0.3s left A = +3e-4 for every sample of the group
    rewards = torch.tensor([value] * 8 + [0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.0, 1.0])
    for algorithm in ("grpo", "rloo"):
        advantages = compute_advantages(algorithm, rewards, 8)
        assert torch.equal(advantages[:8], torch.zeros(8)), algorithm
        assert (advantages[8:] != 0).any(), algorithm
    assert torch.equal(batch_mean_advantages(torch.full((8,), value)), torch.zeros(8))
    assert torch.equal(group_advantages(torch.full((8,), value, dtype=torch.float64), 4), torch.zeros(8, dtype=torch.float64))


def test_zero_std_fraction_counts_the_groups_of_equal_rewards():
    from neuromas.runtime.training.loss import zero_std_fraction

    rewards = torch.tensor([0.3, 0.3, 0.0, 1.0, 1.0, 1.0, 0.2, 0.3])
    assert zero_std_fraction(rewards, 2) == 0.5  # (0.3, 0.3) and (1, 1)
    assert zero_std_fraction(rewards, 4) == 0.0
    assert zero_std_fraction(torch.full((6,), 0.3), 3) == 1.0
