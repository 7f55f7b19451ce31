"""The CPU kernels sampling and the update run on: prepacked linear weights and grouped attention.

Each is checked against the plain computation it replaces, on the bundled model.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from neuromas.runtime.backends.attention import NAME, SAMPLING_NAME, cpu_attention
from neuromas.runtime.backends.packed_linear import PerWeight, packed, packed_linear, packed_linears


def test_a_packed_linear_gives_the_plain_result_and_follows_in_place_changes():
    torch.manual_seed(0)
    weight = torch.randn(96, 64, dtype=torch.bfloat16)
    bias = torch.randn(96, dtype=torch.bfloat16)
    with torch.inference_mode():
        for rows in (1, 8, 16, 300):
            x = torch.randn(rows, 64, dtype=torch.bfloat16)
            assert packed(weight) is not None  # oneDNN packs bf16 on this CPU
            assert torch.equal(packed_linear(x, weight, bias), F.linear(x, weight, bias))  # bitwise in bf16
        x3 = torch.randn(2, 5, 64, dtype=torch.bfloat16)
        assert torch.equal(packed_linear(x3, weight), F.linear(x3, weight))
    first = packed(weight)
    with torch.no_grad():
        weight.mul_(2.0)  # an in-place change moves the version: packed again
    assert packed(weight) is not first
    with torch.inference_mode():
        assert torch.equal(packed_linear(x3, weight), F.linear(x3, weight))
    fp32 = torch.randn(49152 // 16, 64)
    x = torch.randn(16, 64)
    with torch.inference_mode():
        assert torch.allclose(packed_linear(x, fp32), F.linear(x, fp32), atol=1e-4, rtol=1e-5)


def test_a_packed_linear_under_autograd_is_the_plain_differentiable_call():
    weight = torch.randn(8, 4, dtype=torch.bfloat16)
    x = torch.randn(3, 4, dtype=torch.bfloat16, requires_grad=True)
    packed_linear(x, weight).float().sum().backward()
    assert torch.equal(x.grad, torch.ones(3, 8, dtype=torch.bfloat16) @ weight)


def test_values_per_weight_are_made_once_and_dropped_with_the_weight():
    made = []
    cache = PerWeight(lambda w: made.append(1) or w.float())
    weight = torch.ones(3, dtype=torch.bfloat16)
    assert cache(weight) is cache(weight) and len(made) == 1
    assert len(cache._values) == 1
    del weight
    assert not cache._values  # the entry went with its tensor


def test_packed_linears_route_every_linear_but_the_head_and_restore_them(loaded):
    model = loaded.model
    ids = torch.tensor([loaded.tokenizer("What is 2 + 3? Answer with a number.")["input_ids"]])
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        with packed_linears(model):
            layer = model.model.layers[0].mlp.gate_proj
            assert "forward" in vars(layer)
            assert "forward" not in vars(model.get_output_embeddings())  # the head is fp32_output_head's
            fast = model(input_ids=ids).logits
        assert "forward" not in vars(layer)
    assert torch.equal(fast, plain)


def test_grouped_attention_is_eager_attention_without_its_copies(loaded):
    """Eager's output, bitwise; torch's kernel differs by rounding only. The sampling form
    runs decoding steps grouped and prefills through torch's kernel."""
    model = loaded.model
    torch.manual_seed(1)
    ids = torch.randint(0, 40_000, (3, 40))
    mask = torch.ones_like(ids)
    mask[0, :9] = 0  # left padding
    mask[1, :25] = 0
    keep = mask.bool()
    with torch.inference_mode():
        sdpa = model(input_ids=ids, attention_mask=mask).logits
        model.set_attn_implementation("eager")
        try:
            eager = model(input_ids=ids, attention_mask=mask).logits
        finally:
            model.set_attn_implementation("sdpa")
        with cpu_attention(model):
            assert model.config._attn_implementation == NAME
            grouped = model(input_ids=ids, attention_mask=mask).logits
        with cpu_attention(model, SAMPLING_NAME):
            assert model.config._attn_implementation == SAMPLING_NAME
            sampling_prefill = model(input_ids=ids, attention_mask=mask).logits
        assert model.config._attn_implementation == "sdpa"
    assert torch.equal(grouped[keep], eager[keep])
    assert torch.equal(sampling_prefill[keep], sdpa[keep])
    # bf16 logits near 20 are spaced 0.125 apart: rounding moves them ~0.16 on average; a
    # wrong mask or head grouping moves them by whole units
    assert (grouped[keep].float() - sdpa[keep].float()).abs().mean() < 0.5


def test_grouped_decoding_steps_match_a_full_pass(loaded):
    """Decoding with a cache under the sampling attention gives a full pass's last logits
    (fp32, so only the kernels' summation order differs)."""
    from neuromas.runtime.backends.transformers import cache_argument
    from transformers import DynamicCache

    model = copy.deepcopy(loaded.model).float()
    ids = torch.tensor([loaded.tokenizer("Count: one two three four")["input_ids"]] * 2)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.inference_mode(), cpu_attention(model, SAMPLING_NAME):
        full = model(input_ids=ids, attention_mask=mask).logits[:, -1]
        cache = DynamicCache()
        model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True, **{cache_argument(): cache})
        step = model(input_ids=ids[:, -1:], attention_mask=mask, use_cache=True, **{cache_argument(): cache})
    assert torch.allclose(step.logits[:, -1], full, atol=2e-4)


def _plain_delta(x, a_stack, b_stack, mask):
    projected = x.float() @ a_stack.t()
    return ((projected * mask) @ b_stack.t()).to(x.dtype)


def test_the_stacked_lora_delta_is_fp32_forward_and_gives_autograds_gradient():
    """`lora_rows._StackedDelta`: its forward is the fp32 delta sampling adds; its backward
    is autograd's in fp32, and in bf16 (four bf16 matmuls) within bf16 rounding of it."""
    from neuromas.runtime.backends.lora_rows import _StackedDelta

    torch.manual_seed(0)
    a_stack, b_stack = torch.randn(12, 64) * 0.1, torch.randn(96, 12) * 0.1  # two adapters of rank 6
    mask = torch.zeros(3, 1, 12)
    mask[:2, :, :6], mask[2:, :, 6:] = 1.0, 1.0  # rows 0-1: the first adapter; row 2: the second
    grad = torch.randn(3, 5, 96)

    def gradients(x, delta_of):
        leaves = [x.clone().requires_grad_(), a_stack.clone().requires_grad_(), b_stack.clone().requires_grad_()]
        delta = delta_of(*leaves)
        delta.backward(grad.to(delta.dtype))
        return delta, [leaf.grad.float() for leaf in leaves]

    def stacked(x, a, b):
        return _StackedDelta.apply(x, x.detach().float(), a, b, mask, x.dtype)

    x = torch.randn(3, 5, 64)
    delta, got = gradients(x, stacked)
    expected_delta, expected = gradients(x, lambda x, a, b: _plain_delta(x, a, b, mask))
    assert torch.equal(delta, expected_delta)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)

    x_bf16 = x.bfloat16()
    delta, got = gradients(x_bf16, stacked)
    assert delta.dtype == torch.bfloat16 and torch.equal(delta, _plain_delta(x_bf16, a_stack, b_stack, mask))
    _, fp32 = gradients(x_bf16.float(), lambda x, a, b: _plain_delta(x, a, b, mask))
    for g, e in zip(got, fp32, strict=True):
        error = ((g - e).norm() / e.norm()).item()
        assert 0 < error < 1e-2  # bf16 rounding: measured 0.3-0.4%

    x_frozen = x_bf16  # an input without grad (the first layer's) gets none
    a, b = a_stack.clone().requires_grad_(), b_stack.clone().requires_grad_()
    _StackedDelta.apply(x_frozen, x_frozen.float(), a, b, None, x_frozen.dtype).float().sum().backward()
    assert x_frozen.grad is None and a.grad is not None and b.grad is not None
