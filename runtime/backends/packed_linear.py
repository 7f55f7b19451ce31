"""Frozen linear weights prepacked once for oneDNN: the matmuls of sampling on a CPU.

A plain `F.linear` on a CPU hands oneDNN the weight in torch's row-major layout on
every call. While decoding (8-16 rows a step) the same call from a weight reordered
once into oneDNN's blocked layout runs 1.3x faster for the base model's bf16 linears
(30 against 39 ms for 106 MB of weights), with bitwise the same results, and the fp32
output head over a 49k vocabulary 1.7x faster (25 against 42 ms a step at 16 rows;
fp32 sums in another order, within 2e-4). Packed weights are cached per weight tensor
(`PerWeight`), so a weight changed in place or given new data is packed again; they
cost one more copy of the frozen weights in memory.

Only inference uses them (the packed kernel has no backward): `packed_linears(model)`
routes every `nn.Linear` but the output head through its packed weight inside a
block, and `packed_linear(x, weight)` is the call for any frozen weight
(`lora_rows.fp32_output_head` uses it for the head when sampling). Anywhere oneDNN cannot pack a
weight (no oneDNN, an unsupported dtype), the plain call runs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DECODE_ROWS = 16  # the row count oneDNN's layout is chosen for; any count gives the same result

class PerWeight:
    """Values made from frozen tensors: each kept while its tensor lives and made again
    when the tensor changes in place (its version moves) or gets new data (`.to()`)."""

    def __init__(self, make: Callable[[torch.Tensor], Any]):
        self.make = make
        self._values: dict[int, tuple[tuple, Any]] = {}

    def __call__(self, weight: torch.Tensor) -> Any:
        key = id(weight)
        signature = (weight._version, weight.data_ptr(), weight.dtype, weight.shape)
        entry = self._values.get(key)
        if entry is not None and entry[0] == signature:
            return entry[1]
        if entry is None:
            weakref.finalize(weight, self._values.pop, key, None)
        with torch.inference_mode(False):  # a normal tensor, usable outside the block too
            value = self.make(weight.detach())
        self._values[key] = (signature, value)
        return value


def _pack(weight: torch.Tensor) -> torch.Tensor | None:
    """`weight` (out, in) in oneDNN's layout; None where it cannot be packed."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.bfloat16, torch.float32):
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, DECODE_ROWS)
    except RuntimeError:
        return None


packed = PerWeight(_pack)


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` from the packed weight, outside autograd; the plain
    call where the weight cannot be packed or a gradient is being recorded."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return F.linear(x, weight, bias)
    weight_packed = packed(weight)
    if weight_packed is None or x.dtype != weight.dtype:
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight_packed, bias, "none", [None], "")


@contextmanager
def packed_linears(model: nn.Module) -> Iterator[None]:
    """Inside the block every `nn.Linear` of `model` on a CPU but its output head runs
    `packed_linear`; one that records a gradient still takes the plain call."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    linears = [
        module for module in model.modules()
        if type(module) is nn.Linear and module is not head and module.weight.device.type == "cpu"
    ]
    for module in linears:
        module.forward = _packed_forward(module)
    try:
        yield
    finally:
        for module in linears:
            del module.forward


def _packed_forward(module: nn.Linear):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return packed_linear(x, module.weight, module.bias)

    return forward
