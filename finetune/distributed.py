"""Which process of a multi-process run this is (``accelerate launch`` / torchrun), and one value for all.

Under ``accelerate launch`` every process runs ``train``; the environment says which one is which.
"""

from __future__ import annotations

import os


def is_main_process() -> bool:
    """Under ``accelerate launch`` / torchrun every process runs ``train``; only global rank 0 writes the run
    folder (config, events, adapter), so a 2-GPU run leaves one event per step, not two."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank0_decides(value: str | None) -> str | None:
    """Rank 0's value on every process: a DDP rank that stops alone leaves the others waiting forever in the
    next all-reduce, and the stop file / time budget can read differently on each rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
