"""The run's progress: steps done, micro-batches consumed, the training log and the last save.

`RunState` is the only writer of these, so what a checkpoint saves and what a resume restores is read
in one place. It holds no tensors and touches no device.
"""

from __future__ import annotations

import math
from typing import Any

from ..events import StepDone


class RunState:
    """Steps done, global micro-batches consumed (over all ranks), the log, and which step was last saved."""

    def __init__(
        self, step: int = 0, batch_counter: int = 0, log: list[dict[str, Any]] | None = None, stem: str | None = None
    ):
        self.step = step  # optimizer steps done; model_step_N is the state after N steps
        self.batch_counter = batch_counter
        self.log: list[dict[str, Any]] = list(log or [])
        # the untrained state at step 0 is never worth a checkpoint of its own; a resumed one is saved already
        self.saved_step = step
        self.saved_stem = stem

    @property
    def unsaved(self) -> bool:
        """Steps were done since the last save (or since the start)."""
        return self.step != self.saved_step

    def advance(self, micro_batches: int) -> None:
        """One optimizer step done, over `micro_batches` global micro-batches."""
        self.step += 1
        self.batch_counter += micro_batches

    def log_steps(self, events: list[StepDone]) -> None:
        """Log steps read back from the device (before any is shown: a failing front end loses none)."""
        self.log.extend(
            {"step": e.step, "loss": e.loss, "duration_ms": e.duration_ms}
            | ({"grad_norm": e.grad_norm} if e.grad_norm is not None else {})
            for e in events
        )

    def log_at_step(self, **values: Any) -> None:
        """Add `values` (a validation loss, a sample) to the log entry of the current step, if it is logged."""
        if self.log and self.log[-1]["step"] == self.step:
            self.log[-1].update(values)

    def log_evaluation(
        self, loss: float, bpb: float, source_losses: dict[str, float], source_bpb: dict[str, float]
    ) -> None:
        """An evaluation's validation loss and bits per byte (and each mixology source's) at the current step; a
        bpb of nan (no bytes to divide by) is left out, as JSON has no nan."""
        values: dict[str, Any] = {"validation_loss": loss} | ({"validation_bpb": bpb} if math.isfinite(bpb) else {})
        if source_losses:
            values["source_validation_losses"] = source_losses
            values["source_validation_bpb"] = {k: v for k, v in source_bpb.items() if math.isfinite(v)}
        self.log_at_step(**values)

    def saved(self, stem: str) -> None:
        """The current step is saved as `stem`."""
        self.saved_step, self.saved_stem = self.step, stem
