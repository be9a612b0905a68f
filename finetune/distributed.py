"""Which process of a multi-process run this is (``accelerate launch`` / torchrun), and one value for all.

Under ``accelerate launch`` every process runs ``train``; the environment says which one is which.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor
    from torch.nn import Module
    from transformers import Trainer


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


def sharded() -> bool:
    """This process is one of a sharded (FSDP) run: ``accelerate launch`` with the generated FSDP config sets
    ``ACCELERATE_USE_FSDP`` in every process it starts."""
    return world_size() > 1 and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def shard_on_cpu(trainer: Trainer) -> None:
    """Turn on accelerate's FSDP for a trainer whose processes are gloo processes on the CPU.

    accelerate selects FSDP only on an accelerator (its CPU processes become ``MULTI_CPU`` and drop the FSDP
    plugin); torch's ``fully_shard`` runs on the CPU with gloo all the same. Here the trainer's accelerator state is
    set to FSDP with the plugin accelerate builds from the launch's ``FSDP_*`` environment, so the sharding,
    sharded checkpoints and their resume are accelerate's own code path, as on GPUs. A no-op on GPUs."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if not sharded() or state.distributed_type != DistributedType.MULTI_CPU:
        return
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    trainer.is_fsdp_enabled = True


def _chunk_rows(rows: int, n: int, rank: int) -> int:
    """Rows of a ``rows``-row tensor that ``rank`` holds when FSDP2 shards it along its first dimension over
    ``n`` processes (``torch.chunk``: chunks of ceil(rows / n), the last ones shorter or empty)."""
    size = -(-rows // n)
    return max(0, min(rows, (rank + 1) * size) - min(rows, rank * size))


def base_param_bytes(model: Module, n: int) -> list[int]:
    """Bytes of the base model's parameters (LoRA excluded; a tied weight once) each of ``n`` processes holds
    once FSDP2 shards every parameter along its first dimension; one entry with the whole for ``n`` 1 (and for
    data parallel, which is every entry the same: the caller repeats it). Reads shapes only: a meta model works."""
    per_rank = [0] * n
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        shape = tuple(p.shape) or (1,)
        row = p.element_size() * (p.numel() // shape[0] if shape[0] else 0)
        for r in range(n):
            per_rank[r] += _chunk_rows(shape[0], n, r) * row
    return per_rank


def layout(model: Module, strategy: str) -> dict[str, object]:
    """The ``distributed`` field of the ``started`` event: the strategy, the world size, and the bytes of the
    base model's parameters each process holds (sharded: its shard; otherwise the whole) and in all."""
    n = world_size()
    total = sum(base_param_bytes(model, 1))
    per_rank = base_param_bytes(model, n) if strategy == "fsdp" else [total] * n
    return {"strategy": strategy, "world_size": n, "param_bytes_per_rank": per_rank, "param_bytes_total": total}


def gathered_adapter(model: Module) -> dict[str, Tensor] | None:
    """The trained (LoRA) weights of a sharded model, whole, on rank 0 (None on the others); every process must
    call it (it gathers). Only the trainable parameters travel: the frozen base stays sharded."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                 ignore_frozen_params=True))
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if is_main_process() else None
