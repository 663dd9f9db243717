"""torchrun support shared by both stages: process group, device, the few collectives used.

On GPU nodes the process group has two backends: NCCL for CUDA tensors (DDP's gradient
buckets) and gloo for CPU tensors (row counts, evaluation sums, barriers before any model
exists), because NCCL has no CPU path. Each rank binds its CUDA device from LOCAL_RANK
before the group starts, so NCCL communicators never all land on GPU 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import UsageError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(cuda: bool) -> str:
    """gloo always (CPU tensors); NCCL beside it for CUDA tensors when GPUs are present."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def bind_cuda_device(local_rank: int) -> None:
    """Make ``cuda:local_rank`` this process's current device (before any collective)."""
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UsageError(f"LOCAL_RANK {local_rank}: only {count} CUDA device(s) are visible; start torchrun with "
                         f"--nproc_per_node={count} or fewer")
    torch.cuda.set_device(local_rank)


def setup() -> Dist:
    """Join the process group torchrun describes; a single process needs none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        if cuda:
            bind_cuda_device(local_rank)
        dist.init_process_group(backend_for(cuda))
    return Dist(int(os.environ.get("RANK", "0")), world, local_rank)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def pick_device(local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks; CPU tensors travel over gloo, CUDA tensors over NCCL."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def patient_group(timeout: timedelta) -> object | None:
    """A gloo group of every rank whose waits last ``timeout`` rather than the default group's 30
    minutes, for ranks that wait on one rank's long work (rank 0 walking every shard's headers on
    object storage can take hours). Every rank makes it at the same point, before that work starts;
    None without a process group."""
    return dist.new_group(backend="gloo", timeout=timeout) if dist.is_initialized() else None


def barrier(group: object | None = None) -> None:
    """Wait for every rank (in ``group``, e.g. a ``patient_group``; the default group otherwise)."""
    if dist.is_initialized():
        dist.barrier(group=group)
