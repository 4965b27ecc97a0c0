"""The memory rule: whether a run can fit on the device at all, said before anything is built.

One process of an unsharded run (one device, or a DDP rank) holds the whole model: its weights, gradients
and AdamW's two moments. A sharded run (`--shard`, FSDP2 under torchrun) divides those by the number of
processes, and holds whole only what it gathers for a forward pass: the embeddings and one block at a time.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import GenerateConfig, ModelConfig, TrainConfig

GATHERED_BYTES = 2  # a gathered weight in the lowest precision FSDP2 may gather in (bfloat16): a lower bound


def memory_of(device: torch.device) -> int | None:
    """Total memory of a device in bytes: the GPU's own, else the machine's RAM (MPS shares it); None
    where the system does not say (no sysconf)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def training_memory_floor(model_cfg: ModelConfig, train_cfg: TrainConfig, shards: int = 1) -> int:
    """Bytes one training process needs at the very least; more than the device has means it cannot run.

    A lower bound, so that nothing that might fit is refused: 16 bytes per parameter (float32 weights,
    gradients and AdamW's two moments), divided by `shards` when FSDP2 shards them over that many processes
    (which then gather the embeddings and one block whole for a forward pass), plus the larger of a training
    micro-batch (its float32 logits and a 2-byte copy of each layer's input, kept for the backward pass) and
    a validation batch (its logits).
    """
    tokens = model_cfg.block_size
    train = train_cfg.batch_size * tokens * (4 * model_cfg.vocab_size + 2 * model_cfg.n_layer * model_cfg.n_embd)
    validation = train_cfg.eval_batch_size * tokens * 4 * model_cfg.vocab_size
    params = model_cfg.parameter_count()
    if shards <= 1:
        return 16 * params + max(train, validation)
    block = (params - _outside_blocks(model_cfg)) // model_cfg.n_layer
    gathered = GATHERED_BYTES * (_outside_blocks(model_cfg) + block)
    return -(-16 * params // shards) + gathered + max(train, validation)


def _outside_blocks(model_cfg: ModelConfig) -> int:
    """Parameters outside the transformer blocks: the embeddings (the LM head tied to them) and the last norm."""
    d = model_cfg.n_embd
    return (model_cfg.vocab_size + model_cfg.block_size) * d + (2 if model_cfg.bias else 1) * d


def check_fits(
    model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device, world_size: int = 1, shard: bool = False
) -> None:
    """UserError when the run cannot fit on `device` even by training_memory_floor (a lower bound): said before
    the model is built, instead of a traceback (or the machine swapping) minutes later. `shard`: FSDP2 over
    `world_size` processes; a run that fits only so is refused without --shard by a line that names it. What
    passes may still run out of memory; the run then ends with one line (Trainer._explain)."""
    shards = world_size if shard else 1
    need, have = training_memory_floor(model_cfg, train_cfg, shards), memory_of(device)
    if have is None or need <= have:
        return
    per = " per process" if shards > 1 else ""
    line = (
        f"this run will not fit: {model_cfg.parameter_count():,} parameters at batch size "
        f"{train_cfg.batch_size} (validation {train_cfg.eval_batch_size}) need at least {need / 2**30:,.1f} "
        f"GiB{per} and {device.type} has {have / 2**30:,.1f} GiB"
    )
    sharded = training_memory_floor(model_cfg, train_cfg, world_size)
    if not shard and world_size > 1 and sharded <= have:
        raise UserError(f"{line}; with --shard each of the {world_size} processes needs {sharded / 2**30:,.1f} GiB")
    raise UserError(
        f"{line}; use a smaller model or batch size, or --shard it over more processes under torchrun "
        "(docs/scaling.md)"
    )


def holding(model_cfg: ModelConfig, train_cfg: TrainConfig, world_size: int) -> str:
    """The plan line of a sharded run: what each process holds."""
    whole = 16 * model_cfg.parameter_count()
    return (
        f"sharded (FSDP2) over {world_size} processes: each holds 1/{world_size} of the weights, gradients and "
        f"optimizer state ({_size(whole / world_size)} of {_size(whole)}) and gathers one block at a time; at "
        f"least {_size(training_memory_floor(model_cfg, train_cfg, world_size))} a process"
    )


def _size(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def check_generation_fits(cfg: ModelConfig, element: int, s: GenerateConfig, prompt_tokens: int,
                          device: torch.device) -> None:
    """UserError when `generate` cannot fit on `device` even by a lower bound of what it holds: per row the KV
    cache (`element` bytes a value), the logits of a step (and top-p's sorted copy), and the window; with
    --num-samples above 1 every row's tokens too, kept to be printed whole. Said before anything is allocated:
    --num-samples 10**12 built lists until memory ran out."""
    rows = s.num_samples
    per_row = 2 * cfg.n_layer * cfg.block_size * cfg.n_embd * element + 3 * cfg.vocab_size * 4
    per_row += 8 * (min(prompt_tokens, cfg.block_size) + 2 * cfg.block_size)
    if rows > 1:
        per_row += 36 * s.tokens_to_generate  # a Python int in a list, per token kept
    need, have = rows * per_row, memory_of(device)
    if have is not None and need > have:
        raise UserError(
            f"--num-samples {rows:,} x --tokens-to-generate {s.tokens_to_generate:,} would run out of memory: they "
            f"need at least {need / 2**30:,.1f} GiB and {device.type} has {have / 2**30:,.1f} GiB; ask for fewer"
        )
