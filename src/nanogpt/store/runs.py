"""The run folder (`--out-dir`): where a run writes its checkpoints, so that no run replaces or mixes another's.

A run folder holds one run's history: its checkpoint sets `model_step_N.*`, each sealed by its manifest
(checkpoint/). The rules:

- a new run writes only into a folder that holds no checkpoint. When the default folder `out` is taken it
  writes into the first free `out-2`, `out-3`, ... and says so; a `--out-dir` the user typed is refused;
- a resume writes beside the checkpoint it resumes (or into a free `--out-dir`), never where a file it read
  says; it is refused when that folder holds a later checkpoint (two histories would mix there);
- while a run trains, it holds a lock on its folder (locks.py: a second run there is refused), and at its
  start it removes what a killed save of ours left, and only that (`remove_leftovers`), checks that the
  folder takes a file and has room for one checkpoint: an unwritable folder is found before the first step;
- `best.json` names the run's best set by validation loss (train/best.py writes it, after the set is whole):
  `generate` and `export` of a folder take that one, a resume takes the latest (`pick`).
"""

from __future__ import annotations

import glob
import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_write, remove_stale_temps, temp_file
from ..checkpoint import SUFFIXES, WRITE_ORDER, read_log, stem_for, stem_of, weights_path
from ..errors import UserError
from .files import listing, read_json
from .locks import Claim, hold
from ..trackers import STATE_FILE

_SET_FILE = re.compile(r"^model_step_(\d+)(\..+)$")
# the files a run writes into its folder through a temporary file (atomic.py) that a kill can leave: its
# checkpoint sets, best.json, trackers.json, and claim's probe
_RUN_FILES = re.compile(r"model_step_\d+\..+|probe|best\.json|" + re.escape(STATE_FILE))


@dataclass(frozen=True)
class Sets:
    """The checkpoint sets in a folder by step: `whole` ones (with a config.json), and `partial` ones."""

    whole: dict[int, list[Path]]
    partial: dict[int, list[Path]]


def sets_in(folder: Path) -> Sets:
    """The checkpoint sets in `folder`. A set without its config.json is what a killed save leaves (config.json
    and the manifest are written last); a set with one but no manifest is one from before manifests."""
    found: dict[int, list[Path]] = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = _SET_FILE.match(path.name)
            if match and match.group(2) in SUFFIXES:
                found.setdefault(int(match.group(1)), []).append(path)
    whole = {s: paths for s, paths in found.items() if any(p.name.endswith(".config.json") for p in paths)}
    return Sets(whole=whole, partial={s: paths for s, paths in found.items() if s not in whole})


def latest_in(folder: str | Path) -> Path:
    """The stem of the latest checkpoint (highest step) in a run folder; UserError listing the folder if none.

    Users name the folder they trained into (`generate out/`) as often as a checkpoint; only whole sets whose
    weights are there count, so a half-copied folder does not hand out a broken stem.
    """
    folder = Path(folder)
    steps = [s for s in sets_in(folder).whole if weights_path(stem_for(folder, s)).is_file()]
    if steps:
        return stem_for(folder, max(steps))
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    shown = listing(names, 12)
    raise UserError(
        f"no checkpoint in folder {folder} (expected model_step_N.safetensors and model_step_N.config.json); "
        + (f"it holds: {shown}" if names else "it is empty")
    )


def resolve(path: str | Path) -> Path:
    """A checkpoint stem from what a user typed: a stem, one of its files, or a run folder (its latest)."""
    return latest_in(path) if Path(path).is_dir() else stem_of(path)


BEST_FILE = "best.json"


@dataclass(frozen=True)
class Best:
    """A run's best checkpoint by validation loss: its step, its stem's name in the run folder, the loss."""

    step: int
    stem: str
    validation_loss: float


def read_best(folder: str | Path) -> Best | None:
    """The folder's best.json when it names a whole set there; None when absent, unreadable or stale."""
    return _best_or_why(Path(folder))[0]


def _best_or_why(folder: Path) -> tuple[Best | None, str]:
    """The folder's best record, or None and why there is none (for the line that says which set was taken)."""
    path = folder / BEST_FILE
    if not path.is_file():
        return None, "no best by validation loss is recorded there"
    try:
        raw = read_json(path, BEST_FILE)
        best = Best(step=int(raw["step"]), stem=str(raw["stem"]), validation_loss=float(raw["validation_loss"]))
    except (UserError, ValueError, KeyError, TypeError, OverflowError):
        return None, f"its {BEST_FILE} cannot be read"
    whole = best.step in sets_in(folder).whole and weights_path(stem_for(folder, best.step)).is_file()
    if best.stem != stem_for(folder, best.step).name or not math.isfinite(best.validation_loss) or not whole:
        return None, f"its {BEST_FILE} names {best.stem}, which is not a whole checkpoint there"
    return best, ""


def write_best(folder: str | Path, best: Best) -> None:
    """Write `folder`/best.json atomically (call it once the set it names is whole)."""
    text = json.dumps({"step": best.step, "stem": best.stem, "validation_loss": best.validation_loss}, indent=1)
    atomic_write(Path(folder) / BEST_FILE, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def remove_set(stem: str | Path) -> None:
    """Remove checkpoint set `stem` in the reverse of the order a save writes it (manifest, config.json, ...):
    a removal cut short leaves what a save cut short does, a set without config.json, which no reader takes
    and the next run in the folder clears (remove_leftovers); or, between the first two removals, the whole
    set unsealed."""
    stem = stem_of(stem)
    for suffix in reversed(WRITE_ORDER):
        stem.with_name(stem.name + suffix).unlink(missing_ok=True)


def pick(folder: str | Path, best: bool) -> tuple[Path, str]:
    """The checkpoint a command takes from a run folder, and a line saying which and why: its best by
    validation loss (`best`: generate, export) or its latest (a resume, which continues the run's history)."""
    folder = Path(folder)
    latest = latest_in(folder)
    record, why = _best_or_why(folder)
    start = f"{folder} is a run folder: "
    best_stem = stem_for(folder, record.step) if record else None
    if not best:
        other = f"; its best by validation loss, which generate and export take, is {best_stem}" if (
            best_stem is not None and best_stem != latest) else ""
        return latest, start + f"resuming its latest checkpoint, {latest} (a resume continues the latest{other})"
    if record is None or best_stem is None:
        return latest, start + f"using its latest checkpoint, {latest} ({why})"
    val = f"val {record.validation_loss:.4f}"
    if best_stem == latest:
        return latest, start + f"using its latest checkpoint, {latest}, also its best by validation loss ({val})"
    latest_text = f"{latest}{_validation_at(latest)}"
    return best_stem, start + f"using its best checkpoint by validation loss, {best_stem} ({val}; latest is " + (
        f"{latest_text})"
    )


def _validation_at(stem: Path) -> str:
    """', val X' when the log saved with `stem` has a validation loss at its step; '' otherwise."""
    try:
        log = read_log(stem)
    except UserError:
        return ""
    step = int(stem.name.rsplit("_", 1)[1])
    found = [e["validation_loss"] for e in log if e.get("step") == step and "validation_loss" in e]
    return f", val {found[-1]:.4f}" if found else ""


def check_exists(stem: str | Path) -> None:
    """UserError when `stem` names no checkpoint: what its folder holds, and where the runs beside it went.

    The default `out` moves on to `out-2`, `out-3`, ... when it is taken, so a stem typed from memory (or from
    the docs) often names the wrong one of them.
    """
    stem = stem_of(stem)
    if weights_path(stem).is_file() or stem.with_name(stem.name + ".config.json").is_file():
        return  # there: checkpoint.read_meta checks the rest
    folder = stem.parent
    if folder.is_dir():
        steps = sorted(s for s in sets_in(folder).whole if weights_path(stem_for(folder, s)).is_file())
        held = f"{folder} holds " + (_steps_text(folder, steps) if steps else "no checkpoint")
    else:
        held = f"there is no folder {folder}"
    base = re.sub(r"-\d+$", "", folder.name)
    beside = [
        (p, max(whole)) for p in sorted(folder.parent.glob(f"{glob.escape(base)}*"))
        if p != folder and re.fullmatch(re.escape(base) + r"(-\d+)?", p.name) and (whole := sets_in(p).whole)
    ]
    beside.sort(key=lambda run: (run[0] / f"model_step_{run[1]}.config.json").stat().st_mtime)
    runs = ", ".join(f"{p} (latest {stem_for(p, step)})" for p, step in reversed(beside[-3:]))
    raise UserError(
        f"checkpoint not found: {stem} (expected {stem}.safetensors and {stem.name}.config.json); {held}"
        + (f"; recent runs beside it: {runs}" if runs else "")
    )


def _steps_text(folder: Path, steps: list[int]) -> str:
    """'checkpoints at steps 250, 500 and 2000 (latest: out/model_step_2000)', the middle elided when long."""
    shown = [str(s) for s in steps] if len(steps) <= 6 else [*map(str, steps[:2]), "...", *map(str, steps[-2:])]
    listed = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
    return f"checkpoint{'s' if len(steps) > 1 else ''} at step{'s' if len(steps) > 1 else ''} {listed} " + (
        f"(latest: {stem_for(folder, steps[-1])})"
    )


def _conflict(folder: Path, step: int) -> str | None:
    """Why a run at `step` (0 for a new run) cannot write into `folder`, or None when it can."""
    if folder.exists() and not folder.is_dir():
        return f"--out-dir {folder} is a file, not a folder"
    sets = sets_in(folder)
    later = sorted(s for s in sets.whole if s > step)
    if not later:
        return _foreign(folder, sets, step)
    last = stem_for(folder, later[-1])
    if step == 0:
        return (
            f"{folder} holds another run's checkpoints (up to {last.name}): give another --out-dir, "
            f"or continue that run with --resume-training {last}"
        )
    return (
        f"{folder} holds {last.name}, later than the step {step} resumed: two histories would mix there; "
        f"continue from {last}, or resume into a new folder with --out-dir"
    )


def _foreign(folder: Path, sets: Sets, step: int) -> str | None:
    """Why files named like a set that this run (now at `step`) may save are in the way, or None. They are no
    checkpoint (no config.json) and not what a killed save leaves: they are kept, and a save there would fail."""
    steps = sorted(s for s, paths in sets.partial.items() if s > step and not _cut_short(paths))
    if not steps:
        return None
    names = sorted(p.name for p in sets.partial[steps[0]])
    return (
        f"{folder} holds {', '.join(names[:3])}{', ...' if len(names) > 3 else ''} without its config.json: not "
        f"a checkpoint, nor what a killed save leaves, so it is kept, and a save of step {steps[0]} there would meet "
        "it: move those files away, or give another --out-dir"
    )


def place(out_dir: str, *, typed: bool, resumed: Path | None, step: int) -> tuple[str, str | None]:
    """The folder a run writes into, and a note for the user when it is not the one asked for.

    `typed`: the user gave --out-dir. `resumed`: the stem of the checkpoint resumed, at `step`.
    UserError when the run would replace or mix another run's checkpoints.
    """
    if resumed is not None:
        folder = Path(out_dir) if typed else resumed.parent
        own = folder.resolve() == resumed.parent.resolve()
        problem = _conflict(folder, step if own else 0)
        if problem:
            raise UserError(problem)
        return str(folder), None
    folder = Path(out_dir)
    problem = _conflict(folder, 0)
    if problem is None:
        return str(folder), None
    if typed or (folder.exists() and not folder.is_dir()):
        raise UserError(problem)
    n = 2
    while _conflict(free := folder.with_name(f"{folder.name}-{n}"), 0) is not None:
        n += 1
    held = "another run's checkpoints" if sets_in(folder).whole else "files named like checkpoints"
    return str(free), f"{folder} holds {held}: this run writes into {free}"


def claim(out_dir: str | Path, step: int, checkpoint_bytes: int) -> Claim:
    """Take folder `out_dir` for a run now at `step`: create and lock it, remove what killed saves left there,
    and check that it takes a file and has room for a checkpoint of `checkpoint_bytes`. UserError if not."""
    folder = Path(out_dir)
    try:
        held = hold(folder, f"{folder} is in use by another nanogpt run: give this run another --out-dir")
    except OSError as e:
        raise UserError(f"cannot write to --out-dir {folder}: {e.strerror or e}") from None
    try:
        problem = _conflict(folder, step)
        if problem:
            raise UserError(problem)
        remove_leftovers(folder)
        fh, probe = temp_file(folder, "probe")
        fh.close()
        probe.unlink()
        free = shutil.disk_usage(folder).free
        if free < checkpoint_bytes:
            raise UserError(
                f"--out-dir {folder} has {_mb(free)} free; a checkpoint of this run needs about {_mb(checkpoint_bytes)}"
            )
    except OSError as e:
        held.release()
        raise UserError(f"cannot write to --out-dir {folder}: {e.strerror or e}") from None
    except BaseException:
        held.release()
        raise
    return held


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove what a killed save of a run left in `folder`, and nothing else (call it holding the folder's
    lock): a set cut short, and temporary files of the run's own files whose writer is gone (atomic.py).
    Returns what was removed."""
    removed = []
    for paths in sets_in(folder).partial.values():
        if _cut_short(paths):
            for path in sorted(paths, key=lambda p: -WRITE_ORDER.index(_suffix(p))):  # as a save removes them
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed + remove_stale_temps(folder, _RUN_FILES)


def _suffix(path: Path) -> str:
    match = _SET_FILE.match(path.name)
    assert match is not None, path
    return match.group(2)


def _cut_short(paths: list[Path]) -> bool:
    """Whether the files of a set without config.json are what a save cut short leaves: a save writes in
    checkpoint.WRITE_ORDER and removes in reverse, so that is the first few files of that order, plain files.
    Any other set-named files (a user's copy of some weights and a log, say) are not ours to remove."""
    first = WRITE_ORDER[: len(paths)]
    return ".config.json" not in first and {_suffix(p) for p in paths} == set(first) and all(
        p.is_file() and not p.is_symlink() for p in paths
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"

