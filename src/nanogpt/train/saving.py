"""Checkpoints and the run folder, from training's side: what a checkpoint of a run holds, the lock on
out_dir, and the rule that rank 0 alone writes while every rank learns whether it could."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch

from .. import checkpoint, config
from ..runtime import distributed, machine, sharding
from ..store import runs
from ..errors import UserError
from ..events import Saved
from .state import RunState
from .step import Stepper

T = TypeVar("T")


def on_rank_zero(hardware: machine.Hardware, work: Callable[[], T], failed: str) -> T | None:
    """`work()` on rank 0, which alone writes (None elsewhere). Under torchrun every rank learns whether it
    raised a UserError and raises too (`failed` where it did not run it), so that they all stop together."""
    result, failure = None, None
    if hardware.is_main:
        try:
            result = work()
        except UserError as e:
            failure = e
    if distributed.any_rank(failure is not None, hardware.device):
        raise failure or UserError(failed)
    return result


class Gathered(NamedTuple):
    """What a checkpoint saves of the model and its optimizer, whole, on rank 0 (empty elsewhere)."""

    weights: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]


def gather(stepper: Stepper) -> Gathered:
    """The weights and optimizer state to save. Every rank calls it: a sharded run gathers them to rank 0's CPU
    one tensor at a time (sharding.py), so the set is the one any world size saves; unsharded, rank 0 reads its
    own (nothing is copied)."""
    hardware, model = stepper.hardware, stepper.model
    if not hardware.shard:
        if not hardware.is_main:
            return Gathered({}, {})
        return Gathered(checkpoint.model_tensors(model), checkpoint.optimizer_tensors(stepper.optimizer))
    weights = sharding.full_weights(model, hardware.is_main)
    dropped, kept = checkpoint.TIED
    if model.lm_head.weight is model.transformer.wte.weight:  # stored once, as model_tensors does
        weights.pop(dropped, None)
    optimizer = sharding.full_tensors(checkpoint.optimizer_tensors(stepper.optimizer), hardware.is_main)
    return Gathered(weights, optimizer)


def write(
    stem: Path,
    gathered: Gathered,
    stepper: Stepper,
    state: RunState,
    model_cfg: config.ModelConfig,
    train_cfg: config.TrainConfig,
    tokenizer_meta: dict[str, Any],
    lineage: list[dict[str, Any]] | None = None,
    held: runs.Claim | None = None,
) -> tuple[str, ...]:
    """Write the run's current state as checkpoint `stem` (checkpoint.save) from what `gather` gathered;
    returns the paths written.

    `held`: the run's claim on its folder. A save writes by name (safetensors takes a path), so the name is
    checked to lead to the folder held before the save and after it: a folder renamed or removed under the run
    stops it in one line rather than let it write, and later remove, in another folder of that name."""
    resume_state = {
        "batch_counter": state.batch_counter,
        "seed": train_cfg.seed,
        "world_size": stepper.hardware.world_size,
        "scaler": stepper.scaler.state_dict() if stepper.scaler else None,
    }
    if held is not None:
        held.check()
    paths = checkpoint.save(
        stem,
        step=state.step,
        model=stepper.model,
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        tokenizer_meta=tokenizer_meta,
        log=state.log,
        optimizer_tensors=gathered.optimizer,
        resume_state=resume_state,
        weights=gathered.weights,
        lineage=lineage,
    )
    if held is not None:
        held.check()
    return paths


def save_step(
    stepper: Stepper,
    state: RunState,
    model_cfg: config.ModelConfig,
    train_cfg: config.TrainConfig,
    tokenizer_meta: dict[str, Any],
    as_best: bool,
    lineage: list[dict[str, Any]] | None = None,
    held: runs.Claim | None = None,
) -> Saved:
    """The run's current step as checkpoint model_step_N in out_dir (rank 0 writes), or the set it was saved as
    already: a set is never written twice. A UserError when the disk is full or the name is taken, nothing of
    the set left."""
    if not state.unsaved and state.saved_stem is not None:  # saved already, or resumed from there
        paths = tuple(state.saved_stem + suffix for suffix in checkpoint.FILES)
        return Saved(step=state.step, stem=state.saved_stem, paths=paths, best=as_best)
    stem = checkpoint.stem_for(train_cfg.out_dir, state.step)
    gathered = gather(stepper)  # every rank: a sharded model is gathered to rank 0
    paths = on_rank_zero(
        stepper.hardware,
        lambda: write(stem, gathered, stepper, state, model_cfg, train_cfg, tokenizer_meta, lineage, held),
        f"rank 0 could not write checkpoint {stem}",
    )
    state.saved(str(stem))
    return Saved(step=state.step, stem=str(stem), paths=paths or (), best=as_best)


def claim_out_dir(
    hardware: machine.Hardware,
    model: torch.nn.Module,
    tokenizer_meta: dict[str, Any],
    cfg: config.TrainConfig,
    step: int,
) -> runs.Claim | None:
    """Lock out_dir and check it takes a checkpoint before the first step (runs.claim; rank 0 writes, every
    rank learns whether it could)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # a shared (tied) one once
    # the weights and AdamW's two moments of the same size; the JSON files (vocabulary, log) are smaller
    size = 3 * weights + len(str(tokenizer_meta)) + 200 * cfg.steps + 65536
    return on_rank_zero(
        hardware, lambda: runs.claim(cfg.out_dir, step, size), f"rank 0 cannot write to --out-dir {cfg.out_dir}"
    )
