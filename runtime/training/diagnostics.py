"""A step's rollout -> per-node diagnostics, to watch role-free nodes specialise.

For every node, averaged over the step's runs:
- `node/<id>/tokens`: message length in tokens;
- `node/<id>/entropy`: mean negative log-probability of the sampled tokens, at the
  sampling temperature (a Monte Carlo estimate of the policy's per-token entropy; it
  costs nothing, the sampler recorded the log-probs);
- `node/<id>/answer_overlap` (nodes outside the output layer): the fraction of the node's
  distinct words that the run's final answer text also contains, a cheap measure of how
  much of what a node writes reaches the answer;
- `node/<id>/kl` (`node_kl`, when the step measures the KL to the base: a plan `kl`, or
  `--log-kl`): the mean per-token KL from the node's policy to the base model, k3
  estimator on the sampled tokens, the sampler's log-probs against the base's.
Keys are flat, so metrics.jsonl rows and trackers take them as they are.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence

from ..generation.rollout import Rollout
from .loss import k3_kl
from .packing import Batch, CompletionRow

WORD = re.compile(r"\w+")


def words(text: str) -> set[str]:
    return {word.lower() for word in WORD.findall(text)}


def answer_overlap(message: str, answer: str) -> float:
    """Share of the message's distinct words found in the answer (0 for an empty message)."""
    said = words(message)
    return len(said & words(answer)) / len(said) if said else 0.0


def node_diagnostics(rollout: Rollout) -> dict[str, float]:
    """Per-node means over every run of the step; see the module docstring for the keys."""
    output_nodes = {node for output in rollout.plan.outputs for node in output.nodes}
    sums: dict[str, list[float]] = defaultdict(list)
    for per_input in rollout.samples:
        for sample in per_input:
            final = " ".join(answer.text for answer in sample.answers.values())
            for node_id, record in sample.records.items():
                sums[f"node/{node_id}/tokens"].append(float(len(record.completion_ids)))
                if record.logprobs:
                    sums[f"node/{node_id}/entropy"].append(-math.fsum(record.logprobs) / len(record.logprobs))
                if node_id not in output_nodes:
                    sums[f"node/{node_id}/answer_overlap"].append(answer_overlap(record.text, final))
    return {key: round(math.fsum(values) / len(values), 4) for key, values in sorted(sums.items())}


def node_kl(rows: Sequence[CompletionRow], batches: Sequence[Batch], ref_logprobs: Sequence) -> dict[str, float]:
    """`node/<id>/kl` for every trained node whose rows carry sampler log-probs (a frozen
    node runs the base and has no rows). `ref_logprobs`: the base model's (B, T) log-probs
    of each micro-batch's tokens (`score_batches`)."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # node -> [KL sum, tokens]
    for batch, ref in zip(batches, ref_logprobs, strict=True):
        if batch.sampler_logprobs is None:
            continue
        mask = batch.completion_mask.to(ref.device)
        per_token = k3_kl(batch.sampler_logprobs.to(ref.device), ref.float()) * mask  # (B, T)
        for b, row_index in enumerate(batch.rows):
            total = sums[f"node/{rows[row_index].node}/kl"]
            total[0] += per_token[b].sum().item()
            total[1] += mask[b].sum().item()
    return {key: round(kl / tokens, 5) for key, (kl, tokens) in sorted(sums.items()) if tokens}
