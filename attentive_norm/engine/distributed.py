"""Process-group set-up from the ``torchrun`` environment, and the few collectives the loop needs.

One process per GPU (or several CPU processes with gloo): ``torchrun`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``; without them the run is a single process. NCCL on GPUs,
gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .config import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job and its device."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def cpus(self) -> int:
        """CPU cores available to this process: the machine's, shared among its processes."""
        total = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, total // self.local_world_size)


def setup(device: str = "auto") -> DistEnv:
    """Read the launcher's environment, pick the device and join the process group (once)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(minutes=30),
            device_id=dev if use_cuda else None,
        )
    return DistEnv(rank, world_size, local_rank, local_world_size, dev)


def elastic_restart_count() -> int:
    """How often ``torchrun`` has restarted this job (0: first attempt, or no ``torchrun``)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def restarts_share_the_store() -> bool:
    """Whether torchrun may restart this job while it shares its rendezvous store with the workers: a
    restarted worker can then read the previous attempt's addresses and fail to connect or hang
    (pytorch/pytorch#135712); ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` for torchrun avoids it."""
    restartable = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
    return restartable and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over all processes (the tensor itself in a single-process run)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def on_any_process(flag: bool | torch.Tensor, device: torch.device) -> bool:
    """Whether ``flag`` holds on some process: the same answer everywhere (one tiny all-reduce)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return bool(flag)
    value = flag if isinstance(flag, torch.Tensor) else torch.tensor(flag, device=device)
    return bool(all_reduce_sum(value.reshape(1).to(torch.float64)).item() > 0)


def all_gather_objects(obj: object) -> list[object]:
    """Every process's ``obj``, in rank order."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every process."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
