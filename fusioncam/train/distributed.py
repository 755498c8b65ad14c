"""Where a process trains under torchrun: joining the process group, its rank, and gathers across ranks.

Under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK set) every process trains on its own slice of each global batch;
alone, every function here is the identity on one rank, so the training code has no single-process branch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fusioncam.api import pick_device


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised group (a group of one gathers nothing)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the summed gradient of its own slice.

    Every rank's loss reads every slice, so the gradient of a slice is the sum of what all ranks send back: an
    all-reduce, then this rank's part. (`torch.distributed.nn.functional.all_gather` does the same but is
    deprecated since torch 2.13 and warns on every call.)
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        rank, world = rank_and_world()
        ctx.rank, ctx.world = rank, world
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad.chunk(ctx.world)[ctx.rank]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """[b, ...] on each rank → [world·b, ...] in rank order, differentiable; the tensor itself on one process."""
    return _GatherWithGrad.apply(tensor) if is_distributed() else tensor


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """`gather_with_grad` without the gradient (ids, masks, keys)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of `values` over all ranks (every rank gets it), so rank 0 reports the whole run's losses."""
    if not is_distributed():
        return values
    dist.all_reduce(values)
    return values / dist.get_world_size()


def pad_to_global_length(tensors: Sequence[torch.Tensor], pad_values: Sequence[int]) -> list[torch.Tensor]:
    """Pad [b, L_r] token tensors to the longest L of all ranks, so they can be gathered (padding is masked)."""
    if not is_distributed():
        return list(tensors)
    length = torch.tensor(tensors[0].shape[1], device=tensors[0].device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    extra = int(length) - tensors[0].shape[1]
    return [F.pad(tensor, (0, extra), value=value) for tensor, value in zip(tensors, pad_values, strict=True)]


def barrier() -> None:
    """Wait for every rank (no-op alone), e.g. so that no rank returns before rank 0's files exist."""
    if is_distributed():
        dist.barrier()


@dataclass(frozen=True)
class Launch:
    """Where this process runs: its rank among `world` processes, its device, and whether it set up the group."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Leave the group this process set up; one the caller initialised is the caller's to destroy."""
        if self.owns_group:
            dist.destroy_process_group()


def launch(device_name: str) -> Launch:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA), or run alone without one.

    A group the caller already initialised is used as it is and left for the caller to destroy.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and device.type not in ("cpu", "cuda"):
        raise ValueError(f"distributed training runs on CPU (gloo) or CUDA (NCCL), not on {device.type}")
    owns_group = world > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = rank_and_world()
    return Launch(rank, world, device, owns_group)
