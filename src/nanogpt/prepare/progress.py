"""Progress of a pass over the text: a Rich bar on a terminal; plain lines in a log or a pipe."""

from __future__ import annotations

import time
from typing import Any, TextIO

_QUIET_BELOW = 50 << 20  # bytes: without a terminal, smaller inputs get just the final line


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class Progress:
    """A Rich progress bar on a terminal; otherwise a plain line at the start, every few seconds, and the end."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.tty = stream.isatty()
        self.bar: Any = None

    def start(self, what: str, total: int) -> None:
        self.what, self.total, self.done = what, max(total, 1), 0
        self.t0 = self.last = time.perf_counter()
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(what, total=self.total)
        elif total > _QUIET_BELOW:
            print(f"{what}: {human_bytes(total)} ...", file=self.stream, flush=True)

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
            return
        now = time.perf_counter()
        if now - self.last >= 5:
            self.last = now
            rate = self.done / (now - self.t0) / 1e6
            left = max(0, self.total - self.done) / max(rate * 1e6, 1e-9)
            print(
                f"{self.what}: {100 * self.done / self.total:.0f}% ({rate:.1f} MB/s, {_duration(left)} left)",
                file=self.stream,
                flush=True,
            )

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        seconds = time.perf_counter() - self.t0
        rate = self.total / max(seconds, 1e-9) / 1e6
        print(
            f"{self.what}: {human_bytes(self.total)} in {seconds:.1f} s ({rate:.1f} MB/s)",
            file=self.stream,
            flush=True,
        )
