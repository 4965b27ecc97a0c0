"""`--shard`: FSDP2 (`torch.distributed.fsdp.fully_shard`) under torchrun, and the gathers a sharded run needs.

Each transformer block and then the root are sharded over all the processes: every parameter becomes a
DTensor of which a process holds 1/world_size (dim 0), its gradient is reduce-scattered, and the optimizer,
built after sharding, keeps its state of that shard only. A forward pass gathers one block at a time.
Where the dtype is not float32, FSDP2's MixedPrecisionPolicy gathers the weights in it and reduces the
gradients in float32.

What leaves the run whole is gathered here with PyTorch's own collectives, one tensor at a time, to rank 0's
CPU memory: the weights (the sharded `get_model_state_dict`, each DTensor's full_tensor copied on rank 0) and
the optimizer state (DTensor.full_tensor per tensor), so a checkpoint is the same
set whatever the world size. A whole tensor read back (a resume) is cut to the process's own shard by
`distribute_tensor` from the copy every process holds (no communication).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .machine import Hardware


def shard(model: torch.nn.Module, blocks: Iterable[torch.nn.Module], hardware: Hardware) -> None:
    """Shard `model` in place: each of `blocks` a unit of its own, then the root (the embeddings, the tied LM
    head and the last norm). The model may be on the CPU: fully_shard moves each unit to the device as it
    shards it, so the whole model never sits on one device. `hardware.compile`: each block is compiled
    before it is sharded (torch.compile around FSDP2's hooks, the order torchtitan uses)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(hardware.device.type, (hardware.world_size,))
    mixed = hardware.dtype != torch.float32
    policy = MixedPrecisionPolicy(param_dtype=hardware.dtype, reduce_dtype=torch.float32) if mixed else None
    options = {"mesh": mesh, **({"mp_policy": policy} if policy is not None else {})}
    for block in blocks:
        if hardware.compile:
            block.compile()
        fully_shard(block, **options)
    fully_shard(model, **options)


def is_sharded(tensor: torch.Tensor) -> bool:
    """True for a DTensor (a sharded parameter, its gradient or its optimizer state)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (an all-gather) for a DTensor; any other tensor as it is."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def shard_like(tensor: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`tensor` (whole, the same on every rank) as `param`'s own shard when `param` is sharded: each rank cuts its
    part of its own copy (no communication); otherwise `tensor` as it is."""
    if not is_sharded(param):
        return tensor
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(
        tensor.detach().to(param.device), param.device_mesh, param.placements, src_data_rank=None
    )


def norm(total: torch.Tensor) -> torch.Tensor:
    """A gradient norm computed over shards, as the one whole number every rank clips by."""
    return total.full_tensor() if is_sharded(total) else total


def full_weights(model: torch.nn.Module, main: bool) -> dict[str, torch.Tensor]:
    """The model's whole weights on rank 0's CPU (`main`), gathered one tensor at a time; {} on the others.
    Every rank must call it (a collective).

    The sharded state dict (its clean names: no wrapper prefixes) is gathered here tensor by tensor and copied on
    rank 0, rather than through get_model_state_dict's `cpu_offload`: on a CPU-only run that offload is a no-op
    `.to("cpu")`, and a rank crashed (SIGSEGV) now and then inside it during a save, as the FSDP1 form of it did
    (Lightning-AI/pytorch-lightning#21804: the gathered result aliasing a freed buffer)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=False))
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        full = whole(tensor)
        if main:
            out[name] = full.detach().to("cpu", copy=True)
    return out


def full_tensors(tensors: dict[str, torch.Tensor], main: bool) -> dict[str, torch.Tensor]:
    """`tensors` whole on rank 0's CPU (`main`), each sharded one gathered in turn and dropped by the other ranks;
    {} on those. Every rank must call it with the same names in the same order (a collective per DTensor)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        full = whole(tensor)
        if main:
            out[name] = full.detach().to("cpu", copy=True)  # its own storage, never a view of a gather buffer
    return out
