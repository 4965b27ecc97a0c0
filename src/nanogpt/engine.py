"""The training engine: `build_trainer` resolves settings, data and hardware; `Trainer.run` is the one loop.

Every front end (headless lines, the Textual UI, torchrun) drives the same `Trainer.run(emit, commands)`:
it emits events (events.py) and obeys commands between two steps. The engine is synchronous and
single-threaded; a UI runs it in one worker thread and talks to it only through the queue and the events.
The front end also names the data when the user names none (the bundled corpus), shows `Trainer.notes`,
and enters `runtime.training_process` (the process-wide settings) around the run.

Determinism, which exact resume rests on:
- data batch i is a pure function of (seed, i) (data.py); the step's global micro-batches are
  `batch_counter + m * world_size + rank`, and the counter is saved;
- the torch RNG (dropout) is re-seeded before every micro-batch from (seed, global micro-batch index), so
  no RNG state has to be carried over a checkpoint, ranks get different dropout masks, and a run gives the
  same result however it is split over processes (N ranks x accumulation A = 1 process x N*A);
- the learning rate is a pure function of the step (schedule.py); the optimizer moments are saved.

Host-device syncs: on CUDA/MPS nothing inside a step reads a value back; `LossReadback` holds the losses
of `Hardware.sync_every` steps (the log interval) and reads them in one transfer, or sooner when a command
waits, a stop is asked for, an evaluation or a save is due, or half a second has passed; StepDone events
then come in bursts. On CPU reading a loss costs nothing, so each is read at once and a NaN stops the run
before the weights move (on an accelerator the NaN is found up to `sync_every` steps later; the last
checkpoint is kept).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import queue
import secrets
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint, config, data, distributed, hf, optim, runs, runtime, schedule
from .errors import UserError
from .events import (
    EvalDone,
    Event,
    Pause,
    Paused,
    Resume,
    Resumed,
    RunFinished,
    RunStarted,
    Sample,
    Sampled,
    Save,
    Saved,
    StepDone,
    Stop,
)
from .model import GPT

T = TypeVar("T")

DATA_FIELDS = ("data_dir", "training_dataset", "validation_dataset", "vocab_metadata")
SIZE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size")


class TrainingDiverged(Exception):
    """The loss became NaN or infinite: training cannot continue from here."""

    @classmethod
    def at(cls, step: int, loss: float) -> TrainingDiverged:
        return cls(f"training loss became {loss} at step {step}; try a lower --learning-rate or --grad-clip")


def _dropout_seed(seed: int, index: int) -> int:
    """Seed of the torch RNG (dropout) for global micro-batch `index`: a pure function, so resume needs no
    state and the dropout masks do not depend on which rank draws the batch."""
    return (seed * 1_000_003 + index * 7919 + 1) % (2**63 - 1)


# ----------------------------------------------------------------------------- reading losses back
class FinishedStep(NamedTuple):
    """An optimizer step done; its loss is a float when it was read at once, else still a device tensor."""

    step: int
    lr: float
    loss: torch.Tensor | float
    t0: float
    t1: float
    grad_norm: torch.Tensor | float | None = None  # the gradients' total norm before clipping, read like the loss


class LossReadback:
    """Finished steps whose losses are read back from the device together: one host-device transfer (and
    under DDP one all-reduce) for `every` steps, so that the host queues the next steps while the device
    computes them."""

    MAX_WAIT_S = 0.5  # one process: read back sooner once the oldest unread step is this old (a UI stays live)

    def __init__(self, every: int, world_size: int):
        self.every = every
        self.world_size = world_size
        self.unread: list[FinishedStep] = []

    def add(self, step: FinishedStep) -> None:
        self.unread.append(step)

    def due(self, urgent: Callable[[], bool]) -> bool:
        """Time to read back: `every` steps wait, or (one process) `urgent()` or MAX_WAIT_S has passed."""
        if not self.unread:
            return False
        if len(self.unread) >= self.every:
            return True
        if self.world_size > 1:
            return False  # every rank must read back (an all-reduce) at the same steps: count only
        return urgent() or time.perf_counter() - self.unread[0].t0 >= self.MAX_WAIT_S

    def read(self, tokens_per_step: int) -> tuple[list[StepDone], TrainingDiverged | None]:
        """StepDone events for the unread steps, their deferred losses read in one transfer. At the first
        NaN/inf: the steps before it, and the error to raise once they are shown (the rest are dropped).

        A deferred step's host-side time says little (the accelerator runs behind the host), so those
        steps share the wall time from the first one's start to now equally.
        """
        steps, self.unread = self.unread, []
        if not steps:
            return [], None
        deferred = [s.loss for s in steps if isinstance(s.loss, torch.Tensor)]
        norms = [s.grad_norm for s in steps if isinstance(s.grad_norm, torch.Tensor)]
        # the gradient norms travel in the same transfer as the losses (equal on every rank, so the mean keeps them)
        both = distributed.mean(torch.stack([t.float() for t in deferred + norms])).tolist() if deferred else []
        values, norm_values = iter(both[: len(deferred)]), iter(both[len(deferred) :])
        shared = (time.perf_counter() - steps[0].t0) / len(steps)
        events: list[StepDone] = []
        for s in steps:
            if isinstance(s.loss, torch.Tensor):
                loss, duration = next(values), shared
                if not math.isfinite(loss):
                    return events, TrainingDiverged.at(s.step, loss)
            else:
                loss, duration = s.loss, s.t1 - s.t0
            grad_norm = next(norm_values) if isinstance(s.grad_norm, torch.Tensor) else s.grad_norm
            events.append(StepDone(
                step=s.step,
                loss=loss,
                duration_ms=duration * 1000.0,
                lr=s.lr,
                tokens_per_s=tokens_per_step / max(duration, 1e-9),
                grad_norm=grad_norm,
            ))
        return events, None


# ----------------------------------------------------------------------------- building a trainer
def _open_data(train_cfg: config.TrainConfig) -> tuple[config.TrainConfig, data.TokenData]:
    """Open the dataset the config names, with absolute paths in the config to save (so that a resume from
    another folder finds the same data)."""
    train_cfg = dataclasses.replace(
        train_cfg,
        **{
            f: str(Path(getattr(train_cfg, f)).absolute())
            for f in DATA_FIELDS
            if getattr(train_cfg, f) is not None
        },
    )
    tokens = data.load(
        train_cfg.data_dir, train_cfg.training_dataset, train_cfg.validation_dataset, train_cfg.vocab_metadata
    )
    return train_cfg, tokens


def _check_resume_shape(saved: config.ModelConfig, resolved: config.ModelConfig, stem: Path) -> None:
    for name in config.SHAPE_FIELDS:
        if name == "vocab_size":
            continue  # checked against the data separately
        if getattr(saved, name) != getattr(resolved, name):
            f = next(f for f in dataclasses.fields(config.ModelConfig) if f.name == name)
            raise UserError(
                f"{config.field_flag(f)} {getattr(resolved, name)} conflicts with checkpoint {stem}, "
                f"which has {getattr(saved, name)} (a resumed model keeps its shape)"
            )


def _check_resume_vocabulary(saved: checkpoint.Checkpoint, tokens: data.TokenData) -> None:
    vocab = saved.tokenizer
    if vocab.get("vocab_size") != tokens.vocab_size or vocab.get("itos") != tokens.meta.get("itos"):
        raise UserError(
            f"the data's vocabulary ({tokens.source}) differs from checkpoint {saved.stem}'s "
            f"({vocab.get('vocab_size')} tokens): resume on data prepared with the same vocabulary"
        )


SCHEDULE_FIELDS = ("steps", "learning_rate", "min_learning_rate", "lr_schedule", "warmup_steps", "decay_fraction")


def _schedule_lr(cfg: config.TrainConfig, step: int) -> float:
    """The schedule's learning rate for (0-based) optimizer step `step` of a run with settings `cfg`."""
    return schedule.learning_rate(
        step,
        peak=cfg.learning_rate,
        minimum=cfg.min_learning_rate,
        warmup=cfg.warmup_steps,
        total=cfg.steps,
        kind=cfg.lr_schedule,
        decay_fraction=cfg.decay_fraction,
    )


def _schedule_note(saved: checkpoint.Checkpoint, cfg: config.TrainConfig) -> str | None:
    """One line on what a resume that changes the schedule (a larger --steps, most often) does to the
    learning rate: its value at the last step done and at the next one. None when nothing changed."""
    old, done = saved.train_cfg, saved.step
    changed = [f for f in SCHEDULE_FIELDS if getattr(old, f) != getattr(cfg, f)]
    if not changed or done == 0 or done >= cfg.steps:
        return None
    what = ", ".join(f"--{f.replace('_', '-')} {getattr(old, f)} -> {getattr(cfg, f)}" for f in changed)
    before, after = _schedule_lr(old, done - 1), _schedule_lr(cfg, done)
    note = (
        f"note: resuming with a new schedule ({what}): the learning rate was {before:.2e} at step {done} "
        f"and is {after:.2e} at step {done + 1}"
    )
    if cfg.lr_schedule == "wsd":
        start = schedule.decay_start(cfg.steps, cfg.decay_fraction)
        note += f"; it decays linearly from step {max(start, done) + 1} to {cfg.steps}"
        if after > 1.1 * before:
            note += " (the checkpoint's decay had begun, so the rate climbs back up first)"
        return note
    if cfg.lr_schedule == "cosine":
        note += f"; the cosine is re-stretched to end at step {cfg.steps}"
        if abs(after - before) > 0.1 * before:
            note += " (a jump: --lr-schedule wsd extends a run smoothly until its decay has begun)"
    return note


def build_trainer(overrides: dict[str, Any], preset: str | None = None, resume: str | None = None) -> Trainer:
    """Resolve settings, hardware and data, build model and optimizer, and (with `resume`) restore a checkpoint.

    Settings: the dataclass defaults (or with `resume`, the checkpoint's saved config), then `preset`,
    then `overrides` (the flags the user typed). With no preset, no size flags and no resume, the device's
    default preset. The settings must name the data (the CLI names the bundled corpus when the user does
    not). Raises UserError for anything the user got wrong; what the user should know is in `Trainer.notes`.
    """
    overrides = dict(overrides)
    notes: list[str] = []
    saved = checkpoint.read(resume) if resume is not None else None
    base = (saved.model_cfg, saved.train_cfg) if saved is not None else None
    device = runtime.resolve_device(overrides.get("device") or (saved.train_cfg.device if saved else "auto"))
    if saved is None and preset is None and overrides.get("init_from"):
        preset = "finetune"  # the weights fix the shape; the schedule is a fine-tune's
    if saved is None and preset is None and not any(k in overrides for k in SIZE_FIELDS):
        preset = config.default_preset(device.type)
    if base is not None and any(k in overrides for k in DATA_FIELDS):
        # new data options replace the saved ones as a group (a new --data-dir drops the saved file paths)
        base = (base[0], dataclasses.replace(base[1], **{f: None for f in DATA_FIELDS}))
    model_cfg, train_cfg = config.resolve(overrides, preset, base=base)
    if saved is not None and overrides.get("init_from"):
        raise UserError("--init-from starts a new run and --resume-training continues one: give only one")
    imported = None  # weights to start from (--init-from); a resumed run has its own
    if saved is None and train_cfg.init_from:
        imported = hf.load_source(train_cfg.init_from)
        model_cfg = hf.take_architecture(model_cfg, imported, overrides)
    if saved is not None:
        _check_resume_shape(saved.model_cfg, model_cfg, saved.stem)
        if train_cfg.optimizer != saved.train_cfg.optimizer:  # its saved state is the other optimizer's
            raise UserError(
                f"--optimizer {train_cfg.optimizer} conflicts with checkpoint {saved.stem}, trained with "
                f"{saved.train_cfg.optimizer} (a resumed run keeps its optimizer)"
            )
        # --grad-accum is per process: on another world size keep the checkpoint's effective batch
        train_cfg, note = distributed.keep_effective_batch(
            train_cfg, saved.train_cfg, saved.world_size, overrides, saved.stem
        )
        notes += [note] if note else []
        if train_cfg.steps <= saved.step:
            raise UserError(
                f"checkpoint {saved.stem} has done {saved.step} steps and --steps is {train_cfg.steps}: "
                f"give --steps above {saved.step} to train further"
            )
        note = _schedule_note(saved, train_cfg)
        notes += [note] if note else []
    # the run folder: a resume writes beside its checkpoint, and no run replaces another's files (runs.py)
    out_dir, note = runs.place(
        train_cfg.out_dir,
        typed="out_dir" in overrides,
        resumed=saved.stem if saved is not None else None,
        step=saved.step if saved is not None else 0,
    )
    train_cfg = dataclasses.replace(train_cfg, out_dir=out_dir)
    notes += [note] if note else []
    train_cfg, tokens = _open_data(train_cfg)
    if saved is not None:
        _check_resume_vocabulary(saved, tokens)
    if imported is not None:
        hf.check_data(imported, tokens.meta, tokens.source)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=tokens.vocab_size)
    hardware = runtime.resolve_hardware(model_cfg, train_cfg)  # after the vocabulary: the dtype probe needs it
    notes += [hardware.dtype_probe] if hardware.dtype_probe else []
    if train_cfg.seed == 0:
        # under torchrun every rank must use rank 0's pick
        seed = distributed.broadcast_int(secrets.randbelow(2**31 - 1) + 1, hardware.device)
        train_cfg = dataclasses.replace(train_cfg, seed=seed)
        notes.append(f"seed 0: using random seed {seed} (pass --seed {seed} to repeat)")
    data.check_block_size(tokens, model_cfg.block_size)
    runtime.check_fits(model_cfg, train_cfg, hardware.device)  # before the model is built
    return Trainer(model_cfg, train_cfg, tokens, hardware, resume=saved, notes=notes, init_from=imported)


def _new_model(model_cfg: config.ModelConfig, seed: int, device: torch.device) -> GPT:
    torch.manual_seed(seed)  # the same initial weights on every rank
    return GPT(model_cfg).to(device)


def _step_module(model: GPT, hardware: runtime.Hardware) -> torch.nn.Module:
    """What a training step calls: `model`, compiled where that pays, wrapped in DDP on several processes."""
    module: torch.nn.Module = model
    if hardware.compile:
        module = runtime.compile_model(model, hardware.device, hardware.shards)
    if hardware.world_size > 1:
        device = hardware.device
        ids = [device.index if device.index is not None else hardware.local_rank] if device.type == "cuda" else None
        module = DistributedDataParallel(module, device_ids=ids)
    return module


def _batch_samplers(
    tokens: data.TokenData, model_cfg: config.ModelConfig, train_cfg: config.TrainConfig, device: torch.device
) -> tuple[data.BatchSampler, data.BatchSampler]:
    """The training and the validation batches (each batch a pure function of seed and index)."""
    train = data.BatchSampler(
        tokens.train,
        block_size=model_cfg.block_size,
        batch_size=train_cfg.batch_size,
        seed=train_cfg.seed,
        stream=data.TRAIN_STREAM,
        device=device,
    )
    return train, _val_sampler(tokens.val, model_cfg, train_cfg, device)


def _val_sampler(
    val: np.ndarray, model_cfg: config.ModelConfig, train_cfg: config.TrainConfig, device: torch.device
) -> data.BatchSampler:
    """Validation batches drawn from `val` (val.bin, or one source's stretch of it)."""
    return data.BatchSampler(
        val,
        block_size=model_cfg.block_size,
        batch_size=train_cfg.eval_batch_size,
        seed=train_cfg.seed,
        stream=data.VAL_STREAM,
        device=device,
    )


def _source_samplers(
    tokens: data.TokenData, model_cfg: config.ModelConfig, train_cfg: config.TrainConfig, device: torch.device
) -> dict[str, data.BatchSampler]:
    """A mixology dataset: validation batches from each source's own stretch of val.bin, by source name (a
    source with fewer tokens than a window is left out); {} for a single source."""
    return {
        name: _val_sampler(tokens.val[start:stop], model_cfg, train_cfg, device)
        for name, start, stop in data.val_sources(tokens.meta, len(tokens.val))
        if stop - start > model_cfg.block_size
    }


class Trainer:
    """Trains one model. Front ends call `run`; tests and tools may call the step-level methods directly.

    Two handles on the one model: `model`, the plain GPT (its weights are saved, restored, clipped and
    sampled from), and `step_module`, what a training step calls (compiled where that pays, wrapped in DDP
    on several processes). Evaluation calls `eval_module`: the step module without DDP.
    """

    def __init__(
        self,
        model_cfg: config.ModelConfig,
        train_cfg: config.TrainConfig,
        tokens: data.TokenData,
        hardware: runtime.Hardware,
        resume: checkpoint.Checkpoint | None = None,
        notes: tuple[str, ...] | list[str] = (),
        init_from: hf.Imported | None = None,
    ):
        self.model_cfg = model_cfg
        self.train_cfg = train_cfg
        self.tokens = tokens
        self.hardware = hardware
        self.device = hardware.device
        self.dtype = hardware.dtype
        self.rank = hardware.rank
        self.world_size = hardware.world_size
        self.is_main = hardware.is_main
        self.notes = tuple(notes)  # for the user, from building it: a front end shows them before the run
        self.step = 0  # optimizer steps done; model_step_N is the state after N steps
        self.batch_counter = 0  # global micro-batches consumed so far (over all ranks)
        self.log: list[dict[str, Any]] = []
        self.last_saved_step = 0  # the untrained state at step 0 is never worth a checkpoint of its own
        self.last_stem: str | None = None
        self._stop = threading.Event()
        self._claim: runs.Claim | None = None  # the lock on out_dir while `run` runs (rank 0)

        self.model = _new_model(model_cfg, train_cfg.seed, self.device)
        if init_from is not None:
            hf.load_into(self.model, init_from)  # imported weights replace the random ones
        self.optimizer = optim.build_optimizer(
            self.model,
            kind=train_cfg.optimizer,
            lr=train_cfg.learning_rate,
            betas=(train_cfg.beta1, train_cfg.beta2),
            weight_decay=train_cfg.weight_decay,
            device=self.device,
            muon_lr=train_cfg.muon_learning_rate,
            muon_momentum=train_cfg.muon_momentum,
            ns_dtype=hardware.ns_dtype,
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if hardware.grad_scaler else None
        if resume is not None:
            self._restore(resume)
        self.step_module = _step_module(self.model, hardware)
        # CPU: each micro-batch runs as single-threaded shards side by side, one per core (see runtime)
        self.core_parallel = (
            runtime.CoreParallel(hardware.shards, hardware.threads or 1) if hardware.shards > 1 else None
        )
        self.readback = LossReadback(hardware.sync_every, hardware.world_size)
        self.model.train()
        self.train_batches, self.val_batches = _batch_samplers(tokens, model_cfg, train_cfg, self.device)
        self.source_val_batches = _source_samplers(tokens, model_cfg, train_cfg, self.device)

    # ------------------------------------------------------------------------- properties
    @property
    def total_steps(self) -> int:
        return self.train_cfg.steps

    @property
    def tokens_per_step(self) -> int:
        cfg = self.train_cfg
        return cfg.batch_size * self.model_cfg.block_size * cfg.grad_accum * self.world_size

    @property
    def eval_module(self) -> torch.nn.Module:
        """The step module without its DDP wrapper: each rank evaluates its own share of the batches."""
        module = self.step_module
        return module.module if isinstance(module, DistributedDataParallel) else module

    def n_params(self) -> int:
        return self.model.num_params()

    def lr_at(self, step: int) -> float:
        return _schedule_lr(self.train_cfg, step)

    # ------------------------------------------------------------------------- one step
    def train_step(self) -> StepDone:
        """One optimizer step over grad_accum micro-batches (per rank); raises TrainingDiverged on NaN/inf.

        Reads the loss back at once (on an accelerator, a host-device sync); `run` defers that on CUDA/MPS.
        """
        self._step(check=True)
        return _or_raise(*self._read_back())[0]

    def train_steps(self, n: int) -> list[StepDone]:
        """`n` steps whose losses are read back together at the end: on an accelerator, no host-device
        sync between them (what `run` does per log interval). Raises TrainingDiverged on NaN/inf, found at
        the end (the weights have moved on by then)."""
        for _ in range(n):
            self._step(check=False)
        return _or_raise(*self._read_back())

    def _step(self, check: bool) -> None:
        """The step's work, handed to `readback`. check: read the loss now and refuse a NaN/inf before the
        weights move (CPU, where reading costs nothing); otherwise the loss stays a device tensor (no sync)."""
        cfg = self.train_cfg
        t0 = time.perf_counter()
        lr = self.lr_at(self.step)
        optim.set_lr(self.optimizer, lr)  # each group at its own height (Muon's is higher)
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            index = data.global_batch_index(self.batch_counter, micro, self.rank, self.world_size)
            x, y = self.train_batches.batch(index)
            torch.manual_seed(_dropout_seed(cfg.seed, index))
            if self.core_parallel is not None:
                total += self.core_parallel.forward_backward(
                    self.step_module,
                    x,
                    y,
                    loss_scale=1 / cfg.grad_accum,
                    device=self.device,
                    dtype=self.dtype,
                )
                continue
            last = micro == cfg.grad_accum - 1
            # under DDP only the last micro-step all-reduces the gradients
            sync = contextlib.nullcontext() if last or self.world_size == 1 else self.step_module.no_sync()
            with sync:
                with runtime.autocast(self.device, self.dtype):
                    _, loss = self.step_module(x, y)
                scaled = loss / cfg.grad_accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += loss.detach()
        loss_now: torch.Tensor | float = total / cfg.grad_accum
        if check:
            # the logged loss is the mean over all micro-batches of all ranks, so logs compare across sizes
            loss_now = distributed.mean(loss_now).item()
            if not math.isfinite(loss_now):
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingDiverged.at(self.step + 1, loss_now)
        with runtime.all_cores(self.hardware):
            grad_norm = self._update(check)
        self.step += 1
        self.batch_counter += cfg.grad_accum * self.world_size
        self.readback.add(
            FinishedStep(step=self.step, lr=lr, loss=loss_now, t0=t0, t1=time.perf_counter(), grad_norm=grad_norm)
        )

    def _update(self, check: bool) -> torch.Tensor | float:
        """Clip, step the optimizer and clear the gradients; returns the gradients' norm before clipping."""
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.train_cfg.grad_clip > 0:
            grad_norm: torch.Tensor | float = torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.train_cfg.grad_clip
            )
        else:  # no clipping: the same norm, for the log (one pass over the gradients, no sync)
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        if check:
            grad_norm = float(grad_norm)  # CPU: free to read, like the loss
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _read_back(self) -> tuple[list[StepDone], TrainingDiverged | None]:
        """Read the unread losses back and log their steps (all before any is shown: a failing front end
        loses none); with the error to raise at a NaN/inf (see LossReadback.read)."""
        events, error = self.readback.read(self.tokens_per_step)
        self.log.extend(
            {"step": e.step, "loss": e.loss, "duration_ms": e.duration_ms}
            | ({"grad_norm": e.grad_norm} if e.grad_norm is not None else {})
            for e in events
        )
        return events, error

    def evaluate(self) -> float:
        """Mean validation loss over eval_iters fixed batches (the same ones every time; no RNG touched)."""
        return self.evaluate_sources()[0]

    @torch.no_grad()
    def evaluate_sources(self) -> tuple[float, dict[str, float]]:
        """The validation loss, and for a mixology dataset each source's on eval_iters fixed batches of its
        own (by name); all read back in one transfer. Both go into the log entry of the current step."""
        self.model.eval()
        try:
            means = [self._mean_loss(b) for b in (self.val_batches, *self.source_val_batches.values())]
            values = torch.stack(means).tolist()
        finally:
            self.model.train()
        value, by_source = values[0], dict(zip(self.source_val_batches, values[1:]))
        if self.log and self.log[-1]["step"] == self.step:
            self.log[-1]["validation_loss"] = value
            if by_source:
                self.log[-1]["source_validation_losses"] = by_source
        return value, by_source

    def _mean_loss(self, batches: data.BatchSampler) -> torch.Tensor:
        """Mean loss over batches 0..eval_iters-1 of `batches` (shared out over the ranks), on the device."""
        total = torch.zeros((), device=self.device)
        count = torch.zeros((), device=self.device)
        for i in range(self.rank, self.train_cfg.eval_iters, self.world_size):
            x, y = batches.batch(i)
            with runtime.autocast(self.device, self.dtype):
                _, loss = self.eval_module(x, y)
            total += loss.float()
            count += 1
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
            dist.all_reduce(count)
        return total / count

    def evaluation_sample(self) -> str:
        """The sample kept at an evaluation (rank 0; "" when --eval-sample-tokens is 0): the same empty prompt and
        seed every time, so that samples at successive steps differ only by what the model has learned."""
        n = self.train_cfg.eval_sample_tokens
        if n == 0 or not self.is_main:
            return ""
        text = self.sample(n, seed=self.train_cfg.seed)
        if self.log and self.log[-1]["step"] == self.step:
            self.log[-1]["sample"] = text
        return text

    @torch.no_grad()
    def sample(self, n_tokens: int, prompt: str = "", seed: int | None = None) -> str:
        """Text sampled from the current weights (prompt + continuation); leaves the run unchanged.

        Uses generate.py's sampler (temperature 1) in eval mode with its own generator (seeded with `seed`, by
        default the run's seed + the step), and restores train mode and the global RNG state, so a run that
        samples trains exactly like one that does not.
        """
        from .generate import generate_tokens, start_ids

        tok = self.tokens.tokenizer
        ids = start_ids(tok, prompt)  # UserError for a character outside the vocabulary
        cpu_state = torch.get_rng_state()
        cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        seed = self.train_cfg.seed + self.step if seed is None else seed
        generator = torch.Generator(device=self.device).manual_seed(seed)
        try:
            new = list(generate_tokens(self.model, ids, n_tokens, temperature=1.0, generator=generator))
        finally:
            self.model.train()
            torch.set_rng_state(cpu_state)
            if cuda_states is not None:
                torch.cuda.set_rng_state_all(cuda_states)
        return prompt + tok.decode(new)

    # ------------------------------------------------------------------------- checkpoints
    def save(self) -> Saved:
        """Write checkpoint model_step_N for the current step into out_dir (rank 0 only writes)."""
        if self.step == self.last_saved_step and self.last_stem is not None:
            # saved already (or resumed from there): a set is never written twice
            return Saved(step=self.step, stem=self.last_stem, paths=tuple(self.last_stem + s for s in checkpoint.FILES))
        stem = checkpoint.stem_for(self.train_cfg.out_dir, self.step)
        # a UserError: the disk is full, or the name is taken; nothing of the set is left
        paths = self._on_rank_zero(
            lambda: checkpoint.save(
                stem,
                step=self.step,
                model=self.model,
                model_cfg=self.model_cfg,
                train_cfg=self.train_cfg,
                tokenizer_meta=self.tokens.meta,
                log=self.log,
                optimizer_tensors=checkpoint.optimizer_tensors(self.optimizer),
                resume_state={
                    "batch_counter": self.batch_counter,
                    "seed": self.train_cfg.seed,
                    "world_size": self.world_size,
                    "scaler": self.scaler.state_dict() if self.scaler else None,
                },
            ),
            f"rank 0 could not write checkpoint {stem}",
        )
        self.last_saved_step = self.step
        self.last_stem = str(stem)
        return Saved(step=self.step, stem=str(stem), paths=paths or ())

    def _on_rank_zero(self, work: Callable[[], T], failed: str) -> T | None:
        """`work()` on rank 0, which alone writes (None elsewhere). Under torchrun every rank learns whether it
        raised a UserError and raises too (`failed` where it did not run it), so that they all stop together."""
        result, failure = None, None
        if self.is_main:
            try:
                result = work()
            except UserError as e:
                failure = e
        if distributed.any_rank(failure is not None, self.device):
            raise failure or UserError(failed)
        return result

    def _restore(self, saved: checkpoint.Checkpoint) -> None:
        """Continue from checkpoint `saved`: weights, optimizer moments, step, batch counter, training log."""
        checkpoint.load_weights(self.model, saved.weights)
        checkpoint.load_optimizer(self.optimizer, saved.optimizer_tensors)
        if self.scaler is not None and saved.scaler:
            self.scaler.load_state_dict(saved.scaler)
        self.step = saved.step
        self.batch_counter = saved.batch_counter
        self.log = list(saved.log)
        self.last_saved_step = self.step
        self.last_stem = str(saved.stem)

    # ------------------------------------------------------------------------- the loop
    def request_stop(self) -> None:
        """Finish the current step, save, and end the loop (safe from signal handlers and other threads)."""
        self._stop.set()

    def run(
        self, emit: Callable[[Event], None], commands: queue.Queue | None = None, start_paused: bool = False
    ) -> RunFinished:
        """The training loop: emit RunStarted, then steps/evaluations/saves; obey commands between steps."""
        emit(self._run_started())
        paused = start_paused
        if paused:
            emit(Paused(step=self.step))
        urgent = functools.partial(self._someone_waits, commands)
        try:
            self._claim_out_dir()
            while True:
                if self.readback.due(urgent):
                    self._emit_read_back(emit)
                if not self.readback.unread:  # commands and stops are handled between read-back steps only
                    paused, stop = self._obey(emit, commands, paused)
                    # ranks agree on stopping (a signal may reach them at different steps), else they would hang
                    if distributed.any_rank(stop or self._stop.is_set(), self.device):
                        return self._save_and_finish(emit, "stopped")
                if self.step >= self.total_steps:
                    return self._save_and_finish(emit, "completed")
                self._step(check=self.readback.every == 1)
                evaluate, save = self._evaluate_or_save_due()
                if self.readback.every == 1 or evaluate or save:
                    self._emit_read_back(emit)
                if evaluate:
                    val_loss, by_source = self.evaluate_sources()
                    text = self.evaluation_sample()
                    emit(EvalDone(step=self.step, val_loss=val_loss, source_losses=by_source, sample=text))
                if save:
                    emit(self.save())
        except (TrainingDiverged, torch.OutOfMemoryError, UserError, OSError) as e:
            return self._finish(emit, "error", self._explain(e))
        except Exception:
            self._save_before_crash()
            raise
        finally:
            if self._claim is not None:
                self._claim.release()
                self._claim = None

    def _claim_out_dir(self) -> None:
        """Lock out_dir and check it takes a checkpoint before the first step (runs.claim; rank 0 writes, every
        rank learns whether it could)."""
        weights = sum(t.numel() * t.element_size() for t in checkpoint.model_tensors(self.model).values())
        # the weights and AdamW's two moments of the same size; the JSON files (vocabulary, log) are smaller
        size = 3 * weights + len(str(self.tokens.meta)) + 200 * self.total_steps + 65536
        self._claim = self._on_rank_zero(
            lambda: runs.claim(self.train_cfg.out_dir, self.step, size),
            f"rank 0 cannot write to --out-dir {self.train_cfg.out_dir}",
        )

    def _run_started(self) -> RunStarted:
        cfg = self.train_cfg
        return RunStarted(
            start_step=self.step,
            total_steps=self.total_steps,
            n_params=self.n_params(),
            model=config.to_dict(self.model_cfg),
            train=config.to_dict(cfg),
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            dataset=self.tokens.source,
            tokenizer=str(self.tokens.meta.get("tokenizer")),
            tokens_per_step=self.tokens_per_step,
            history=tuple(dict(e) for e in self.log),
            seed=cfg.seed,
            world_size=self.world_size,
            block_params=sum(p.numel() for p in self.model.transformer.h.parameters()),
            train_tokens=len(self.tokens.train),
        )

    def _someone_waits(self, commands: queue.Queue | None) -> bool:
        """A queued command or a stop request: read the losses back now, so that it is obeyed soon."""
        return (commands is not None and not commands.empty()) or self._stop.is_set()

    def _emit_read_back(self, emit: Callable[[Event], None]) -> None:
        events, error = self._read_back()
        for event in events:
            emit(event)
        if error:
            raise error

    def _evaluate_or_save_due(self) -> tuple[bool, bool]:
        """Whether the step just done is evaluated (every validation_interval steps, and the last step) and
        saved (every save_interval steps; the last step is saved as the run ends)."""
        cfg = self.train_cfg
        last = self.step == self.total_steps
        evaluate = last or bool(cfg.validation_interval and self.step % cfg.validation_interval == 0)
        save = not last and bool(cfg.save_interval and self.step % cfg.save_interval == 0)
        return evaluate, save

    def _save_and_finish(self, emit: Callable[[Event], None], reason: str) -> RunFinished:
        self._emit_read_back(emit)
        if self.last_saved_step != self.step:
            emit(self.save())
        return self._finish(emit, reason)

    def _explain(self, error: Exception) -> str:
        """The one line a user sees for an error that ends the run."""
        if isinstance(error, TrainingDiverged):
            return str(error) + (f"; last good checkpoint: {self.last_stem}" if self.last_stem else "")
        if isinstance(error, torch.OutOfMemoryError):
            return (
                f"out of memory on {self.device} at step {self.step + 1}; "
                "try a smaller --batch-size (with --grad-accum to keep the batch)"
            )
        if isinstance(error, OSError):
            return f"{error.strerror or error}"
        return str(error)

    def _save_before_crash(self) -> None:
        """A bug, not a user error: keep what was learned (the weights are those of the last completed step:
        an exception inside a step leaves them untouched until optimizer.step) before it shows. One process
        only: under DDP the other ranks may be anywhere, and save() talks to them."""
        if self.world_size == 1 and self.step != self.last_saved_step:
            with contextlib.suppress(Exception):
                self._read_back()  # log the steps not yet read back, without emitting them
                saved = self.save()
                print(f"nanogpt: unexpected error; saved {saved.stem} first", file=sys.stderr)

    def _finish(self, emit: Callable[[Event], None], reason: str, message: str = "") -> RunFinished:
        event = RunFinished(step=self.step, reason=reason, stem=self.last_stem, message=message)
        emit(event)
        return event

    def _obey(
        self, emit: Callable[[Event], None], commands: queue.Queue | None, paused: bool
    ) -> tuple[bool, bool]:
        """Handle the queued commands; while paused, wait for more. Returns (paused, stop)."""
        if commands is None:
            return False, False
        while True:
            try:
                # while paused, block (with a timeout, so that request_stop is still noticed)
                command = commands.get(timeout=0.1) if paused else commands.get_nowait()
            except queue.Empty:
                if paused and not self._stop.is_set():
                    continue
                return paused, False
            if isinstance(command, Stop):
                if not command.save:
                    self.last_saved_step = self.step  # nothing to save: pretend it is saved
                return paused, True
            if isinstance(command, Pause) and not paused:
                paused = True
                emit(Paused(step=self.step))
            elif isinstance(command, Resume) and paused:
                paused = False
                emit(Resumed(step=self.step))
            elif isinstance(command, Sample):
                try:
                    text = self.sample(command.n_tokens, command.prompt)
                except UserError as e:
                    text = f"[cannot sample: {e}]"
                emit(Sampled(step=self.step, text=text))
            elif isinstance(command, Save):
                emit(self.save())


def _or_raise(events: list[StepDone], error: TrainingDiverged | None) -> list[StepDone]:
    if error:
        raise error
    return events
