"""The prompts of one `generate` call prefilled as flat tokens: each distinct start once, no padding.

A call's prompts are left-padded to one length, and a padded prefill pays for every
column: at NeuroMAS-3's answer level, eight prompts of 175-262 tokens make 2,088
columns to prefill (each prompt but its last token), of which 1,744 are real. And the
rows repeat each other: a GRPO group's samples of one node share their prompt's start
(the template and the question) and differ only in what earlier nodes wrote. Under one
adapter, a token whose id and position, and every token before it, equal another row's
has the same keys and values in every layer (`attention.SharedStarts`), so here each
such run is computed once: those eight prompts are 1,171 flat tokens, and the sixteen
108-token prompts of the level before (four distinct ones, which share the template)
are 300. On one core the answer level's prefill takes about 2.1 s where the padded one
took 3.8.

The model sees the distinct real tokens as N rows of one token each, as the update's
flat batches do (`training.flat_tokens`), with the same kernels: per-token adapters
(`lora_rows`), the attention of `attention.flat_attention` (each row over its own
earlier tokens), and no output head. Each layer's keys and values are gathered
back into the padded layout, every row's from its own tokens, and written to the
call's cache: decoding starts from each prompt's last token, as after a padded prefill.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .attention import FLAT_NAME, FlatLayout, SharedStarts, additive_mask, cpu_attention
from .lora_rows import head_skipped, row_adapters
from .packed_linear import packed_linears


def flat_prefill(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, adapters: Sequence[str],
                 cache: Any, *, prefer_peft: bool = False) -> bool:
    """Fill `cache` with the keys and values of every row's prompt but its last token.

    input_ids, attention_mask: (B, P), left-padded; adapters: B names (lora_rows'
    BASE_ADAPTER for none); cache: a transformers cache with one layer per decoder layer,
    still empty. Returns False, touching nothing, where the model cannot run the flat
    attention (not on a CPU, or an attention implementation other than sdpa or eager)
    or no prompt has a token before its last."""
    if input_ids.shape[1] < 2:
        return False
    with cpu_attention(model, FLAT_NAME) as switched:
        if not switched:
            return False
        tokens, names, layout = _flat_tokens(input_ids, attention_mask, adapters,
                                             model.get_input_embeddings().weight.dtype)
        key_values: list[tuple[torch.Tensor, torch.Tensor]] = []
        context, extra = row_adapters(model, names, prefer_peft=prefer_peft)
        with torch.inference_mode(), packed_linears(model), head_skipped(model), context:
            model(input_ids=tokens[:, :1], position_ids=tokens[:, 1:], use_cache=False,
                  flat_layout=layout, key_values=key_values, **extra)
            rows, width = input_ids.shape[0], input_ids.shape[1] - 1
            for layer, (keys, values) in zip(cache.layers, key_values, strict=True):
                padded_keys, padded_values = (
                    states.index_select(0, layout.row_slots).view(rows, width, *states.shape[1:]).transpose(1, 2)
                    for states in (keys, values)
                )  # (B, Hkv, W, D)
                layer.update(padded_keys, padded_values)
    return True


def _flat_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, adapters: Sequence[str],
                 dtype: torch.dtype) -> tuple[torch.Tensor, list[str], FlatLayout]:
    """The distinct real tokens of the rows but their last tokens: (N, 2) ids and
    positions, their N adapters, and where attention puts them (rows only, no prefixes;
    row_slots: each padded slot's token, W = P - 1 slots a row)."""
    rows, width = input_ids.shape[0], input_ids.shape[1] - 1
    device = input_ids.device
    used = attention_mask[:, :-1].bool()
    ids, positions = input_ids[:, :-1], (used.long().cumsum(-1) - 1).clamp_(min=0)
    starts = SharedStarts()
    for row in range(rows):
        starts.add_sequence(None, adapters[row], used[row], ids[row], positions[row], first_slot=row * width)
    slots = torch.tensor(starts.slot_tokens(rows * width), dtype=torch.long, device=device)
    allowed = torch.ones(width, width, dtype=torch.bool, device=device).tril() & used[:, None, :]
    empty = torch.empty(0, dtype=torch.long, device=device)
    layout = FlatLayout(
        prefix_slots=empty, row_slots=slots, row_key_slots=slots, prefix_real=empty,
        row_real=torch.tensor(starts.first_slots, dtype=torch.long, device=device),
        prefix_mask=torch.empty(0, 1, 0, 0, dtype=dtype, device=device),
        row_mask=additive_mask(allowed, dtype).unsqueeze(1),  # (B, 1, W, W): each row over its own earlier tokens
    )
    tokens = torch.tensor([[token, position] for _, token, position in starts.tokens], dtype=torch.long,
                          device=device)
    return tokens, [adapter for adapter, _, _ in starts.tokens], layout
