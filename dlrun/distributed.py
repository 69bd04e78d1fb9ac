"""DistributedDataParallel under torchrun: the same config, one process per device.

`torchrun --nproc_per_node=N -m dlrun ...` (or `dlrun trainer.devices=N ...`, which starts it):
each rank trains on its share of every global batch, DDP averages the gradients, every rank
validates on the whole validation split (so all reach the same decisions), and only rank 0
writes the run folder.
"""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    import torch.distributed as dist

    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def setup(device_type: str) -> None:
    """Join the process group (gloo on CPU, NCCL on GPUs) when started by torchrun."""
    import torch
    import torch.distributed as dist

    if world_size() <= 1 or dist.is_initialized():
        return
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")


def broadcast(value):
    """Rank 0's value, on every rank."""
    import torch.distributed as dist

    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(tensor):
    import torch.distributed as dist

    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    import torch.distributed as dist

    if active():
        dist.barrier()


def teardown() -> None:
    import torch.distributed as dist

    if active():
        dist.destroy_process_group()
