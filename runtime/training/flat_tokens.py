"""A shared-prompt micro-batch's real tokens as one flat batch: the update without padding.

A `SharedPromptBatch` pads its prefixes to one length and its rows to one length; in a
NeuroMAS-3 update a fifth of those tokens are padding (a third of a level's completion
columns), and every matmul, norm and activation of the model pays for them. Only
attention needs the padded layout. So here the model sees the micro-batch's real tokens
as N rows of one token each (prefix tokens first, then row tokens): each with its own
position and, being a row to the per-row LoRA (stacked, or peft's), its own adapter.
Attention gathers them into the padded layout in every layer
(`backends.attention.flat_attention`: each prefix over itself, each row over its prefix
and itself, as the padded path's cache does) and gathers its outputs back. The products
are the padded path's; gradients equal it (tests/training/test_update.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..backends.attention import FlatLayout
from ..backends.lora_rows import row_adapters
from .packing import SharedPromptBatch


class FlatBatch(NamedTuple):
    """input_ids, position_ids: (N, 1), the real tokens; adapters: N names; layout: where
    attention puts them; completion_slots: (B, T), the token whose state predicts each
    completion token (any token where the completion is padding)."""

    input_ids: Tensor
    position_ids: Tensor
    adapters: list[str]
    layout: FlatLayout
    completion_slots: Tensor


def flatten(batch: SharedPromptBatch, dtype: torch.dtype) -> FlatBatch:
    """The flat batch of `batch`'s real tokens, its masks additive in `dtype`."""
    units, prefix_len = batch.prefix_ids.shape
    rows, row_len = batch.suffix_ids.shape
    device = batch.prefix_ids.device
    prefix_used, row_used = batch.prefix_mask.bool(), batch.suffix_mask.bool()
    prefix_real = prefix_used.flatten().nonzero().squeeze(1)  # (Np,)
    row_real = row_used.flatten().nonzero().squeeze(1)  # (Ns,)
    prefix_slots = torch.zeros(units * prefix_len, dtype=torch.long, device=device)
    prefix_slots[prefix_real] = torch.arange(len(prefix_real), device=device)
    row_slots = torch.zeros(rows * row_len, dtype=torch.long, device=device)
    row_slots[row_real] = len(prefix_real) + torch.arange(len(row_real), device=device)
    row_key_slots = torch.cat([prefix_slots.view(units, prefix_len)[batch.row_prefix], row_slots.view(rows, row_len)],
                              dim=1)  # (B, P + S)

    def causal(length: int) -> Tensor:
        return torch.ones(length, length, dtype=torch.bool, device=device).tril()

    prefix_allowed = causal(prefix_len) & prefix_used[:, None, :]  # (U, P, P)
    row_allowed = torch.cat([prefix_used[batch.row_prefix][:, None, :].expand(rows, row_len, prefix_len),
                             causal(row_len) & row_used[:, None, :]], dim=2)  # (B, S, P + S)
    layout = FlatLayout(
        prefix_slots=prefix_slots,
        row_slots=row_slots,
        row_key_slots=row_key_slots.flatten(),
        prefix_real=prefix_real,
        row_real=row_real,
        prefix_mask=_additive(prefix_allowed, dtype).unsqueeze(1),
        row_mask=_additive(row_allowed, dtype).unsqueeze(1),
    )
    adapter_of = [batch.prefix_adapters[u] for u in (prefix_real // prefix_len).tolist()]
    adapter_of += [batch.adapter_names[b] for b in (row_real // row_len).tolist()]
    width = batch.completion_ids.shape[1]
    return FlatBatch(
        input_ids=torch.cat([batch.prefix_ids.flatten()[prefix_real], batch.suffix_ids.flatten()[row_real]])[:, None],
        position_ids=torch.cat([batch.prefix_positions.flatten()[prefix_real],
                                batch.suffix_positions.flatten()[row_real]])[:, None],
        adapters=adapter_of,
        layout=layout,
        # The state at row column R - 1 + t predicts completion token t.
        completion_slots=row_slots.view(rows, row_len)[:, batch.rest_len - 1 : batch.rest_len - 1 + width],
    )


def _additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def flat_hidden_states(
    model: nn.Module, batch: SharedPromptBatch, names: Callable[[list[str]], list[str]], prefer_peft: bool
) -> Tensor:
    """The final hidden states (B, T, H) whose head outputs predict the T completion tokens
    of each row, from one pass over the flat batch. The model must run FLAT_NAME attention
    (`attention.cpu_attention`) and return its hidden states as logits (head skipped)."""
    flat = flatten(batch, model.get_input_embeddings().weight.dtype)
    context, extra = row_adapters(model, names(flat.adapters), prefer_peft=prefer_peft)
    with context:
        hidden = model(
            input_ids=flat.input_ids,
            position_ids=flat.position_ids,
            use_cache=False,
            flat_layout=flat.layout,
            **extra,
        ).logits[:, 0]  # (N, H)
    return hidden[flat.completion_slots]  # (B, T, H)
