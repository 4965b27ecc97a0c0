"""The keys of the training UI (g, v, s, p, l, b, q): each turns into a command for the engine or a change
of what is shown.

A mixin of TrainingApp (app.py), kept apart so that each file reads as one job; commands go to the engine
only through the app's queue, between two steps.
"""

from __future__ import annotations

from textual import work
from textual.geometry import Region

from ..events import Pause, Resume, Sample, Save, Stop
from .widgets import SamplePager, SampleScreen

SAMPLE_ROWS = 8  # rows of sampled text the popup shows at least, where the screen has them


class KeysMixin:
    """TrainingApp's key actions (its BINDINGS name them)."""

    def action_toggle_pause(self) -> None:
        if self.finished is not None:
            self._notice("the run has finished: nothing to pause or resume (g samples, q leaves)")
            return
        if self.stopping:
            self._notice("stopping: finishing the current step and saving…")
            return
        if self.paused or self.pause_requested:
            self.commands.put(Resume())
            self.pause_requested = False
            self._notice("resuming")
        else:
            self.commands.put(Pause())
            self.pause_requested = True
            self._notice("pausing after the current step")
        self._render_status()

    def action_sample(self) -> None:
        if self.sample_screen is not None or self.stopping:
            return
        n = int(self.run_info.train["tokens_to_generate"]) if self.run_info else Sample().n_tokens
        was_running = self.finished is None and not (self.paused or self.pause_requested)
        screen = SampleScreen(self.step, n, area=self._sample_area)
        self.sample_screen = screen

        def closed(_: None) -> None:
            self.sample_screen = None
            if was_running and self.finished is None and not self.stopping:
                self.commands.put(Resume())
                self.pause_requested = False
                self._render_status()

        self.push_screen(screen, closed)
        if self.finished is not None:
            if self.finished.reason != "error":  # the loop is over: sample directly, off the UI thread
                self._sample_after_run(screen, n)
            return
        if was_running:
            self.commands.put(Pause())
            self.pause_requested = True
        self.commands.put(Sample(n_tokens=n))
        self._render_status()

    def action_samples(self) -> None:
        """Page through the samples kept at the evaluations (training goes on meanwhile)."""
        if self.sample_screen is not None or isinstance(self.screen, SamplePager):
            return
        if not self.samples:
            self._notice("no samples yet: one is kept at each evaluation (--eval-sample-tokens)")
            return
        self.push_screen(SamplePager(self.samples, area=self._sample_area))

    def _sample_area(self) -> Region | None:
        """Where the sample popup goes: inside the chart's frame, clear of its axis labels (screen cells)."""
        chart = self.chart
        inside = chart.plot_area
        if inside is None:  # not drawn yet: plotext's usual margins (title, labels, ticks)
            inside = chart.content_region.shrink((2, 1, 3, 8))
        else:
            inside = inside.translate(chart.content_region.offset)
        if inside.height < SAMPLE_ROWS + 3:  # a small screen (80x24): the text matters more than the axes
            return chart.content_region
        return inside

    @work(thread=True, name="sample")
    def _sample_after_run(self, screen: SampleScreen, n: int) -> None:
        text = self.engine.sample(n)
        self.call_from_thread(screen.show_text, self.step, text)

    def action_save(self) -> None:
        if self.finished is not None:
            where = self.last_saved.stem if self.last_saved else self.finished.stem
            self._notice(f"the run is over; last checkpoint: {where}")
            return
        self.commands.put(Save())
        self._notice("saving after the current step…")

    def action_toggle_log(self) -> None:
        chart = self.chart
        chart.log_scale = not chart.log_scale
        self._chart_dirty = True
        self._maybe_draw_chart(force=True)

    def action_toggle_metric(self) -> None:
        """The chart's y axis: loss (nats per token) or validation bits per byte (one scale for any tokenizer)."""
        chart = self.chart
        chart.metric = "bpb" if chart.metric == "loss" else "loss"
        self._chart_dirty = True
        self._maybe_draw_chart(force=True)

    def action_quit_run(self) -> None:
        if self.finished is not None:
            self.exit(1 if self.finished.reason == "error" else 0)
            return
        if self.stopping:
            self._notice("still stopping: finishing the current step and saving…")
            return
        self.stopping = True
        self.engine.request_stop()  # drops an evaluation in progress (Stepper.cut), as Ctrl-C does
        self.commands.put(Stop())
        self._notice("stopping: finishing the current step and saving…")
        self._render_status()
