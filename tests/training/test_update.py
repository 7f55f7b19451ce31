"""The batched multi-adapter update on the real bundled model: gradients, packing, dtypes,
and each fast path (shared prompts, zero-advantage rows, no-signal steps) against plain passes."""

from __future__ import annotations

import math

import pytest
import torch

from neuromas.runtime.backends.lora_rows import fp32_output_head
from neuromas.runtime.models.adapters import attach_adapters
from neuromas.runtime.training.update import (
    BASE_ADAPTER,
    CompletionRow,
    SharedPromptBatch,
    UpdateConfig,
    collate,
    collate_shared,
    micro_batches,
    prepare_for_update,
    score_batches,
    token_logprobs,
    update_step,
)

TEXTS = [
    ("What is 2 + 3?", " The sum is 5."),
    ("Name a colour.", " Blue"),
    ("What is 7 * 6? Think step by step.", " 7 times 6 is 42, so the answer is 42."),
    ("Hello", " Hi there, how are you today?"),
    ("Capital of France?", " Paris."),
]
ADAPTERS = ["hidden_0", "hidden_1", "hidden_0", "answer_0", None]
LEVELS = [0, 0, 0, 1, 1]


def make_rows(tokenizer) -> list[CompletionRow]:
    rows = []
    for sample, ((prompt, completion), adapter, level) in enumerate(zip(TEXTS, ADAPTERS, LEVELS)):
        rows.append(
            CompletionRow(
                sample=sample,
                node=f"node{sample}",
                level=level,
                adapter=adapter,
                prompt_ids=tuple(tokenizer(prompt).input_ids),
                completion_ids=tuple(tokenizer(completion).input_ids),
                temperature=0.7 if sample % 2 else 1.0,
            )
        )
    return rows


@pytest.fixture
def peft_model(fresh_model, make_plan):
    """NeuroMAS-3's three adapters on the bundled model, with random (non-zero) B matrices
    so that every LoRA weight gets a gradient."""
    model, tokenizer = fresh_model
    torch.manual_seed(0)  # the A matrices' initialisation too: bf16 errors below vary with it
    model = attach_adapters(model, make_plan())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    params = prepare_for_update(model)
    return model, tokenizer, params


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {
        name: (param.grad.clone() if param.grad is not None else torch.zeros_like(param))
        for name, param in model.named_parameters()
        if "lora_" in name
    }


def test_prepare_freezes_the_bf16_base_and_trains_fp32_adapters(peft_model):
    model, _, params = peft_model
    assert params and all(p.requires_grad and p.dtype == torch.float32 for p in params)
    base = [p for name, p in model.named_parameters() if "lora_" not in name]
    assert base and not any(p.requires_grad for p in base)
    assert {p.dtype for p in base} == {model.get_input_embeddings().weight.dtype}
    assert not model.training


def grad_difference(model, rows, adapters) -> tuple[dict, dict]:
    """LoRA gradients of one weighted log-prob loss, computed (1) in one mixed-adapter
    batch and (2) by ordinary peft passes, one adapter at a time over only its rows."""
    batch = collate(rows, range(len(rows)))
    torch.manual_seed(1)
    weights = torch.randn(batch.completion_mask.shape) * batch.completion_mask  # (B, T)

    model.zero_grad(set_to_none=True)
    (token_logprobs(model, batch).logprobs * weights).sum().backward()
    batched = lora_grads(model)

    model.zero_grad(set_to_none=True)
    for adapter in sorted({a for a in adapters if a is not None}):
        chosen = [i for i, a in enumerate(adapters) if a == adapter]
        model.base_model.set_adapter(adapter)  # the ordinary single-adapter path, no adapter_names
        prepare_for_update(model)  # set_adapter changes requires_grad; other adapters' grads stay None
        with fp32_output_head(model):
            logits = model(
                input_ids=batch.input_ids[chosen],  # padded exactly as in the batch
                attention_mask=batch.attention_mask[chosen],
                position_ids=batch.position_ids[chosen],
                use_cache=False,
                logits_to_keep=batch.completion_ids.shape[1] + 1,
            ).logits[:, :-1]
        logits = logits / batch.temperatures[chosen].unsqueeze(-1)
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, batch.completion_ids[chosen].unsqueeze(-1)).squeeze(-1)
        (logprobs * weights[chosen]).sum().backward()
    return batched, lora_grads(model)


def relative_error(grads: dict, reference: dict) -> float:
    flat = torch.cat([g.flatten() for g in grads.values()])
    flat_reference = torch.cat([reference[name].flatten() for name in grads])
    return ((flat - flat_reference).norm() / flat_reference.norm()).item()


def test_batched_mixed_adapter_gradient_equals_per_adapter_passes(peft_model):
    model, tokenizer, _ = peft_model
    rows = make_rows(tokenizer)
    is_bf16 = model.get_input_embeddings().weight.dtype == torch.bfloat16
    if is_bf16:
        batched_bf16, per_adapter_bf16 = grad_difference(model, rows, ADAPTERS)
    to_fp32_base(model)

    # fp32 base: both computations agree to float rounding, tensor by tensor.
    batched, reference = grad_difference(model, rows, ADAPTERS)
    scale = max(g.abs().max().item() for g in reference.values())
    assert scale > 0
    for adapter in ("hidden_0", "hidden_1", "answer_0"):
        names = [name for name in batched if f".{adapter}." in name]
        assert names and all(batched[name].abs().sum() > 0 for name in names)
        for name in names:
            torch.testing.assert_close(batched[name], reference[name], rtol=0, atol=5e-5 * scale)

    # bf16 base (what training uses): bf16 activations put both computations 21% off the
    # fp32 gradient here, and each other 6% (measured; with other initialisations of the A
    # matrices, 24-60% and 7-53%: the error grows towards layer 0). Sending rows through
    # the wrong adapters (hidden_0 <-> hidden_1) moves the gradient about 50% even in fp32.
    if is_bf16:
        error = relative_error(batched_bf16, per_adapter_bf16)
        print(f"bf16: batched vs per-adapter gradient {error:.4f}; vs fp32 {relative_error(batched_bf16, reference):.4f}")
        assert error < 0.45


def test_frozen_rows_give_no_adapter_gradient(peft_model):
    model, tokenizer, _ = peft_model
    rows = make_rows(tokenizer)
    frozen = [i for i, row in enumerate(rows) if row.adapter is None]
    batch = collate(rows, range(len(rows)))
    assert batch.adapter_names[frozen[0]] == BASE_ADAPTER
    model.zero_grad(set_to_none=True)
    logprobs = token_logprobs(model, batch).logprobs
    logprobs[frozen].sum().backward()  # only the frozen row's tokens in the loss
    assert all(grad.abs().max() == 0 for grad in lora_grads(model).values())


def to_fp32_base(model) -> None:
    for name, param in model.named_parameters():
        if "lora_" not in name:
            param.data = param.data.float()


def test_padding_does_not_change_log_probs(peft_model):
    """Left-padded prompts with real-token positions give each row the log-probs it has
    alone (fp32 base: with bf16, padding changes matmul shapes and rounding, ~0.1 nats)."""
    model, tokenizer, _ = peft_model
    to_fp32_base(model)
    rows = make_rows(tokenizer)
    with torch.no_grad():
        together = token_logprobs(model, collate(rows, range(len(rows)))).logprobs
        for i, row in enumerate(rows):
            alone = token_logprobs(model, collate(rows, [i])).logprobs[0]
            length = len(row.completion_ids)
            torch.testing.assert_close(together[i, :length], alone[:length], atol=1e-4, rtol=0)
            assert (together[i, length:] == 0).all()  # padding is masked out


def test_micro_batches_follow_levels_and_the_token_budget():
    rows = [
        CompletionRow(i, f"n{i}", level, "a", tuple(range(p)), tuple(range(c)), 1.0)
        for i, (level, p, c) in enumerate([(0, 10, 5), (0, 20, 5), (1, 8, 2), (0, 3, 3), (1, 50, 50), (0, 4, 0)])
    ]
    batches = micro_batches(rows, token_budget=60, shared_prompt=False)
    assert [b.rows for b in batches] == [(1, 0), (3,), (4,), (2,)]  # longest first; 3 rows of 25 > 60
    assert all(b.padded_tokens <= 60 or len(b.rows) == 1 for b in batches)
    assert 5 not in {i for b in batches for i in b.rows}  # no completion tokens: nothing to learn
    first = batches[0]
    assert first.input_ids.shape == (2, 25)
    assert first.attention_mask[1].tolist() == [0] * 10 + [1] * 15  # row 0: left-padded prompt
    assert first.position_ids[1, 10:].tolist() == list(range(15))
    assert first.completion_mask.sum().item() == 10


def _row(i: int, adapter: str, prompt: list[int], completion_len: int = 4) -> CompletionRow:
    return CompletionRow(i, f"n{i}", 1, adapter, tuple(prompt), tuple(range(completion_len)), 1.0)


def test_prompts_with_a_long_common_start_share_it_as_one_prefix():
    template = list(range(100, 160))  # 60 tokens every prompt of the level starts with
    rows = [_row(i, "a", [*template, *range(i * 10, i * 10 + 20 + i)]) for i in range(4)]
    (batch,) = micro_batches(rows, token_budget=10_000)
    assert batch.prefix_ids.shape == (1, 60) and batch.prefix_ids[0].tolist() == template
    assert batch.rest_len == 23  # the longest rest; shorter ones are left-padded
    assert batch.suffix_mask[0].tolist() == [0] * 3 + [1] * (20 + 3)
    assert batch.suffix_ids[0, 3:23].tolist() == list(range(0, 20))
    assert batch.suffix_positions[0, 3:].tolist() == list(range(60, 60 + 20 + 3))
    assert batch.padded_tokens == 60 + 4 * (23 + 3) < 4 * (80 + 3) + 4 * 4  # a prefix per prompt


def test_identical_prompts_keep_one_prefix_each_and_adapters_never_share():
    prompt = list(range(50))
    rows = [_row(0, "a", prompt), _row(1, "a", prompt), _row(2, "b", prompt), _row(3, "a", [*prompt[:2], 7, 8, 9])]
    (batch,) = micro_batches(rows, token_budget=10_000)
    assert sorted(batch.prefix_adapters) == ["a", "a", "b"]  # a two-token common start is not worth sharing
    assert batch.rest_len == 1  # each row reads just its prompt's last token
    assert batch.row_prefix[batch.rows.index(0)] == batch.row_prefix[batch.rows.index(1)]
    assert len(set(batch.row_prefix.tolist())) == 3


def test_a_selected_shared_batch_cuts_the_padding_its_rows_do_not_need():
    template = list(range(100, 130))
    rows = [_row(0, "a", [*template, *range(40)], 2), _row(1, "a", [*template, *range(50, 55)], 6)]
    (batch,) = micro_batches(rows, token_budget=10_000)
    short = batch.select([batch.rows.index(1)])
    assert short.rest_len == 5 and short.suffix_ids.shape == (1, 5 + 6 - 1)
    assert short.suffix_mask.all() and short.suffix_ids[0].tolist() == [*range(50, 55), *range(5)]
    assert short.suffix_positions[0].tolist() == list(range(30, 40))


def test_shared_micro_batches_keep_their_real_padding_within_the_budget():
    """The longest rest and the longest completion sit in different rows: together they pad
    to 30 + 2 x (40 + 6 - 1) = 120 tokens, more than either row's own rest + completion."""
    template = list(range(100, 130))
    rows = [_row(0, "a", [*template, *range(40)], 2), _row(1, "a", [*template, *range(50, 55)], 6)]
    (together,) = micro_batches(rows, token_budget=120)
    assert together.padded_tokens == 120
    batches = micro_batches(rows, token_budget=115)
    assert [batch.rows for batch in batches] == [(1,), (0,)]
    assert [batch.padded_tokens for batch in batches] == [30 + 10, 30 + 41]


@pytest.mark.parametrize("shared_prompt", [False, True])
@pytest.mark.parametrize("loss_norm", ["token", "sequence"])
def test_accumulated_micro_batches_equal_one_big_batch(peft_model, loss_norm, shared_prompt):
    """Gradient accumulation over micro-batches gives the one-batch step (fp32 base, so
    that different batch shapes do not round differently)."""
    model, tokenizer, params = peft_model
    to_fp32_base(model)
    rows = [row for row in make_rows(tokenizer) if row.adapter is not None]
    advantages = torch.tensor([1.0, -0.5, 0.25, -1.0])
    config = UpdateConfig(clip=0.2, kl_coef=0.1, loss_norm=loss_norm, grad_clip=0.0)
    start = {id(p): p.detach().clone() for p in params}

    def deltas(token_budget: int, is_old_given: bool = True):
        batches = micro_batches(rows, token_budget, shared_prompt=shared_prompt)
        old = score_batches(model, batches) if is_old_given else None
        ref = score_batches(model, batches, use_adapters=False)
        optimizer = torch.optim.SGD(params, lr=1.0)
        stats = update_step(model, optimizer, params, batches, old, ref, advantages, config)
        moved = [p.detach() - start[id(p)] for p in params]
        with torch.no_grad():
            for p in params:
                p.copy_(start[id(p)])
        return len(batches), stats, moved

    many, small_stats, small = deltas(token_budget=1)  # one row per micro-batch
    few, big_stats, big = deltas(token_budget=10_000)  # one micro-batch per level
    assert (many, few) == (4, 2)
    assert small_stats.ratio == pytest.approx(1.0, abs=1e-6)  # old log-probs were just recomputed
    assert small_stats.clip_fraction == 0.0
    assert small_stats.loss == pytest.approx(big_stats.loss, rel=1e-4, abs=1e-6)
    assert small_stats.kl == pytest.approx(big_stats.kl, rel=1e-4) and small_stats.kl > 0  # B != 0: not the base
    assert small_stats.tokens == big_stats.tokens == sum(len(r.completion_ids) for r in rows)
    assert small_stats.grad_norm > 0
    scale = max(d.abs().max().item() for d in big)
    for a, b in zip(small, big):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * scale)
    # Without old log-probs (first pass), the forward pass's own ones give the same step.
    _, own_stats, own = deltas(token_budget=10_000, is_old_given=False)
    assert own_stats.loss == pytest.approx(big_stats.loss, rel=1e-6)
    for a, b in zip(own, big):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * scale)


# --- fast paths against the plain per-row path (fp32 base: relative error < 1e-4) ---

GROUP_TEXTS = [  # (prompt, completion, adapter, level): a GRPO group's samples share prompts
    ("What is 2 + 3?", " The sum is 5.", "hidden_0", 0),
    ("What is 2 + 3?", " It is 5, since 2 + 3 = 5.", "hidden_0", 0),
    ("What is 2 + 3?", " 6", "hidden_0", 0),
    ("What is 2 + 3?", " Five.", "hidden_1", 0),
    ("What is 2 + 3?", " The answer: 5", "hidden_1", 0),
    ("Question: what is 2 + 3? Earlier answers, to read: 5. Five.", " 5", "answer_0", 1),
    ("Question: what is 2 + 3? Earlier answers, to read: 6. The answer: 5", " The answer is 5.", "answer_0", 1),
    ("Question: what is 2 + 3? Earlier answers, to read: 6", " 6", "answer_0", 1),
]


def group_rows(tokenizer) -> list[CompletionRow]:
    return [
        CompletionRow(i, f"{adapter}:{i}", level, adapter, tuple(tokenizer(prompt).input_ids),
                      tuple(tokenizer(completion).input_ids), 0.7 if i % 2 else 1.0)
        for i, (prompt, completion, adapter, level) in enumerate(GROUP_TEXTS)
    ]


def per_row_gradients(model, rows, weights) -> dict[str, torch.Tensor]:
    """The plain path: each row alone, unpadded, through peft's single-adapter forward."""
    model.zero_grad(set_to_none=True)
    for row, row_weights in zip(rows, weights):
        model.base_model.set_adapter(row.adapter)
        prepare_for_update(model)  # set_adapter changes requires_grad
        ids = torch.tensor([[*row.prompt_ids, *row.completion_ids]])
        logits = model(input_ids=ids, use_cache=False).logits[0, len(row.prompt_ids) - 1 : -1].float()
        logprobs = torch.log_softmax(logits / row.temperature, dim=-1)
        chosen = logprobs.gather(-1, torch.tensor(row.completion_ids)[:, None]).squeeze(-1)
        (chosen * row_weights[: len(row.completion_ids)]).sum().backward()
    return lora_grads(model)


def test_shared_prompt_gradient_equals_per_row_passes(peft_model):
    """Prompts computed once per (prompt, adapter), their keys and values reused by the
    group's rows with gradients flowing back through them: the per-row gradient."""
    model, tokenizer, _ = peft_model
    to_fp32_base(model)
    rows = group_rows(tokenizer)
    batches = micro_batches(rows, token_budget=10_000)
    assert all(isinstance(batch, SharedPromptBatch) for batch in batches)
    # Level 0: 5 rows, 2 prompts; level 1: the 3 prompts' common start once, each row its rest.
    assert [batch.prefix_ids.shape[0] for batch in batches] == [2, 1]
    assert [batch.rest_len > 1 for batch in batches] == [False, True]
    torch.manual_seed(2)
    width = max(len(row.completion_ids) for row in rows)
    weights = torch.randn(len(rows), width)

    model.zero_grad(set_to_none=True)
    for batch in batches:
        logprobs = token_logprobs(model, batch).logprobs
        (logprobs * weights[list(batch.rows), : logprobs.shape[1]]).sum().backward()
    shared = lora_grads(model)
    reference = per_row_gradients(model, rows, weights)
    assert relative_error(shared, reference) < 1e-4
    for adapter in ("hidden_0", "hidden_1", "answer_0"):
        assert any(g.abs().sum() > 0 for name, g in shared.items() if f".{adapter}." in name)


def test_shared_prompt_log_probs_equal_the_full_sequence_layout(peft_model):
    model, tokenizer, _ = peft_model
    to_fp32_base(model)
    rows = group_rows(tokenizer)
    with torch.no_grad():
        shared = token_logprobs(model, collate_shared(rows, range(5))).logprobs
        full = token_logprobs(model, collate(rows, range(5))).logprobs
    torch.testing.assert_close(shared, full, atol=1e-4, rtol=0)


def sgd_step(model, params, rows, advantages, config, old=False):
    """Adapter deltas and stats of one SGD(lr=1) step, the adapters then restored."""
    start = [p.detach().clone() for p in params]
    batches = micro_batches(rows, 10_000)
    old_logprobs = score_batches(model, batches) if old else None
    ref = score_batches(model, batches, use_adapters=False) if config.kl_coef else None
    stats = update_step(model, torch.optim.SGD(params, lr=1.0), params, batches, old_logprobs, ref, advantages, config)
    moved = [p.detach() - s for p, s in zip(params, start)]
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    return moved, stats


@pytest.mark.parametrize("loss_norm", ["token", "sequence"])
def test_zero_advantage_rows_leave_the_step_without_changing_it(peft_model, loss_norm):
    model, tokenizer, params = peft_model
    to_fp32_base(model)
    rows = group_rows(tokenizer)
    advantages = torch.tensor([1.0, 0.0, -0.5, 0.0, 0.0, 0.75, 0.0, -0.25])
    config = UpdateConfig(clip=0.2, kl_coef=0.0, loss_norm=loss_norm, grad_clip=0.0)
    skipped, fast = sgd_step(model, params, rows, advantages, config, old=True)
    kept, plain = sgd_step(model, params, rows, advantages, config._replace(skip_zero_advantage=False), old=True)
    assert (fast.rows_skipped, plain.rows_skipped) == (4, 0)
    assert fast.tokens == plain.tokens and fast.rows == plain.rows == len(rows)
    # The kept rows are padded less without the others: fp32 log-probs move by ~1e-5 nats,
    # and so do the ratios against the old log-probs, which were taken on the full batches.
    assert fast.loss == pytest.approx(plain.loss, rel=1e-4, abs=1e-7)
    flat_fast, flat_plain = torch.cat([d.flatten() for d in skipped]), torch.cat([d.flatten() for d in kept])
    assert flat_plain.norm() > 0
    assert ((flat_fast - flat_plain).norm() / flat_plain.norm()).item() < 1e-4
    # With a KL term every row has a gradient: nothing is skipped.
    _, with_kl = sgd_step(model, params, rows, advantages, config._replace(kl_coef=0.1))
    assert with_kl.rows_skipped == 0


def test_a_step_without_signal_does_not_move_the_adapters(peft_model):
    """All advantages zero, no KL: no forward pass, no optimizer.step(), although AdamW's
    momentum from an earlier step would move the adapters."""
    model, tokenizer, params = peft_model
    rows = group_rows(tokenizer)[:3]
    batches = micro_batches(rows)
    config = UpdateConfig(clip=0.2, kl_coef=0.0, loss_norm="token", grad_clip=1.0)
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    first = update_step(model, optimizer, params, batches, None, None, torch.tensor([1.0, -1.0, 0.5]), config)
    assert not first.optimizer_skipped and first.grad_norm > 0
    before = [p.detach().clone() for p in params]
    stats = update_step(model, optimizer, params, batches, None, None, torch.zeros(3), config)
    assert stats.optimizer_skipped and stats.rows_skipped == 3 and stats.grad_norm == 0.0
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    # The plain path (no skipping) does step on AdamW's momentum: what the skip avoids.
    update_step(model, optimizer, params, batches, None, None, torch.zeros(3),
                config._replace(skip_zero_advantage=False))
    assert any(not torch.equal(p, b) for p, b in zip(params, before))


def test_entropy_is_computed_only_when_asked_for(peft_model):
    model, tokenizer, params = peft_model
    rows = group_rows(tokenizer)[:2]
    config = UpdateConfig(clip=0.2, kl_coef=0.0, loss_norm="token", grad_clip=1.0)
    advantages = torch.tensor([1.0, -1.0])
    optimizer = torch.optim.SGD(params, lr=0.0)
    plain = update_step(model, optimizer, params, micro_batches(rows), None, None, advantages, config)
    asked = update_step(model, optimizer, params, micro_batches(rows), None, None, advantages,
                        config._replace(entropy=True))
    assert math.isnan(plain.entropy)
    assert 0.0 < asked.entropy < math.log(model.config.vocab_size)
    assert plain.loss == pytest.approx(asked.loss, rel=1e-6)


def test_the_fp32_head_runs_once_with_a_bf16_gradient(peft_model):
    """In a bf16 model the head gives fp32 logits computed in fp32 (the bf16 head is never
    run), and its gradient to the hidden states is the fp32 one up to bf16 rounding."""
    model, _, _ = peft_model
    head = model.get_output_embeddings()
    if head.weight.dtype != torch.bfloat16:
        pytest.skip("the model loaded in float32: this CPU has no native bf16")
    calls = []
    handle = head.register_forward_pre_hook(lambda module, args: calls.append(1))
    hidden = torch.randn(2, 3, head.weight.shape[1], dtype=torch.bfloat16, requires_grad=True)
    try:
        with fp32_output_head(model):
            logits = head(hidden)
    finally:
        handle.remove()
    assert logits.dtype == torch.float32 and len(calls) == 1
    expected = hidden.detach().float() @ head.weight.detach().float().T
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)
    upstream = torch.randn_like(logits)
    logits.backward(upstream)
    reference = upstream @ head.weight.detach().float()
    error = ((hidden.grad.float() - reference).norm() / reference.norm()).item()
    assert error < 1e-2  # bf16 rounding of the upstream gradient and the result


def test_sampler_log_probs_weight_each_token_by_the_truncated_importance_ratio(peft_model):
    """Rows sampled where the sampler gave each token 0.5 nats less than the trained policy:
    every token's loss (and so the gradient) is weighted by exp(0.5) = 1.65, under the cap;
    a sampler that equals the trainer changes nothing, and a cap of 1.2 truncates."""
    model, tokenizer, params = peft_model
    to_fp32_base(model)
    rows = [row for row in group_rows(tokenizer) if row.level == 0]
    with torch.no_grad():
        batch = collate_shared(rows, range(len(rows)))
        trained = token_logprobs(model, batch).logprobs
    position = {row_index: b for b, row_index in enumerate(batch.rows)}

    def with_sampler(offset: float) -> list[CompletionRow]:
        return [row._replace(sampler_logprobs=tuple((trained[position[i], : len(row.completion_ids)] - offset).tolist()))
                for i, row in enumerate(rows)]

    advantages = torch.tensor([1.0, -0.5, 0.25, -1.0, 0.5])
    config = UpdateConfig(clip=0.0, kl_coef=0.0, loss_norm="token", grad_clip=0.0)
    plain, _ = sgd_step(model, params, rows, advantages, config)
    same, _ = sgd_step(model, params, with_sampler(0.0), advantages, config)
    weighted, _ = sgd_step(model, params, with_sampler(0.5), advantages, config)
    capped, _ = sgd_step(model, params, with_sampler(0.5), advantages, config._replace(sampler_cap=1.2))
    off, _ = sgd_step(model, params, with_sampler(0.5), advantages, config._replace(sampler_cap=0.0))
    flat = {name: torch.cat([d.flatten() for d in deltas])
            for name, deltas in [("plain", plain), ("same", same), ("weighted", weighted), ("capped", capped), ("off", off)]}
    reference = flat["plain"]
    assert reference.norm() > 0

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return ((a - b).norm() / b.norm()).item() < 1e-4

    assert close(flat["same"], reference) and close(flat["off"], reference)
    assert close(flat["weighted"], math.exp(0.5) * reference)
    assert close(flat["capped"], 1.2 * reference)


def test_the_update_runs_grouped_attention_on_a_cpu_with_the_same_gradient(peft_model):
    """`cpu_attention` switches the update to the grouped matmul attention and back; in
    fp32 its gradient is the sdpa one (torch's CPU flash-attention backward is the slow part)."""
    from neuromas.runtime.backends.attention import NAME, cpu_attention

    model, tokenizer, _ = peft_model
    to_fp32_base(model)
    inner = model.get_base_model()
    assert inner.config._attn_implementation == "sdpa"
    with cpu_attention(model):
        assert inner.config._attn_implementation == NAME
    assert inner.config._attn_implementation == "sdpa"

    from neuromas.runtime.training.update import _token_logprobs

    batches = micro_batches(group_rows(tokenizer), token_budget=10_000)
    grads = {}
    for kind, scores in (("grouped", token_logprobs), ("sdpa", lambda m, b: _token_logprobs(m, b, True, False, "stacked"))):
        model.zero_grad(set_to_none=True)
        for batch in batches:
            scores(model, batch).logprobs.sum().backward()
        grads[kind] = lora_grads(model)
    assert inner.config._attn_implementation == "sdpa"
    assert relative_error(grads["grouped"], grads["sdpa"]) < 1e-4
    assert relative_error(grads["grouped"], grads["sdpa"]) > 0  # two kernels really ran


def distinct_states(batch) -> set[tuple]:
    """Each real token of a shared-prompt batch as (adapter, ids and positions up to it):
    tokens equal in this have the same state in every layer."""
    states = set()
    for used, ids, positions, adapter, before in [
        *((batch.prefix_mask[u].bool(), batch.prefix_ids[u], batch.prefix_positions[u], batch.prefix_adapters[u], ())
          for u in range(len(batch.prefix_adapters))),
        *((batch.suffix_mask[r].bool(), batch.suffix_ids[r], batch.suffix_positions[r], batch.adapter_names[r],
           ("prefix", *batch.prefix_ids[p][batch.prefix_mask[p].bool()].tolist()))
          for r, p in enumerate(batch.row_prefix.tolist())),
    ]:
        path = before
        for token, position in zip(ids[used].tolist(), positions[used].tolist()):
            path = (*path, token, position)
            states.add((adapter, path))
    return states


@pytest.mark.parametrize("lora_rows", ["stacked", "peft"])
def test_flat_tokens_carry_only_the_distinct_real_tokens_and_give_the_padded_gradient(peft_model, monkeypatch,
                                                                                      lora_rows):
    """A shared-prompt batch goes through the model as its distinct real tokens alone
    (prefix tokens, then row tokens, each with its own position and adapter: stacked rows
    or peft's mixed batches; tokens whose adapter and history agree are one), with
    attention in the padded layout: its log-probs and gradient are the padded path's."""
    from neuromas.runtime.training import update as update_module
    from neuromas.runtime.training.flat_tokens import flatten

    model, tokenizer, _ = peft_model
    rows = group_rows(tokenizer)
    # Two more samples of a group, whose completions start as earlier ones do.
    rows += [row._replace(sample=len(rows) + i, completion_ids=row.completion_ids[:3] + (11, 12))
             for i, row in enumerate(rows[:2])]
    batches = micro_batches(rows, token_budget=10_000)
    merged = 0
    for batch in batches:
        flat = flatten(batch, torch.bfloat16)
        prefix_used, row_used = batch.prefix_mask.bool(), batch.suffix_mask.bool()
        layout = flat.layout
        slots = torch.cat([layout.prefix_slots[prefix_used.flatten()], layout.row_slots[row_used.flatten()]])
        real = torch.cat([batch.prefix_ids[prefix_used], batch.suffix_ids[row_used]])
        assert flat.input_ids[slots, 0].tolist() == real.tolist()  # every real token has its flat one
        assert flat.position_ids[slots, 0].tolist() == torch.cat(
            [batch.prefix_positions[prefix_used], batch.suffix_positions[row_used]]).tolist()
        row_adapters = [batch.adapter_names[r] for r in (row_used.flatten().nonzero()[:, 0] // row_used.shape[1])]
        assert [flat.adapters[t] for t in slots[prefix_used.sum():].tolist()] == row_adapters
        assert len(flat.adapters) == len(distinct_states(batch)) <= len(real) < batch.padded_tokens
        merged += len(real) - len(flat.adapters)
    assert merged > 0
    with torch.no_grad():  # bf16: the same products, so the same log-probs
        for batch in batches:
            torch.testing.assert_close(token_logprobs(model, batch, lora_rows=lora_rows).logprobs,
                                       token_logprobs(model, batch, flat_tokens=False, lora_rows=lora_rows).logprobs,
                                       atol=1e-3, rtol=0)

    to_fp32_base(model)
    calls = []
    real_pass = update_module.flat_hidden_states
    monkeypatch.setattr(update_module, "flat_hidden_states", lambda *args: calls.append(1) or real_pass(*args))
    grads = {}
    for is_flat in (True, False):
        model.zero_grad(set_to_none=True)
        for batch in batches:
            token_logprobs(model, batch, flat_tokens=is_flat, lora_rows=lora_rows).logprobs.sum().backward()
        grads[is_flat] = lora_grads(model)
    assert len(calls) == len(batches)  # the flat path ran once per batch, with flat_tokens only
    assert relative_error(grads[True], grads[False]) < 1e-4
