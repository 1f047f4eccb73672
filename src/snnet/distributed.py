"""Process groups under torchrun: one process per device, CPU (gloo) or CUDA (nccl)."""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from .errors import SNNetError

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


DEVICES = ("cpu", "cuda")


def check_device(device: str | None) -> None:
    """``--device``: cpu, or cuda where this process has CUDA; None picks later."""
    if device is not None and device not in DEVICES:
        raise SNNetError(f"--device must be {' or '.join(DEVICES)} (torchrun picks the GPU of each process), got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise SNNetError("--device cuda: no CUDA device is available to this process")


def local_device(device: str | None, default: str = "cpu") -> torch.device:
    """The device of a one-process command (profile, export, demo): ``device``, checked, else ``default``
    ("auto": CUDA when available)."""
    check_device(device)
    if device is None:
        device = ("cuda" if torch.cuda.is_available() else "cpu") if default == "auto" else default
    return torch.device(device)


def init_distributed(device: str | None = None) -> DistEnv:
    """Join the torchrun process group if there is one; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    check_device(device)
    if device == "cuda" and local >= torch.cuda.device_count():
        raise SNNetError(f"--device cuda: process {local} of this node has no GPU "
                         f"(this node has {torch.cuda.device_count()}; lower --nproc_per_node)")
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistEnv(rank, world, local, dev)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def all_gather_objects(obj):
    """Every rank's ``obj`` as a list (just ``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], T], env: DistEnv) -> T | None:
    """Run ``fn`` on rank 0 only; an SNNetError it raises is raised on every rank, so none is left waiting."""
    result, error = None, None
    if env.is_main:
        try:
            result = fn()
        except SNNetError as e:
            error = str(e)
    error = all_gather_objects(error)[0]
    if error:
        raise SNNetError(error)
    return result


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift apart where BatchNorm is not synchronised)."""
    if dist.is_available() and dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b, src=0)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def autocast(device: torch.device, enabled: bool, dtype: str = "float16"):
    """float16 autocast on CUDA (as the reference trains), nothing on CPU; bfloat16 autocast on CUDA and CPU."""
    if enabled and dtype == "bfloat16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def grad_scaling(device: torch.device, enabled: bool, dtype: str = "float16") -> bool:
    """Whether ``autocast`` on ``device`` needs its losses scaled: float16 on CUDA only."""
    return enabled and dtype == "float16" and device.type == "cuda"
