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

Tokens whose adapter, id and position agree with another sequence's, and whose earlier
tokens all do, have the same state in every layer, so each such run is one flat token
(`SharedStarts`): the common start of prompts that packing keeps in separate prefixes
(a template before the question), and the common start of a group's completions. On a
single agent's rows (2 prompts x 8 samples) that is 15% of the tokens (607 -> 519); on
NeuroMAS-3's, 8% (2,840 -> 2,624).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..backends.attention import FlatLayout, SharedStarts, additive_mask
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
    """The flat batch of `batch`'s distinct real tokens, its masks additive in `dtype`."""
    units, prefix_len = batch.prefix_ids.shape
    rows, row_len = batch.suffix_ids.shape
    device = batch.prefix_ids.device
    prefix_used, row_used = batch.prefix_mask.bool(), batch.suffix_mask.bool()
    prefix_tokens, row_tokens = SharedStarts(), SharedStarts()
    prefix_ends = [
        prefix_tokens.add_sequence(None, batch.prefix_adapters[unit], prefix_used[unit], batch.prefix_ids[unit],
                                   batch.prefix_positions[unit], first_slot=unit * prefix_len)
        for unit in range(units)
    ]
    for row, unit in enumerate(batch.row_prefix.tolist()):
        row_tokens.add_sequence(("prefix", prefix_ends[unit]), batch.adapter_names[row], row_used[row],
                                batch.suffix_ids[row], batch.suffix_positions[row], first_slot=row * row_len)
    prefix_slots = torch.tensor(prefix_tokens.slot_tokens(units * prefix_len), dtype=torch.long, device=device)
    row_slots = len(prefix_tokens) + torch.tensor(row_tokens.slot_tokens(rows * row_len), dtype=torch.long,
                                                  device=device)
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
        prefix_real=torch.tensor(prefix_tokens.first_slots, dtype=torch.long, device=device),
        row_real=torch.tensor(row_tokens.first_slots, dtype=torch.long, device=device),
        prefix_mask=additive_mask(prefix_allowed, dtype).unsqueeze(1),
        row_mask=additive_mask(row_allowed, dtype).unsqueeze(1),
    )
    tokens = prefix_tokens.tokens + row_tokens.tokens  # (adapter, id, position) of each flat token
    width = batch.completion_ids.shape[1]
    return FlatBatch(
        input_ids=torch.tensor([[token_id] for _, token_id, _ in tokens], dtype=torch.long, device=device),
        position_ids=torch.tensor([[position] for _, _, position in tokens], dtype=torch.long, device=device),
        adapters=[adapter for adapter, _, _ in tokens],
        layout=layout,
        # The state at row column R - 1 + t predicts completion token t.
        completion_slots=row_slots.view(rows, row_len)[:, batch.rest_len - 1 : batch.rest_len - 1 + width],
    )


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
