"""Per-row adapter names -> every peft LoRA layer computing all rows' deltas in two matmuls.

peft's own mixed-adapter batches (`adapter_names=`) run, in every LoRA layer, a gather,
two small matmuls and a scatter per adapter present: with 4 adapters and 120 LoRA
layers that is ~3,000 small ops per decoding step, which on a CPU costs as much as
the base model itself. Here each layer stacks the A matrices of the adapters in the
batch, (sum of ranks, in), and the scaled B matrices, (out, sum of ranks), once per
call; a fixed (B, 1, sum of ranks) row mask keeps, for each row, only its own adapter:

    delta = ((x @ A_stack.T) * row_mask) @ B_stack.T        # x: (B, T, in)

The weights are read from peft's modules when the block starts (so training updates
show), nothing of peft's state changes, and leaving the block restores its forward.
Only vanilla LoRA on Linear layers is computed this way; `supports_stacking` says when
a model uses anything else (DoRA, LoRA biases, merged weights), so callers fall back to peft.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

BASE_ADAPTER = "__base__"  # peft's adapter_names entry for "no adapter"


def lora_layers(model: Any) -> list[Any]:
    from peft.tuners.lora.layer import LoraLayer

    return [module for module in model.modules() if isinstance(module, LoraLayer)]


def supports_stacking(model: Any, adapters: Sequence[str]) -> bool:
    """Whether every LoRA layer is a plain Linear LoRA for all of `adapters`."""
    from peft.tuners.lora.layer import Linear

    for module in lora_layers(model):
        if not isinstance(module, Linear) or module.merged or getattr(module, "fan_in_fan_out", False):
            return False
        for name in adapters:
            if name in module.lora_A and (name in module.lora_variant or module.lora_bias.get(name, False)):
                return False
    return True


@contextmanager
def stacked_lora_rows(model: Any, adapter_names: Sequence[str]) -> Iterator[None]:
    """Within the block, row i of every forward pass uses adapter `adapter_names[i]`
    ("__base__" for none). The batch must keep B = len(adapter_names) rows."""
    adapters = sorted({name for name in adapter_names if name != BASE_ADAPTER})
    patched = []
    try:
        for module in lora_layers(model):
            present = [name for name in adapters if name in module.lora_A]
            # Every layer is patched: one untouched would apply peft's active adapter to all rows.
            module.forward = _stacked_forward(module, present, adapter_names) if present else module.base_layer
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


def _stacked_forward(module: Any, present: Sequence[str], adapter_names: Sequence[str]) -> Any:
    # The stacks are cast to the base layer's dtype: in a bf16 model the deltas are then
    # computed in bf16 too (peft computes them in the adapters' fp32), which saves two
    # casts per layer and step; the base model's own bf16 rounding is larger anyway.
    dtype = module.base_layer.weight.dtype
    weights_a = [module.lora_A[name].weight for name in present]  # each (r, in)
    a_stack = torch.cat([w.float() for w in weights_a], dim=0)  # (R, in)
    weights_b = [module.lora_B[name].weight.float() * module.scaling[name] for name in present]  # each (out, r)
    b_stack = torch.cat(weights_b, dim=1)  # (out, R)
    row_mask = torch.zeros(len(adapter_names), 1, a_stack.shape[0], dtype=dtype, device=a_stack.device)
    offset = 0
    for name, weight in zip(present, weights_a):
        rows = [i for i, row_name in enumerate(adapter_names) if row_name == name]
        row_mask[rows, :, offset : offset + weight.shape[0]] = 1.0
        offset += weight.shape[0]
    a_t, b_t, base_layer = a_stack.t().to(dtype), b_stack.t().to(dtype), module.base_layer

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = base_layer(x, *args, **kwargs)
        mask = row_mask if x.dim() == 3 else row_mask[:, 0]
        return result + ((x.to(dtype) @ a_t) * mask) @ b_t

    return forward
