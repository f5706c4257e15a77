"""Data parallelism through torch.distributed, started by torchrun (never our own launcher).

`torchrun --nproc_per_node 2 -m ssmgraph train ...` sets RANK/WORLD_SIZE/MASTER_ADDR; we
join the process group (gloo on CPU, NCCL on CUDA) and wrap the model in
DistributedDataParallel, or shard it (``strategy: fsdp``, ssmgraph.train.fsdp). One process
needs none of this and gets a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssmgraph.train.fsdp import shard

CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = CPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init() -> DistInfo:
    """Join the process group torchrun describes (idempotent); one process: nothing to do."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return current()


def current() -> DistInfo:
    if not dist.is_available() or not dist.is_initialized():
        return DistInfo(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistInfo(dist.get_rank(), dist.get_world_size(), device)


def wrap(model: nn.Module, info: DistInfo, strategy: str = "ddp") -> nn.Module:
    """The module several processes train: DDP's replica, or with ``fsdp`` the model sharded in place."""
    if info.world_size == 1:
        return model
    if strategy == "fsdp":
        return shard(model)
    # Tap projections (``taps.*``) serve alignment losses; the task loss never reaches them, and
    # DDP must be told that some parameters get no gradient.
    unused = any(name.startswith("taps.") for name, _ in model.named_parameters())
    return DistributedDataParallel(
        model, device_ids=[info.device.index] if info.device.type == "cuda" else None, find_unused_parameters=unused
    )


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world_size > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()
