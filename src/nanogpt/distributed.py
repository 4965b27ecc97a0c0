"""The torchrun environment: rank, world size, process group, and rank-0-only I/O.

Without torchrun every helper answers for a single process (rank 0 of 1), so the engine has one code path.
"""

from __future__ import annotations

import os


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


def init_process_group(device_type: str) -> None:
    """Join the torchrun process group (NCCL on CUDA, gloo otherwise); a no-op for a single process."""
    if not under_torchrun():
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")


def is_initialized() -> bool:
    """True when a process group is up (only under torchrun)."""
    if not under_torchrun():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def destroy_process_group() -> None:
    """Leave the process group cleanly at the end of a run."""
    if is_initialized():
        import torch.distributed as dist

        dist.destroy_process_group()
