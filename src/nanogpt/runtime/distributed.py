"""The torchrun environment: rank, world size, the process group, and the few collectives the engine needs.

`torchrun --nproc_per_node=N -m nanogpt train ...` starts N copies of the CLI with RANK, LOCAL_RANK and
WORLD_SIZE set. Each process drives one device (cuda:LOCAL_RANK on GPUs; the CPU with gloo otherwise),
the engine wraps its model in DistributedDataParallel (or with --shard shards it with FSDP2: sharding.py),
and only rank 0 writes files and prints.
Without torchrun every helper answers for a single process (rank 0 of 1) and the collectives are
no-ops, so the engine has one code path.
"""

from __future__ import annotations

import atexit
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # loaded by the functions that need it: the CLI reads the rank without loading torch
    import torch


def under_torchrun() -> bool:
    """True when launched by torchrun (it sets RANK, LOCAL_RANK and WORLD_SIZE for every process)."""
    return all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


def torchrun_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) as torchrun set them; (0, 0, 1) without torchrun. UserError in one line
    when they are not what torchrun sets (whole numbers, each rank below the world size) or the rendezvous
    address that torch.distributed reads (MASTER_ADDR, MASTER_PORT) is missing: set by hand, they made int()
    or torch's env:// init raise deep inside the start of a run."""
    if not under_torchrun():
        return 0, 0, 1
    from ..errors import UserError

    how = "torchrun sets these; unset RANK, LOCAL_RANK and WORLD_SIZE to run in one process"
    values = []
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        raw = os.environ[name]
        if not raw.strip().isdigit() or len(raw.strip()) > 9:
            raise UserError(f"{name}={raw[:40]!r} in the environment is not a whole number: {how}")
        values.append(int(raw))
    rank_, local, world = values
    if world < 1 or rank_ >= world or local >= world:
        raise UserError(f"RANK={rank_}, LOCAL_RANK={local} and WORLD_SIZE={world} in the environment: each rank "
                        f"must be below the world size: {how}")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name, "").strip()]
    port = os.environ.get("MASTER_PORT", "").strip()
    if missing or not (port.isdigit() and 0 < int(port) < 65536):
        what = f"{' and '.join(missing)} not set" if missing else f"MASTER_PORT={port[:40]!r} is not a port"
        raise UserError(f"RANK, LOCAL_RANK and WORLD_SIZE are set but {what}: torchrun sets all of them; "
                        "unset RANK, LOCAL_RANK and WORLD_SIZE to run in one process")
    return rank_, local, world


def rank() -> int:
    """Global rank of this process (0 without torchrun); UserError when torchrun's variables are junk."""
    return torchrun_env()[0]


def local_rank() -> int:
    """Rank of this process on its machine, i.e. which GPU it drives (0 without torchrun)."""
    return torchrun_env()[1]


def world_size() -> int:
    """Number of processes training together (1 without torchrun)."""
    return torchrun_env()[2]


def is_main() -> bool:
    """Only the main process (rank 0) writes checkpoints and prints progress. Read from RANK and WORLD_SIZE
    alone: an environment without MASTER_ADDR still tells who speaks, and one whose ranks are no numbers, or
    none below the world size, has no rank 0, so that every process says the line refusing it (torchrun_env)."""
    if not under_torchrun():
        return True
    raw, world = os.environ["RANK"].strip(), os.environ["WORLD_SIZE"].strip()
    return not (raw.isdigit() and world.isdigit() and int(raw) < int(world)) or int(raw) == 0


def local_device(device: torch.device) -> torch.device:
    """The device this process drives: under torchrun a CUDA device becomes cuda:LOCAL_RANK."""
    import torch

    if device.type == "mps" and world_size() > 1:
        from ..errors import UserError

        raise UserError(
            "torchrun with more than one process needs CUDA or the CPU (gloo cannot use Apple MPS); "
            "use --device cpu"
        )
    if device.type != "cuda" or not under_torchrun():
        return device
    index = local_rank() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        from ..errors import UserError

        raise UserError(
            f"LOCAL_RANK {local_rank()} has no GPU: this machine has {torch.cuda.device_count()} "
            "(use --nproc_per_node at most the number of GPUs)"
        )
    torch.cuda.set_device(index)  # so NCCL and every later allocation use this process's own GPU
    return torch.device("cuda", index)


def init_process_group(device: torch.device | str) -> None:
    """Join the torchrun process group (NCCL on CUDA, gloo otherwise); a no-op for a single process."""
    import torch

    if not under_torchrun():
        return
    torchrun_env()  # refused in one line here, not deep inside torch's rendezvous
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


def leave() -> None:
    """End a finished run's part in the process group: every rank at once (a barrier), then the group is
    destroyed while the interpreter is whole. Left to interpreter exit, a rank's gloo threads could still hold
    work as the process tore down, and it aborted ("terminate called without an active exception") after a
    run that had finished. Only after a normal end: a rank that failed must not wait here for the others."""
    if not is_initialized():
        return
    import gc

    import torch.distributed as dist

    gc.collect()  # the DDP wrapper and its reducer, dropped by the caller, are freed now
    dist.barrier()
    dist.destroy_process_group()


def _wire(device: torch.device) -> torch.device:
    """Where collective tensors live: the GPU for NCCL, the CPU for gloo."""
    import torch

    return device if device.type == "cuda" else torch.device("cpu")


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's `value` on every rank (e.g. a random seed that all ranks must share)."""
    import torch

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


def total(value: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor over all ranks, on its own device."""
    if not is_initialized():
        return value
    import torch.distributed as dist

    summed = value.detach().clone()
    dist.all_reduce(summed)
    return summed


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one, so that all ranks take the same branch."""
    import torch

    if not is_initialized():
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_wire(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# what gloo and NCCL say when a peer process (or its machine) is gone
_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def lost_peer(error: BaseException) -> str | None:
    """The one line for a collective that failed because another process of the run is gone (a node lost), or
    None for any other error. The ranks that remain stop; what was saved is whole (rank 0 writes only after
    every rank has gathered), and the last checkpoint resumes on the processes that remain."""
    if not under_torchrun() or not isinstance(error, RuntimeError):
        return None
    text = str(error)
    found = next((s for s in _LOST if s in text), None)
    if found is None:
        return None
    return (
        f"a process of this run is gone ({found.lower()}): the run stops here; resume its last checkpoint with "
        "--resume-training on the machines that remain (docs/scaling.md)"
    )
