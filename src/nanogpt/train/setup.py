"""From flags and a checkpoint to a ready trainer: `build_trainer` = the gate (gate.py: settings, data,
hardware, the resume checks; everything the user can get wrong) then `construct` (model, optimizer,
samplers, state), which trusts the `Run` the gate hands it."""

from __future__ import annotations

from typing import Any

import torch

from .. import checkpoint
from ..interop import hf_import
from ..model import GPT
from ..runtime import machine, sharding
from . import parts
from .gate import Run, resolve_run
from .loop import Trainer
from .state import RunState
from .step import Stepper


def build_trainer(
    overrides: dict[str, Any],
    preset: str | None = None,
    resume: str | None = None,
    options: machine.ProcessOptions | None = None,
) -> Trainer:
    """Resolve settings, hardware and data, build model and optimizer, and (with `resume`) restore a checkpoint.

    Settings: the dataclass defaults (or with `resume`, the checkpoint's saved config), then `preset`,
    then `overrides` (the flags the user typed). With no preset, no size flags and no resume, the device's
    default preset. The settings must name the data (the CLI names the bundled corpus when the user does
    not). Raises UserError for anything the user got wrong; what the user should know is in `Trainer.notes`.
    """
    return construct(resolve_run(overrides, preset, resume, options))


def construct(run: Run) -> Trainer:
    """The trainer of a resolved run: model (random, imported or restored), optimizer, samplers, state."""
    model_cfg, train_cfg, hardware, device = run.model_cfg, run.train_cfg, run.hardware, run.hardware.device
    torch.manual_seed(train_cfg.seed)  # the same initial weights on every rank
    model = GPT(model_cfg)
    if not hardware.shard:  # sharded, fully_shard moves it to the device one block at a time
        model = model.to(device)
    if run.imported is not None:
        hf_import.load_into(model, run.imported)  # imported weights replace the random ones
    if run.saved is not None:  # before the DDP wrapper, which spreads rank 0's weights, and before sharding
        checkpoint.load_weights(model, run.saved.weights)
    if hardware.shard:  # before the optimizer, which must hold the shards
        sharding.shard(model, model.transformer.h, hardware)
    optimizer = parts.optimizer_for(model, train_cfg, hardware)
    scaler = torch.amp.GradScaler(device.type) if hardware.grad_scaler else None
    state = RunState()
    if run.saved is not None:
        state = _restore(run.saved, optimizer, scaler)
    samplers = parts.samplers(run.tokens, model_cfg, train_cfg, device)
    stepper = Stepper(train_cfg, hardware, model, optimizer, scaler, samplers, run.tokens.tokenizer)
    return Trainer(
        model_cfg, train_cfg, run.tokens, hardware, stepper, state, notes=run.notes, budget=run.budget,
        lineage=run.lineage,
    )


def _restore(
    saved: checkpoint.Checkpoint, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> RunState:
    """Continue from checkpoint `saved` (its weights are loaded already): optimizer moments (each cut to its
    parameter's shard under --shard) and scaler loaded; its state returned."""
    checkpoint.load_optimizer(optimizer, saved.optimizer_tensors, place=sharding.shard_like)
    if scaler is not None and saved.scaler:
        scaler.load_state_dict(saved.scaler)
    return RunState(saved.step, saved.batch_counter, list(saved.log), stem=str(saved.stem))
