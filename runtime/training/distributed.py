"""torchrun's environment -> data-parallel training: ranks, input shards, gathered rewards, averaged gradients.

Under `torchrun --nproc-per-node N` every rank runs the whole training loop on its own
share of each step's inputs (whole inputs, so a GRPO group never straddles ranks),
then the ranks agree on everything that must be global:

  * rewards are all-gathered, so advantages (a batch-mean baseline, say) see the step;
  * the loss normalisers (tokens, rows) are summed over ranks, and each rank's loss is
    scaled by the world size, so that the *average* of the ranks' gradients is exactly
    the gradient a single process would get on all the step's samples;
  * gradients are averaged before clipping and the optimiser step, so every rank
    clips by the same norm and takes the same step: the adapters stay identical;
  * rank 0 alone writes metrics and checkpoints; the others wait at a barrier;
  * at the end every rank leaves together (`shutdown`).

Without torchrun (no WORLD_SIZE, or a world of 1) `current()` is None, torch.distributed
is never initialised, and training runs exactly as a single process.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

_group: DataParallel | None = None


class DataParallel:
    """This process's place in a data-parallel job (the default process group)."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank = rank
        self.world_size = world_size
        self.device = device  # where collective tensors live: the GPU for nccl, the CPU for gloo
        self._synced: set[int] = set()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, count: int) -> range:
        """This rank's contiguous share of `count` items; shares differ by at most one, and
        the shares of ranks 0, 1, ... concatenate to range(count) in order."""
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (any picklable object), in rank order."""
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of each rank's numbers (float64)."""
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        """True when `flag` is true on at least one rank."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def average_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over ranks, in one all-reduce.

        A parameter no rank gave a gradient keeps grad None (as in a single process, where
        AdamW then skips it); one that some rank did not touch counts as zero there.
        """
        if not params:
            return
        sizes = [param.numel() for param in params]
        flat = torch.zeros(sum(sizes) + len(params), dtype=torch.float32, device=self.device)
        offset = 0
        for param, size in zip(params, sizes, strict=True):
            if param.grad is not None:
                flat[offset : offset + size] = param.grad.reshape(-1).to(self.device, torch.float32)
            offset += size
        flat[offset:] = torch.tensor([param.grad is not None for param in params], dtype=torch.float32)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for index, (param, size) in enumerate(zip(params, sizes, strict=True)):
            if flat[sum(sizes) + index] == 0:
                param.grad = None
            else:
                grad = (flat[offset : offset + size] / self.world_size).reshape(param.shape)
                param.grad = grad.to(param.device, param.dtype)
            offset += size

    def broadcast_once(self, params: Sequence[nn.Parameter]) -> None:
        """Give every rank rank 0's parameter values, once per parameter list (at the first
        step of a session): adapters start identical even if their random init was not."""
        key = id(params[0]) if params else 0
        if key in self._synced:
            return
        with torch.no_grad():
            for param in params:
                data = param.data.to(self.device)
                dist.broadcast(data, src=0)
                param.data.copy_(data)
        self._synced.add(key)

    def barrier(self) -> None:
        dist.barrier()


def shutdown() -> None:
    """Leave the job at the end of a run that succeeded on every rank: wait for all of
    them, then destroy the process group. A process that exits with the group alive can
    hang or abort in gloo's teardown. Nothing to do outside torchrun. (After a failure,
    skip it: the barrier would wait for ranks that torchrun is about to stop.)"""
    global _group
    if _group is None:
        return
    dist.barrier()
    dist.destroy_process_group()
    _group = None


def init_from_env() -> DataParallel | None:
    """Join the job torchrun started (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the
    environment): nccl with one GPU per local rank when CUDA is available, else gloo.
    Returns None, initialising nothing, outside torchrun or in a world of one. Call it
    before the model is loaded, so that a GPU rank loads onto its own GPU."""
    global _group
    if _group is not None:
        return _group
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    rank = int(os.environ["RANK"])
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    _group = DataParallel(rank, world_size, device)
    return _group


def current() -> DataParallel | None:
    """The data-parallel group of this process (initialised on first use), or None."""
    return init_from_env()


def is_main() -> bool:
    """True on rank 0, and in a process that is not part of a job."""
    group = current()
    return group is None or group.is_main


def rank_seed(seed: int, rank: int) -> int:
    """A rollout seed for `rank`: rank 0 keeps `seed` (a single process samples what it
    always did); other ranks get unrelated seeds, so their samples are independent."""
    if rank == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:rank{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (2**62)
