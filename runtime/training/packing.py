"""(sample, node) completions -> padded micro-batches for the update, in one of two layouts.

Shared-prompt layout (`SharedPromptBatch`, the default): rows of one adapter whose
prompts start alike share that start, a "prefix", which goes through the model once;
its keys and values are then reused, with gradients flowing back through them, by every
row of the cluster. The G samples of a level-0 node in one GRPO group have the very same
prompt (the prefix is all of it but its last token); a later level's prompts differ in
the upstream texts but share the question and the template. A row's own pass reads the
rest of its prompt and its completion but the last token, so the states from the
prompt's last token on (T of them) predict exactly the T completion tokens.

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
    """Rows whose prompts' common starts are computed once per (prefix, adapter).

    prefix_ids, prefix_mask, prefix_positions: (U, P), the U prefixes, left-padded;
    prefix_adapters: U names; row_prefix: (B,) the prefix of each row. suffix_ids,
    suffix_mask, suffix_positions: (B, R + T - 1), each row's rest of its prompt
    (left-padded to R, at least its last token) and its completion but the last token
    (right-padded). completion_ids, completion_mask: (B, T); temperatures: (B, 1);
    adapter_names: B names; rows: indices into the step's rows; sampler_logprobs:
    (B, T), or None when a row has none.
    """

    rows: tuple[int, ...]
    prefix_ids: Tensor
    prefix_mask: Tensor
    prefix_positions: Tensor
    prefix_adapters: list[str]
    row_prefix: Tensor
    suffix_ids: Tensor
    suffix_mask: Tensor
    suffix_positions: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    temperatures: Tensor
    adapter_names: list[str]
    sampler_logprobs: Tensor | None = None

    @property
    def rest_len(self) -> int:
        """R: the suffix's prompt columns; the states from column R - 1 on predict the completions."""
        return self.suffix_ids.shape[1] - self.completion_ids.shape[1] + 1

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
        first = _first_used_column(prefix_mask)
        completion_len = int(self.completion_mask[index].sum(dim=1).max().item())
        rest_first = _first_used_column(self.suffix_mask[index, : self.rest_len])
        suffix_end = self.rest_len + completion_len - 1
        return self._replace(
            rows=tuple(self.rows[i] for i in positions),
            prefix_ids=self.prefix_ids[prefix_index, first:],
            prefix_mask=prefix_mask[:, first:],
            prefix_positions=self.prefix_positions[prefix_index, first:],
            prefix_adapters=[self.prefix_adapters[i] for i in used],
            row_prefix=torch.tensor([renumber[p] for p in self.row_prefix[index].tolist()], dtype=torch.long),
            suffix_ids=self.suffix_ids[index, rest_first:suffix_end],
            suffix_mask=self.suffix_mask[index, rest_first:suffix_end],
            suffix_positions=self.suffix_positions[index, rest_first:suffix_end],
            completion_ids=self.completion_ids[index, :completion_len],
            completion_mask=self.completion_mask[index, :completion_len],
            temperatures=self.temperatures[index],
            adapter_names=[self.adapter_names[i] for i in positions],
            sampler_logprobs=_selected(self.sampler_logprobs, index, completion_len),
        )


def _first_used_column(mask: Tensor) -> int:
    """The first column some row of a left-padded (N, W) mask uses (W when none does)."""
    used = mask.any(dim=0).nonzero()
    return int(used.min().item()) if len(used) else mask.shape[1]


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


class PromptCluster(NamedTuple):
    """Rows of one adapter whose prompts share their first `prefix_len` tokens (fewer than
    any of the prompts has: every row keeps at least its prompt's last token)."""

    adapter: str | None
    prefix_len: int
    members: list[int]


def prompt_clusters(rows: Sequence[CompletionRow], members: Sequence[int]) -> list[PromptCluster]:
    """The rows at `members` in clusters of shared prompt starts, chosen to pad the fewest
    tokens. Each adapter's distinct prompts are sorted, so that prompts with a long common
    start are neighbours; cutting between neighbours whose common start is under a
    threshold gives one clustering per threshold, from one prompt per cluster (a GRPO
    group's identical prompts) to long runs sharing a template. The one chosen has the
    fewest padded tokens, U x P for the prefixes plus B x (R + T - 1) for the rows."""
    by_adapter: dict[str | None, dict[tuple[int, ...], list[int]]] = {}
    for index in members:
        by_adapter.setdefault(rows[index].adapter, {}).setdefault(tuple(rows[index].prompt_ids), []).append(index)
    prompts = {adapter: sorted(groups) for adapter, groups in by_adapter.items()}
    shared = {  # the common start of each pair of neighbours
        adapter: [_common_start(a, b) for a, b in zip(ordered, ordered[1:])] for adapter, ordered in prompts.items()
    }
    thresholds = sorted({length for lengths in shared.values() for length in lengths if length > 0} | {2**62},
                        reverse=True)  # one prompt per cluster first, so a tie keeps it

    def clustering(threshold: int) -> list[PromptCluster]:
        clusters = []
        for adapter, ordered in prompts.items():
            run = [0]
            for position in range(1, len(ordered) + 1):
                if position < len(ordered) and shared[adapter][position - 1] >= threshold:
                    run.append(position)
                    continue
                common = min((shared[adapter][i] for i in run[:-1]), default=len(ordered[run[0]]))
                prefix_len = min(common, min(len(ordered[i]) for i in run) - 1)
                clusters.append(PromptCluster(adapter, prefix_len,
                                              [index for i in run for index in by_adapter[adapter][ordered[i]]]))
                run = [position]
        return clusters

    return min((clustering(threshold) for threshold in thresholds), key=lambda clusters: _padded(rows, clusters))


def _common_start(a: Sequence[int], b: Sequence[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def _padded(rows: Sequence[CompletionRow], clusters: Sequence[PromptCluster]) -> int:
    """Padded tokens of one SharedPromptBatch of these clusters: U x P + B x (R + T - 1)."""
    members = [(index, cluster.prefix_len) for cluster in clusters for index in cluster.members]
    prefix = max(cluster.prefix_len for cluster in clusters)
    rest = max(len(rows[index].prompt_ids) - prefix_len for index, prefix_len in members)
    completion = max(len(rows[index].completion_ids) for index, _ in members)
    return len(clusters) * prefix + len(members) * (rest + completion - 1)


def _pack_shared(rows: Sequence[CompletionRow], members: list[int], token_budget: int) -> list[SharedPromptBatch]:
    if not members:
        return []
    # Longest prefixes first, a cluster's rows together, longest completions first within it.
    clusters = sorted(prompt_clusters(rows, members), key=lambda cluster: (-cluster.prefix_len, cluster.members[0]))
    batches: list[SharedPromptBatch] = []
    parts: dict[int, list[int]] = {}  # the current micro-batch's rows of each cluster (by number)

    def layout(parts: dict[int, list[int]]) -> list[PromptCluster]:
        return [clusters[number]._replace(members=part) for number, part in parts.items()]

    def close(parts: dict[int, list[int]]) -> None:
        indices = [index for part in parts.values() for index in part]
        batches.append(collate_shared(rows, indices, clusters=layout(parts)))

    for number, cluster in enumerate(clusters):
        for index in sorted(cluster.members, key=lambda i: (-len(rows[i].completion_ids), i)):
            grown = {**parts, number: [*parts.get(number, []), index]}
            if parts and _padded(rows, layout(grown)) > token_budget:
                close(parts)
                grown = {number: [index]}
            parts = grown
    close(parts)
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


def collate_shared(
    rows: Sequence[CompletionRow],
    indices: Sequence[int],
    pad_id: int = 0,
    *,
    clusters: Sequence[PromptCluster] | None = None,
) -> SharedPromptBatch:
    """Pad the chosen rows (prompts of two tokens or more) into one SharedPromptBatch.
    clusters: their prompt clusters, each row in one (default: `prompt_clusters` of these rows)."""
    chosen = [rows[i] for i in indices]
    clusters = prompt_clusters(rows, indices) if clusters is None else clusters
    cluster_of = {index: number for number, cluster in enumerate(clusters) for index in cluster.members}
    prefixes = [rows[cluster.members[0]].prompt_ids[: cluster.prefix_len] for cluster in clusters]
    prefix_len = max(len(prefix) for prefix in prefixes)
    prefix_ids = torch.full((len(prefixes), prefix_len), pad_id, dtype=torch.long)  # (U, P)
    prefix_mask = torch.zeros_like(prefix_ids)
    for u, prefix in enumerate(prefixes):
        prefix_ids[u, prefix_len - len(prefix) :] = torch.tensor(prefix, dtype=torch.long)
        prefix_mask[u, prefix_len - len(prefix) :] = 1
    completion_ids, completion_mask = _completions(chosen, pad_id)
    rests = [row.prompt_ids[clusters[cluster_of[i]].prefix_len :] for i, row in zip(indices, chosen)]
    rest_len = max(len(rest) for rest in rests)
    width = rest_len + completion_ids.shape[1] - 1
    suffix_ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)  # (B, R + T - 1)
    suffix_mask = torch.zeros_like(suffix_ids)
    suffix_positions = torch.zeros_like(suffix_ids)
    for b, (row, rest) in enumerate(zip(chosen, rests)):
        start, end = rest_len - len(rest), rest_len + len(row.completion_ids) - 1
        suffix_ids[b, start:end] = torch.tensor([*rest, *row.completion_ids[:-1]])
        suffix_mask[b, start:end] = 1
        suffix_positions[b] = (len(row.prompt_ids) - rest_len + torch.arange(width)).clamp(min=0)
    return SharedPromptBatch(
        rows=tuple(indices),
        prefix_ids=prefix_ids,
        prefix_mask=prefix_mask,
        prefix_positions=(prefix_mask.cumsum(dim=1) - 1).clamp(min=0),
        prefix_adapters=[cluster.adapter or BASE_ADAPTER for cluster in clusters],
        row_prefix=torch.tensor([cluster_of[i] for i in indices], dtype=torch.long),
        suffix_ids=suffix_ids,
        suffix_mask=suffix_mask,
        suffix_positions=suffix_positions,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        temperatures=_temperatures(chosen),
        adapter_names=[row.adapter or BASE_ADAPTER for row in chosen],
        sampler_logprobs=_sampler_logprobs(chosen, completion_ids.shape[1]),
    )
