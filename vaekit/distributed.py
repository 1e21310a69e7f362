"""Multi-process training through PyTorch's own launcher (torchrun) and DistributedDataParallel.

`torchrun --nproc_per_node=N -m vaekit train ...` sets RANK/WORLD_SIZE/LOCAL_RANK and a rendezvous;
this module reads them, starts the process group (gloo on CPU, nccl on CUDA) and offers the few
collective operations the trainer needs. With no such variables everything is a single process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import torch
import torch.distributed as dist


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> None:
    """Join the process group started by torchrun (no-op in a single process)."""
    if world_size() == 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(obj: Any) -> Any:
    """Rank 0's value of `obj`, on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def launch(nproc: int, argv: list[str]) -> int:
    """Run `vaekit <argv>` under torchrun with `nproc` processes on this machine; returns the exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.call([*command, "-m", "vaekit", *argv])
