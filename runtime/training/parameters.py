"""A PeftModel's LoRA weights -> trainable parameters in a fixed order, each with a stable name.

Growth adds adapters to a model that already has some, so the same plan's model can list
its LoRA weights in two orders: a grown model lists old slots before new ones in every
module, a model rebuilt from the plan (on resume) lists them in plan order. Training
therefore orders parameters by slot (plan order), then by module, and the optimizer's
state is saved and loaded by name (`<slot>:<module path>.lora_A`), never by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .update import prepare_for_update

_LORA_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
_PEFT_PREFIX = "base_model.model."


def parameter_key(name: str) -> str:
    """The stable name of one LoRA weight: '<slot>:<module path>.<lora part>', from peft's
    parameter name ('base_model.model.<module path>.lora_A.<slot>.weight'). Raises
    ValueError for a name that is not a LoRA weight."""
    parts = name.split(".")
    index = next((i for i, part in enumerate(parts) if part in _LORA_PARTS), None)
    if index is None or index + 1 >= len(parts):
        raise ValueError(f"{name!r} is not a LoRA parameter name")
    module = ".".join(parts[:index])
    module = module[len(_PEFT_PREFIX):] if module.startswith(_PEFT_PREFIX) else module
    rest = ".".join(parts[index + 2:])
    return f"{parts[index + 1]}:{module}.{parts[index]}" + (f".{rest}" if rest and rest != "weight" else "")


def slot_of(key: str) -> str:
    """The adapter slot of a `parameter_key`."""
    return key.split(":", 1)[0]


def named_lora_parameters(model: Any, slots: Sequence[str] = ()) -> list[tuple[str, nn.Parameter]]:
    """Every LoRA weight of `model` as (parameter_key, parameter): slots in `slots` order
    first (the rest after them, by name), each slot's weights in module order."""
    rank = {slot: index for index, slot in enumerate(slots)}
    found = [(parameter_key(name), param) for name, param in model.named_parameters() if "lora_" in name]
    order = sorted(range(len(found)), key=lambda i: (rank.get(slot_of(found[i][0]), len(rank)),
                                                     "" if slot_of(found[i][0]) in rank else slot_of(found[i][0]), i))
    return [found[i] for i in order]


def trainable_parameters(model: Any, slots: Sequence[str]) -> list[nn.Parameter]:
    """Make the model's LoRA weights trainable (`update.prepare_for_update`) and return them
    in the fixed order of `named_lora_parameters`: the same for a grown model and for one
    rebuilt from the grown plan, so gradient clipping sums in the same order."""
    prepare_for_update(model)
    return [param for _, param in named_lora_parameters(model, slots)]


def plan_built_order(model: Any, slots: Sequence[str]) -> list[str]:
    """The parameter_keys in the order a model freshly built from the plan of `slots` lists
    its LoRA weights (module by module, each module's slots in plan order): the positions
    of an optimizer state_dict that such a model's optimizer wrote."""
    rank = {slot: index for index, slot in enumerate(slots)}
    keys = [parameter_key(name) for name, _ in model.named_parameters() if "lora_" in name]
    place = {}  # '<module>.<part>' -> where it first appears
    for key in keys:
        place.setdefault(key.split(":", 1)[1], len(place))
    return sorted(keys, key=lambda key: (place[key.split(":", 1)[1]], rank.get(slot_of(key), len(rank)), slot_of(key)))
