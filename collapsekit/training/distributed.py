"""Data-parallel plumbing for fine-tuning under torchrun: process group, data shards, identical masks, rank 0 writes.

Under `torchrun --nproc-per-node N` (WORLD_SIZE > 1 in the environment) the
process group is initialised from the environment variables torchrun sets
(NCCL on GPUs, gloo on CPU) and every rank trains a DistributedDataParallel
replica on its DistributedSampler shard. Without WORLD_SIZE everything here is
a no-op, so one code path serves both.
"""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import TensorDataset

from collapsekit.training.device import resolve_device
from collapsekit.errors import CollapsekitError


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among `world_size` processes and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None when not distributed

    @property
    def is_main(self) -> bool:
        """True on the one process that writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    """WORLD_SIZE from the environment (1 when unset): > 1 means torchrun started us."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise CollapsekitError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def setup(device="auto") -> Context:
    """The Context of this process, initialising the process group from torchrun's env vars when WORLD_SIZE > 1.

    The device follows `device` ("auto": CUDA when present); with CUDA each rank
    takes `cuda:LOCAL_RANK`. A group initialised earlier (by the caller) is reused;
    one initialised here is destroyed at exit.
    """
    world = env_world_size()
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return Context(0, 1, 0, resolve_device(device), None)
    if not dist.is_available():
        raise CollapsekitError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
        atexit.register(_destroy)
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend())


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """`model` as a DistributedDataParallel replica when distributed (it broadcasts rank 0's weights), else itself."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shard(dataset: TensorDataset, ctx: Context, epoch: int, seed: int) -> TensorDataset:
    """This rank's share of `dataset` for `epoch` (DistributedSampler: shuffled, equal sizes across ranks)."""
    if not ctx.distributed:
        return dataset
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    index = torch.tensor(list(iter(sampler)), dtype=torch.long)
    return TensorDataset(*(t[index] for t in dataset.tensors))


def broadcast_masks(masks: dict[str, torch.Tensor], ctx: Context) -> dict[str, torch.Tensor]:
    """`masks` as rank 0 holds them, on every rank (same names and shapes everywhere is a precondition)."""
    if not ctx.distributed:
        return masks
    names = sorted(masks)
    _check_same_names(names, ctx)
    out = {}
    for name in names:
        # Gloo and NCCL broadcast numbers, not bools: carry the mask as uint8.
        buf = masks[name].to(device=_comm_device(ctx), dtype=torch.uint8).contiguous()
        dist.broadcast(buf, src=0)
        out[name] = buf.to(device=masks[name].device, dtype=torch.bool)
    return out


def _check_same_names(names: list[str], ctx: Context) -> None:
    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, names)
    if any(g != names for g in gathered):
        raise CollapsekitError("ranks disagree on which parameters are masked; every rank must prune the same model")


def mean(values: list[float], ctx: Context) -> list[float]:
    """Elementwise mean of `values` over all ranks (itself when not distributed)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device(ctx))
    dist.all_reduce(t)
    return (t / ctx.world_size).tolist()


def barrier(ctx: Context) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if ctx.distributed:
        dist.barrier()


def _comm_device(ctx: Context) -> torch.device:
    return ctx.device if ctx.backend == "nccl" else torch.device("cpu")


__all__ = ["Context", "setup", "wrap", "shard", "broadcast_masks", "mean", "barrier", "env_world_size"]
