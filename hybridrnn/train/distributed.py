"""torchrun / DistributedDataParallel: process-group set-up and the few collectives the Trainer needs.

``torchrun --standalone --nproc_per_node=2 -m hybridrnn train CONFIG`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`init_distributed` reads them (gloo on CPU, NCCL on CUDA). Without them everything is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hybridrnn.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; other names as given."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but CUDA is not available here; use 'cpu' or 'auto'")
    return device


def init_distributed(device: torch.device) -> DistContext:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (idempotent)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op in a single process)."""
    if ctx.enabled and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_flag(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (so every process takes the same decision)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


class DDPModel(DistributedDataParallel):
    """DistributedDataParallel that also forwards attribute access to the wrapped model (``model.encoder``).

    The forward pass of ``training_step`` must still go through ``model(...)`` so that gradients are synchronised.
    """

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)
