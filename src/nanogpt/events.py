"""What the training engine tells its front ends (events) and what they may ask of it (commands).

Plain frozen dataclasses: no torch, no Textual, so the UI and the headless runner can both import them.
The engine emits events through a callback; front ends send commands through a `queue.Queue`, and the
engine reads them between two steps.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import GenerateConfig


# ----------------------------------------------------------------------------- events
@dataclass(frozen=True)
class RunStarted:
    """The run is set up: what is being trained, on what, and the history so far (for a resumed run)."""

    start_step: int  # steps already done (0 for a fresh run)
    total_steps: int
    n_params: int
    model: dict[str, Any]  # ModelConfig as a dict
    train: dict[str, Any]  # TrainConfig as a dict
    device: str  # e.g. "cpu", "cuda:0"
    dtype: str  # e.g. "float32", "bfloat16"
    dataset: str  # where the data came from (a folder or file)
    tokenizer: str  # "char", "gpt2" or "bpe"
    tokens_per_step: int  # batch x block x grad_accum x world size
    history: tuple[dict[str, Any], ...] = ()  # training-log entries {step, loss, duration_ms, validation_loss?,
    # validation_bpb?, source_validation_losses?, source_validation_bpb?}
    seed: int = 0
    world_size: int = 1
    block_params: int = 0  # of n_params, those in the transformer blocks (the rest: embeddings, final norm)
    train_tokens: int = 0  # tokens in the training split: one epoch
    notes: tuple[str, ...] = ()  # what building the run has to tell the user (a front end shows them first)
    resumed_from: str | None = None  # the checkpoint a resumed run continues (its last one until it saves)
    origin: str = ""  # a new run's preset and what was typed over it ("preset cpu-small; changed: ...")


@dataclass(frozen=True)
class StepDone:
    step: int  # steps done after this one (1-based: model_step_N is the state after N steps)
    loss: float  # mean training loss over the step's micro-batches
    duration_ms: float
    lr: float
    tokens_per_s: float
    grad_norm: float | None = None  # the gradients' total norm before clipping (what --grad-clip compares)


@dataclass(frozen=True)
class EvalDone:
    step: int
    val_loss: float
    # a mixology dataset: each source's validation loss on fixed batches of its own text, by source name
    source_losses: dict[str, float] = field(default_factory=dict)
    sample: str = ""  # text sampled from the same prompt and seed at every evaluation ("" when off; rank 0 only)
    # the same losses in bits per UTF-8 byte of the text they cover: comparable across tokenizers
    val_bpb: float = float("nan")
    source_bpb: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Overfitting:
    """The validation loss rose at each of the last `evaluations` evaluations while the training loss fell
    (said once a run); the best checkpoint kept so far, if any."""

    step: int
    evaluations: int
    stopping: bool  # --stop-when-overfitting: the run stops here, saving
    best_step: int | None = None
    best_val: float | None = None
    best_stem: str | None = None


def overfitting_text(event: Overfitting) -> str:
    """What a front end says of an Overfitting event, in one line."""
    kept = f"; best kept: {event.best_stem} (val {event.best_val:.4f})" if event.best_stem else ""
    then = "stopping (--stop-when-overfitting)" if event.stopping else "--stop-when-overfitting stops a run here"
    return (f"overfitting: the validation loss rose at each of the last {event.evaluations} evaluations while "
            f"the training loss fell{kept}; {then}")


@dataclass(frozen=True)
class Sampled:
    step: int
    text: str


@dataclass(frozen=True)
class Saved:
    step: int
    stem: str  # path without suffix, e.g. out/model_step_500
    paths: tuple[str, ...] = ()
    best: bool = False  # saved for having the best validation loss so far (runs.BEST_FILE names it)


@dataclass(frozen=True)
class Paused:
    step: int


@dataclass(frozen=True)
class Replanned:
    """--time: the run's end moved to the step that lands on the budget at the step time measured now (after the
    first steps, then each evaluation interval until WSD's decay; from the second on, evaluations included)."""

    step: int
    total_steps: int
    step_ms: float


@dataclass(frozen=True)
class Resumed:
    step: int


@dataclass(frozen=True)
class RunFinished:
    """The loop has ended. reason: "completed" (all steps done), "stopped" (asked to stop), "error"."""

    step: int
    reason: str
    stem: str | None = None  # the last checkpoint written, if any
    message: str = ""  # for "error": one line saying what went wrong


Event = (RunStarted | StepDone | EvalDone | Overfitting | Sampled | Saved | Paused | Resumed | Replanned
         | RunFinished)


# ----------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Sample:
    """Sample `n_tokens` from the current weights between two steps, without changing the run."""

    n_tokens: int = GenerateConfig.tokens_to_generate
    prompt: str = ""


@dataclass(frozen=True)
class Save:
    pass


@dataclass(frozen=True)
class Stop:
    """Finish the current step, save if anything is unsaved, and end the loop."""

    save: bool = field(default=True)


Command = Pause | Resume | Sample | Save | Stop


class Engine(Protocol):
    """What a front end (tui/, headless.py) holds of a run: the trainer (train/loop.py), seen through this alone.

    A front end starts the run and then only sends commands and reads events; the run's settings reach it in
    RunStarted. Two ways in besides the queue: `request_stop`, for signal handlers (it sets a flag and takes no
    lock that the interrupted thread may hold; `now`, a second request: drop the step in progress), and
    `sample`, which serves `g` once the loop has ended and reads no more commands.
    """

    def run(
        self, emit: Callable[[Event], None], commands: queue.Queue | None = None, start_paused: bool = False
    ) -> RunFinished: ...

    def request_stop(self, now: bool = False) -> None: ...

    def stop_requested(self) -> bool: ...

    def sample(self, n_tokens: int, prompt: str = "", seed: int | None = None) -> str: ...
