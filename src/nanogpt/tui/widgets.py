"""Display-only widgets of the training UI: run header, loss chart, status line and sample popup.

They show what they are given and know nothing of the engine, its thread or its queue (app.py does the
talking). No torch here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult, RenderResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.geometry import Region, Size
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Static
from textual_plotext import PlotextPlot

from ..events import RunStarted
from ..summary import count as human_count
from ..summary import drawable, embedding_params, epochs, split_log, times


def clock(seconds: float | None) -> str:
    """Seconds as M:SS or H:MM:SS ('-' when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:  # durations summed from an edited log
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


def flow(groups: Sequence[Sequence[Text]], width: int, sep: str) -> list[Text]:
    """Lay fields out in lines of at most `width` cells, breaking only between two fields.

    Each group starts on a new line. A field wider than the whole line is cut at its start with an
    ellipsis (the end of a path says more than its beginning).
    """
    width = max(width, 1)
    lines: list[Text] = []
    for group in groups:
        line: Text | None = None
        for field in group:
            if field.cell_len > width:
                field = Text("…") + field[field.cell_len - width + 1 :]
            if line is not None and line.cell_len + len(sep) + field.cell_len <= width:
                line.append(sep, "dim")
                line.append_text(field)
            else:
                line = field.copy()
                lines.append(line)
    return lines


class FieldLines(Widget):
    """Fields separated by `SEP`, wrapped between fields (never inside one) to the widget's width."""

    DEFAULT_CSS = "FieldLines { height: auto; }"
    SEP = " · "

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.groups: list[list[Text]] = []

    def set_fields(self, *groups: Sequence[str | Text]) -> None:
        """Show these groups of fields (each group starts on a new line)."""
        self.groups = [[Text(f) if isinstance(f, str) else f for f in g] for g in groups]
        self.refresh(layout=True)

    def lines(self, width: int) -> list[Text]:
        return flow(self.groups, width, self.SEP)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return max(1, len(self.lines(width)))

    def render(self) -> RenderResult:
        return Text("\n").join(self.lines(self.size.width))


class RunHeader(FieldLines):
    """What model is trained (and where its parameters are), and on what data and hardware."""

    def show_run(self, run: RunStarted) -> None:
        """Fill in from the engine's RunStarted event."""
        m, t = run.model, run.train
        model = [
            Text.assemble(("nanogpt ", "bold"), (f"{human_count(run.n_params)} params", "bold cyan")),
            f"{m.get('n_layer')} layers × {m.get('n_head')} heads × {m.get('n_embd')}",
            f"block {m.get('block_size')}",
            f"vocab {m.get('vocab_size'):,}",
        ]
        if run.block_params:
            emb = embedding_params(run)
            style = "bold yellow" if emb > run.n_params / 2 else ""
            model += [Text(f"embeddings {human_count(emb)}", style), f"blocks {human_count(run.block_params)}"]
        world = f" × {run.world_size}" if run.world_size > 1 else ""
        data = [Text.assemble(("data ", "dim"), run.dataset, (f" ({run.tokenizer})", "dim"))]
        if run.train_tokens:
            data.append(f"{human_count(run.train_tokens)} tokens, read {times(epochs(run))}")
        data += [
            f"{run.device}{world} {run.dtype}",
            Text.assemble(f"{human_count(run.tokens_per_step)} tok/step",
                          (f" (batch {t.get('batch_size')}×{t.get('grad_accum')})", "dim")),
            Text.assemble(("seed ", "dim"), str(run.seed)),
        ]
        self.set_fields(model + data)  # one flow: at 80 columns that is three lines, not four


SOURCE_COLORS = ["green+", "magenta+", "yellow+", "blue+", "red+", "white"]  # one per mixology source


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

    def render(self) -> RenderResult:
        t0 = time.thread_time()
        plt = self.plt
        plt.clear_data()
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
            cx, cy = downsample(c_steps, c_losses, max(2, self.size.width - 8))
            if cx:
                plt.plot(cx, cy, marker="dot", color="gray", label=f"{name} train")
            if c_val_steps:
                plt.scatter(c_val_steps, c_val_losses, marker="•", color="gray+", label=f"{name} val")
        if xs:
            plt.plot(xs, ys, marker="braille", color="cyan+", label="train")
        if val_steps:
            plt.scatter(val_steps, val_values, marker="●", color="orange+", label="validation")
        for (name, (steps, losses)), color in zip(by_source.items(), SOURCE_COLORS * 4):
            if steps:
                plt.plot(steps, losses, marker="●", color=color, label=f"val {name}")
        ends = [*xs[:1], *xs[-1:], *val_steps[:1], *val_steps[-1:]]
        if self.compare is not None:
            ends += [*self.compare[1][:1], *self.compare[1][-1:]] if self.metric == "loss" else self.compare_bpb[0]
        if ends:
            plt.xticks(step_ticks(min(ends), max(ends)))
        plt.yscale("log" if self.log_scale and self.metric == "loss" else "linear")
        plt.title(self._title())
        plt.xlabel("step")
        result = super().render()
        area = _inside_frame(result.plain.splitlines())
        if area != self.plot_area:
            self.plot_area = area
            screen = self.app.screen
            if isinstance(screen, SampleScreen):  # an open popup follows the frame (tick labels move it)
                self.call_after_refresh(screen.place)
        self.draws += 1
        self.drawn_points = len(xs)
        self.last_draw_s = time.thread_time() - t0
        return result


def _inside_frame(lines: list[str]) -> Region | None:
    """The cells inside plotext's box (┌ ┐ └), which has the axis labels outside it; None if not drawn."""
    top = next((i for i, line in enumerate(lines) if "┌" in line), None)
    bottom = next((i for i in range(len(lines) - 1, -1, -1) if "└" in lines[i]), None)
    if top is None or bottom is None or bottom <= top + 1 or "┐" not in lines[top]:
        return None
    left, right = lines[top].index("┌"), lines[top].rindex("┐")
    return Region(left + 1, top + 1, right - left - 1, bottom - top - 1)


class StatusLine(FieldLines):
    """The run's numbers (a state badge sits beside it), wrapped between fields on a narrow screen."""

    SEP = " │ "


class SampleScreen(ModalScreen[None]):
    """A popup with text sampled from the current weights; Esc closes it.

    It is placed over the inside of the chart's frame (`area()`, in screen cells), so the axis labels, the
    header and the status line stay readable around it.
    """

    BINDINGS: ClassVar[list[Binding]] = [Binding("escape", "close", "close")]
    MIN_SIZE = (24, 6)  # below this the popup takes the whole screen rather than be unreadable

    def __init__(self, step: int, n_tokens: int, area: Callable[[], Region | None] = lambda: None) -> None:
        super().__init__()
        self.step = step
        self.n_tokens = n_tokens
        self.text: str | None = None
        self.area = area

    def on_mount(self) -> None:
        self.place()

    def on_resize(self) -> None:
        self.place()

    def place(self) -> None:
        area = self.area()
        if area is None or area.width < self.MIN_SIZE[0] or area.height < self.MIN_SIZE[1]:
            area = Region(0, 0, *self.size)
        box = self.query_one("#sample-box")
        box.styles.offset = (area.x, area.y)
        box.styles.width = area.width
        box.styles.height = area.height

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


class SamplePager(SampleScreen):
    """The samples kept at the evaluations, one at a time: ← and → page through them by step, Esc closes.

    `samples` is the app's own list of (step, text), so samples kept while the pager is open join it.
    """

    BINDINGS: ClassVar[list[Binding]] = [
        Binding("left", "page(-1)", "earlier"),
        Binding("right", "page(1)", "later"),
        Binding("escape", "close", "close"),
    ]

    def __init__(self, samples: list[tuple[int, str]], area: Callable[[], Region | None] = lambda: None) -> None:
        super().__init__(samples[-1][0], 0, area)
        self.samples = samples
        self.index = len(samples) - 1  # the newest first

    def compose(self) -> ComposeResult:
        with Vertical(id="sample-box"):
            yield Static("", id="sample-title")
            with VerticalScroll(id="sample-scroll"):
                yield Static("", id="sample-text", markup=False)
            yield Static("←/→: earlier/later step · Esc: close", id="sample-hint")

    def on_mount(self) -> None:
        super().on_mount()
        self.show_index()

    def show_index(self) -> None:
        """Show the sample at `index`."""
        self.step, self.text = self.samples[self.index]
        title = f"Sample at step {self.step} ({self.index + 1} of {len(self.samples)}, same prompt and seed)"
        self.query_one("#sample-title", Static).update(title)
        self.query_one("#sample-text", Static).update(Text(self.text))

    def action_page(self, delta: int) -> None:
        self.index = min(max(self.index + delta, 0), len(self.samples) - 1)
        self.show_index()
