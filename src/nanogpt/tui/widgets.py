"""Display-only widgets of the training UI: run header, loss chart, status line and sample popup.

They show what they are given and know nothing of the engine, its thread or its queue (app.py does the
talking). No torch here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult, RenderResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static
from textual_plotext import PlotextPlot

from ..events import RunStarted


def human_count(n: float) -> str:
    """1234 -> '1.2k', 812345 -> '812.3k', 10_700_000 -> '10.70M'."""
    for limit, suffix, digits in ((1e9, "B", 2), (1e6, "M", 2), (1e3, "k", 1)):
        if abs(n) >= limit:
            return f"{n / limit:.{digits}f}{suffix}"
    return f"{n:.0f}"


def clock(seconds: float | None) -> str:
    """Seconds as M:SS or H:MM:SS ('-' when unknown)."""
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "-"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def step_ticks(lo: float, hi: float, n: int = 5) -> list[int]:
    """At least `n` round step numbers in [lo, hi] (1, 2 or 5 times a power of ten apart)."""
    span = max(hi - lo, 1.0)
    raw = span / max(n - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    gap = max(m * power for m in (1, 2, 5) if m * power <= raw)  # the widest round gap giving >= n ticks
    gap = max(1, int(gap))
    first = math.ceil(lo / gap) * gap
    return list(range(int(first), int(hi) + 1, gap))


def downsample(xs: Sequence[float], ys: Sequence[float], n_max: int) -> tuple[list[float], list[float]]:
    """At most `n_max` points: consecutive points averaged in equal buckets (keeps the curve's shape)."""
    n = len(xs)
    if n <= n_max or n_max < 2:
        return list(xs), list(ys)
    out_x: list[float] = []
    out_y: list[float] = []
    for b in range(n_max):
        lo, hi = b * n // n_max, (b + 1) * n // n_max
        if hi > lo:
            out_x.append(sum(xs[lo:hi]) / (hi - lo))
            out_y.append(sum(ys[lo:hi]) / (hi - lo))
    return out_x, out_y


class RunHeader(Static):
    """Two lines: what model is trained, and on what data and hardware."""

    def show_run(self, run: RunStarted) -> None:
        """Fill in from the engine's RunStarted event."""
        m, t = run.model, run.train
        line1 = Text.assemble(
            ("nanogpt ", "bold"),
            (f"{human_count(run.n_params)} params", "bold cyan"),
            f" · {m.get('n_layer')} layers · {m.get('n_head')} heads · embd {m.get('n_embd')}"
            f" · block {m.get('block_size')} · vocab {m.get('vocab_size')}",
        )
        world = f" × {run.world_size}" if run.world_size > 1 else ""
        dim = "dim"
        line2 = Text.assemble(
            ("data ", dim), run.dataset, (" · ", dim), run.tokenizer,
            (" · ", dim), f"{run.device}{world} {run.dtype}",
            (" · ", dim), f"{human_count(run.tokens_per_step)} tok/step",
            (f" (batch {t.get('batch_size')}×{t.get('grad_accum')})", dim),
            (" · seed ", dim), str(run.seed),
        )
        self.update(Text("\n").join([line1, line2]))


class LossChart(PlotextPlot):
    """Training loss per step (a line) and validation loss (points), drawn from the data it holds.

    The app adds points as they come and calls `refresh()` only a few times per second; each draw
    rebuilds the plot from the stored series (downsampled to the chart's width), which also sidesteps
    plotext state that does not survive a second build on a log axis.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.train_steps: list[int] = []
        self.train_losses: list[float] = []
        self.val_steps: list[int] = []
        self.val_losses: list[float] = []
        self.log_scale = False
        self.draws = 0  # how many times the plot was built (tests and the throttle read it)
        self.drawn_points = 0  # train points in the last build
        self.last_draw_s = 0.0  # CPU seconds the last build took on the UI thread (not GIL waits)

    def add_train(self, steps: Sequence[int], losses: Sequence[float]) -> None:
        self.train_steps.extend(steps)
        self.train_losses.extend(losses)

    def add_val(self, step: int, loss: float) -> None:
        self.val_steps.append(step)
        self.val_losses.append(loss)

    def render(self) -> RenderResult:
        t0 = time.thread_time()
        plt = self.plt
        plt.clear_data()
        # braille packs two points per cell horizontally; more than that would only cost time
        xs, ys = downsample(self.train_steps, self.train_losses, max(2, 2 * (self.size.width - 8)))
        if xs:
            plt.plot(xs, ys, marker="braille", color="cyan+", label="train")
        if self.val_steps:
            plt.scatter(self.val_steps, self.val_losses, marker="●", color="orange+", label="validation")
        if xs:
            plt.xticks(step_ticks(min([xs[0], *self.val_steps[:1]]), max([xs[-1], *self.val_steps[-1:]])))
        plt.yscale("log" if self.log_scale else "linear")
        plt.title("loss (log scale)" if self.log_scale else "loss")
        plt.xlabel("step")
        result = super().render()
        self.draws += 1
        self.drawn_points = len(xs)
        self.last_draw_s = time.thread_time() - t0
        return result


class StatusLine(Static):
    """One line of numbers plus a state badge (RUNNING / PAUSED / ...)."""


class SampleScreen(ModalScreen[None]):
    """A popup with text sampled from the current weights; Esc closes it."""

    BINDINGS: ClassVar[list[Binding]] = [Binding("escape", "close", "close")]

    def __init__(self, step: int, n_tokens: int) -> None:
        super().__init__()
        self.step = step
        self.n_tokens = n_tokens
        self.text: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="sample-box"):
            yield Static(f"Sampling {self.n_tokens} tokens at step {self.step}…", id="sample-title")
            with VerticalScroll(id="sample-scroll"):
                yield Static("(waiting for the current step to finish)", id="sample-text", markup=False)
            yield Static("Esc: close", id="sample-hint")

    def show_text(self, step: int, text: str) -> None:
        """Put the sampled text in the popup."""
        self.text = text
        self.query_one("#sample-title", Static).update(f"Sample at step {step} ({self.n_tokens} tokens)")
        self.query_one("#sample-text", Static).update(Text(text))

    def action_close(self) -> None:
        self.dismiss(None)
