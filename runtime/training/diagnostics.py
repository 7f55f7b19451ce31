"""A step's rollout -> per-node diagnostics, to watch role-free nodes specialise.

For every node, averaged over the step's runs:
- `node/<id>/tokens`: message length in tokens;
- `node/<id>/entropy`: mean negative log-probability of the sampled tokens, at the
  sampling temperature (a Monte Carlo estimate of the policy's per-token entropy; it
  costs nothing, the sampler recorded the log-probs);
- `node/<id>/answer_overlap` (nodes outside the output layer): the fraction of the node's
  distinct words that the run's final answer text also contains, a cheap measure of how
  much of what a node writes reaches the answer.
Keys are flat, so metrics.jsonl rows and trackers take them as they are.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

from ..generation.rollout import Rollout

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
