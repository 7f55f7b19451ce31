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
(`_SharedStarts`): the common start of prompts that packing keeps in separate prefixes
(a template before the question), and the common start of a group's completions. On a
single agent's rows (2 prompts x 8 samples) that is 15% of the tokens (607 -> 519); on
NeuroMAS-3's, 8% (2,840 -> 2,624).
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
    """The flat batch of `batch`'s distinct real tokens, its masks additive in `dtype`."""
    units, prefix_len = batch.prefix_ids.shape
    rows, row_len = batch.suffix_ids.shape
    device = batch.prefix_ids.device
    prefix_used, row_used = batch.prefix_mask.bool(), batch.suffix_mask.bool()
    prefix_tokens, row_tokens = _SharedStarts(), _SharedStarts()
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
        prefix_mask=_additive(prefix_allowed, dtype).unsqueeze(1),
        row_mask=_additive(row_allowed, dtype).unsqueeze(1),
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


class _SharedStarts:
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

    def add_sequence(self, start: object, adapter: str, used: Tensor, ids: Tensor, positions: Tensor,
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
