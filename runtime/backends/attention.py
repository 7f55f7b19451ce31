"""Grouped-query attention as plain matmuls: the attention of generation and of the update on a CPU.

torch's CPU kernel for `scaled_dot_product_attention` costs 1-9 ms a layer per decoding
step at 16 rows (q length 1, a static cache of 128-500 positions), and its backward about
3x its forward; transformers' "eager" attention first copies every key and value head
once per query head that shares it (`repeat_kv`), which at 16 rows and 300 positions
costs as much again. Here the query heads of one key/value head are stacked along the query axis,

    scores  = (q: (B, Hkv, G*T, D)) @ (k: (B, Hkv, D, L))      # G = query heads per kv head
    output  = softmax(scores * scale + mask) @ (v: (B, Hkv, L, D))

the same products as eager attention without the copies: 0.2-0.8 ms a layer at those
sizes, and a backward of plain matmuls. The mask is eager attention's additive one, and
the softmax eager's: fp32, rounded to the scores' dtype (`softmax_rounded`), with its
backward in that dtype. On a CPU that is faster than torch's bf16 softmax (1.6x forward,
1.3x with the backward, at an update's sizes), whose output differs from it in one
element in 10^5. The update uses it for every pass (its scoring passes must match its
gradient pass); sampling uses it for decoding steps (`sampling_attention`). The
update's shared-prompt batches and sampling's prefills run it from a flat layout
(`flat_attention`: `training.flat_tokens`, `flat_prefill`). `cpu_attention(model, name)`
switches a model to one of them inside a block when the model is on a CPU; other
devices keep their kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import nn

NAME = "neuromas_grouped"  # every pass: the update (forward and backward) and its scoring passes
SAMPLING_NAME = "neuromas_sampling"  # decoding steps grouped, padded prefills by torch's kernel
FLAT_NAME = "neuromas_flat"  # flat layouts (`flat_attention`): no mask is made for them


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
    weights = softmax_rounded(scores)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights.view(batch, kv_heads, groups * length, positions), value)
    output = output.view(batch, heads, length, dim).transpose(1, 2).contiguous()
    return output, weights.view(batch, heads, length, positions)


def softmax_rounded(scores: torch.Tensor) -> torch.Tensor:
    """softmax over the last axis in fp32, rounded to the scores' dtype (eager attention's
    numbers); the backward runs in that dtype from the rounded output."""
    if not scores.requires_grad:
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    return _SoftmaxRounded.apply(scores)


class _SoftmaxRounded(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
        ctx.save_for_backward(weights)
        return weights

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (weights,) = ctx.saved_tensors
        return torch._softmax_backward_data(grad, weights, -1, weights.dtype)


def sampling_attention(module: nn.Module, query: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """`grouped_attention` for decoding steps (one query position); torch's kernel for a
    padded prefill (`flat_prefill` runs the others), where it is 3-4x faster without a
    backward (the fp32 softmax over a (rows, heads, prompt, cache) tensor is the slow
    part of the matmul form)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[2] == 1:
        return grouped_attention(module, query, *args, **kwargs)
    return sdpa_attention_forward(module, query, *args, **kwargs)


class FlatLayout(NamedTuple):
    """Where the N tokens of a flat batch (N rows of one token each) sit in the padded
    layout attention runs in: U prefixes of P columns, each attending to itself, and B
    rows of S columns, each attending to its prefix and then to itself.

    prefix_slots: (U * P,), row_slots: (B * S,) and row_key_slots: (B * (P + S),), each
    row's prefix then its own columns: the flat token at each padded slot (at a padding
    slot any token, which the masks hide; a token shared by several sequences sits at
    several slots). prefix_real: (Np,) and row_real: (Ns,), in flat order (N = Np + Ns),
    the one slot of each flat token whose output is taken. prefix_mask: (U, 1, P, P) and
    row_mask: (B, 1, S, P + S), additive, as eager attention's.
    """

    prefix_slots: torch.Tensor
    row_slots: torch.Tensor
    row_key_slots: torch.Tensor
    prefix_real: torch.Tensor
    row_real: torch.Tensor
    prefix_mask: torch.Tensor
    row_mask: torch.Tensor


class SharedStarts:
    """The distinct tokens of sequences that may share starts. Under one adapter, a token
    whose id and position, and every token before it, equal another sequence's has the
    same state in every layer (attention is causal): it is one flat token. Slots are the
    padded layout's (sequence x column); a padding slot points at token 0, which the
    masks hide."""

    def __init__(self) -> None:
        self.tokens: list[tuple[str, int, int]] = []  # (adapter, id, position)
        self.first_slots: list[int] = []  # a slot of each token: where its attention output is taken
        self._index: dict[tuple, int] = {}  # (previous token, token) -> token number
        self._slots: dict[int, int] = {}  # slot -> token number

    def __len__(self) -> int:
        return len(self.tokens)

    def add_sequence(self, start: object, adapter: str, used: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor,
                     first_slot: int) -> object:
        """Adds one padded sequence's real tokens after `start` (None, or what an earlier
        call returned); returns its last token's key, `start` when it has none."""
        previous, ids, positions = start, ids.tolist(), positions.tolist()
        for column in used.nonzero().squeeze(1).tolist():
            token = (adapter, ids[column], positions[column])
            key = (previous, token)
            number = self._index.get(key)
            if number is None:
                number = self._index[key] = len(self.tokens)
                self.tokens.append(token)
                self.first_slots.append(first_slot + column)
            self._slots[first_slot + column] = number
            previous = number
        return previous

    def slot_tokens(self, slots: int) -> list[int]:
        """The flat token at each of `slots` padded slots (0 at padding)."""
        return [self._slots.get(slot, 0) for slot in range(slots)]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Eager attention's additive mask: 0 where `allowed`, the dtype's minimum elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def flat_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    *,
    flat_layout: FlatLayout,
    key_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature over a flat batch: query (N, H, 1, D),
    key and value (N, Hkv, 1, D) -> output (N, 1, H, D). Gathered into `flat_layout`'s
    padded prefixes (there may be none) and rows, run by `grouped_attention`, gathered
    back. `key_values`, when given, receives each layer's (key, value) (N, Hkv, D)."""
    layout = flat_layout
    queries, keys, values = (states[:, :, 0] for states in (query, key, value))  # (N, heads, D)
    if key_values is not None:
        key_values.append((keys, values))
    units, prefix_len = layout.prefix_mask.shape[0], layout.prefix_mask.shape[-1]
    rows, row_len = layout.row_mask.shape[0], layout.row_mask.shape[2]
    heads, dim = query.shape[1], query.shape[3]

    def padded(states: torch.Tensor, slots: torch.Tensor, count: int) -> torch.Tensor:
        gathered = states.index_select(0, slots)  # (count * width, heads, D)
        return gathered.view(count, -1, *states.shape[1:]).transpose(1, 2)  # (count, heads, width, D)

    outputs = []
    if units:
        prefix_out, _ = grouped_attention(
            module, padded(queries, layout.prefix_slots, units), padded(keys, layout.prefix_slots, units),
            padded(values, layout.prefix_slots, units), layout.prefix_mask, scaling, dropout)
        outputs.append(prefix_out.reshape(units * prefix_len, heads, dim).index_select(0, layout.prefix_real))
    row_out, _ = grouped_attention(
        module, padded(queries, layout.row_slots, rows), padded(keys, layout.row_key_slots, rows),
        padded(values, layout.row_key_slots, rows), layout.row_mask, scaling, dropout)
    outputs.append(row_out.reshape(rows * row_len, heads, dim).index_select(0, layout.row_real))
    return torch.cat(outputs).unsqueeze(1), None  # (N, 1, heads, D)


def register() -> None:
    """Make NAME and SAMPLING_NAME transformers attention implementations, with eager
    attention's additive mask, and FLAT_NAME one without (its layout carries its own
    masks; idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    for name, function in ((NAME, grouped_attention), (SAMPLING_NAME, sampling_attention)):
        AttentionInterface.register(name, function)
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, eager_mask)
    AttentionInterface.register(FLAT_NAME, flat_attention)


@contextmanager
def cpu_attention(model: nn.Module, name: str = NAME) -> Iterator[bool]:
    """The attention implementation `name` (NAME, SAMPLING_NAME or FLAT_NAME) inside the
    block when `model` is on a CPU and uses a standard one (sdpa or eager); anything else
    is left alone. Yields whether it switched."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = getattr(inner.config, "_attn_implementation", None)
    device = next(inner.parameters()).device
    if device.type != "cpu" or before not in ("sdpa", "eager") or not hasattr(inner, "set_attn_implementation"):
        yield False
        return
    register()
    inner.set_attn_implementation(name)
    try:
        yield True
    finally:
        inner.set_attn_implementation(before)
