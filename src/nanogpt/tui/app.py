"""The live training UI: a Textual app that runs the engine in one worker thread and shows its events.

The engine (`Trainer.run`) runs in a `@work(thread=True)` worker and talks to the app only through its
events and a command queue. Step events are the frequent ones: the worker only appends them to a deque
(cheap, so training is not slowed) and a timer on the UI thread drains it twice a second; the chart is
redrawn at most every 2 s, and less often if a draw is slow. Every wake-up of the UI thread takes the GIL
from the training thread, so few of them is what keeps training at full speed (bench/ui_overhead.py).
The rarer events (eval, saved, sampled, paused, finished...) arrive as messages and drain the deque
first, so they are always shown in order.
"""

from __future__ import annotations

import math
import queue
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Footer, Static

from ..events import (
    EvalDone,
    Event,
    Overfitting,
    Paused,
    Replanned,
    Resumed,
    RunFinished,
    RunStarted,
    Sampled,
    Saved,
    StepDone,
    Stop,
    overfitting_text,
)
from ..summary import hints, plural, print_end_of_run, split_log
from .keys import KeysMixin
from .notice import Notice
from .status import StatusMixin
from .chart import LossChart
from .widgets import RunHeader, SampleScreen, StatusLine

if TYPE_CHECKING:
    from ..events import Engine

# Keys act at once; only the display of the steps is throttled (bench/ui_overhead.py measures the cost).
TICK_S = 0.5  # how often the UI drains step events and refreshes the status line
MIN_DRAW_INTERVAL_S = 2.0  # the chart redraws at most every 2 s,
MAX_DRAW_INTERVAL_S = 3.0  # at least every 3 s while data comes in,
MAX_DRAW_SHARE = 0.02  # and in between spends at most ~2% of one core drawing (a draw costs ~10-30 ms)


class EngineEvent(Message):
    """An event from the engine thread (any but StepDone, which goes through the deque)."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class TrainingApp(StatusMixin, KeysMixin, App[int]):
    """Full-screen training UI: header, loss chart, status line, footer with the keys."""

    TITLE = "nanogpt"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    Screen { layout: vertical; }
    RunHeader { height: auto; padding: 0 1; background: $boost; }
    LossChart { height: 1fr; min-height: 8; }
    #status-row { height: auto; }
    StatusLine { width: 1fr; height: auto; padding: 0 0 0 1; }
    #badge { width: auto; min-width: 10; padding: 0 1; text-style: bold; content-align: center middle; }
    #badge.running { background: $success; color: $text; }
    #badge.paused { background: $warning; color: black; }
    #badge.stopping { background: $warning-darken-2; color: black; }
    #badge.finished { background: $primary; color: $text; }
    #badge.error { background: $error; color: $text; }
    #error { height: auto; padding: 0 1; background: $error 30%; display: none; }
    #error.shown { display: block; }
    SampleScreen { align: left top; }
    #sample-box { border: round $accent; background: $panel; padding: 0 1; border-subtitle-color: $text-muted; }
    #sample-title { text-style: bold; height: 1; }
    #sample-scroll { height: 1fr; }
    """
    # the footer shows them on one row: short enough for 80 columns (docs/training.md's table says more)
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("g", "sample", "sample"),
        Binding("v", "samples", "past samples"),
        Binding("s", "save", "save"),
        Binding("p", "toggle_pause", "pause/resume"),
        Binding("l", "toggle_log", "log/lin y"),
        Binding("b", "toggle_metric", "bpb"),  # the chart in bits per byte, and back
        Binding("q", "quit_run", "quit"),
        # Ctrl-C arrives as a key in the UI's raw terminal: treat it as q (save, then leave cleanly)
        Binding("ctrl+c", "quit_run", "quit", show=False, priority=True),
    ]

    def __init__(
        self,
        engine: Engine,
        start_paused: bool = False,
        compare: tuple[str, list[dict]] | None = None,
        listeners: Sequence[Callable[[Event], None]] = (),
    ) -> None:
        super().__init__()
        self.engine = engine  # the run, reached only through events.Engine: commands in, events out
        self.listeners = tuple(listeners)  # the trackers: called on the engine thread with every event
        self.compare = compare  # (name, training log) of an earlier run, drawn faintly (--compare)
        self.start_paused = start_paused
        self.commands: queue.Queue = queue.Queue()
        self._steps: deque[StepDone] = deque()
        # what the engine has told us
        self.run_info: RunStarted | None = None
        self.step = self.total_steps = 0  # until RunStarted says
        self.recent: deque[StepDone] = deque(maxlen=10)
        self.recent_losses: deque[float] = deque(maxlen=10)
        self.last_val: tuple[int, float] | None = None
        self.last_bpb = math.nan  # bits per byte of the last evaluation (nan: not in an older run's log)
        self.samples: list[tuple[int, str]] = []  # (step, text) kept at each evaluation, for the pager (v)
        self.paused = start_paused
        self.pause_requested = False
        self.stopping = False
        self.finished: RunFinished | None = None  # as shown on screen
        self.result: RunFinished | None = None  # as returned by engine.run (set by the worker thread)
        self.last_saved: Saved | None = None
        self.worker_traceback: str | None = None
        self.sample_screen: SampleScreen | None = None
        # clocks: elapsed counts only time spent running (not paused) in this session
        self._session_start_step: int | None = None
        self._run_t0: float | None = None
        self._earlier_s = 0.0  # training time of the steps before a resume (their logged durations)
        self._paused_s = 0.0
        self._paused_since: float | None = time.monotonic() if start_paused else None
        self._last_draw = 0.0
        self._chart_dirty = False
        self._finished_emitted = threading.Event()

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        # kept as attributes: `query_one` would search the sample popup while it is on top
        self.header = RunHeader(id="header")
        self.header.set_fields(["starting…"])
        self.chart = LossChart(id="chart")
        if self.compare is not None:
            self.chart.set_compare(*self.compare)
        self.status = StatusLine(id="status")
        self.badge_widget = Static("", id="badge")
        self.error_widget = Static("", id="error")
        self.notice = Notice(id="notice")
        yield self.header
        yield self.chart
        with Horizontal(id="status-row"):
            yield self.status
            yield self.badge_widget
        yield self.error_widget
        yield self.notice
        yield Footer()

    def on_mount(self) -> None:
        self._render_status()
        self.run_engine()
        self.set_interval(TICK_S, self._tick)

    # ------------------------------------------------------------------ engine thread
    @work(thread=True, exclusive=True, name="engine")
    def run_engine(self) -> None:
        """Run the whole training loop on this worker thread."""
        try:
            result = self.engine.run(self._emit, self.commands, start_paused=self.start_paused)
        # An engine bug: shown on screen like an engine-reported error; the traceback is printed on exit.
        except Exception as e:  # noqa: BLE001
            self.worker_traceback = traceback.format_exc()
            message = f"{type(e).__name__}: {e}".splitlines()[0]
            result = RunFinished(step=self.step, reason="error", message=message)
        self.result = result
        if not self._finished_emitted.is_set():
            self._emit(result)

    def _emit(self, event: Event) -> None:
        """Called by the engine on its thread: steps go to the deque, the rest become messages."""
        for listener in self.listeners:
            listener(event)
        if isinstance(event, StepDone):
            self._steps.append(event)
            return
        if isinstance(event, RunFinished):
            self._finished_emitted.set()
        self.post_message(EngineEvent(event))

    # ------------------------------------------------------------------ UI thread
    def _drain_steps(self) -> None:
        if not self._steps:
            return
        steps: list[int] = []
        losses: list[float] = []
        while self._steps:
            ev = self._steps.popleft()
            steps.append(ev.step)
            losses.append(ev.loss)
            self.recent.append(ev)
            self.recent_losses.append(ev.loss)
            self.step = ev.step
        if self._session_start_step is None:
            self._session_start_step = steps[0] - 1
        self.chart.add_train(steps, losses)
        self._chart_dirty = True

    def _tick(self) -> None:
        before = self.step
        self._drain_steps()
        if self.step != before or self.run_info is not None and self.finished is None and not self.paused:
            self._render_status()
        self._maybe_draw_chart()

    def _maybe_draw_chart(self, force: bool = False) -> None:
        if not self._chart_dirty:
            return
        chart = self.chart
        now = time.monotonic()
        interval = min(MAX_DRAW_INTERVAL_S, max(MIN_DRAW_INTERVAL_S, chart.last_draw_s / MAX_DRAW_SHARE))
        if force or now - self._last_draw >= interval:
            self._last_draw = now
            self._chart_dirty = False
            chart.refresh()

    def on_engine_event(self, message: EngineEvent) -> None:
        self._drain_steps()  # everything emitted before this event is in the deque: show it first
        ev = message.event
        if isinstance(ev, RunStarted):
            self._on_run_started(ev)
        elif isinstance(ev, EvalDone):
            self.last_val, self.last_bpb = (ev.step, ev.val_loss), ev.val_bpb
            self.chart.add_val(ev.step, ev.val_loss, ev.source_losses, ev.val_bpb, ev.source_bpb)
            if ev.sample:
                self.samples.append((ev.step, ev.sample))
            self._chart_dirty = True
        elif isinstance(ev, Sampled):
            if self.sample_screen is not None:
                self.sample_screen.show_text(ev.step, ev.text)
        elif isinstance(ev, Saved):
            self.last_saved = ev
            # one row at any width (each save took 3 of 24 rows): the path loses its start when it must
            self.notice.show_path(f"saved step {ev.step}: ", ev.stem, " (the best so far)" if ev.best else "")
        elif isinstance(ev, Overfitting):
            self._notice(overfitting_text(ev))
        elif isinstance(ev, Paused):
            self._set_paused(True)
            self.pause_requested = False
            if self.sample_screen is None and ev.step > (self.run_info.start_step if self.run_info else 0):
                self._notice(f"paused after step {ev.step}; p resumes")
        elif isinstance(ev, Replanned):
            self.total_steps = ev.total_steps
            self._notice(f"--time: {ev.step_ms:.0f} ms a step measured now: ends at step {ev.total_steps:,}")
        elif isinstance(ev, Resumed):
            self._set_paused(False)
            self._notice(f"resumed at step {ev.step}")
        elif isinstance(ev, RunFinished):
            self._on_finished(ev)
        self._render_status()
        self._maybe_draw_chart(force=isinstance(ev, (RunStarted, RunFinished)))

    def _on_run_started(self, ev: RunStarted) -> None:
        self.run_info = ev
        self.step = ev.start_step
        self.total_steps = ev.total_steps
        self._run_t0 = time.monotonic()
        if self._paused_since is not None:
            self._paused_since = self._run_t0
        self.header.show_run(ev)
        chart = self.chart
        hist, evals = split_log(ev.history)
        chart.add_train([int(h["step"]) for h in hist], [float(h["loss"]) for h in hist])
        for h in evals:
            bpb = float(h.get("validation_bpb", math.nan))  # a run logged before bits per byte has none
            chart.add_val(int(h["step"]), float(h["validation_loss"]), h.get("source_validation_losses"), bpb,
                          h.get("source_validation_bpb"))
            self.last_val, self.last_bpb = (int(h["step"]), float(h["validation_loss"])), bpb
        self.recent_losses.extend(float(h["loss"]) for h in hist[-10:])
        self._earlier_s = sum(float(h.get("duration_ms") or 0.0) for h in ev.history) / 1000
        self.samples.extend((int(h["step"]), str(h["sample"])) for h in ev.history if h.get("sample"))
        self._chart_dirty = True
        notes = ["note: " + "; ".join(hints(ev, short=True))] if hints(ev) else []
        # what building the run had to tell (headless prints these on stderr; here the screen would hide them)
        notes[:0] = ev.notes
        if ev.start_step:
            notes.insert(0, f"resumed at step {ev.start_step} ({plural(len(hist), 'logged step')}); press p to "
                         "continue")
        if notes:
            self._notice(" · ".join(notes))

    def _notice(self, text: str) -> None:
        self.notice.show(text)

    def on_unmount(self) -> None:
        # If the UI goes away while training runs (it should not), stop the engine so its thread ends.
        if self.result is None and self.finished is None:
            self.engine.request_stop()
            self.commands.put(Stop())


def run_tui(
    engine: Engine,
    start_paused: bool = False,
    compare: tuple[str, list[dict]] | None = None,
    listeners: Sequence[Callable[[Event], None]] = (),
) -> int:
    """Run the training UI until the user quits; print where to resume from; return the exit code."""
    app = TrainingApp(engine, start_paused=start_paused, compare=compare, listeners=listeners)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # `kill PID` gets the same clean stop as q: the engine finishes its step, saves and ends; a second
        # SIGTERM ends it at once (a step too long to finish), keeping the last checkpoint saved
        previous = signal.signal(signal.SIGTERM, lambda *_: engine.request_stop(now=engine.stop_requested()))
    try:
        code = app.run()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    for text in app.notice.shortened:  # what the screen had to shorten, whole
        print(text if text.startswith(("note:", "warning:")) else f"note: {text}", file=sys.stderr)
    result = app.result or app.finished
    if app.worker_traceback:
        print(app.worker_traceback, file=sys.stderr, end="")
    if result is None:
        return code if code is not None else 1
    exit_code = print_end_of_run(result)
    return exit_code if exit_code or code is None else code
