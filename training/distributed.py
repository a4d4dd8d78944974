"""DistributedDataParallel plumbing for ``torchrun --nproc_per_node N -m training.train``.

A process joins a process group only when ``WORLD_SIZE`` > 1 (set by torchrun); otherwise
everything here degrades to single-process no-ops.  Policy: every rank trains on its shard
(DistributedSampler); rank 0 alone evaluates, writes checkpoints, logs and the artifact while
the others wait at a barrier.  CPU runs use the gloo backend.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str = "gloo", timeout_min: float = 60.0) -> DistInfo:
    """Join the process group described by torchrun's env vars (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://",
                                timeout=timedelta(minutes=timeout_min))
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    log.info("DDP rank %d/%d (%s)", info.rank, info.world_size, backend)
    return info


def cleanup() -> None:
    """Leave the process group together: every rank waits for the others before tearing gloo
    down, so no rank exits while a peer's connection threads still expect it (a rank that
    left early made the other abort with 'terminate called without an active exception')."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; fine for configs, vocabularies, arrays)."""
    if not info.enabled:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks (for logging the loss); a detached copy."""
    value = value.detach().clone()
    if info.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device,
               find_unused: bool = False, ignore: Sequence[str] = ()) -> nn.Module:
    """DDP-wrap for several processes (parameters and buffers are broadcast from rank 0).
    ``ignore``: parameter names DDP neither broadcasts nor averages (a sharded classifier's
    rows, different on every rank)."""
    if not info.enabled:
        return model
    if ignore:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(ignore))
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model
