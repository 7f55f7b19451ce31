"""A trained system's adapters and optimizer state + a growth stage -> the grown system's.

The compiler gives every node of a stage an origin (keep, copy of a node, mean of a
layer, zero). Adapters live in slots, which several nodes may share, so origins are
lifted to slots first: a slot the trained plan already has is kept bit for bit (and
keeps its optimizer state); a new slot starts as its first node's origin says.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

import torch

from neuromas.plan import GrowthStage, Plan

from ..models.adapters import attach_adapters


class SlotOrigin(NamedTuple):
    """How one adapter slot of the grown plan starts: from which slots of the trained plan."""

    kind: Literal["keep", "copy", "mean", "zero"]
    sources: tuple[str, ...] = ()  # trained slots: one for keep and copy, several for mean


def slot_origins(trained: Plan, stage: GrowthStage) -> dict[str, SlotOrigin]:
    """Every adapter slot of `stage.plan`, mapped to where its weights come from."""
    old_slots = {slot.name for slot in trained.adapters}
    old_nodes = trained.node_map()
    node_origin = {origin.node: origin for origin in stage.origins}
    result: dict[str, SlotOrigin] = {}
    for slot in stage.plan.adapters:
        if slot.name in old_slots:
            result[slot.name] = SlotOrigin("keep", (slot.name,))
            continue
        origin = node_origin[slot.nodes[0]]
        if origin.kind in ("keep", "copy") and origin.source is not None:
            source = old_nodes[origin.source].adapter
            result[slot.name] = SlotOrigin("copy", (source,)) if source is not None else SlotOrigin("zero")
        elif origin.kind == "mean":
            sources = tuple(dict.fromkeys(n.adapter for n in trained.nodes if n.layer == origin.source and n.adapter))
            result[slot.name] = SlotOrigin("mean", sources) if sources else SlotOrigin("zero")
        else:
            result[slot.name] = SlotOrigin("zero")
    return result


def grow_model(model: Any, trained: Plan, stage: GrowthStage, base_model: str | None = None) -> tuple[Any, dict[str, SlotOrigin]]:
    """Add the stage's new slots to the PeftModel and set their weights from their origins.

    Kept slots are not touched. `zero` slots keep peft's initialisation (B = 0): the
    node starts as the base model. Returns the (possibly new) PeftModel and the origins.
    """
    origins = slot_origins(trained, stage)
    model = attach_adapters(model, stage.plan, base_model)
    with torch.no_grad():
        for module in _lora_modules(model):
            for slot, origin in origins.items():
                if origin.kind not in ("copy", "mean"):
                    continue
                for weights in (module.lora_A, module.lora_B):
                    sources = [weights[name].weight for name in origin.sources]
                    weights[slot].weight.copy_(torch.stack(sources).mean(dim=0))
    return model, origins


def carry_optimizer_state(
    old: torch.optim.Optimizer, new: torch.optim.Optimizer, model: Any, origins: Mapping[str, SlotOrigin]
) -> None:
    """Give `new` (an optimizer over the grown model's LoRA parameters) the state of `old`
    for kept slots, and a copy of the source's state for copied slots; mean and zero
    slots start with fresh state."""
    named = dict(_lora_parameters(model))
    for name, param in named.items():
        slot = _slot_of(name, origins)
        if slot is None:
            continue
        origin = origins[slot]
        if origin.kind == "keep":
            source = param
        elif origin.kind == "copy":
            source = named.get(name.replace(f".{slot}.", f".{origin.sources[0]}."))
        else:
            continue
        if source is not None and source in old.state:
            new.state[param] = copy.deepcopy(old.state[source])


def _slot_of(parameter_name: str, slots: Iterable[str]) -> str | None:
    parts = parameter_name.split(".")
    return next((slot for slot in slots if slot in parts), None)


def _lora_modules(model: Any) -> list[Any]:
    return [m for m in model.modules() if hasattr(m, "lora_A") and isinstance(m.lora_A, torch.nn.ModuleDict)]


def _lora_parameters(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, param) for name, param in model.named_parameters() if "lora_" in name]
