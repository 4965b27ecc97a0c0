"""Display-only widgets of the training UI: run header, loss chart, status line and sample popup.

They show what they are given and know nothing of the engine, its thread or its queue (app.py does the
talking). No torch here.
"""

from __future__ import annotations

import math
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

from ..events import RunStarted
from ..summary import count as human_count
from ..summary import embedding_params, epochs, times


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


class StatusLine(FieldLines):
    """The run's numbers (a state badge sits beside it), wrapped between fields on a narrow screen."""

    SEP = " │ "


class SampleScreen(ModalScreen[None]):
    """A popup with text sampled from the current weights; Esc closes it.

    It is placed over the inside of the chart's frame (`area()`, in screen cells), so the axis labels, the
    header and the status line stay readable around it.
    """

    SCROLL_KEYS: ClassVar[list[Binding]] = [
        Binding("up", "scroll(-1)", "scroll"), Binding("down", "scroll(1)", "scroll"),
        Binding("pageup", "scroll(-8)", "scroll"), Binding("pagedown", "scroll(8)", "scroll"),
    ]
    BINDINGS: ClassVar[list[Binding]] = [*SCROLL_KEYS, Binding("escape", "close", "close")]
    AUTO_FOCUS = None  # the keys are the screen's: a focused scroll box would take ← and → from the pager
    HINT = "Esc: close"
    MIN_SIZE = (24, 6)  # below this the popup takes the whole screen rather than be unreadable

    def __init__(self, step: int, n_tokens: int, area: Callable[[], Region | None] = lambda: None) -> None:
        super().__init__()
        self.step = step
        self.n_tokens = n_tokens
        self.text: str | None = None
        self.area = area

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

    def on_mount(self) -> None:
        self.place()
        self.update_hint()

    def update_hint(self) -> None:
        """The box's bottom border says the keys, scrolling among them when the text is longer than the box."""
        scroll = self.query_one("#sample-scroll", VerticalScroll)
        more = "↑/↓ PgUp/PgDn: scroll · " if scroll.max_scroll_y > 0 else ""
        self.query_one("#sample-box").border_subtitle = more + self.HINT

    def action_scroll(self, rows: int) -> None:
        self.query_one("#sample-scroll", VerticalScroll).scroll_relative(y=rows, animate=False)

    def show_text(self, step: int, text: str) -> None:
        """Put the sampled text in the popup."""
        self.text = text
        self.query_one("#sample-title", Static).update(f"Sample at step {step} ({self.n_tokens} tokens)")
        self.query_one("#sample-text", Static).update(Text(text))
        self.call_after_refresh(self.update_hint)

    def action_close(self) -> None:
        self.dismiss(None)


class SamplePager(SampleScreen):
    """The samples kept at the evaluations, one at a time: ← and → page through them by step, Esc closes.

    `samples` is the app's own list of (step, text), so samples kept while the pager is open join it.
    """

    BINDINGS: ClassVar[list[Binding]] = [
        *SampleScreen.SCROLL_KEYS,
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

    HINT = "←/→: earlier/later step · Esc: close"

    def on_mount(self) -> None:
        super().on_mount()
        self.show_index()

    def show_index(self) -> None:
        """Show the sample at `index`."""
        self.step, self.text = self.samples[self.index]
        title = f"Sample at step {self.step} ({self.index + 1} of {len(self.samples)}, same prompt and seed)"
        self.query_one("#sample-title", Static).update(title)
        self.query_one("#sample-text", Static).update(Text(self.text))
        self.call_after_refresh(self.update_hint)

    def action_page(self, delta: int) -> None:
        self.index = min(max(self.index + delta, 0), len(self.samples) - 1)
        self.show_index()
