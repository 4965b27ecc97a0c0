"""The training UI's loss chart: training and validation loss (or bits per byte), each mixology source and
an earlier run (--compare), drawn with plotext.

Its legend is drawn under the plot, wrapped between entries, rather than by plotext inside it: with a
mixology folder and --compare plotext's legend took 6 of ~10 rows at 80x24 (issue 34). Each series has its
own glyph, so they are told apart without colour. No torch here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from rich.text import Text
from textual.app import RenderResult
from textual.geometry import Region
from textual_plotext import PlotextPlot

from ..summary import drawable, split_log
from .widgets import SampleScreen, downsample, flow, step_ticks

SOURCE_COLORS = ["green+", "magenta+", "yellow+", "blue+", "red+", "white"]  # one per mixology source
# and one glyph each, unlike those of train (a braille line), validation (●) and a compared run (· and ○):
# the series stay apart on a terminal without colour
SOURCE_GLYPHS = ["◆", "▲", "■", "▼", "◇", "△"]
TRAIN_GLYPH = "⠤"
LINE_GLYPHS = (TRAIN_GLYPH, "·", *SOURCE_GLYPHS)  # drawn as lines: shown twice in the legend


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
        self.train_not_positive = 0  # training losses <= 0, which a log axis cannot show
        self.val_steps: list[int] = []
        self.val_losses: list[float] = []
        # a mixology dataset: each source's validation losses, {name: (steps, losses)}, one series each
        self.source_val: dict[str, tuple[list[int], list[float]]] = {}
        # --compare: an earlier run's (name, train steps, train losses, val steps, val losses), drawn faintly
        self.compare: tuple[str, list[int], list[float], list[int], list[float]] | None = None
        # the same validation points in bits per byte (key b): nan where a log has none; the compared run's too
        self.val_bpb: list[float] = []
        self.source_bpb: dict[str, tuple[list[int], list[float]]] = {}
        self.compare_bpb: tuple[list[int], list[float]] = ([], [])
        self.metric = "loss"  # or "bpb": what the y axis shows
        self.log_scale = False
        self.draws = 0  # how many times the plot was built (tests and the throttle read it)
        self.drawn_points = 0  # train points in the last build
        self.last_draw_s = 0.0  # CPU seconds the last build took on the UI thread (not GIL waits)
        self.plot_area: Region | None = None  # inside the drawn frame, in the widget's own cells

    def add_train(self, steps: Sequence[int], losses: Sequence[float]) -> None:
        """Training losses: only the drawable ones are kept (filtered here, once, not at each draw)."""
        steps, losses = drawable(steps, losses)
        self.train_steps.extend(steps)
        self.train_losses.extend(losses)
        self.train_not_positive += sum(1 for v in losses if v <= 0)

    def set_compare(self, name: str, log: Sequence[dict]) -> None:
        """An earlier run's training log, drawn faintly behind the live run (--compare)."""
        train, val = split_log(log)
        self.compare = (name, *drawable([e["step"] for e in train], [e["loss"] for e in train]),
                        *drawable([e["step"] for e in val], [e["validation_loss"] for e in val]))
        with_bpb = [e for e in val if isinstance(e.get("validation_bpb"), (int, float))]
        self.compare_bpb = drawable([e["step"] for e in with_bpb], [e["validation_bpb"] for e in with_bpb])

    def add_val(
        self,
        step: int,
        loss: float,
        by_source: dict[str, float] | None = None,
        bpb: float = math.nan,
        source_bpb: dict[str, float] | None = None,
    ) -> None:
        self.val_steps.append(step)
        self.val_losses.append(loss)
        self.val_bpb.append(bpb)
        for series, values in ((self.source_val, by_source), (self.source_bpb, source_bpb)):
            for name, value in (values or {}).items():
                steps, losses = series.setdefault(name, ([], []))
                steps.append(step)
                losses.append(value)

    def _validation(self) -> tuple[list[int], list[float], dict[str, tuple[list[int], list[float]]]]:
        """The drawable validation points of the metric shown (bpb: those measured), and each source's."""
        if self.metric == "loss":
            values, by_source = self.val_losses, self.source_val
        else:
            values, by_source = self.val_bpb, self.source_bpb
        log = self.log_scale and self.metric == "loss"
        return (*drawable(self.val_steps, values, log), {k: drawable(*v, log) for k, v in by_source.items()})

    def _title(self) -> str:
        if self.metric == "bpb":
            return "validation bits per byte (b: loss)"
        return "loss (log scale)" if self.log_scale else "loss"

    def _plot_series(self) -> tuple[list[float], list[tuple[str, str, str]]]:
        """Hand every series to plotext (no labels); return the training xs drawn and the legend's entries."""
        plt = self.plt
        legend: list[tuple[str, str, str]] = []  # (glyph, label, colour), in the order drawn

        def draw(kind: str, xs: Sequence[float], ys: Sequence[float], glyph: str, color: str, label: str) -> None:
            if xs:
                getattr(plt, kind)(xs, ys, marker="braille" if glyph == TRAIN_GLYPH else glyph, color=color)
                legend.append((glyph, label, color))

        # braille packs two points per cell horizontally; more than that would only cost time
        log = self.log_scale and self.metric == "loss"
        train = (self.train_steps, self.train_losses)
        if log and self.train_not_positive:
            train = drawable(*train, log)
        xs, ys = downsample(*train, max(2, 2 * (self.size.width - 8)))
        if self.metric == "bpb":  # training is measured in tokens, not bytes: only validation is drawn
            xs, ys = [], []
        val_steps, val_values, by_source = self._validation()
        if self.compare is not None:  # first, so the live run's curves are drawn over it
            name, c_steps, c_losses, c_val_steps, c_val_losses = self.compare
            if self.metric == "bpb":
                c_steps, c_losses, (c_val_steps, c_val_losses) = [], [], self.compare_bpb
            elif log and min(c_losses + c_val_losses, default=1) <= 0:  # a log axis shows none of those
                c_steps, c_losses = drawable(c_steps, c_losses, log)
                c_val_steps, c_val_losses = drawable(c_val_steps, c_val_losses, log)
            draw("plot", *downsample(c_steps, c_losses, max(2, self.size.width - 8)), "·", "gray", f"{name} train")
            draw("scatter", c_val_steps, c_val_losses, "○", "gray+", f"{name} val")
        draw("plot", xs, ys, TRAIN_GLYPH, "cyan+", "train")
        draw("scatter", val_steps, val_values, "●", "orange+", "validation")
        for i, (name, (steps, losses)) in enumerate(by_source.items()):
            glyph, color = SOURCE_GLYPHS[i % len(SOURCE_GLYPHS)], SOURCE_COLORS[i % len(SOURCE_COLORS)]
            draw("plot", steps, losses, glyph, color, f"val {name}")
        ends = [*xs[:1], *xs[-1:], *val_steps[:1], *val_steps[-1:]]
        if self.compare is not None:
            ends += [*self.compare[1][:1], *self.compare[1][-1:]] if self.metric == "loss" else self.compare_bpb[0]
        if ends:
            plt.xticks(step_ticks(min(ends), max(ends)))
        return xs, legend

    def legend_lines(self, entries: Sequence[tuple[str, str, str]], width: int) -> list[Text]:
        """The legend under the plot: each entry its glyph and name, wrapped between entries."""
        fields = [Text.assemble((glyph * (2 if glyph in LINE_GLYPHS else 1), rich_color(color)), " ", label)
                  for glyph, label, color in entries]
        return flow([fields], width, "   ") if fields else []

    def render(self) -> RenderResult:
        t0 = time.thread_time()
        plt = self.plt
        plt.clear_data()
        xs, entries = self._plot_series()
        width, height = self.size
        legend = self.legend_lines(entries, width)[: max(height // 3, 1)]  # never more than a third of the rows
        plt.yscale("log" if self.log_scale and self.metric == "loss" else "linear")
        plt.title(self._title())
        plt.xlabel("step")
        plot_height = max(height - len(legend), 1)
        plt.plotsize(width, plot_height)
        plt._set_size(width, plot_height)  # as textual_plotext's own render does (its issue 5)
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        result = Text("\n").join([Text.from_ansi(plt.build().rstrip("\n")), *legend])
        area = _inside_frame(result.plain.splitlines()[:plot_height])
        if area != self.plot_area:
            self.plot_area = area
            screen = self.app.screen
            if isinstance(screen, SampleScreen):  # an open popup follows the frame (tick labels move it)
                self.call_after_refresh(screen.place)
        self.draws += 1
        self.drawn_points = len(xs)
        self.last_draw_s = time.thread_time() - t0
        return result


def rich_color(plotext_color: str) -> str:
    """Rich's name for a plotext colour ("cyan+" is plotext's bright cyan), for the legend's glyphs."""
    base = plotext_color.rstrip("+")
    bright = plotext_color.endswith("+")
    if base in ("gray", "orange"):
        return {"gray": ("grey50", "grey70"), "orange": ("dark_orange", "orange1")}[base][bright]
    return f"bright_{base}" if bright else base


def _inside_frame(lines: list[str]) -> Region | None:
    """The cells inside plotext's box (┌ ┐ └), which has the axis labels outside it; None if not drawn."""
    top = next((i for i, line in enumerate(lines) if "┌" in line), None)
    bottom = next((i for i in range(len(lines) - 1, -1, -1) if "└" in lines[i]), None)
    if top is None or bottom is None or bottom <= top + 1 or "┐" not in lines[top]:
        return None
    left, right = lines[top].index("┌"), lines[top].rindex("┐")
    return Region(left + 1, top + 1, right - left - 1, bottom - top - 1)
