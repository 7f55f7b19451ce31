"""Per-row adapter names -> every peft LoRA layer computing all rows' deltas in two matmuls,
and the fp32 output head: the one numeric path that sampling and training share.

peft's own mixed-adapter batches (`adapter_names=`) run, in every LoRA layer, a gather,
two small matmuls and a scatter per adapter present: with 4 adapters and 120 LoRA
layers that is ~3,000 small ops per decoding step, which on a CPU costs as much as
the base model itself. Here each layer stacks the A matrices of the adapters in the
batch, (sum of ranks, in), and the scaled B matrices, (out, sum of ranks), once per
call; a fixed (B, 1, sum of ranks) row mask keeps, for each row, only its own adapter
(no mask where every row has the layer's one adapter):

    delta = ((x @ A_stack.T) * row_mask) @ B_stack.T        # x: (B, T, in), in fp32

The deltas are computed in fp32 (the adapters' dtype) whatever the base dtype, in
generation and in the update (their backward runs in the base's dtype, `_StackedDelta`);
the output head runs in fp32 on the base's hidden states in both (`fp32_output_head`
when sampling, `training.head_logprobs` in the update), so the sampler and the trained
policy differ only by the base model's own rounding. The stacks are built from peft's
weights when the block starts (so training updates show, and gradients flow back to them
when grad is on); nothing of peft's state changes, and leaving the block restores its
forward.
Only vanilla LoRA on Linear layers is computed this way; `supports_stacking` says when
a model uses anything else (DoRA, LoRA biases, merged weights), so callers fall back to peft.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from .packed_linear import PerWeight, packed_linear

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


def row_adapters(model: Any, names: Sequence[str], *, prefer_peft: bool = False) -> tuple[Any, dict[str, Any]]:
    """(context manager, forward kwargs) that give row i adapter `names[i]` ("__base__":
    none) in every forward pass inside the context: stacked rows where the model allows
    it, else (or with `prefer_peft`) peft's `adapter_names=`, which needs eval mode."""
    if not hasattr(model, "peft_config"):
        return nullcontext(), {}
    if not prefer_peft and supports_stacking(model, set(names) - {BASE_ADAPTER}):
        return stacked_lora_rows(model, names), {}
    return nullcontext(), {"adapter_names": list(names)}


@contextmanager
def stacked_lora_rows(model: Any, adapter_names: Sequence[str]) -> Iterator[None]:
    """Within the block, row i of every forward pass uses adapter `adapter_names[i]`
    ("__base__" for none). The batch must keep B = len(adapter_names) rows."""
    adapters = sorted({name for name in adapter_names if name != BASE_ADAPTER})
    as_fp32 = _LastFp32Copy()
    row_masks = _RowMasks(adapter_names)
    patched = []
    try:
        for module in lora_layers(model):
            present = [name for name in adapters if name in module.lora_A]
            # Every layer is patched: one untouched would apply peft's active adapter to all rows.
            # (A function, not the base Linear itself: assigning a Module would register it
            # as a child named "forward" and leave the class's forward in charge.)
            module.forward = _stacked_forward(module, present, row_masks, as_fp32) if present else _base_forward(module)
            patched.append(module)
        yield
    finally:
        as_fp32.last = None
        for module in patched:
            del module.forward  # back to the class's forward


class _LastFp32Copy:
    """x -> a detached fp32 copy of x, made once for consecutive calls on the same tensor
    (the q, k and v projections read one input: one cast)."""

    def __init__(self) -> None:
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.last is not None and self.last[0] is x:
            return self.last[1]
        self.last = (x, x.detach().float())
        return self.last[1]


class _RowMasks:
    """(B, 1, sum of ranks) masks that keep each row's own adapter's columns of the
    stacked LoRA, made once per (adapters, ranks) for all the layers that share them;
    None where every row uses the layer's one adapter (nothing to mask)."""

    def __init__(self, adapter_names: Sequence[str]) -> None:
        self.rows = {name: [i for i, row_name in enumerate(adapter_names) if row_name == name]
                     for name in set(adapter_names)}
        self.count = len(adapter_names)
        self.masks: dict[tuple, torch.Tensor] = {}

    def __call__(self, present: Sequence[str], ranks: Sequence[int], device: torch.device) -> torch.Tensor | None:
        if len(present) == 1 and len(self.rows[present[0]]) == self.count:
            return None
        key = (tuple(present), tuple(ranks), device)
        if key not in self.masks:
            mask = torch.zeros(self.count, 1, sum(ranks), dtype=torch.float32, device=device)
            offset = 0
            for name, rank in zip(present, ranks):
                mask[self.rows[name], :, offset : offset + rank] = 1.0
                offset += rank
            self.masks[key] = mask
        return self.masks[key]


def _base_forward(module: Any) -> Any:
    base_layer = module.base_layer

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return base_layer(x, *args, **kwargs)

    return forward


def _stacked_forward(module: Any, present: Sequence[str], row_masks: _RowMasks, as_fp32: _LastFp32Copy) -> Any:
    weights_a = [module.lora_A[name].weight for name in present]  # each (r, in)
    a_stack = torch.cat([w.float() for w in weights_a], dim=0)  # (R, in)
    weights_b = [module.lora_B[name].weight.float() * module.scaling[name] for name in present]  # each (out, r)
    b_stack = torch.cat(weights_b, dim=1)  # (out, R)
    row_mask = row_masks(present, [weight.shape[0] for weight in weights_a], a_stack.device)
    base_layer = module.base_layer

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = base_layer(x, *args, **kwargs)
        mask = None if row_mask is None else (row_mask if x.dim() == 3 else row_mask[:, 0])
        return result + _StackedDelta.apply(x, as_fp32(x), a_stack, b_stack, mask, result.dtype)

    return forward


class _StackedDelta(torch.autograd.Function):
    """x -> ((x @ A.T) * mask) @ B.T in fp32 (the adapters' dtype), returned in the base's
    dtype: the delta that sampling and the update both add to the base's output.

    Its backward runs in the gradient's dtype, the base's: in bf16, four bf16 matmuls
    (half the time of fp32 ones on a CPU) whose products reach the adapters' fp32
    gradients, as every gradient below the head already is a bf16 one. The forward, the
    policy itself, stays fp32. In fp32 the backward is autograd's own products."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, x_fp32: torch.Tensor, a_stack: torch.Tensor, b_stack: torch.Tensor,
                mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        projected = x_fp32 @ a_stack.t()  # (..., R)
        if mask is not None:
            projected = projected * mask
        ctx.save_for_backward(x, projected, a_stack, b_stack, mask)
        return (projected @ b_stack.t()).to(dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, projected, a_stack, b_stack, mask = ctx.saved_tensors
        dtype = grad.dtype
        grad_projected = grad @ b_stack.to(dtype)  # (..., R)
        if mask is not None:
            grad_projected = grad_projected * mask.to(dtype)
        grad_x = grad_projected @ a_stack.to(dtype) if ctx.needs_input_grad[0] else None
        grad_a = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_a = (_rows(grad_projected).t() @ _rows(x).to(dtype)).float()  # (R, in)
        if ctx.needs_input_grad[3]:
            grad_b = (_rows(grad).t() @ _rows(projected).to(dtype)).float()  # (out, R)
        return grad_x, None, grad_a, grad_b, None, None


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1, tensor.shape[-1])


@contextmanager
def fp32_output_head(model: Any, *, packed: bool = False) -> Iterator[None]:
    """Within the block the output head returns fp32 logits of the hidden states, computed
    once in fp32 (bf16 logits put errors of up to ~0.05 nats into log-probs).

    Its input is made contiguous first: after a prefill the model keeps only the last
    position, a strided view, for which torch's linear copies the whole (vocab x hidden)
    weight once per row (46x the cost on this CPU). The fp32 copy of a bf16 head is made
    once per weight (`fp32_copy`). With `packed` the head runs from a packed weight
    (`packed_linear`: fp32 sums in another order), as `training.head_logprobs` does.
    """
    head = model.get_output_embeddings()
    if head is None:
        yield
        return
    weight, bias = head.weight, head.bias
    weight_fp32 = fp32_copy(weight)
    bias_fp32 = None if bias is None else bias.detach().float()

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.contiguous()
        linear = packed_linear if packed else F.linear
        return linear(hidden.float(), weight_fp32, bias_fp32)

    head.forward = forward
    try:
        yield
    finally:
        del head.forward


@contextmanager
def head_skipped(model: Any) -> Iterator[Any]:
    """Within the block the model's output head returns its input, so a forward pass's
    `.logits` are the final hidden states; yields the head (for `head_logprobs`)."""
    head = model.get_output_embeddings()
    head.forward = _identity
    try:
        yield head
    finally:
        del head.forward


def _identity(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


fp32_copy = PerWeight(lambda weight: weight.float())  # a frozen weight's fp32 copy, made once

