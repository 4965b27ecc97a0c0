"""Losses read back from the device: on CUDA/MPS a step's loss stays a device tensor, and `LossReadback`
reads `Hardware.sync_every` steps' losses in one transfer, so the host queues the next steps meanwhile."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..runtime import distributed
from ..events import StepDone


class TrainingDiverged(Exception):
    """The loss became NaN or infinite: training cannot continue from here."""

    @classmethod
    def at(cls, step: int, loss: float) -> TrainingDiverged:
        return cls(f"training loss became {loss} at step {step}; try a lower --learning-rate or --grad-clip")


class FinishedStep(NamedTuple):
    """An optimizer step done; its loss is a float when it was read at once, else still a device tensor."""

    step: int
    lr: float
    loss: torch.Tensor | float
    t0: float
    t1: float
    grad_norm: torch.Tensor | float | None = None  # the gradients' total norm before clipping, read like the loss


class LossReadback:
    """Finished steps whose losses are read back from the device together: one host-device transfer (and
    under DDP one all-reduce) for `every` steps, so that the host queues the next steps while the device
    computes them."""

    MAX_WAIT_S = 0.5  # one process: read back sooner once the oldest unread step is this old (a UI stays live)

    def __init__(self, every: int, world_size: int):
        self.every = every
        self.world_size = world_size
        self.unread: list[FinishedStep] = []

    def add(self, step: FinishedStep) -> None:
        self.unread.append(step)

    def due(self, urgent: Callable[[], bool]) -> bool:
        """Time to read back: `every` steps wait, or (one process) `urgent()` or MAX_WAIT_S has passed."""
        if not self.unread:
            return False
        if len(self.unread) >= self.every:
            return True
        if self.world_size > 1:
            return False  # every rank must read back (an all-reduce) at the same steps: count only
        return urgent() or time.perf_counter() - self.unread[0].t0 >= self.MAX_WAIT_S

    def read(self, tokens_per_step: int) -> tuple[list[StepDone], TrainingDiverged | None]:
        """StepDone events for the unread steps, their deferred losses read in one transfer. At the first
        NaN/inf: the steps before it, and the error to raise once they are shown (the rest are dropped).

        A deferred step's host-side time says little (the accelerator runs behind the host), so those
        steps share the wall time from the first one's start to now equally.
        """
        steps, self.unread = self.unread, []
        if not steps:
            return [], None
        deferred = [s.loss for s in steps if isinstance(s.loss, torch.Tensor)]
        norms = [s.grad_norm for s in steps if isinstance(s.grad_norm, torch.Tensor)]
        # the gradient norms travel in the same transfer as the losses (equal on every rank, so the mean keeps them)
        both = distributed.mean(torch.stack([t.float() for t in deferred + norms])).tolist() if deferred else []
        values, norm_values = iter(both[: len(deferred)]), iter(both[len(deferred) :])
        shared = (time.perf_counter() - steps[0].t0) / len(steps)
        events: list[StepDone] = []
        for s in steps:
            if isinstance(s.loss, torch.Tensor):
                loss, duration = next(values), shared
                if not math.isfinite(loss):
                    return events, TrainingDiverged.at(s.step, loss)
            else:
                loss, duration = s.loss, s.t1 - s.t0
            grad_norm = next(norm_values) if isinstance(s.grad_norm, torch.Tensor) else s.grad_norm
            events.append(StepDone(
                step=s.step,
                loss=loss,
                duration_ms=duration * 1000.0,
                lr=s.lr,
                tokens_per_s=tokens_per_step / max(duration, 1e-9),
                grad_norm=grad_norm,
            ))
        return events, None
