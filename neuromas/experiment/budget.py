"""A plan and its model's config -> the number of trainable LoRA parameters, so arms can be
matched on budget (a single agent at rank 3r against NeuroMAS-3 at rank r)."""

from __future__ import annotations

import json
from pathlib import Path

from neuromas.diagnostics import UserError
from neuromas.plan import Plan


def module_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection a LoRA target can name, from a HF config."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads", heads) * head_dim
    inner = config.get("intermediate_size", 4 * hidden)
    return {
        "q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
        "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inner), "up_proj": (hidden, inner),
        "down_proj": (inner, hidden),
    }


def trainable_parameters(plan: Plan, config: dict) -> int:
    """Every slot's A (r x in) and B (out x r) matrices over every layer and target; a
    grown plan counts its last stage's slots, which it ends with."""
    if plan.growth:
        plan = plan.growth[-1].plan
    shapes = module_shapes(config)
    unknown = [target for target in plan.adapter.targets if target not in shapes]
    if unknown:
        raise UserError(f"cannot count parameters of LoRA targets {unknown}: known are {sorted(shapes)}")
    per_layer = sum(plan.adapter.rank * (shapes[t][0] + shapes[t][1]) for t in plan.adapter.targets)
    return len(plan.adapters) * config["num_hidden_layers"] * per_layer


def model_config(model: str) -> dict:
    """The HF config of the plan's model (the bundled one is converted on first use)."""
    from neuromas.runtime import resolve_model

    folder = Path(resolve_model(model))
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the model config '{folder / 'config.json'}': {err}") from None


def check_matched(counts: dict[str, int], tolerance: float = 0.05) -> None:
    """Raise UserError unless every trained arm's count is within `tolerance` of the largest."""
    if not counts:
        return
    top = max(counts.values())
    off = {name: count for name, count in counts.items() if count < (1 - tolerance) * top}
    if off:
        listed = ", ".join(f"'{name}' {count:,}" for name, count in counts.items())
        raise UserError(f"match_budget: trainable parameters differ by more than {tolerance:.0%} ({listed}); "
                        "set each arm's `rank` so the counts agree", exit_code=2)
