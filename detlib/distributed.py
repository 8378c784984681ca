"""Small helpers for training on several processes with ``DistributedDataParallel``.

A job is started by ``torchrun`` (or ``python -m torch.distributed.run``), which launches one
process per device and tells each its place through environment variables (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). The helpers here read them,
join the process group, give each process its shard of the data, and sum a tensor over the
processes. Run without ``torchrun`` they describe a single process and need no process group,
so the same training script runs either way.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DistributedSampler

from detlib._checks import check_positive_int

__all__ = [
    "all_reduce_sum",
    "destroy_distributed",
    "DistributedContext",
    "init_distributed",
    "launched_by_torchrun",
    "shard_batches",
]

BACKENDS = ("gloo", "nccl")


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job.

    Args:
        rank: this process's index among all processes, ``0 <= rank < world_size``.
        local_rank: its index among the processes of its machine (picks its GPU).
        world_size: the number of processes.
        device: the device this process trains on.
        backend: ``"gloo"`` or ``"nccl"``, or ``None`` when no process group was started.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, evaluates and writes checkpoints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether the environment describes a distributed job (``WORLD_SIZE`` and ``RANK`` set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init_distributed(backend: str | None = None) -> DistributedContext:
    """Join the process group described by ``torchrun``'s environment variables.

    Args:
        backend: ``"nccl"`` (one GPU per process) or ``"gloo"`` (CPU); by default ``"nccl"``
            when CUDA is available, ``"gloo"`` otherwise.

    Returns:
        The process's :class:`DistributedContext`. Without ``torchrun``'s variables, a single
        process (rank 0 of 1) on ``cuda`` when available, and no process group is started.

    Raises:
        ValueError: for an unknown backend, or ``"nccl"`` without CUDA.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"init_distributed: backend must be one of {BACKENDS}, got {backend!r}")
    cuda = torch.cuda.is_available()
    if backend == "nccl" and not cuda:
        raise ValueError("init_distributed: backend 'nccl' needs CUDA, which is not available")
    if not launched_by_torchrun():
        return DistributedContext(device=torch.device("cuda" if cuda else "cpu"))
    backend = backend or ("nccl" if cuda else "gloo")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # before joining: NCCL binds to the current device
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return DistributedContext(rank, local_rank, world_size, device, backend)


def destroy_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over all processes (a new tensor; ``tensor`` itself when there is
    no process group). Every process must call it, in the same order: it is a collective."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def shard_batches(
    num_items: int,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
) -> list[list[int]]:
    """This process's batches of one epoch: dataset indices, ``batch_size`` per batch.

    The indices come from :class:`torch.utils.data.DistributedSampler` with ``drop_last=True``:
    every epoch a permutation seeded by ``seed + epoch`` (the same on every process) is cut
    into ``world_size`` disjoint, equally long shards, and process ``rank`` takes every
    ``world_size``-th index from position ``rank`` on. A last incomplete batch is dropped, so
    every process takes the same number of steps, each on ``batch_size`` images.

    Returns:
        ``(num_items // world_size) // batch_size`` lists of ``batch_size`` indices.
    """
    fn = "shard_batches"
    num_items = check_positive_int(fn, "num_items", num_items)
    batch_size = check_positive_int(fn, "batch_size", batch_size)
    world_size = check_positive_int(fn, "world_size", world_size)
    if not (isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"{fn}: rank must be an int in [0, {world_size}), got {rank!r}")
    if not (isinstance(epoch, int) and epoch >= 0):
        raise ValueError(f"{fn}: epoch must be an int >= 0, got {epoch!r}")
    sampler = DistributedSampler(
        range(num_items),
        num_replicas=world_size,
        rank=rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    indices = list(sampler)
    return [
        indices[start : start + batch_size]
        for start in range(0, len(indices) - batch_size + 1, batch_size)
    ]
