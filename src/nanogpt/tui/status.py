"""The status line of the training UI: what it says (step, losses, speed, time, ETA), the state word, and how
the end of the run is shown.

A mixin of TrainingApp (app.py), kept apart so that each file reads as one job; it reads the app's state
(steps seen, last evaluation, clocks) and never touches the engine.
"""

from __future__ import annotations

import math
import time

from rich.text import Text

from ..events import RunFinished
from ..summary import plural
from .widgets import clock, human_count


class StatusMixin:
    """TrainingApp's status line and its clocks: elapsed time counts only time spent running (not paused)."""

    def _set_paused(self, paused: bool) -> None:
        now = time.monotonic()
        if paused and self._paused_since is None:
            self._paused_since = now
        elif not paused and self._paused_since is not None:
            self._paused_s += now - self._paused_since
            self._paused_since = None
        self.paused = paused


    def _elapsed(self) -> float | None:
        if self._run_t0 is None:
            return None
        end = self._paused_since if self._paused_since is not None else time.monotonic()
        return max(0.0, end - self._run_t0 - self._paused_s)

    def run_seconds(self) -> float | None:
        """Time spent training this run, the steps before a resume included (what the status line shows)."""
        elapsed = self._elapsed()
        return None if elapsed is None else self._earlier_s + elapsed

    def status_text(self) -> str:
        """The numbers of the status line, as plain text (tests read it)."""
        return " │ ".join(self.status_fields())

    def status_fields(self) -> list[str]:
        """The fields of the status line: step, losses, speed, learning rate, time."""
        parts = [f"step {self.step}/{self.total_steps}"]
        if self.recent_losses:  # the mean of the last 10: one step's loss is too noisy to read
            parts.append(f"loss {sum(self.recent_losses) / len(self.recent_losses):.4f}")
        if self.last_val is not None:
            bpb = f" {self.last_bpb:.3f} bpb" if math.isfinite(self.last_bpb) else ""
            parts.append(f"val {self.last_val[1]:.4f}{bpb} @{self.last_val[0]}")
        if self.recent:
            ms = sum(e.duration_ms for e in self.recent) / len(self.recent)
            tps = sum(e.tokens_per_s for e in self.recent) / len(self.recent)
            parts += [f"{ms:.{1 if ms < 100 else 0}f} ms/step", f"{human_count(tps)} tok/s",
                      "lr " + f"{self.recent[-1].lr:.1e}".replace("e-0", "e-")]
            if self.recent[-1].grad_norm is not None:
                parts.append(f"grad {self.recent[-1].grad_norm:.3g}")
        elapsed = self._elapsed()
        parts.append(f"time {clock(self.run_seconds())}")
        done = self.step - (self._session_start_step or 0) if self._session_start_step is not None else 0
        if elapsed and done > 0 and self.finished is None:
            parts.append(f"ETA {clock(elapsed / done * (self.total_steps - self.step))}")
        return parts

    def badge(self) -> str:
        """The state word shown at the right of the status line."""
        if self.finished is not None:
            return {"completed": "DONE", "error": "ERROR"}.get(self.finished.reason, "STOPPED")
        if self.stopping:
            return "STOPPING"
        if self.paused:
            return "PAUSED"
        if self.pause_requested:
            return "PAUSING"
        return "RUNNING" if self.run_info is not None else "STARTING"

    def _render_status(self) -> None:
        self.status.set_fields(self.status_fields())
        badge = self.badge_widget
        word = self.badge()
        badge.update(word)
        cls = {"DONE": "finished", "ERROR": "error", "STOPPED": "finished", "PAUSED": "paused",
               "PAUSING": "paused", "STOPPING": "stopping"}.get(word, "running")
        badge.set_classes(cls)

    def _on_finished(self, ev: RunFinished) -> None:
        self.finished = ev
        self._set_paused(False)
        if self.sample_screen is not None and self.sample_screen.text is None:
            self.sample_screen.show_text(ev.step, f"(no sample: the run ended, {ev.reason})")
        if ev.reason == "error":
            err = self.error_widget
            err.update(Text.assemble(("Training stopped with an error: ", "bold"), ev.message,
                                     "\nPress q to leave."))
            err.add_class("shown")
            return
        if ev.reason == "stopped" or self.stopping:
            self.exit(0)
            return
        done = f"finished {plural(ev.step, 'step')}"
        if ev.stem:  # one row, the path shortened from its start: "Press q to leave" stays on screen
            self.notice.show_path(f"{done}; saved ", ev.stem, ". Press q to leave.")
        else:
            self._notice(f"{done}. Press q to leave.")
