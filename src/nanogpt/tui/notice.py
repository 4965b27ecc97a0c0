"""The notice line of the training UI: one message at a time, wrapped to the screen's width and, when it is
longer than its few rows, shortened between two of its sentences or parts (never inside one).

At 80x24 every row counts (issue 34): a notice gets at most 2 rows on a screen of up to 30 rows, 3 above.
A path (a save's checkpoint) is kept to one row by cutting its start, where it says the least. A notice shown
in part is printed whole when the UI exits (app.run_tui), so nothing it said is lost.
"""

from __future__ import annotations

import re

from rich.console import Console
from rich.text import Text
from textual.app import RenderResult
from textual.geometry import Size
from textual.widget import Widget

# where a notice may be shortened: after a sentence, between the parts joined by " · " or "; "
_BREAKS = re.compile(r"(?<=[.!?]) (?=\S)|(?= · )|(?=; )")
MORE = " …"
_CONSOLE = Console(width=10_000, color_system=None)  # wraps plain text; no terminal needed


def wrap(text: str, width: int) -> list[str]:
    """`text` wrapped at spaces into lines of at most `width` cells (a longer word is broken)."""
    return [line.plain.rstrip() for line in Text(text).wrap(_CONSOLE, max(width, 1))]


def fit(text: str, width: int, max_lines: int) -> list[str]:
    """`text` in at most `max_lines` lines of `width`: whole if it fits, else its first parts and " …"."""
    lines = wrap(text, width)
    if len(lines) <= max_lines:
        return lines
    cuts = [m.start() for m in _BREAKS.finditer(text)]
    for cut in reversed(cuts):
        head = text[:cut].rstrip(" ·;") + MORE
        lines = wrap(head, width)
        if len(lines) <= max_lines:
            return lines
    # one part longer than the whole notice: the only case cut inside a sentence, and said with the " …"
    lines = wrap(text, width)[:max_lines]
    lines[-1] = lines[-1][: max(width - len(MORE), 0)] + MORE
    return lines


def shorten_path(prefix: str, path: str, suffix: str, width: int) -> str:
    """`prefix + path + suffix` in one line of `width`: the path loses its start ("…") when too long."""
    room = width - len(prefix) - len(suffix)
    if len(path) > room:
        path = "…" + path[len(path) - room + 1 :] if room > 1 else "…"
    return prefix + path + suffix


class Notice(Widget):
    """The last message (a save, a pause, a hint), fitted to its rows; `text` keeps it whole."""

    DEFAULT_CSS = "Notice { height: auto; padding: 0 1; color: $text-muted; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.text = ""
        self.path: tuple[str, str, str] | None = None  # (before, path, after): one line, the path shortened
        self.shortened: dict[str, None] = {}  # notices the screen showed in part, in order: printed whole at exit

    def show(self, text: str) -> None:
        self.text, self.path = text, None
        self.refresh(layout=True)

    def show_path(self, before: str, path: str, after: str = "") -> None:
        self.text, self.path = before + path + after, (before, path, after)
        self.refresh(layout=True)

    def max_lines(self) -> int:
        return 2 if self.app.size.height <= 30 else 3

    def lines(self, width: int) -> list[str]:
        if not self.text:
            return []
        if self.path is not None:
            return [shorten_path(*self.path, width)]
        lines = fit(self.text, width, self.max_lines())
        if lines[-1].endswith(MORE) and not self.text.endswith(MORE):
            self.shortened[self.text] = None
        return lines

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.lines(width))

    def render(self) -> RenderResult:
        return Text("\n".join(self.lines(self.size.width)))
