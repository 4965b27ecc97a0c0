"""Training without the UI (no TTY, CI, torchrun, `--headless`): progress lines, signals, exit code.

One line per `--log-interval` steps and one per validation loss go to stdout (rank 0 only); on a terminal
a Rich progress bar sits below them. SIGINT/SIGTERM, and a stdout that can no longer be written (`| head`
has exited), finish the current step, save and exit 0; a second SIGINT or SIGTERM stops at once, even
mid-step (a save it cuts short is removed, so the last whole checkpoint stays the run's last).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .events import (
    EvalDone, Engine, Event, Overfitting, Paused, Replanned, RunFinished, RunStarted, Sampled, Saved, StepDone,
    overfitting_text,
)
from .store.files import discard_output
from .summary import count, data_use, hints, parameter_parts, plural, print_end_of_run


def _effective_batch(event: RunStarted) -> str:
    """', effective batch 12 x 2 accumulation x 4 processes = 96 sequences' when more than --batch-size."""
    batch, accum = event.train["batch_size"], event.train["grad_accum"]
    if accum == 1 and event.world_size == 1:
        return ""
    parts = [str(batch)] + ([f"{accum} accumulation"] if accum > 1 else [])
    parts += [f"{event.world_size} processes"] if event.world_size > 1 else []
    return f", effective batch {' x '.join(parts)} = {batch * accum * event.world_size} sequences"


def _recipe(t: dict[str, Any]) -> str:
    """The optimizer(s) and the schedule of a run, in a few words."""
    if t["optimizer"] == "muon":
        what = (f"Muon lr {t['muon_learning_rate']:g} (momentum {t['muon_momentum']:g}) on the block matrices, "
                f"AdamW lr {t['learning_rate']:g} on the rest")
    else:
        what = f"AdamW lr {t['learning_rate']:g}"
    when = f"{t['lr_schedule']} schedule, warm-up {t['warmup_steps']}"
    if t["lr_schedule"] == "wsd":
        when += f", linear decay over the last {t['decay_fraction']:.0%} of the steps"
    return f"{what}; {when}"


def _bpb(value: float | None) -> str:
    """' (2.12 bpb)': a loss in bits per byte of text, comparable across tokenizers ('' when unknown)."""
    return f" ({value:.3f} bpb)" if value is not None and math.isfinite(value) else ""


class _Printer:
    """Turns events into lines (and a progress bar on a terminal); remembers the step and checkpoint they told."""

    def __init__(self, engine: Engine, quiet: bool):
        self.engine = engine
        self.quiet = quiet
        self.progress: Any = None
        self.task: Any = None
        self.interval, self.total = 1, 0  # --log-interval and --steps, from RunStarted
        self.step, self.stem = 0, None  # the last step shown and checkpoint saved (or resumed from)

    def line(self, text: str) -> None:
        if self.quiet:
            return
        try:
            if self.progress is not None:
                self.progress.console.print(text, highlight=False, markup=False)
            else:
                print(text, flush=True)
        except OSError as e:  # the reader went away (EPIPE), or a full disk: as a SIGTERM, finish, save, stop
            self.quiet = True
            discard_output()
            _say(f"cannot write to stdout ({e.strerror or e}): finishing this step, then saving")
            self.engine.request_stop()

    def __call__(self, event: Event) -> None:
        self.step = getattr(event, "step", getattr(event, "start_step", self.step))
        if isinstance(event, (Saved, RunStarted)):
            self.stem = event.stem if isinstance(event, Saved) else event.resumed_from
        if isinstance(event, RunStarted):
            self.interval, self.total = max(1, int(event.train["log_interval"])), event.total_steps
            m = event.model
            what = "resuming at step" if event.start_step else "training"
            self.line(
                f"{what} {event.start_step if event.start_step else ''}".rstrip()
                + f": {count(event.n_params)} parameters ({m['n_layer']} layers, {m['n_head']} heads, "
                f"{m['n_embd']} embedding, block {m['block_size']}) on {event.device} ({event.dtype}), "
                f"{plural(event.total_steps, 'step')} of {event.tokens_per_step:,} tokens, data {event.dataset} "
                f"({event.tokenizer}), seed {event.seed}" + _effective_batch(event)
            )
            self.line(f"model: {parameter_parts(event)}")
            if event.train_tokens:
                self.line(f"data: {data_use(event)}")
            for hint in hints(event):
                self.line(f"note: {hint}")
            if event.origin:
                self.line(event.origin)
            self.line(f"recipe: {_recipe(event.train)}")
            if self.progress is not None:
                self.task = self.progress.add_task(
                    "training", total=event.total_steps, completed=event.start_step
                )
        elif isinstance(event, StepDone):
            if self.progress is not None:
                self.progress.update(self.task, completed=event.step, description=f"loss {event.loss:.4f}")
            if event.step % self.interval == 0 or event.step == self.total:
                self.line(
                    f"step {event.step:>6}/{self.total} | loss {event.loss:.4f} | "
                    f"{event.duration_ms:8.1f} ms/step | {event.tokens_per_s:>10,.0f} tok/s | "
                    f"lr {event.lr:.2e}" + (f" | grad {event.grad_norm:.3f}" if event.grad_norm is not None else "")
                )
        elif isinstance(event, EvalDone):
            by_source = "".join(
                f" | {name} {loss:.4f}{_bpb(event.source_bpb.get(name))}" for name, loss in event.source_losses.items()
            )
            self.line(
                f"step {event.step:>6}/{self.total} | val loss {event.val_loss:.4f}"
                f"{_bpb(event.val_bpb)}{by_source}"
            )
            if event.sample:  # one line however many lines the text has, so a log stays one event a line
                self.line(f"step {event.step:>6}/{self.total} | sample {event.sample!r}")
        elif isinstance(event, Saved):
            self.line(f"saved {event.stem}" + (" (the best validation loss so far)" if event.best else ""))
        elif isinstance(event, Overfitting):
            self.line(f"step {event.step:>6}/{self.total} | {overfitting_text(event)}")
        elif isinstance(event, Sampled):
            self.line(event.text)
        elif isinstance(event, Paused):
            self.line(f"paused at step {event.step}")
        elif isinstance(event, Replanned):
            self.total = event.total_steps
            if self.progress is not None:
                self.progress.update(self.task, total=event.total_steps)
            self.line(f"step {event.step:>6}/{self.total} | --time: {event.step_ms:.0f} ms a step measured now, so the "
                      f"run ends at step {event.total_steps:,} to land on its budget")


def _say(text: str) -> None:
    """A line on stderr, if stderr can still be written (`2>&1 | head` closes it too)."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=sys.stderr, flush=True)


class _StopNow(KeyboardInterrupt):
    """A second SIGINT or SIGTERM: raised in the main thread wherever it is, the step in progress dropped."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def run_headless(engine: Engine, quiet: bool = False, listeners: Sequence[Callable[[Event], None]] = ()) -> int:
    """Run the training loop printing progress (`quiet`: nothing, as on every rank but 0); returns the process
    exit code (0, or 1 on an error; 128 + the signal's number when a second signal stopped it at once).

    `listeners` (the trackers) hear every event after the printer."""
    printer = _Printer(engine, quiet)

    def emit(event: Event) -> None:
        printer(event)
        for listener in listeners:
            listener(event)
    interrupts = 0

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            # stop now, mid-step or mid-save: every file is written atomically and a set cut short is removed
            raise _StopNow(signum)
        if not quiet:
            _say(f"{signal.Signals(signum).name}: finishing this step, then saving (a second Ctrl-C or SIGTERM "
                 "stops at once, without saving)")
        engine.request_stop()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    use_bar = not quiet and sys.stderr.isatty() and sys.stdout.isatty()
    try:
        if use_bar:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                transient=True,
            ) as progress:
                printer.progress = progress
                finished = engine.run(emit)
            printer.progress = None
        else:
            finished = engine.run(emit)
    except _StopNow as stop:
        if not quiet:
            kept = f"the last checkpoint is {printer.stem}" if printer.stem else "nothing was saved"
            name = signal.Signals(stop.signum).name
            _say(f"{name} after a stop request: stopped at once at step {printer.step}; {kept}")
        return 128 + stop.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _report(finished, quiet)


def _report(finished: RunFinished, quiet: bool) -> int:
    if quiet:  # not rank 0: the exit code only
        return 1 if finished.reason == "error" else 0
    return print_end_of_run(finished)
