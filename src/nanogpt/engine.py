"""The training engine: `build_trainer` resolves settings, data and hardware; `Trainer.run` is the one loop.

Every front end (headless lines, the Textual UI, torchrun) drives the same `Trainer.run(emit, commands)`:
it emits events (events.py) and obeys commands between two steps. The engine is synchronous and
single-threaded; a UI runs it in one worker thread and talks to it only through the queue and the events.

Determinism, which exact resume rests on:
- data batch i is a pure function of (seed, i) (data.py); the step's global micro-batches are
  `batch_counter + m * world_size + rank`, and the counter is saved;
- the torch RNG (dropout) is re-seeded before every micro-batch from (seed, global micro-batch index), so
  no RNG state has to be carried over a checkpoint, ranks get different dropout masks, and a run gives the
  same result however it is split over processes (N ranks x accumulation A = 1 process x N*A);
- the learning rate is a pure function of the step (schedule.py); the optimizer moments are saved.

Host-device syncs: on CUDA/MPS nothing inside a step reads a value back. `run` reads the losses of
`sync_every` steps (the log interval) in one transfer, or sooner when a command waits, a stop is asked
for, an evaluation or a save is due, or half a second has passed; StepDone events then come in bursts.
On CPU reading a loss costs nothing, so each is read at once and a NaN stops the run before the weights
move (on an accelerator the NaN is found up to `sync_every` steps later; the last checkpoint is kept).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import queue
import secrets
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import checkpoint, config, data, distributed, hf, runtime, schedule
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

DATA_FIELDS = ("data_dir", "training_dataset", "validation_dataset", "vocab_metadata")
SIZE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size")


# On an accelerator, losses are read back (a host-device sync) once per log interval, or sooner when this
# many seconds have passed since the oldest unread step started (so a UI stays live on slow steps).
SETTLE_SECONDS = 0.5


@dataclasses.dataclass
class _Pending:
    """A finished optimizer step whose loss may still be a device tensor (see Trainer._settle)."""

    step: int
    lr: float
    loss: torch.Tensor | float
    t0: float
    t1: float


class TrainingDiverged(Exception):
    """The loss became NaN or infinite: training cannot continue from here."""

    @classmethod
    def at(cls, step: int, loss: float) -> TrainingDiverged:
        return cls(f"training loss became {loss} at step {step}; try a lower --learning-rate or --grad-clip")


def _dropout_seed(seed: int, index: int) -> int:
    """Seed of the torch RNG (dropout) for global micro-batch `index`: a pure function, so resume needs no
    state and the dropout masks do not depend on which rank draws the batch."""
    return (seed * 1_000_003 + index * 7919 + 1) % (2**63 - 1)


# ----------------------------------------------------------------------------- building a trainer
def _resolve_data(train_cfg: config.TrainConfig) -> tuple[config.TrainConfig, data.TokenData]:
    """Open the dataset the config names, or the bundled corpus when it names none."""
    if all(getattr(train_cfg, f) is None for f in DATA_FIELDS):
        from .prepare import bundled_dataset

        train_cfg = dataclasses.replace(train_cfg, data_dir=str(bundled_dataset()))
    # absolute paths in the saved config, so that a resume from another folder finds the same data
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


def build_trainer(overrides: dict[str, Any], preset: str | None = None, resume: str | None = None) -> Trainer:
    """Resolve device, settings and data, build model and optimizer, and (with `resume`) restore a checkpoint.

    Settings: the dataclass defaults (or with `resume`, the checkpoint's saved config), then `preset`,
    then `overrides` (the flags the user typed). With no preset, no size flags and no resume, the device's
    default preset. Raises UserError for anything the user got wrong.
    """
    overrides = dict(overrides)
    stem = checkpoint.stem_of(resume) if resume is not None else None
    meta = checkpoint.read_meta(stem) if stem is not None else None
    saved = checkpoint.configs(meta) if meta is not None else None
    device_name = overrides.get("device") or (saved[1].device if saved else "auto")
    device = distributed.local_device(runtime.resolve_device(device_name))  # cuda:LOCAL_RANK under torchrun
    if saved is None and preset is None and overrides.get("init_from"):
        preset = "finetune"  # the weights fix the shape; the schedule is a fine-tune's
    if saved is None and preset is None and not any(k in overrides for k in SIZE_FIELDS):
        preset = config.default_preset(device.type)
    if saved is not None and any(k in overrides for k in DATA_FIELDS):
        # new data options replace the saved ones as a group (a new --data-dir drops the saved file paths)
        saved = (saved[0], dataclasses.replace(saved[1], **{f: None for f in DATA_FIELDS}))
    model_cfg, train_cfg = config.resolve(overrides, preset, base=saved)
    if saved is not None and overrides.get("init_from"):
        raise UserError("--init-from starts a new run and --resume-training continues one: give only one")
    imported = None  # weights to start from (--init-from); a resumed run has its own
    if saved is None and train_cfg.init_from:
        imported = hf.load_source(train_cfg.init_from)
        model_cfg = hf.take_architecture(model_cfg, imported, overrides)
    if saved is not None:
        _check_resume_shape(saved[0], model_cfg, stem)
        # --grad-accum is per process: on another world size keep the checkpoint's effective batch
        train_cfg = distributed.keep_effective_batch(train_cfg, saved[1], stem, overrides)
    if train_cfg.seed == 0:
        distributed.init_process_group(device)  # under torchrun every rank must use rank 0's pick
        seed = distributed.broadcast_int(secrets.randbelow(2**31 - 1) + 1, device)
        train_cfg = dataclasses.replace(train_cfg, seed=seed)
        if distributed.is_main():
            print(
                f"seed 0: using random seed {train_cfg.seed} (pass --seed {train_cfg.seed} to repeat)",
                file=sys.stderr,
            )
    train_cfg, tokens = _resolve_data(train_cfg)
    if meta is not None:
        saved_tok = meta["tokenizer"]
        if saved_tok.get("vocab_size") != tokens.vocab_size or saved_tok.get("itos") != tokens.meta.get(
            "itos"
        ):
            raise UserError(
                f"the data's vocabulary ({tokens.source}) differs from checkpoint {stem}'s "
                f"({saved_tok.get('vocab_size')} tokens): resume on data prepared with the same vocabulary"
            )
    if imported is not None:
        hf.check_data(imported, tokens.meta, tokens.source)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=tokens.vocab_size)
    data.check_block_size(tokens, model_cfg.block_size)
    return Trainer(model_cfg, train_cfg, tokens, device, resume=stem, init_from=imported)


class Trainer:
    """Trains one model. Front ends call `run`; tests and tools may call the step-level methods directly."""

    def __init__(
        self,
        model_cfg: config.ModelConfig,
        train_cfg: config.TrainConfig,
        tokens: data.TokenData,
        device: torch.device,
        resume: Path | None = None,
        init_from: hf.Imported | None = None,
    ):
        self.model_cfg = model_cfg
        self.train_cfg = train_cfg
        self.tokens = tokens
        self.device = device
        distributed.init_process_group(device.type)
        self.rank = distributed.rank()
        self.world_size = distributed.world_size()
        self.is_main = self.rank == 0
        self.dtype = runtime.resolve_dtype(train_cfg.dtype, device)
        self.step = 0  # optimizer steps done; model_step_N is the state after N steps
        self.batch_counter = 0  # global micro-batches consumed so far (over all ranks)
        self.log: list[dict[str, Any]] = []
        self.last_saved_step = 0  # the untrained state at step 0 is never worth a checkpoint of its own
        self.last_stem: str | None = None
        self._stop = threading.Event()

        torch.manual_seed(train_cfg.seed)  # the same initial weights on every rank
        self.model = GPT(model_cfg).to(device)  # the plain module: saved, sampled from
        if init_from is not None:
            hf.load_into(self.model, init_from)  # imported weights replace the random ones
        self.optimizer = runtime.make_optimizer(
            self.model,
            lr=train_cfg.learning_rate,
            betas=(train_cfg.beta1, train_cfg.beta2),
            weight_decay=train_cfg.weight_decay,
            device=device,
        )
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        if resume is not None:
            self._restore(resume)
        # CPU: each micro-batch runs as single-threaded shards side by side, one per core (see runtime)
        workers = runtime.core_parallel_workers(
            device,
            batch_size=train_cfg.batch_size,
            dropout=model_cfg.dropout,
            dtype=self.dtype,
            world_size=self.world_size,
        )
        self.forward_model: torch.nn.Module = self.model  # what training and evaluation call
        if runtime.should_compile(train_cfg.compile, device):
            self.forward_model = runtime.compile_model(self.model, device, workers)
        self.train_module: torch.nn.Module = self.forward_model
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = (
                [device.index if device.index is not None else distributed.local_rank()]
                if device.type == "cuda"
                else None
            )
            self.train_module = DistributedDataParallel(self.forward_model, device_ids=ids)
        self.core_parallel = runtime.CoreParallel(workers) if workers > 1 else None
        # steps whose losses `run` reads back at once: 1 on CPU (free there; a NaN then stops the run before
        # the weights move), the log interval on CUDA/MPS (one host-device sync per interval, not per step)
        # (NANOGPT_SYNC_EVERY=N sets it on any device: a diagnostic, and how the tests run the deferred
        # path, torchrun ranks included, on CPU)
        self.sync_every = 1 if device.type == "cpu" else max(1, train_cfg.log_interval)
        if os.environ.get("NANOGPT_SYNC_EVERY", "").isdigit():
            self.sync_every = max(1, int(os.environ["NANOGPT_SYNC_EVERY"]))
        runtime.configure_threads(device, workers)
        if device.type == "cpu":
            runtime.keep_freed_memory()  # a step's activations are reused, not re-faulted (see runtime)
        self.model.train()
        self.train_batches = data.BatchSampler(
            tokens.train,
            block_size=model_cfg.block_size,
            batch_size=train_cfg.batch_size,
            seed=train_cfg.seed,
            stream=data.TRAIN_STREAM,
            device=device,
        )
        self.val_batches = data.BatchSampler(
            tokens.val,
            block_size=model_cfg.block_size,
            batch_size=train_cfg.eval_batch_size,
            seed=train_cfg.seed,
            stream=data.VAL_STREAM,
            device=device,
        )

    # ------------------------------------------------------------------------- properties
    @property
    def total_steps(self) -> int:
        return self.train_cfg.steps

    @property
    def tokens_per_step(self) -> int:
        cfg = self.train_cfg
        return cfg.batch_size * self.model_cfg.block_size * cfg.grad_accum * self.world_size

    def n_params(self) -> int:
        return self.model.num_params()

    def lr_at(self, step: int) -> float:
        cfg = self.train_cfg
        return schedule.learning_rate(
            step,
            peak=cfg.learning_rate,
            minimum=cfg.min_learning_rate,
            warmup=cfg.warmup_steps,
            total=cfg.steps,
            kind=cfg.lr_schedule,
        )

    # ------------------------------------------------------------------------- one step
    def train_step(self) -> StepDone:
        """One optimizer step over grad_accum micro-batches (per rank); raises TrainingDiverged on NaN/inf.

        Reads the loss back at once (on an accelerator, a host-device sync); `run` defers that on CUDA/MPS.
        """
        events, error = self._settle([self._step(check=True)])
        if error:
            raise error
        return events[0]

    def train_steps(self, n: int) -> list[StepDone]:
        """`n` steps whose losses are read back together at the end: on an accelerator, no host-device
        sync between them (what `run` does per log interval). Raises TrainingDiverged on NaN/inf, found at
        the end (the weights have moved on by then)."""
        events, error = self._settle([self._step(check=False) for _ in range(n)])
        if error:
            raise error
        return events

    def _step(self, check: bool) -> _Pending:
        """The step's work. check: read the loss now and refuse a NaN/inf before the weights move (CPU,
        where reading costs nothing); otherwise the loss stays a device tensor until `_settle` (no sync)."""
        cfg = self.train_cfg
        t0 = time.perf_counter()
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            index = data.global_batch_index(self.batch_counter, micro, self.rank, self.world_size)
            x, y = self.train_batches.batch(index)
            torch.manual_seed(_dropout_seed(cfg.seed, index))
            if self.core_parallel is not None:
                total += self.core_parallel.forward_backward(
                    self.train_module,
                    x,
                    y,
                    loss_scale=1 / cfg.grad_accum,
                    device=self.device,
                    dtype=self.dtype,
                )
                continue
            last = micro == cfg.grad_accum - 1
            # under DDP only the last micro-step all-reduces the gradients
            sync = contextlib.nullcontext() if last or self.world_size == 1 else self.train_module.no_sync()
            with sync:
                with runtime.autocast(self.device, self.dtype):
                    _, loss = self.train_module(x, y)
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
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.batch_counter += cfg.grad_accum * self.world_size
        return _Pending(step=self.step, lr=lr, loss=loss_now, t0=t0, t1=time.perf_counter())

    def _settle(self, pending: list[_Pending]) -> tuple[list[StepDone], TrainingDiverged | None]:
        """Log finished steps and return their StepDone events, reading all their deferred losses back in
        one transfer (and, under DDP, one all-reduce). At the first NaN/inf: the steps before it, and the
        error to raise once they are shown (the steps after it are not logged).

        A deferred step's host-side time says little (the accelerator runs behind the host), so those
        steps share the wall time from the first one's start to now equally.
        """
        if not pending:
            return [], None
        deferred = [p.loss for p in pending if isinstance(p.loss, torch.Tensor)]
        values = iter(distributed.mean(torch.stack(deferred)).tolist() if deferred else ())
        shared = (time.perf_counter() - pending[0].t0) / len(pending)
        events: list[StepDone] = []
        for p in pending:
            if isinstance(p.loss, torch.Tensor):
                loss, duration = next(values), shared
                if not math.isfinite(loss):
                    return events, TrainingDiverged.at(p.step, loss)
            else:
                loss, duration = p.loss, p.t1 - p.t0
            self.log.append({"step": p.step, "loss": loss, "duration_ms": duration * 1000.0})
            events.append(StepDone(
                step=p.step,
                loss=loss,
                duration_ms=duration * 1000.0,
                lr=p.lr,
                tokens_per_s=self.tokens_per_step / max(duration, 1e-9),
            ))
        return events, None

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over eval_iters fixed batches (the same ones every time; no RNG touched)."""
        self.model.eval()
        try:
            total = torch.zeros((), device=self.device)
            count = torch.zeros((), device=self.device)
            for i in range(self.rank, self.train_cfg.eval_iters, self.world_size):
                x, y = self.val_batches.batch(i)
                with runtime.autocast(self.device, self.dtype):
                    _, loss = self.forward_model(x, y)
                total += loss.float()
                count += 1
            if self.world_size > 1:
                import torch.distributed as dist

                dist.all_reduce(total)
                dist.all_reduce(count)
            value = (total / count).item()
        finally:
            self.model.train()
        if self.log and self.log[-1]["step"] == self.step:
            self.log[-1]["validation_loss"] = value
        return value

    @torch.no_grad()
    def sample(self, n_tokens: int, prompt: str = "") -> str:
        """Text sampled from the current weights (prompt + continuation); leaves the run unchanged.

        Uses generate.py's sampler (temperature 1) in eval mode with its own generator, and restores train
        mode and the global RNG state, so a run that samples trains exactly like one that does not.
        """
        from .generate import generate_tokens, start_ids

        tok = self.tokens.tokenizer
        ids = start_ids(tok, prompt)  # UserError for a character outside the vocabulary
        cpu_state = torch.get_rng_state()
        cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        generator = torch.Generator(device=self.device).manual_seed(self.train_cfg.seed + self.step)
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
        stem = checkpoint.stem_for(self.train_cfg.out_dir, self.step)
        paths: tuple[str, ...] = ()
        failure: UserError | None = None
        if self.is_main:
            try:
                paths = checkpoint.save(
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
                )
            except OSError as e:
                failure = UserError(f"cannot write checkpoint {stem}: {e.strerror or e}")
        # under torchrun every rank learns whether rank 0 could write, so that they all stop together
        if distributed.any_rank(failure is not None, self.device):
            raise failure or UserError(f"rank 0 could not write checkpoint {stem}")
        self.last_saved_step = self.step
        self.last_stem = str(stem)
        return Saved(step=self.step, stem=str(stem), paths=paths)

    def _restore(self, stem: Path) -> None:
        """Continue from checkpoint `stem`: weights, optimizer moments, step, batch counter, training log."""
        checkpoint.load_weights(self.model, checkpoint.weights_path(stem))
        state, tensors = checkpoint.read_resume(stem)
        checkpoint.load_optimizer(self.optimizer, tensors)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.batch_counter = int(state.get("batch_counter", 0))
        self.log = [e for e in checkpoint.read_log(stem) if e["step"] <= self.step]
        self.last_saved_step = self.step
        self.last_stem = str(stem)

    # ------------------------------------------------------------------------- the loop
    def request_stop(self) -> None:
        """Finish the current step, save, and end the loop (safe from signal handlers and other threads)."""
        self._stop.set()

    def run(
        self, emit: Callable[[Event], None], commands: queue.Queue | None = None, start_paused: bool = False
    ) -> RunFinished:
        """The training loop: emit RunStarted, then steps/evaluations/saves; obey commands between steps."""
        cfg = self.train_cfg
        emit(
            RunStarted(
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
            )
        )
        paused = start_paused
        if paused:
            emit(Paused(step=self.step))
        # Finished steps whose loss is still on the device. On CPU each loss is read at once (free there);
        # on an accelerator `sync_every` steps at a time: the host runs ahead and queues the next steps
        # (batch copies included) while the device computes, with no sync inside a step.
        pending: list[_Pending] = []

        def settle() -> None:
            batch = pending[:]
            pending.clear()
            events, error = self._settle(batch)  # logged before any is shown: a failing front end loses none
            for event in events:
                emit(event)
            if error:
                raise error

        def due() -> bool:
            if len(pending) >= self.sync_every:
                return True
            if self.world_size > 1:
                return False  # every rank must settle (an all-reduce) at the same steps: count only
            waiting = commands is not None and not commands.empty()
            return waiting or self._stop.is_set() or time.perf_counter() - pending[0].t0 >= SETTLE_SECONDS

        try:
            while True:
                if pending and due():
                    settle()
                if not pending:  # commands and stops are handled between settled steps only
                    paused, stop = self._obey(emit, commands, paused)
                    # ranks agree on stopping (a signal may reach them at different steps), else they would hang
                    if distributed.any_rank(stop or self._stop.is_set(), self.device):
                        if self.last_saved_step != self.step:
                            emit(self.save())
                        return self._finish(emit, "stopped")
                if self.step >= self.total_steps:
                    break
                pending.append(self._step(check=self.sync_every == 1))
                last = self.step == self.total_steps
                evaluate = last or (cfg.validation_interval and self.step % cfg.validation_interval == 0)
                save = not last and cfg.save_interval and self.step % cfg.save_interval == 0
                if self.sync_every == 1 or evaluate or save:
                    settle()
                if evaluate:
                    emit(EvalDone(step=self.step, val_loss=self.evaluate()))
                if save:
                    emit(self.save())
            settle()
            if self.last_saved_step != self.step:
                emit(self.save())
            return self._finish(emit, "completed")
        except TrainingDiverged as e:
            return self._finish(
                emit,
                "error",
                str(e) + (f"; last good checkpoint: {self.last_stem}" if self.last_stem else ""),
            )
        except torch.OutOfMemoryError:
            return self._finish(
                emit,
                "error",
                f"out of memory on {self.device} at step {self.step + 1}; "
                "try a smaller --batch-size (with --grad-accum to keep the batch)",
            )
        except UserError as e:
            return self._finish(emit, "error", str(e))
        except OSError as e:
            return self._finish(emit, "error", f"{e.strerror or e}")
        except Exception:
            # A bug, not a user error: keep what was learned (the weights are those of the last completed
            # step: an exception inside a step leaves them untouched until optimizer.step), then let it show.
            # (one process only: under DDP the other ranks may be anywhere, and save() talks to them)
            if self.world_size == 1 and self.step != self.last_saved_step:
                with contextlib.suppress(Exception):
                    self._settle(pending)  # log the steps not yet read back, without emitting them
                    saved = self.save()
                    print(f"nanogpt: unexpected error; saved {saved.stem} first", file=sys.stderr)
            raise

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
