"""A trained system's adapters and optimizer state + a growth stage -> the grown system's.

The compiler gives every node of a stage an origin (keep, copy of a node, mean of a
layer, zero). Adapters live in slots, which several nodes may share, so origins are
lifted to slots first: a slot the trained plan already has is kept bit for bit (and
keeps its optimizer state); a new slot starts as its first node's origin says: a copy
of one slot, the mean of several slots' weight updates (ΔW = B·A, `mean_delta_factors`),
or zero (the base model).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from neuromas.plan import GrowthStage, Plan
from neuromas.vocabulary import OriginKind

from ..models.adapters import attach_adapters


class SlotOrigin(NamedTuple):
    """How one adapter slot of the grown plan starts: from which slots of the trained plan."""

    kind: OriginKind
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
                if origin.kind == "copy":
                    for weights in (module.lora_A, module.lora_B):
                        weights[slot].weight.copy_(weights[origin.sources[0]].weight)
                elif origin.kind == "mean":
                    a, b = mean_delta_factors([(module.lora_A[name].weight, module.lora_B[name].weight)
                                               for name in origin.sources])
                    module.lora_A[slot].weight.copy_(a)
                    module.lora_B[slot].weight.copy_(b)
    return model, origins


def mean_delta_factors(sources: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA factors (A, B) whose product B @ A is the mean of the sources' products, or its
    best rank-r approximation when the mean has a higher rank (a truncated SVD, split
    evenly: B = U sqrt(S), A = sqrt(S) V^T). Every slot of a plan has the same rank and
    alpha, so peft's scale alpha / r is the same on both sides and cancels.

    sources: (A: (r, in), B: (out, r)) pairs -> A: (r, in), B: (out, r), in A's dtype.
    Averaging A's and B's separately would give mean(B) @ mean(A), cross terms of
    unrelated adapters instead of their mean update.
    """
    rank = sources[0][0].shape[0]
    delta = torch.stack([b.double() @ a.double() for a, b in sources]).mean(dim=0)  # (out, in)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    root = s[:rank].sqrt()  # (r,)
    b = u[:, :rank] * root  # (out, r)
    a = root.unsqueeze(1) * vh[:rank]  # (r, in)
    dtype = sources[0][0].dtype
    return a.to(dtype), b.to(dtype)


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
