"""The torchrun environment: rank, world size, the process group, and the few collectives the engine needs.

`torchrun --nproc_per_node=N -m nanogpt train ...` starts N copies of the CLI with RANK, LOCAL_RANK and
WORLD_SIZE set. Each process drives one device (cuda:LOCAL_RANK on GPUs; the CPU with gloo otherwise),
the engine wraps its model in DistributedDataParallel, and only rank 0 writes files and prints.
Without torchrun every helper answers for a single process (rank 0 of 1) and the collectives are
no-ops, so the engine has one code path.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import TrainConfig


def under_torchrun() -> bool:
    """True when launched by torchrun (it sets RANK, LOCAL_RANK and WORLD_SIZE for every process)."""
    return all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


def rank() -> int:
    """Global rank of this process (0 without torchrun)."""
    return int(os.environ.get("RANK", "0")) if under_torchrun() else 0


def local_rank() -> int:
    """Rank of this process on its machine, i.e. which GPU it drives (0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if under_torchrun() else 0


def world_size() -> int:
    """Number of processes training together (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if under_torchrun() else 1


def is_main() -> bool:
    """Only the main process (rank 0) writes checkpoints and prints progress."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """The device this process drives: under torchrun a CUDA device becomes cuda:LOCAL_RANK."""
    if device.type == "mps" and world_size() > 1:
        from .errors import UserError

        raise UserError(
            "torchrun with more than one process needs CUDA or the CPU (gloo cannot use Apple MPS); "
            "use --device cpu"
        )
    if device.type != "cuda" or not under_torchrun():
        return device
    index = local_rank() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        from .errors import UserError

        raise UserError(
            f"LOCAL_RANK {local_rank()} has no GPU: this machine has {torch.cuda.device_count()} "
            "(use --nproc_per_node at most the number of GPUs)"
        )
    torch.cuda.set_device(index)  # so NCCL and every later allocation use this process's own GPU
    return torch.device("cuda", index)


def init_process_group(device: torch.device | str) -> None:
    """Join the torchrun process group (NCCL on CUDA, gloo otherwise); a no-op for a single process."""
    if not under_torchrun():
        return
    import torch.distributed as dist

    if dist.is_initialized():
        return
    device = local_device(torch.device(device))
    if device.type == "cuda":
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")
    atexit.register(destroy_process_group)  # leave the group cleanly however the CLI ends


def is_initialized() -> bool:
    """True when a process group is up (only under torchrun)."""
    if not under_torchrun():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def destroy_process_group() -> None:
    """Leave the process group cleanly at the end of a run (safe to call twice)."""
    if is_initialized():
        import torch.distributed as dist

        dist.destroy_process_group()


def _wire(device: torch.device) -> torch.device:
    """Where collective tensors live: the GPU for NCCL, the CPU for gloo."""
    return device if device.type == "cuda" else torch.device("cpu")


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's `value` on every rank (e.g. a random seed that all ranks must share)."""
    if not is_initialized():
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=_wire(device))
    dist.broadcast(t, src=0)
    return int(t.item())


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar tensor over all ranks (SUM then divide: gloo has no AVG in older torch)."""
    if not is_initialized():
        return value
    import torch.distributed as dist

    total = value.detach().to(_wire(value.device), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one, so that all ranks take the same branch."""
    if not is_initialized():
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_wire(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def keep_effective_batch(
    train_cfg: TrainConfig, saved: TrainConfig, saved_world: int, explicit: Collection[str], stem: Path
) -> tuple[TrainConfig, str | None]:
    """On resume with another number of processes, adjust --grad-accum to keep the effective batch.

    --grad-accum is per process (the effective batch is batch x grad_accum x world size), so a checkpoint
    saved by 8 processes x 1 resumes on 2 processes with 4 and on one device with 8, and the run goes on
    as if nothing had changed. An explicit --grad-accum, or a --batch-size other than the saved one, wins;
    so does a world size that does not divide the saved batch (then the effective batch changes).
    `saved`, `saved_world`: the checkpoint's settings and world size. Returns the settings and a note for
    the user when it changed (or could not keep) the batch.
    """
    world = world_size()
    if (
        saved_world == world
        or "grad_accum" in explicit
        or (train_cfg.batch_size, train_cfg.grad_accum) != (saved.batch_size, saved.grad_accum)
    ):
        return train_cfg, None
    sequences = saved.batch_size * saved.grad_accum * saved_world
    if (saved.grad_accum * saved_world) % world:
        return train_cfg, (
            f"note: checkpoint {stem} was trained with {sequences} sequences per step on {_procs(saved_world)}; "
            f"{world} processes cannot keep that with --batch-size {saved.batch_size}, "
            "so the effective batch "
            f"is now {saved.batch_size * saved.grad_accum * world}"
        )
    grad_accum = saved.grad_accum * saved_world // world
    note = (
        f"note: checkpoint {stem} was trained on {_procs(saved_world)} x "
        f"{saved.grad_accum} accumulation; using --grad-accum {grad_accum} on {world} to keep its effective "
        f"batch of {sequences} sequences"
    )
    return dataclasses.replace(train_cfg, grad_accum=grad_accum), note


def _procs(n: int) -> str:
    return f"{n} process" + ("es" if n != 1 else "")
