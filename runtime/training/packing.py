"""(sample, node) completions -> padded micro-batches for the update, in one of two layouts.

Shared-prompt layout (`SharedPromptBatch`, the default): the G samples of a level-0 node
in one GRPO group have the same prompt and adapter. Each distinct (prompt, adapter)
goes through the model once, as a "prefix" (the prompt but its last token); its keys
and values are then reused, with gradients flowing back through them, by every row
that shares it. A row's own pass reads the prompt's last token and the completion but
its last token, so its T logits predict exactly the T completion tokens.

Full-sequence layout (`MicroBatch`): every row carries its whole prompt and completion
(the layout before prompt sharing; kept for rows with a one-token prompt, and to
measure the sharing against).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch
DEFAULT_TOKEN_BUDGET = 4096  # padded tokens per micro-batch


class CompletionRow(NamedTuple):
    """One node's completion in one sample: what the update learns from.

    sample: index of the sample in the step (input * group + j); its advantage applies.
    adapter: the node's adapter slot; None for a frozen node.
    prompt_ids / completion_ids: token ids exactly as generated (completion: (T_i,)).
    temperature: the node's sampling temperature (log-probs are taken at it).
    sampler_logprobs: the sampler's log-prob of each completion token, as it recorded
    them (None: unknown); the update corrects for its gap to the trained policy.
    """

    sample: int
    node: str
    level: int
    adapter: str | None
    prompt_ids: Sequence[int]
    completion_ids: Sequence[int]
    temperature: float
    sampler_logprobs: Sequence[float] | None = None


class MicroBatch(NamedTuple):
    """Rows padded into one forward pass: prompts left-padded to one length P, completions
    right-padded to one length T, so every completion starts at column P.

    rows: indices into the step's row list; input_ids, attention_mask, position_ids: (B, P + T);
    completion_ids, completion_mask: (B, T); temperatures: (B, 1); adapter_names: B names;
    sampler_logprobs: (B, T), or None when a row has none.
    """

    rows: tuple[int, ...]
    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    temperatures: Tensor
    adapter_names: list[str]
    sampler_logprobs: Tensor | None = None

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel()

    def to(self, device: torch.device) -> MicroBatch:
        """The same micro-batch with its tensors on `device` (no copy when already there)."""
        return _moved(self, device)

    def select(self, positions: Sequence[int]) -> MicroBatch:
        """The micro-batch of only the rows at `positions`, with padding no kept row needs cut."""
        index = torch.tensor(list(positions), dtype=torch.long)
        completion_len = int(self.completion_mask[index].sum(dim=1).max().item())
        prompt_len = self.input_ids.shape[1] - self.completion_ids.shape[1]
        first = int(self.attention_mask[index, :prompt_len].any(dim=0).nonzero().min().item()) if prompt_len else 0
        end = prompt_len + completion_len
        return self._replace(
            rows=tuple(self.rows[i] for i in positions),
            input_ids=self.input_ids[index, first:end],
            attention_mask=self.attention_mask[index, first:end],
            position_ids=self.position_ids[index, first:end],
            completion_ids=self.completion_ids[index, :completion_len],
            completion_mask=self.completion_mask[index, :completion_len],
            temperatures=self.temperatures[index],
            adapter_names=[self.adapter_names[i] for i in positions],
            sampler_logprobs=_selected(self.sampler_logprobs, index, completion_len),
        )


def _selected(values: Tensor | None, index: Tensor, width: int) -> Tensor | None:
    return None if values is None else values[index, :width]


class SharedPromptBatch(NamedTuple):
    """Rows whose prompts are computed once per distinct (prompt, adapter).

    prefix_ids, prefix_mask, prefix_positions: (U, P), the U distinct prompts but their
    last token, left-padded; prefix_adapters: U names; row_prefix: (B,) the prefix of
    each row. suffix_ids, suffix_positions: (B, T), each row's last prompt token and its
    completion but the last token, right-padded. completion_ids, completion_mask: (B, T);
    temperatures: (B, 1); adapter_names: B names; rows: indices into the step's rows;
    sampler_logprobs: (B, T), or None when a row has none.
    """

    rows: tuple[int, ...]
    prefix_ids: Tensor
    prefix_mask: Tensor
    prefix_positions: Tensor
    prefix_adapters: list[str]
    row_prefix: Tensor
    suffix_ids: Tensor
    suffix_positions: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    temperatures: Tensor
    adapter_names: list[str]
    sampler_logprobs: Tensor | None = None

    @property
    def padded_tokens(self) -> int:
        return self.prefix_ids.numel() + self.suffix_ids.numel()

    def to(self, device: torch.device) -> SharedPromptBatch:
        return _moved(self, device)

    def select(self, positions: Sequence[int]) -> SharedPromptBatch:
        """The batch of only the rows at `positions`: unused prefixes dropped, padding cut."""
        index = torch.tensor(list(positions), dtype=torch.long)
        used = sorted(set(self.row_prefix[index].tolist()))
        renumber = {old: new for new, old in enumerate(used)}
        prefix_index = torch.tensor(used, dtype=torch.long)
        prefix_mask = self.prefix_mask[prefix_index]
        first = int(prefix_mask.any(dim=0).nonzero().min().item()) if prefix_mask.any() else prefix_mask.shape[1]
        completion_len = int(self.completion_mask[index].sum(dim=1).max().item())
        return self._replace(
            rows=tuple(self.rows[i] for i in positions),
            prefix_ids=self.prefix_ids[prefix_index, first:],
            prefix_mask=prefix_mask[:, first:],
            prefix_positions=self.prefix_positions[prefix_index, first:],
            prefix_adapters=[self.prefix_adapters[i] for i in used],
            row_prefix=torch.tensor([renumber[p] for p in self.row_prefix[index].tolist()], dtype=torch.long),
            suffix_ids=self.suffix_ids[index, :completion_len],
            suffix_positions=self.suffix_positions[index, :completion_len],
            completion_ids=self.completion_ids[index, :completion_len],
            completion_mask=self.completion_mask[index, :completion_len],
            temperatures=self.temperatures[index],
            adapter_names=[self.adapter_names[i] for i in positions],
            sampler_logprobs=_selected(self.sampler_logprobs, index, completion_len),
        )


Batch = MicroBatch | SharedPromptBatch


def _moved(batch: Batch, device: torch.device) -> Batch:
    fields = {name: value.to(device) for name, value in batch._asdict().items() if isinstance(value, Tensor)}
    return batch._replace(**fields)


def micro_batches(
    rows: Sequence[CompletionRow], token_budget: int = DEFAULT_TOKEN_BUDGET, *, shared_prompt: bool = True
) -> list[Batch]:
    """Pack rows level by level into micro-batches of at most `token_budget` padded tokens
    (a row longer than the budget gets a micro-batch of its own). Rows without completion
    tokens are left out: there is nothing to learn from them. With `shared_prompt`, rows
    whose prompt has two tokens or more go into `SharedPromptBatch`es, the rows of one
    (prompt, adapter) kept together; otherwise every row into full-sequence `MicroBatch`es."""
    batches: list[Batch] = []
    for level in sorted({row.level for row in rows}):
        members = [i for i, row in enumerate(rows) if row.level == level and len(row.completion_ids) > 0]
        shared = [i for i in members if shared_prompt and len(rows[i].prompt_ids) >= 2]
        full = [i for i in members if i not in set(shared)]
        batches.extend(_pack_full(rows, full, token_budget))
        batches.extend(_pack_shared(rows, shared, token_budget))
    return batches


def _pack_full(rows: Sequence[CompletionRow], members: list[int], token_budget: int) -> list[MicroBatch]:
    # Longest first, so each micro-batch holds rows of similar length and pads little.
    members = sorted(members, key=lambda i: (-(len(rows[i].prompt_ids) + len(rows[i].completion_ids)), i))
    batches, current = [], []
    prompt_len = completion_len = 0
    for index in members:
        row = rows[index]
        new_prompt = max(prompt_len, len(row.prompt_ids))
        new_completion = max(completion_len, len(row.completion_ids))
        if current and (len(current) + 1) * (new_prompt + new_completion) > token_budget:
            batches.append(collate(rows, current))
            current, new_prompt, new_completion = [], len(row.prompt_ids), len(row.completion_ids)
        current.append(index)
        prompt_len, completion_len = new_prompt, new_completion
    if current:
        batches.append(collate(rows, current))
    return batches


def _prompt_key(row: CompletionRow) -> tuple[tuple[int, ...], str | None]:
    return tuple(row.prompt_ids), row.adapter


def _pack_shared(rows: Sequence[CompletionRow], members: list[int], token_budget: int) -> list[SharedPromptBatch]:
    # Longest prompts first, a prompt's rows together, longest completions first within it.
    groups: dict[tuple, list[int]] = {}
    for index in members:
        groups.setdefault(_prompt_key(rows[index]), []).append(index)
    ordered = sorted(groups.values(), key=lambda group: (-len(rows[group[0]].prompt_ids), group[0]))
    batches, current, prefixes = [], [], set()
    prefix_len = suffix_len = 0
    for group in ordered:
        for index in sorted(group, key=lambda i: (-len(rows[i].completion_ids), i)):
            row = rows[index]
            key = _prompt_key(row)
            new_prefixes = len(prefixes | {key})
            new_prefix = max(prefix_len, len(row.prompt_ids) - 1)
            new_suffix = max(suffix_len, len(row.completion_ids))
            if current and new_prefixes * new_prefix + (len(current) + 1) * new_suffix > token_budget:
                batches.append(collate_shared(rows, current))
                current, prefixes = [], set()
                new_prefix, new_suffix = len(row.prompt_ids) - 1, len(row.completion_ids)
            current.append(index)
            prefixes.add(key)
            prefix_len, suffix_len = new_prefix, new_suffix
    if current:
        batches.append(collate_shared(rows, current))
    return batches


def _temperatures(chosen: Sequence[CompletionRow]) -> Tensor:
    # A temperature of 0 (greedy) has no sampling distribution; score it at 1.
    return torch.tensor([[row.temperature if row.temperature > 0 else 1.0] for row in chosen])  # (B, 1)


def _sampler_logprobs(chosen: Sequence[CompletionRow], width: int) -> Tensor | None:
    """(B, T) recorded sampler log-probs, zero-padded; None unless every row has them."""
    if any(row.sampler_logprobs is None or len(row.sampler_logprobs) != len(row.completion_ids) for row in chosen):
        return None
    values = torch.zeros((len(chosen), width), dtype=torch.float32)
    for b, row in enumerate(chosen):
        values[b, : len(row.completion_ids)] = torch.tensor(row.sampler_logprobs, dtype=torch.float32)
    return values


def _completions(chosen: Sequence[CompletionRow], pad_id: int) -> tuple[Tensor, Tensor]:
    completion_len = max(len(row.completion_ids) for row in chosen)
    completion_ids = torch.full((len(chosen), completion_len), pad_id, dtype=torch.long)  # (B, T)
    completion_mask = torch.zeros((len(chosen), completion_len), dtype=torch.float32)  # (B, T)
    for b, row in enumerate(chosen):
        completion_ids[b, : len(row.completion_ids)] = torch.tensor(row.completion_ids)
        completion_mask[b, : len(row.completion_ids)] = 1.0
    return completion_ids, completion_mask


def collate(rows: Sequence[CompletionRow], indices: Sequence[int], pad_id: int = 0) -> MicroBatch:
    """Pad the chosen rows into one full-sequence MicroBatch (pad tokens are masked out,
    so any id works)."""
    chosen = [rows[i] for i in indices]
    prompt_len = max(len(row.prompt_ids) for row in chosen)
    completion_ids, completion_mask = _completions(chosen, pad_id)
    input_ids = torch.full((len(chosen), prompt_len + completion_ids.shape[1]), pad_id, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros_like(input_ids)  # (B, L)
    for b, row in enumerate(chosen):
        start = prompt_len - len(row.prompt_ids)
        end = prompt_len + len(row.completion_ids)
        input_ids[b, start:end] = torch.tensor([*row.prompt_ids, *row.completion_ids])
        attention_mask[b, start:end] = 1
    # Positions count real tokens only, as in generation with left padding.
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, L)
    return MicroBatch(
        rows=tuple(indices),
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        temperatures=_temperatures(chosen),
        adapter_names=[row.adapter or BASE_ADAPTER for row in chosen],
        sampler_logprobs=_sampler_logprobs(chosen, completion_ids.shape[1]),
    )


def collate_shared(rows: Sequence[CompletionRow], indices: Sequence[int], pad_id: int = 0) -> SharedPromptBatch:
    """Pad the chosen rows (prompts of two tokens or more) into one SharedPromptBatch."""
    chosen = [rows[i] for i in indices]
    keys: dict[tuple, int] = {}
    for row in chosen:
        keys.setdefault(_prompt_key(row), len(keys))
    prefixes = [key[0][:-1] for key in keys]
    prefix_len = max(len(prefix) for prefix in prefixes)
    prefix_ids = torch.full((len(prefixes), prefix_len), pad_id, dtype=torch.long)  # (U, P)
    prefix_mask = torch.zeros_like(prefix_ids)
    for u, prefix in enumerate(prefixes):
        prefix_ids[u, prefix_len - len(prefix) :] = torch.tensor(prefix)
        prefix_mask[u, prefix_len - len(prefix) :] = 1
    completion_ids, completion_mask = _completions(chosen, pad_id)
    suffix_ids = torch.full_like(completion_ids, pad_id)  # (B, T)
    suffix_positions = torch.zeros_like(completion_ids)
    for b, row in enumerate(chosen):
        length = len(row.completion_ids)
        suffix_ids[b, :length] = torch.tensor([row.prompt_ids[-1], *row.completion_ids[:-1]])
        suffix_positions[b] = len(row.prompt_ids) - 1 + torch.arange(completion_ids.shape[1])
    return SharedPromptBatch(
        rows=tuple(indices),
        prefix_ids=prefix_ids,
        prefix_mask=prefix_mask,
        prefix_positions=(prefix_mask.cumsum(dim=1) - 1).clamp(min=0),
        prefix_adapters=[key[1] or BASE_ADAPTER for key in keys],
        row_prefix=torch.tensor([keys[_prompt_key(row)] for row in chosen], dtype=torch.long),
        suffix_ids=suffix_ids,
        suffix_positions=suffix_positions,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        temperatures=_temperatures(chosen),
        adapter_names=[row.adapter or BASE_ADAPTER for row in chosen],
        sampler_logprobs=_sampler_logprobs(chosen, completion_ids.shape[1]),
    )
