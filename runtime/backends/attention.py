"""Grouped-query attention as plain matmuls: the attention of generation and of the update on a CPU.

torch's CPU kernel for `scaled_dot_product_attention` costs 1-9 ms a layer per decoding
step at 16 rows (q length 1, a static cache of 128-500 positions), and its backward about
3x its forward; transformers' "eager" attention first copies every key and value head
once per query head that shares it (`repeat_kv`), which at 16 rows and 300 positions
costs as much again. Here the query heads of one key/value head are stacked along the query axis,

    scores  = (q: (B, Hkv, G*T, D)) @ (k: (B, Hkv, D, L))      # G = query heads per kv head
    output  = softmax(scores * scale + mask) @ (v: (B, Hkv, L, D))

the same products as eager attention without the copies: 0.2-0.8 ms a layer at those
sizes, and a backward of plain matmuls. The mask is eager attention's additive one. The
softmax reads and writes the scores' dtype: torch's CPU kernel sums in fp32 either way,
and in bf16 its output is eager's (an fp32 softmax rounded to bf16) but for one element
in 10^5, one unit in the last place apart, at half the cost of eager's casts forward
and back. The update uses it for every pass (its scoring passes must match its
gradient pass); sampling uses it for decoding steps and torch's kernel for prefills
(`sampling_attention`). `cpu_attention(model)` switches a model to one of them inside a
block when the model is on a CPU; other devices keep their kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

NAME = "neuromas_grouped"  # every pass: the update (forward and backward) and its scoring passes
SAMPLING_NAME = "neuromas_sampling"  # decoding steps grouped, prefills by torch's kernel


def grouped_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' attention-function signature: query (B, H, T, D), key and value
    (B, Hkv, L, D), mask (B, 1, T, L) additive -> output (B, T, H, D) and the weights."""
    batch, heads, length, dim = query.shape
    kv_heads, positions = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    # (B, Hkv, G*T, D): a copy of the queries only; keys and values are used in place
    # The scaling goes on the queries, the smaller tensor (exact when it is a power of two,
    # as for head size 64). The product is a new tensor, so without a gradient the mask is
    # added in place; with one, in place on a view would make autograd copy the scores'
    # gradient twice in backward (CopySlices): 15% of the attention of a NeuroMAS-3 update.
    grouped = (query * scaling).reshape(batch, kv_heads, groups * length, dim)
    scores = torch.matmul(grouped, key.transpose(-1, -2))  # (B, Hkv, G*T, L)
    if attention_mask is not None:
        mask = attention_mask[:, :, None, :, :positions]  # (B, 1, 1, T, L)
        if scores.requires_grad:
            scores = (scores.view(batch, kv_heads, groups, length, positions) + mask).view(scores.shape)
        else:
            scores.view(batch, kv_heads, groups, length, positions).add_(mask)
    weights = nn.functional.softmax(scores, dim=-1)  # in the scores' dtype, summed in fp32
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights.view(batch, kv_heads, groups * length, positions), value)
    output = output.view(batch, heads, length, dim).transpose(1, 2).contiguous()
    return output, weights.view(batch, heads, length, positions)


def sampling_attention(module: nn.Module, query: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """`grouped_attention` for decoding steps (one query position); torch's kernel for a
    prefill, where it is 3-4x faster without a backward (the fp32 softmax over a
    (rows, heads, prompt, cache) tensor is the slow part of the matmul form)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] == 1:
        return grouped_attention(module, query, *args, **kwargs)
    return sdpa_attention_forward(module, query, *args, **kwargs)


def register() -> None:
    """Make NAME and SAMPLING_NAME transformers attention implementations, with eager
    attention's additive mask (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    for name, function in ((NAME, grouped_attention), (SAMPLING_NAME, sampling_attention)):
        AttentionInterface.register(name, function)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, eager_mask)


@contextmanager
def cpu_attention(model: nn.Module, *, sampling: bool = False) -> Iterator[None]:
    """`grouped_attention` (with `sampling`: `sampling_attention`) inside the block when
    `model` is on a CPU and uses a standard attention implementation (sdpa or eager);
    anything else is left alone."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = getattr(inner.config, "_attn_implementation", None)
    device = next(inner.parameters()).device
    if device.type != "cpu" or before not in ("sdpa", "eager") or not hasattr(inner, "set_attn_implementation"):
        yield
        return
    register()
    inner.set_attn_implementation(SAMPLING_NAME if sampling else NAME)
    try:
        yield
    finally:
        inner.set_attn_implementation(before)
