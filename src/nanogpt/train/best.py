"""The run's best checkpoint by validation loss, kept besides its latest, and the overfitting notice.

At an evaluation whose validation loss beats every earlier one in this run folder the trainer saves that
step's set (if not saved already) and this module records it in `best.json` (runs.BEST_FILE), written
atomically after the set is whole: the record always names a whole set. A set written only because it was
the best (no save interval, no `s`, not the end, not the resumed one) is removed once a better one is
recorded, so a run keeps one best set, not one per improvement (a checkpoint of gpt2-124m is 1.5 GB).

Overfitting: the validation loss rose at each of the last N evaluations while the training loss fell over
them; read from the log, so a resumed run sees the evaluations before its resume too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from ..events import Overfitting
from ..store import runs


class BestKeeper:
    """The best set of one run folder so far (from its best.json), and the set that was written only as best.

    A plain record: the loop tells it each evaluation and what it saved, and it answers what to do (save as
    best, which superseded set to remove, whether the run overfits). It knows no trainer, and writes only
    best.json and the removal it decided (`publish`, rank 0)."""

    def __init__(self, folder: str | Path, overfit_evaluations: int, stop_when_overfitting: bool):
        self.folder = Path(folder)
        self.record: runs.Best | None = runs.read_best(self.folder)
        self.only_as_best: str | None = None  # a stem this process wrote for being the best, and for nothing else
        self.noticed = False  # overfitting is said once per process
        self.overfit_evaluations, self.stop_when_overfitting = overfit_evaluations, stop_when_overfitting

    def improves(self, val_loss: float) -> bool:
        """Whether `val_loss` beats the recorded best (any loss does when none is recorded)."""
        return self.record is None or val_loss < self.record.validation_loss

    def wanted(self, stem: str | None) -> None:
        """`stem` was saved (or asked for) for another reason than being the best: never remove it."""
        if stem is not None and stem == self.only_as_best:
            self.only_as_best = None

    def recorded(self, step: int, stem: str, val_loss: float, only_as_best: bool) -> Path | None:
        """`stem` is the best now (every rank); returns the superseded best-only set to remove, if any."""
        self.record = runs.Best(step=step, stem=Path(stem).name, validation_loss=val_loss)
        superseded = self.only_as_best if self.only_as_best != stem else None
        self.only_as_best = stem if only_as_best else None
        return Path(superseded) if superseded else None

    def publish(self, superseded: Path | None) -> None:
        """Write best.json (rank 0, the set it names being whole), then remove the superseded best-only set."""
        assert self.record is not None
        try:
            runs.write_best(self.folder, self.record)
        except OSError as e:  # a UserError, so that every rank stops alike (saving.on_rank_zero)
            raise UserError(f"cannot write {self.folder / runs.BEST_FILE}: {e.strerror or e}") from None
        if superseded is not None:
            runs.remove_set(superseded)

    def overfitting(self, log: list[dict[str, Any]], step: int, total_steps: int) -> Overfitting | None:
        """The notice, once, when the validation loss rose at each of the last evaluations while the training
        loss fell; `stopping` with --stop-when-overfitting (a normal stop: the loop saves and ends), unless this
        is the last step anyway."""
        if self.noticed or not rising_while_training_falls(log, self.overfit_evaluations):
            return None
        self.noticed = True
        best = self.record
        return Overfitting(
            step=step, evaluations=self.overfit_evaluations,
            stopping=self.stop_when_overfitting and step < total_steps,
            best_step=best.step if best else None, best_val=best.validation_loss if best else None,
            best_stem=str(self.folder / best.stem) if best else None,
        )


def rising_while_training_falls(log: list[dict[str, Any]], evaluations: int) -> bool:
    """True when the validation loss rose at each of the last `evaluations` evaluations in `log` while the mean
    training loss between the last two evaluations is below the mean just before the first of those rises.
    Reads the log from its end, only as far as those evaluations (a long run's log has 10^5 entries)."""
    if evaluations < 1:
        return False
    at: list[int] = []  # the log indices of the last evaluations + 2, latest first
    for i in range(len(log) - 1, -1, -1):
        if "validation_loss" in log[i]:
            at.append(i)
            if len(at) == evaluations + 2:
                break
    if len(at) < evaluations + 2:
        return False
    vals = [log[i]["validation_loss"] for i in reversed(at)]  # oldest first
    if not all(later > earlier for earlier, later in zip(vals[1:], vals[2:])):
        return False
    return _mean_loss(log[at[1] + 1: at[0] + 1]) < _mean_loss(log[at[-1] + 1: at[-2] + 1])


def _mean_loss(entries: list[dict[str, Any]]) -> float:
    losses = [e["loss"] for e in entries if "loss" in e]
    return sum(losses) / len(losses) if losses else float("inf")
