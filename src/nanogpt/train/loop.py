"""`Trainer.run`, the one training loop every front end drives: commands in, events out, saves, the lock.

Synchronous and single-threaded: commands are obeyed between two steps; on CUDA/MPS losses are read back
several steps at a time (readback.py), at once on CPU, so there a NaN stops the run before the weights move.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import sys
import threading
from collections.abc import Callable

import torch

from .. import config, data, lineage
from ..runtime import distributed, machine
from ..store import runs
from ..errors import UserError
from ..events import (
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
from ..model import GPT
from . import best, plan, saving
from .readback import LossReadback, TrainingDiverged
from .state import RunState
from .step import Evaluation, EvaluationCut, Halted, Stepper


class Trainer:
    """Trains one model. Front ends call `run` and talk to it by commands and events (events.Engine); tests and
    tools may call the step-level methods directly.

    `stepper` does the device work (step.py), `state` holds the run's progress (state.py), `best` decides
    what to keep (best.py); the trainer joins them: it logs what the stepper did, saves, and talks to the
    front end.
    """

    def __init__(
        self,
        model_cfg: config.ModelConfig,
        train_cfg: config.TrainConfig,
        tokens: data.TokenData,
        hardware: machine.Hardware,
        stepper: Stepper,
        state: RunState,
        notes: tuple[str, ...] | list[str] = (),
        budget: plan.Budget | None = None,
        lineage: list[dict] | None = None,
    ):
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.tokens = tokens
        self.hardware = hardware
        self.stepper = stepper
        self.state = state
        self.notes = tuple(notes)  # for the user, from building it: a front end shows them before the run
        self.lineage = list(lineage or [])  # how its weights came to be (lineage.py), saved with each checkpoint
        self.readback = LossReadback(hardware.sync_every, hardware.world_size)
        self._stop = threading.Event()
        self.budget = budget  # --time (plan.py): the loop's clock
        self.best = best.BestKeeper(train_cfg.out_dir, train_cfg.overfit_evaluations, train_cfg.stop_when_overfitting)
        self.claim: runs.Claim | None = None  # the lock on out_dir while `run` runs: saves go into that folder

    # ------------------------------------------------------------------------- the loop
    def run(
        self, emit: Callable[[Event], None], commands: queue.Queue | None = None, start_paused: bool = False
    ) -> RunFinished:
        """The training loop, one iteration per optimizer step: obey the commands, step, read the losses back
        when due, evaluate and keep the best, save; the run ends completed, stopped or with one line of error."""
        cfg, state, device = self.train_cfg, self.state, self.hardware.device
        emit(run_started(self))
        paused = start_paused
        if paused:
            emit(Paused(step=state.step))
        urgent = functools.partial(self._someone_waits, commands)
        try:
            self.claim = saving.claim_out_dir(self.hardware, self.stepper.model, self.tokens.meta, cfg, state.step)
            if self.budget is not None:
                self.budget.started()  # --time counts from here: start-up is not the run's time
            while True:
                # commands: between two read-back steps only; every rank agrees to stop (a signal may reach
                # them at different steps), else they would hang
                if not self.readback.unread:
                    paused, stop = obey(self, emit, commands, paused)
                    if distributed.any_rank(stop is not None or self._stop.is_set(), device):
                        return self._save_and_finish(emit, "stopped", save=stop is None or stop.save)
                if state.step >= cfg.steps:
                    return self._save_and_finish(emit, "completed")
                # the step; its loss is read back at once on CPU, every few steps on an accelerator (readback.py)
                self._step(check=self.readback.every == 1)
                if self.budget is not None:  # --time: the end moved to land on the budget (before the decay)
                    cfg = keep_to_budget(self, emit)
                last = state.step == cfg.steps
                evaluate = last or bool(cfg.validation_interval and state.step % cfg.validation_interval == 0)
                save = not last and bool(cfg.save_interval and state.step % cfg.save_interval == 0)
                save = save or (self.budget is not None and self.budget.keeps(state.step, cfg))
                if evaluate or save or self.readback.due(urgent):
                    self._read_back_or_raise(emit)
                if evaluate:  # the validation loss, and the best checkpoint kept
                    self._evaluate(emit, keep=save or last)
                if save and state.unsaved:
                    emit(self.save())
        except (TrainingDiverged, torch.OutOfMemoryError, UserError, OSError) as e:
            return self._finish(emit, "error", explain(e, self))
        except Halted as e:  # request_stop(now=True): the last checkpoint saved stays the run's last
            return self._finish(emit, "stopped", str(e))
        except Exception:
            self._save_before_crash()
            raise
        finally:
            if self.claim is not None:
                self.claim.release()
                self.claim = None

    def request_stop(self, now: bool = False) -> None:
        """Finish the current step, save, and end the loop (safe from signal handlers and other threads; an
        evaluation in progress is dropped, Stepper.cut); `now`: end it at its next batch instead, the step or
        evaluation in progress dropped, nothing more saved."""
        self._stop.set()
        self.stepper.cut.set()
        if now:
            self.stepper.halt.set()

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------------- steps, evaluation, sampling
    def train_step(self) -> StepDone:
        """One optimizer step over grad_accum micro-batches (per rank); raises TrainingDiverged on NaN/inf.

        Reads the loss back at once (on an accelerator, a host-device sync); `run` defers that on CUDA/MPS.
        """
        self._step(check=True)
        return self._read_back_or_raise()[0]

    def train_steps(self, n: int) -> list[StepDone]:
        """`n` steps whose losses are read back together at the end: on an accelerator, no host-device
        sync between them (what `run` does per log interval). Raises TrainingDiverged on NaN/inf, found at
        the end (the weights have moved on by then)."""
        for _ in range(n):
            self._step(check=False)
        return self._read_back_or_raise()

    def _step(self, check: bool) -> None:
        """One step by the stepper, counted in the state, its loss left to `readback`."""
        finished = self.stepper.step(self.state.step, self.state.batch_counter, check)
        self.state.advance(self.stepper.micro_batches)
        self.readback.add(finished)

    def _read_back(self) -> tuple[list[StepDone], TrainingDiverged | None]:
        """Read the unread losses back and log their steps; with the error to raise at a NaN/inf."""
        events, error = self.readback.read(config.tokens_per_step(self.model_cfg, self.train_cfg,
                                                                  self.hardware.world_size))
        self.state.log_steps(events)
        return events, error

    def _read_back_or_raise(self, emit: Callable[[Event], None] | None = None) -> list[StepDone]:
        events, error = self._read_back()
        for event in events if emit is not None else ():
            emit(event)
        if error:
            raise error
        return events

    def evaluate(self) -> float:
        """Mean validation loss over eval_iters fixed batches (the same ones every time; no RNG touched)."""
        return self.evaluate_all().loss

    def evaluate_all(self) -> Evaluation:
        """The validation loss and bits per byte, and each source's, logged at the current step."""
        result = self.stepper.evaluate()
        self.state.log_evaluation(result.loss, result.bpb, result.source_losses, result.source_bpb)
        return result

    def _evaluate(self, emit: Callable[[Event], None], keep: bool) -> None:
        """Evaluate the step just done and keep a sample; keep the step as the best when it is (`keep`: it is
        saved for another reason too); say once when the run overfits, and stop there if asked to. Dropped when a
        stop is asked for during it: the loop saves next."""
        try:
            result = self.evaluate_all()
        except EvaluationCut:
            return
        text = self.evaluation_sample()
        emit(EvalDone(step=self.state.step, val_loss=result.loss, source_losses=result.source_losses, sample=text,
                      val_bpb=result.bpb, source_bpb=result.source_bpb))
        if self.best.improves(result.loss):
            written = self.state.unsaved
            saved = self.save(as_best=True)
            superseded = self.best.recorded(self.state.step, saved.stem, result.loss, written and not keep)
            saving.on_rank_zero(self.hardware, lambda: self.best.publish(superseded, self.claim),
                                f"rank 0 could not write {runs.BEST_FILE}")
            if written:
                emit(saved)
        notice = self.best.overfitting(self.state.log, self.state.step, self.train_cfg.steps)
        if notice is not None:
            emit(notice)
            if notice.stopping:
                self.request_stop()

    def evaluation_sample(self) -> str:
        """The sample kept at an evaluation (rank 0; "" when --eval-sample-tokens is 0): the same empty prompt and
        seed every time, so that samples at successive steps differ only by what the model has learned."""
        n = self.train_cfg.eval_sample_tokens
        if n == 0 or not (self.hardware.is_main or self.hardware.shard):  # sharded: every rank helps to gather
            return ""
        try:
            text = self.stepper.sample(n, "", self.train_cfg.seed, cuttable=True)
        except EvaluationCut:  # a stop asked for during it: the sample is dropped, the evaluation kept
            text = ""
        if self.hardware.is_main:
            self.state.log_at_step(sample=text)
        return text

    def sample(self, n_tokens: int, prompt: str = "", seed: int | None = None) -> str:
        """Text sampled from the current weights (by default seeded with the run's seed + the step); leaves the
        run unchanged (Stepper.sample)."""
        seed = self.train_cfg.seed + self.state.step if seed is None else seed
        return self.stepper.sample(n_tokens, prompt, seed)

    # ------------------------------------------------------------------------- checkpoints
    def save(self, as_best: bool = False) -> Saved:
        """Write checkpoint model_step_N for the current step into out_dir (rank 0 only writes). `as_best`: saved
        for its validation loss alone (best.py may remove it once a better one is kept)."""
        if not as_best:
            self.best.wanted(self.state.saved_stem if not self.state.unsaved else None)
        return saving.save_step(self.stepper, self.state, self.model_cfg, self.train_cfg, self.tokens.meta, as_best,
                                self.lineage, self.claim)

    def _someone_waits(self, commands: queue.Queue | None) -> bool:
        """A queued command or a stop request: read the losses back now, so that it is obeyed soon."""
        return (commands is not None and not commands.empty()) or self._stop.is_set()

    def _save_and_finish(self, emit: Callable[[Event], None], reason: str, save: bool = True) -> RunFinished:
        self._read_back_or_raise(emit)
        if save and self.state.unsaved:
            emit(self.save())
        return self._finish(emit, reason)

    def _save_before_crash(self) -> None:
        """A bug, not a user error: keep what was learned (the weights are those of the last completed step:
        an exception inside a step leaves them untouched until optimizer.step) before it shows. One process
        only: under DDP the other ranks may be anywhere, and save() talks to them."""
        if self.hardware.world_size == 1 and self.state.unsaved:
            with contextlib.suppress(Exception):
                self._read_back()  # log the steps not yet read back, without emitting them
                saved = self.save()
                print(f"nanogpt: unexpected error; saved {saved.stem} first", file=sys.stderr)

    def _finish(self, emit: Callable[[Event], None], reason: str, message: str = "") -> RunFinished:
        event = RunFinished(step=self.state.step, reason=reason, stem=self.state.saved_stem, message=message)
        emit(event)
        return event


def keep_to_budget(trainer: Trainer, emit: Callable[[Event], None]) -> config.TrainConfig:
    """--time (plan.Budget): the end moved to land on the budget, and a stop past it (an evaluation due at this
    step is then dropped, Stepper.cut)."""
    budget = trainer.budget
    assert budget is not None
    moved = budget.follow(trainer.state.step, trainer.train_cfg, trainer.state.log)
    if moved is not None:
        trainer.train_cfg = trainer.stepper.cfg = moved[0]
        emit(moved[1])
    if budget.over():
        trainer.request_stop()
    return trainer.train_cfg


def run_started(trainer: Trainer) -> RunStarted:
    """The event that opens a run: what is trained, on what, from which step, and what building it noted."""
    t, cfg, hardware = trainer, trainer.train_cfg, trainer.hardware
    model: GPT = t.stepper.model
    return RunStarted(
        start_step=t.state.step,
        total_steps=cfg.steps,
        n_params=model.num_params(),
        model=config.to_dict(t.model_cfg),
        train=config.to_dict(cfg),
        device=str(hardware.device),
        dtype=str(hardware.dtype).removeprefix("torch."),
        dataset=t.tokens.source,
        tokenizer=str(t.tokens.meta.get("tokenizer")),
        tokens_per_step=config.tokens_per_step(t.model_cfg, cfg, hardware.world_size),
        history=tuple(dict(e) for e in t.state.log),
        seed=cfg.seed,
        world_size=hardware.world_size,
        block_params=sum(p.numel() for p in model.transformer.h.parameters()),
        train_tokens=len(t.tokens.train),
        notes=t.notes,
        resumed_from=t.state.saved_stem,
        origin=lineage.summary(t.lineage[-1].get("preset"), t.lineage[-1].get("changed") or {})
        if t.lineage and t.lineage[-1].get("start") != "resume" else "",
    )


def explain(error: Exception, trainer: Trainer) -> str:
    """The one line a user sees for an error that ends the run."""
    if isinstance(error, TrainingDiverged):
        last = trainer.state.saved_stem
        return str(error) + (f"; last good checkpoint: {last}" if last else "")
    if isinstance(error, torch.OutOfMemoryError):
        return (
            f"out of memory on {trainer.hardware.device} at step {trainer.state.step + 1}; "
            "try a smaller --batch-size (with --grad-accum to keep the batch)"
        )
    if isinstance(error, OSError):
        return f"{error.strerror or error}"
    return str(error)


def obey(
    trainer: Trainer, emit: Callable[[Event], None], commands: queue.Queue | None, paused: bool
) -> tuple[bool, Stop | None]:
    """Handle the queued commands; while paused, wait for more. Returns (paused, the Stop command if any)."""
    if commands is None:
        return False, None
    while True:
        try:
            # while paused, block (with a timeout, so that request_stop is still noticed)
            command = commands.get(timeout=0.1) if paused else commands.get_nowait()
        except queue.Empty:
            if paused and not trainer.stop_requested():
                continue
            return paused, None
        if isinstance(command, Stop):
            return paused, command
        if isinstance(command, Pause) and not paused:
            paused = True
            emit(Paused(step=trainer.state.step))
        elif isinstance(command, Resume) and paused:
            paused = False
            emit(Resumed(step=trainer.state.step))
        elif isinstance(command, Sample):
            try:
                text = trainer.sample(command.n_tokens, command.prompt)
            except UserError as e:
                text = f"[cannot sample: {e}]"
            emit(Sampled(step=trainer.state.step, text=text))
        elif isinstance(command, Save):
            emit(trainer.save())
