"""Process-group set-up and model wrapping: one process, DDP, or FSDP2 under `torchrun`.

Everything here is device-agnostic: `torchrun` on CPU uses gloo, on GPUs NCCL. The wrapping
follows torchtitan: FSDP2 `fully_shard` on every decoder layer, then on the root, so each
layer's parameters are gathered just before it runs and freed after (ZeRO-3-style).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def resolve_device(name: str, local_rank: int) -> torch.device:
    """`auto` = this rank's GPU when CUDA is there, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_world(device: str = "auto", backend: str | None = None) -> World:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if resolved.type == "cuda" else "gloo"))
    return World(rank, size, local_rank, resolved)


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, world: World, op: str = "sum") -> torch.Tensor:
    """In place across ranks (a no-op in one process); returns the tensor."""
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
