"""`nanogpt runs [FOLDER]`: the runs in a folder, one line each, newest first, to compare them at a glance
(`--json` for scripts). A run is a folder holding whole checkpoint sets (runs.py); what is listed comes from its
latest set: the settings and tokenizer of its config.json, the best validation of its training log (which holds
the whole history, resumes included), the time its steps took, when it was saved.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import read_log, read_meta, stem_for, weights_path
from ..errors import UserError
from .runs import sets_in

DEPTH = 2  # FOLDER, its sub-folders and theirs: `runs .` finds out/, out-2/ and runs/short/


@dataclass
class RunRow:
    """One run as `nanogpt runs` lists it; `problem` when its latest checkpoint cannot be read."""

    folder: str
    latest: str
    saved: str  # ISO date and time of the latest checkpoint
    step: int = 0
    steps: int = 0
    preset: str | None = None
    changed: list[str] = field(default_factory=list)
    shape: dict[str, int] = field(default_factory=dict)
    tokenizer: str = ""
    vocab_size: int = 0
    best_validation_bpb: float | None = None
    best_validation_loss: float | None = None
    best_step: int | None = None
    seconds_trained: float = 0.0
    lineage: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None


def run_folders(root: Path) -> list[Path]:
    """The folders under `root` (itself included, DEPTH deep, hidden ones skipped) that hold a whole checkpoint."""
    found = []
    for here, dirs, _ in os.walk(root):
        depth = len(Path(here).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < DEPTH else []
        if any(weights_path(stem_for(Path(here), s)).is_file() for s in sets_in(Path(here)).whole):
            found.append(Path(here))
    return found


def read_row(folder: Path) -> RunRow:
    """What `runs` says of run folder `folder`."""
    step = max(s for s in sets_in(folder).whole if weights_path(stem_for(folder, s)).is_file())
    stem = stem_for(folder, step)
    config = stem.with_name(stem.name + ".config.json")
    when = datetime.datetime.fromtimestamp(config.stat().st_mtime).isoformat(timespec="minutes")
    row = RunRow(folder=str(folder), latest=str(stem), saved=when, step=step)
    try:
        meta, log = read_meta(stem), read_log(stem)
        model, train, vocab = meta["model"], meta["train"], meta["tokenizer"]
        row.steps = int(train.get("steps", step))
        row.shape = {k: int(model[k]) for k in ("n_layer", "n_head", "n_embd", "block_size")}
        row.tokenizer, row.vocab_size = str(vocab.get("tokenizer", "?")), int(vocab.get("vocab_size", 0))
        row.preset = meta.get("preset") if isinstance(meta.get("preset"), str) else None
        row.changed = sorted(map(str, meta["changed"])) if isinstance(meta.get("changed"), dict) else []
        row.lineage = [e for e in meta.get("lineage", []) if isinstance(e, dict)] if isinstance(
            meta.get("lineage"), list) else []
    except (UserError, KeyError, TypeError, ValueError) as e:
        row.problem = str(e)
        return row
    _best(row, log)
    return row


def _best(row: RunRow, log: list[dict[str, Any]]) -> None:
    """The lowest validation (bits per byte where the log has them, else loss) and the time the steps took."""
    evals = [e for e in log if math.isfinite(e.get("validation_loss", math.nan))]
    if evals:
        key = "validation_bpb" if all("validation_bpb" in e for e in evals) else "validation_loss"
        best = min(evals, key=lambda e: e[key])
        row.best_step, row.best_validation_loss = best["step"], best["validation_loss"]
        row.best_validation_bpb = best.get("validation_bpb")
    row.seconds_trained = sum(e.get("duration_ms", 0.0) for e in log if math.isfinite(e.get("duration_ms", 0.0))) / 1e3


def list_runs(root: str | Path) -> list[RunRow]:
    """The runs under `root`, newest first; UserError when `root` is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no folder {root}" if not root.exists() else f"{root} is not a folder")
    rows = [(read_row(folder), folder) for folder in run_folders(root)]
    rows.sort(key=lambda pair: Path(pair[0].latest + ".config.json").stat().st_mtime_ns, reverse=True)
    return [row for row, _ in rows]


def as_json(rows: list[RunRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _what(row: RunRow) -> str:
    """'cpu-small', 'cpu-small +layer-count' or the shape '2L 2H 32E b32' of a run without a preset."""
    s = row.shape
    shape = f"{s['n_layer']}L {s['n_head']}H {s['n_embd']}E b{s['block_size']}"
    if row.preset is None:
        return shape
    changed = [c for c in row.changed if c not in ("data_dir", "out_dir", "steps", "device", "dtype")]
    return row.preset + (f" +{len(changed)} ({shape})" if changed else "")


HEADER = ("folder", "preset/shape", "tokenizer", "steps", "best val", "at", "trained", "saved")


def table(rows: list[RunRow]) -> list[str]:
    """The lines of `nanogpt runs`: a header, then one line per run, in columns."""
    cells = [HEADER]
    for r in rows:
        if r.problem is not None:
            cells.append((r.folder, f"unreadable: {r.problem}"[:60], "", "", "", "", "", r.saved.replace("T", " ")))
            continue
        best = "-" if r.best_validation_loss is None else (
            f"{r.best_validation_bpb:.3f} bpb" if r.best_validation_bpb is not None else f"{r.best_validation_loss:.3f}"
        )
        steps = f"{r.step}" if r.step >= r.steps else f"{r.step}/{r.steps}"
        cells.append((
            r.folder, _what(r), f"{r.tokenizer} {r.vocab_size}", steps, best,
            "-" if r.best_step is None else str(r.best_step), _duration(r.seconds_trained), r.saved.replace("T", " "),
        ))
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
