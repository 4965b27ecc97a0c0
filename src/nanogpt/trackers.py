"""Experiment trackers, `--tensorboard DIR` and `--wandb PROJECT`: consumers of the engine's events.

Like the headless printer, a tracker is called with every event the engine emits and knows nothing of the
loop: the front end passes it along (rank 0 only, so a torchrun job logs once). Each logs the training
loss, learning rate, tokens/s and gradient norm per step; the validation loss and bits per byte (val/bpb), each
mixology source's and the evaluation's sample (as text) per evaluation. Both are optional extras; a missing
one is one line naming the `pip install` to run, before training starts.

Resume continues the tracker's run rather than starting a second one: TensorBoard's writer purges what a
longer earlier attempt logged after the resumed step, and W&B reuses the run id kept in `trackers.json`
beside the checkpoints.
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import Any

from .store.atomic import atomic_write
from .errors import UserError
from .store.files import read_json
from .events import EvalDone, Event, RunFinished, RunStarted, StepDone

STATE_FILE = "trackers.json"  # beside the checkpoints: {"wandb_id": ...}


def _missing(flag: str, extra: str) -> UserError:
    return UserError(f"{flag} needs the {extra} extra: pip install 'nanogpt[{extra}]'")


def step_scalars(event: StepDone) -> dict[str, float]:
    """What a tracker logs for one step."""
    scalars = {"train/loss": event.loss, "train/lr": event.lr, "train/tokens_per_s": event.tokens_per_s}
    if event.grad_norm is not None:
        scalars["train/grad_norm"] = event.grad_norm
    return scalars


def eval_scalars(event: EvalDone) -> dict[str, float]:
    """What a tracker logs for one evaluation (besides the sample): the loss and bits per byte, and each source's."""
    scalars = {"val/loss": event.val_loss, **{f"val/{name}": loss for name, loss in event.source_losses.items()}}
    scalars |= {"val/bpb": event.val_bpb, **{f"val/{name}_bpb": v for name, v in event.source_bpb.items()}}
    return {tag: value for tag, value in scalars.items() if math.isfinite(value)}


class TensorBoard:
    """Writes TensorBoard event files into `log_dir` with torch's SummaryWriter."""

    def __init__(self, log_dir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("--tensorboard", "tensorboard") from None
        self.log_dir = log_dir
        self.writer_class = SummaryWriter
        self.writer: Any = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            # resumed: drop what an earlier attempt logged after this step, so the curves do not fork
            purge = event.start_step + 1 if event.start_step else None
            self.writer = self.writer_class(self.log_dir, purge_step=purge)
        elif self.writer is None:
            return
        elif isinstance(event, StepDone):
            for tag, value in step_scalars(event).items():
                self.writer.add_scalar(tag, value, event.step)
        elif isinstance(event, EvalDone):
            for tag, value in eval_scalars(event).items():
                self.writer.add_scalar(tag, value, event.step)
            if event.sample:
                self.writer.add_text("sample", "```\n" + event.sample + "\n```", event.step)
        elif isinstance(event, RunFinished):
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandB:
    """Logs to a Weights & Biases run in `project` (offline with WANDB_MODE=offline); `out_dir` keeps its id."""

    def __init__(self, project: str, out_dir: str, resumed_from: str | None):
        try:
            import wandb
        except ImportError:
            raise _missing("--wandb", "wandb") from None
        self.wandb = wandb
        self.project = project
        self.out_dir = Path(out_dir)
        self.run_id = self._saved_id(Path(resumed_from).parent) if resumed_from else None
        self.run: Any = None

    @staticmethod
    def _saved_id(folder: Path) -> str | None:
        try:
            return str(read_json(folder / STATE_FILE, "tracker state")["wandb_id"])
        except (UserError, KeyError, TypeError):
            return None  # a run that was not tracked before: it starts a tracker run of its own

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.run_id = self.run_id or secrets.token_hex(4)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"wandb_id": self.run_id}) + "\n"
            atomic_write(self.out_dir / STATE_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
            self.run = self.wandb.init(
                project=self.project, id=self.run_id, resume="allow", config={**event.model, **event.train}
            )
        elif self.run is None:
            return
        elif isinstance(event, StepDone):
            self.run.log(step_scalars(event), step=event.step)
        elif isinstance(event, EvalDone):
            self.run.log({**eval_scalars(event), **({"sample": event.sample} if event.sample else {})}, step=event.step)
        elif isinstance(event, RunFinished):
            self.close()

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
            # and wait for W&B's service process to write (offline) or upload everything: the run is over
            self.wandb.teardown()


def open_trackers(
    tensorboard: str | None, wandb_project: str | None, out_dir: str, resumed_from: str | None
) -> list[TensorBoard | WandB]:
    """The trackers the flags ask for (UserError naming the pip install when an extra is missing)."""
    trackers: list[TensorBoard | WandB] = []
    if tensorboard:
        trackers.append(TensorBoard(tensorboard))
    if wandb_project:
        trackers.append(WandB(wandb_project, out_dir, resumed_from))
    return trackers
