"""Multi-process data parallel through torch.distributed, launched by `torchrun`.

`torchrun --nproc_per_node N -m ddpmkit.cli train ...` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; we initialise one process group (gloo on CPU, NCCL on CUDA) and
nothing else: torchrun handles process start, rendezvous across machines and restarts.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that torchrun describes in the environment (no-op for 1 process)."""
    if not launched_by_torchrun():
        return DistInfo()
    restarted = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
    if restarted and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun reuses the first round's store, where dead workers' addresses remain
        warnings.warn("restarted by torchrun on its shared store: if ranks fail to connect, set "
                      "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun", stacklevel=2)  # fmt: skip
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
