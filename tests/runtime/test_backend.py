"""The transformers backend on the real model: mixed-adapter batches, sampling log-probs, stops."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from neuromas.plan import Generation
from neuromas.runtime import GenRequest
from neuromas.runtime.backends.transformers import BASE_ADAPTER, left_pad

sys.path.insert(0, str(Path(__file__).resolve().parent))  # runtime_helpers.py (pytest runs in importlib mode)
from runtime_helpers import compile_small, randomize_adapters  # noqa: E402

PROMPTS = ["What is 2 + 3?", "Name a color.", "Write one word about the sea, please, and nothing else.", "Hi"]


def chat_ids(tokenizer, text: str) -> tuple[int, ...]:
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return tuple(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def last_logits(model, rows, **extra) -> torch.Tensor:
    """(B, V) float32 logits after each row's last token, rows left-padded together."""
    input_ids, attention_mask = left_pad(rows, 2, model.device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **extra)
    return out.logits[:, -1].float()


@pytest.fixture
def two_adapter_backend(make_backend):
    """Random nonzero adapters on a float32 copy: in bf16, merely changing the batch
    shape moves logits by ~0.5, which would hide a row getting the wrong adapter."""
    plan = compile_small("neuromas3.nmas")  # slots node-hidden-0, node-hidden-1, node-answer-0
    backend = make_backend(plan)
    backend.model.float()
    randomize_adapters(backend.model, seed=1, scale=0.03)
    backend.model.eval()
    return backend


@pytest.mark.parametrize("lora_rows", ["stacked", "peft"])
def test_mixed_adapter_batch_matches_each_adapter_alone(two_adapter_backend, lora_rows):
    backend = two_adapter_backend
    backend.lora_rows = lora_rows
    model, tokenizer = backend.model, backend.tokenizer
    rows = [chat_ids(tokenizer, text) for text in PROMPTS]
    adapters = ["node-hidden-0", "node-hidden-1", "node-hidden-0", None]
    context, extra = backend.adapter_rows(adapters)
    assert bool(extra) == (lora_rows == "peft")
    with context:
        mixed = last_logits(model, rows, **extra)

    alone = torch.empty_like(mixed)
    for name in ("node-hidden-0", "node-hidden-1"):  # peft's plain single-adapter path
        picked = [i for i, n in enumerate(adapters) if n == name]
        model.set_adapter(name)
        alone[picked] = last_logits(model, [rows[i] for i in picked])
    with model.disable_adapter():
        alone[3] = last_logits(model, [rows[3]])[0]

    tolerance = 1e-3
    assert (mixed - alone).abs().max().item() < tolerance
    model.set_adapter("node-hidden-1")
    swapped = last_logits(model, [rows[0]])[0]  # row 0 under the other adapter
    assert (swapped - mixed[0]).abs().max().item() > 100 * tolerance
    with model.disable_adapter():
        base_row0 = last_logits(model, [rows[0]])[0]
    assert (base_row0 - mixed[0]).abs().max().item() > 100 * tolerance


@pytest.mark.parametrize("lora_rows", ["stacked", "peft"])
def test_sampling_logprobs_match_a_teacher_forced_pass(two_adapter_backend, lora_rows):
    backend = two_adapter_backend
    backend.lora_rows = lora_rows
    tokenizer, model = backend.tokenizer, backend.model
    settings = [Generation(max_tokens=6, temperature=1.0, top_p=1.0), Generation(max_tokens=6, temperature=0.7, top_p=0.9)]
    requests = [
        GenRequest(chat_ids(tokenizer, PROMPTS[0]), "node-hidden-0", settings[0]),
        GenRequest(chat_ids(tokenizer, PROMPTS[2]), "node-hidden-1", settings[1]),
        GenRequest(chat_ids(tokenizer, PROMPTS[1]), None, settings[0]),
    ]
    results = backend.generate(requests, seed=5)
    for request, result in zip(requests, results):
        assert len(result.completion_ids) == len(result.logprobs) >= 1
        full = result.prompt_ids + result.completion_ids
        logits = completion_logits(model, full, len(result.completion_ids), request.adapter or BASE_ADAPTER)
        scores = logits / request.generation.temperature
        if request.generation.top_p < 1.0:
            scores = apply_top_p(scores, request.generation.top_p)
        expected = torch.log_softmax(scores, -1).gather(1, torch.tensor(result.completion_ids)[:, None]).squeeze(1)
        got = torch.tensor(result.logprobs)
        assert torch.isfinite(got).all()
        assert (got - expected).abs().max().item() < 1e-3, (got, expected)
    assert backend.stats.calls == 1 and backend.stats.requests == 3


def completion_logits(model, ids, length: int, adapter) -> torch.Tensor:
    """(T, V) logits that predicted each of the last T = `length` tokens of one row."""
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), adapter_names=[adapter])
    return out.logits[0, -length - 1 : -1].float()


def apply_top_p(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    probs = scores.softmax(-1)
    sorted_probs, order = probs.sort(-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs
    drop = torch.zeros_like(before, dtype=torch.bool).scatter(1, order, before >= top_p)
    return scores.masked_fill(drop, float("-inf"))


def test_rows_keep_their_own_max_tokens_and_stop_strings(make_backend):
    plan = compile_small("neuromas3.nmas")
    backend = make_backend(plan)
    prompt = chat_ids(backend.tokenizer, "Count from 1 to 20.")
    greedy = Generation(max_tokens=24, temperature=0.0, top_p=1.0)
    # Same shapes in both calls (3 rows, one prompt), so greedy decoding repeats exactly.
    free = backend.generate([GenRequest(prompt, None, greedy)] * 3)
    assert free[0] == free[1] == free[2]
    free = free[0]
    assert free.logprobs == (0.0,) * len(free.completion_ids)  # greedy: a point mass
    middle = len(free.text) // 2
    stop = free.text[middle : middle + 2]  # first seen at or before the middle of the text
    cut = free.text[: free.text.index(stop)]

    results = backend.generate(
        [
            GenRequest(prompt, None, greedy),
            GenRequest(prompt, None, Generation(max_tokens=3, temperature=0.0, top_p=1.0)),
            GenRequest(prompt, None, Generation(max_tokens=24, temperature=0.0, top_p=1.0, stop=(stop,))),
        ]
    )
    assert results[0] == free
    assert results[1].completion_ids == free.completion_ids[:3] and results[1].finish_reason == "length"
    assert results[2].text == cut and results[2].finish_reason == "stop"
    assert len(results[2].completion_ids) < len(free.completion_ids)
    assert results[2].completion_ids == free.completion_ids[: len(results[2].completion_ids)]
    assert backend.stats.calls == 2
    assert backend.stats.completion_tokens == sum(len(r.completion_ids) for r in [free, free, free, *results])


def test_requests_naming_adapters_need_a_peft_model(make_backend):
    plan = compile_small("moa.nmas")  # frozen: no adapters attached
    backend = make_backend(plan)
    request = GenRequest((1, 2, 3), "node-h-0", Generation(max_tokens=2, temperature=1.0, top_p=1.0))
    with pytest.raises(ValueError, match="no LoRA adapters"):
        backend.generate([request])
    assert backend.generate([]) == []
    with_slots = make_backend(compile_small("neuromas3.nmas"))
    with pytest.raises(ValueError, match="no adapter named node-h-0"):
        with_slots.generate([request])


def test_stacked_rows_without_any_adapter_run_the_base_model(two_adapter_backend):
    """A batch whose rows all name no adapter gets the base model in every layer, not
    peft's active adapter."""
    backend = two_adapter_backend
    model, tokenizer = backend.model, backend.tokenizer
    rows = [chat_ids(tokenizer, text) for text in PROMPTS[:2]]
    model.set_adapter("node-hidden-0")
    context, extra = backend.adapter_rows([None, None])
    assert not extra
    with context:
        stacked = last_logits(model, rows)
    with model.disable_adapter():
        base = last_logits(model, rows)
    active = last_logits(model, rows)
    assert (stacked - base).abs().max().item() < 1e-4
    assert (active - base).abs().max().item() > 1e-2  # the active adapter does change them


def test_the_sampler_is_the_trained_policy_in_bf16(make_backend):
    """Sampling log-probs against the update's log-probs of the same tokens, on the model
    as training uses it (bf16 base where the CPU has it, fp32 adapters): one LoRA path and
    an fp32 head on both sides leave only the base's bf16 rounding (before: 0.04 nats mean)."""
    from neuromas.runtime.training.update import CompletionRow, micro_batches, prepare_for_update, score_batches

    plan = compile_small("neuromas3.nmas", max_tokens=12)
    backend = make_backend(plan)
    randomize_adapters(backend.model, seed=3, scale=0.02)
    prepare_for_update(backend.model)
    settings = Generation(max_tokens=12, temperature=1.0, top_p=1.0)
    prompt = chat_ids(backend.tokenizer, PROMPTS[0])
    requests = [GenRequest(prompt, adapter, settings) for adapter in ("node-hidden-0", "node-hidden-1") for _ in range(6)]
    results = backend.generate(requests, seed=5)
    rows = [CompletionRow(i, f"n{i}", 0, r.adapter, result.prompt_ids, result.completion_ids, 1.0)
            for i, (r, result) in enumerate(zip(requests, results))]
    gaps = []
    batches = micro_batches(rows)
    for batch, logprobs in zip(batches, score_batches(backend.model, batches)):
        for b, index in enumerate(batch.rows):
            sampled = torch.tensor(results[index].logprobs)
            gaps.append((logprobs[b, : len(sampled)] - sampled).abs())
    gaps = torch.cat(gaps)
    print(f"sampler vs trainer: mean {gaps.mean():.5f}, max {gaps.max():.5f} nats over {gaps.numel()} tokens")
    assert gaps.numel() >= 24
    # The bf16 gap depends on the sample: 0.020-0.041 nats mean (max 0.11-0.54) over four
    # samples here. It is the base model's bf16 rounding (decoding with a cache against one
    # pass over the whole row), corrected in the update by truncated importance sampling
    # (tests/training/test_update.py); in fp32 the gap is 0 (test_update.py). The bounds
    # catch a wrong position, temperature or adapter, which cost nats per token.
    assert gaps.mean().item() < 0.06 and gaps.max().item() < 1.0


def test_the_sampler_draws_from_the_distribution_and_never_an_impossible_token(monkeypatch):
    from neuromas.runtime.backends.sampler import draw

    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    tokens, logprobs = draw(probs.log().expand(40_000, -1))
    counts = torch.bincount(tokens.squeeze(1), minlength=5).float() / 40_000
    assert counts[1] == 0 and counts[4] == 0
    assert torch.allclose(counts, probs, atol=0.01)  # 4 standard errors at 40,000 draws
    assert torch.allclose(logprobs, probs.log()[tokens.squeeze(1)])
    # A uniform that rounds up to the total mass would pass every token: the row's argmax instead.
    rounded_up = torch.tensor([[0.0, float("-inf")]])
    monkeypatch.setattr(torch, "rand", lambda *shape, **kwargs: torch.ones(*shape, **kwargs))
    assert draw(rounded_up)[0].item() == 0


def test_draws_over_many_blocks_follow_the_distribution_and_give_its_log_probs():
    """A vocabulary of several blocks and a partial last one: mass split across blocks,
    impossible tokens inside them, and each drawn token's log-prob equal to log_softmax's."""
    from neuromas.runtime.backends.sampler import BLOCK, draw

    torch.manual_seed(1)
    vocab = 3 * BLOCK + 17
    scores = torch.full((vocab,), float("-inf"))
    likely = torch.tensor([5, BLOCK - 1, BLOCK, 2 * BLOCK + 300, vocab - 1])  # block edges and the last token
    probs = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])
    scores[likely] = probs.log() + 7.0  # an offset: draw normalises
    tokens, logprobs = draw(scores.expand(40_000, -1))
    counts = torch.bincount(tokens.squeeze(1), minlength=vocab).float() / 40_000
    assert counts.sum() == 1 and set(counts.nonzero().squeeze(1).tolist()) == set(likely.tolist())
    assert torch.allclose(counts[likely], probs, atol=0.01)
    assert torch.allclose(logprobs, torch.log_softmax(scores, -1)[tokens.squeeze(1)], atol=1e-6)
    noisy = torch.randn(64, vocab) * 3
    tokens, logprobs = draw(noisy)
    assert torch.allclose(logprobs, torch.log_softmax(noisy, -1).gather(1, tokens).squeeze(1), atol=1e-5)


@pytest.mark.parametrize("cpu_kernels", [True, False])
def test_shared_prompt_starts_prefill_once_and_sample_the_same_tokens(two_adapter_backend, cpu_kernels):
    """A GRPO group: three samples of each of two nodes, plus a row of its own whose prompt
    shares only the chat template's start. The flat prefill (CPU kernels) computes each
    distinct (adapter, prompt start) once; the padded one (other devices) each distinct
    (adapter, prompt). Either way the rows get the same tokens and log-probs as with a
    padded prefill per row."""
    backend = two_adapter_backend
    backend.cpu_kernels = cpu_kernels
    tokenizer = backend.tokenizer
    settings = Generation(max_tokens=6, temperature=1.0, top_p=1.0)
    shared = chat_ids(tokenizer, PROMPTS[2])
    requests = [GenRequest(shared, adapter, settings) for adapter in ("node-hidden-0", "node-hidden-1") for _ in range(3)]
    requests.append(GenRequest(chat_ids(tokenizer, PROMPTS[0]), "node-hidden-0", settings))
    calls = []
    forward = backend.model.forward
    backend.model.forward = lambda *args, **kwargs: calls.append(kwargs["input_ids"].shape) or forward(*args, **kwargs)
    try:
        backend.share_prompts = True
        shared_results = backend.generate(requests, seed=7)
        prefill = calls[0]
        backend.share_prompts = False
        own_results = backend.generate(requests, seed=7)
    finally:
        del backend.model.forward
    starts = {(r.adapter, tuple(r.prompt_ids[: i + 1])) for r in requests for i in range(len(r.prompt_ids) - 1)}
    own_start = next(i for i, (a, b) in enumerate(zip(requests[-1].prompt_ids, shared)) if a != b)
    assert own_start > 5  # the template's start, computed once for both of node-hidden-0's prompts
    assert len(starts) == 2 * (len(shared) - 1) + len(requests[-1].prompt_ids) - 1 - own_start
    if cpu_kernels:
        assert prefill == (len(starts), 1)  # one flat token per distinct start, no padding
    else:
        assert prefill[0] == 3  # two shared prompts and the row of its own, each once
    for a, b in zip(shared_results, own_results, strict=True):
        assert a.completion_ids == b.completion_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
    assert len({r.completion_ids for r in shared_results[:3]}) > 1  # the group's samples still differ
