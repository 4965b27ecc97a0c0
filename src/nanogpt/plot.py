"""`nanogpt plot RUN_OR_STEM... -o FILE.png|.svg`: the loss curves of several runs on one chart (matplotlib).

Each run is a checkpoint stem (or one of its files), or a folder of checkpoints (its latest is read: the
training log of a checkpoint holds the whole run up to it). Every run gets one colour: training loss as a
thin line, validation loss as a thick one with dots, and for a mixology dataset each source's validation
loss dashed. The legend names each run by its folder and the settings that differ between the runs, so
the chart says what was compared. `--metric bpb` draws validation bits per byte instead, which runs with
different tokenizers share. matplotlib is an optional extra (`pip install 'nanogpt[plot]'`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checkpoint
from .store import runs
from .store.atomic import atomic_write, write_failure
from .errors import UserError
from .summary import drawable, is_drawable, split_log

FORMATS = {".png": "png", ".svg": "svg"}
DPI = 100  # --size is in pixels: figure inches x DPI
# The largest chart drawn. Agg draws at most 2**16 pixels a side, and its RGBA buffer takes 4 bytes a pixel:
# 64 million pixels are 256 MB, where 65000x65000 would be 17 GB (matplotlib's std::bad_alloc).
MAX_SIDE, MAX_PIXELS = 16_384, 64_000_000
NOT_COMPARED = ("out_dir", "resume", "init_from")  # where a run went, not what it was


@dataclass(frozen=True)
class Run:
    """A run as the chart needs it: its name, its settings and its training log."""

    stem: Path
    settings: dict[str, Any]  # model and training settings, flattened
    log: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return self.stem.parent.name or str(self.stem.parent)


def read_run(path: str | Path) -> Run:
    """The run at `path` (a stem, a checkpoint file, or a folder of checkpoints); UserError if it is none."""
    path = Path(path)
    try:
        stem = runs.resolve(path)
    except UserError:  # a folder without checkpoints: said below like any other path that is not a run
        stem = None
    if stem is None or not checkpoint.weights_path(stem).is_file() and not Path(f"{stem}.config.json").is_file():
        raise UserError(
            f"{path} is not a run: give a checkpoint stem (e.g. out/model_step_500), one of its files, "
            "or a folder of checkpoints"
        )
    meta = checkpoint.read_meta(stem)
    return Run(stem=stem, settings={**meta["model"], **meta["train"]}, log=checkpoint.read_log(stem))


def differing(runs: list[Run]) -> list[str]:
    """The settings whose values are not the same in every run (what the chart compares)."""
    keys = sorted({k for r in runs for k in r.settings} - set(NOT_COMPARED))
    return [k for k in keys if len({repr(r.settings.get(k)) for r in runs}) > 1]


def label(run: Run, keys: list[str]) -> str:
    """'NAME (key=value, ...)': a path setting shows only its last part."""
    def shown(value: Any) -> str:
        return Path(value).name if isinstance(value, str) and "/" in value else str(value)

    details = ", ".join(f"{k}={shown(run.settings.get(k))}" for k in keys[:4])
    return f"{run.name} ({details})" if details else run.name


METRICS = {"loss": "loss (nats per token)", "bpb": "bits per byte"}
# where the log keeps each metric's validation value and each mixology source's
LOG_KEYS = {"loss": ("validation_loss", "source_validation_losses"), "bpb": ("validation_bpb", "source_validation_bpb")}


def plot(
    paths: list[str], output: str | Path, width: int = 1000, height: int = 600, metric: str = "loss"
) -> Path:
    """Draw the runs at `paths` into image `output` (.png or .svg) of `width` x `height` pixels; returns it.

    metric "bpb": validation bits per byte, which runs with different tokenizers share (training is measured
    in tokens only, so it is not drawn); a run whose log has none (trained before they were logged) is left
    out with a note on stderr."""
    output = Path(output)
    fmt = FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise UserError(f"-o {output}: the image must end in .png or .svg")
    if width < 100 or height < 100:
        raise UserError(f"--size {width}x{height} is too small to read (at least 100x100 pixels)")
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise _too_large(str(width), str(height))
    if not output.parent.is_dir():
        raise UserError(f"-o {output}: folder {output.parent} does not exist")
    if output.is_dir():
        raise UserError(f"-o {output} is a folder; give the image's file name (e.g. {output / 'loss.png'})")
    runs = _with_metric([read_run(p) for p in paths], metric)
    try:
        import matplotlib
    except ImportError:
        raise UserError("nanogpt plot needs matplotlib: pip install 'nanogpt[plot]'") from None
    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    keys = differing(runs) if len(runs) > 1 else []
    fig, ax = plt.subplots(figsize=(width / DPI, height / DPI), dpi=DPI)
    try:
        for i, run in enumerate(runs):
            _draw_run(ax, run, label(run, keys) if len(runs) > 1 else run.name, f"C{i % 10}", metric)
        ax.set_xlabel("step")
        ax.set_ylabel(METRICS[metric])
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        what = "validation bits per byte" if metric == "bpb" else "loss"
        ax.set_title(what if len(runs) == 1 else f"{what} of {len(runs)} runs")
        fig.tight_layout()
        try:
            atomic_write(output, lambda tmp: fig.savefig(tmp, format=fmt, dpi=DPI))
        except OSError as e:  # a read-only or full disk: nothing is left half-written (atomic_write)
            raise UserError(f"cannot write {output}: {write_failure(e)}") from None
    finally:
        plt.close(fig)
    return output


def _with_metric(runs: list[Run], metric: str) -> list[Run]:
    """The runs whose logs hold `metric`'s validation values (a note on stderr for each left out)."""
    if metric not in METRICS:
        raise UserError(f"--metric {metric}: choose one of {', '.join(METRICS)}")
    kept = [r for r in runs if any(LOG_KEYS[metric][0] in e for e in r.log)]
    for run in runs:
        if run not in kept:
            print(f"note: {run.stem} has no validation {metric} in its log (an older run): left out", file=sys.stderr)
    if not kept:
        raise UserError(f"no run to draw: none has a validation {metric} in its log (train again to measure it)")
    return kept


def series(run: Run, metric: str) -> tuple[list[tuple[int, float]], dict[str, list[tuple[int, float]]]]:
    """(step, value) of the validation `metric` ("loss" or "bpb"), and of each mixology source's: the points a
    chart can draw (summary.is_drawable: no NaN or inf)."""
    key, source_key = LOG_KEYS[metric]
    points = [(e["step"], e[key]) for e in run.log if key in e and is_drawable(e[key])]
    sources: dict[str, list[tuple[int, float]]] = {}
    for e in run.log:
        for source, value in e.get(source_key, {}).items():
            if is_drawable(value):
                sources.setdefault(source, []).append((e["step"], value))
    return points, sources


def _draw_run(ax: Any, run: Run, name: str, color: str, metric: str) -> None:
    """One run in its colour: training loss thin (loss only), validation thick with dots, each source dashed."""
    if metric == "loss":
        trained, _ = split_log(run.log)
        ax.plot(*drawable([e["step"] for e in trained], [e["loss"] for e in trained]), color=color, alpha=0.45,
                linewidth=0.8, label=f"{name} train")
    points, sources = series(run, metric)
    if points:
        ax.plot(*zip(*points), color=color, marker="o", markersize=3, linewidth=2, label=f"{name} validation")
    for (source, values), style in zip(sources.items(), ["--", ":", "-.", (0, (5, 1, 1, 1))] * 4):
        ax.plot(*zip(*values), color=color, linestyle=style, linewidth=1.4, label=f"{name} val {source}")


def _too_large(width: str, height: str) -> UserError:
    """The error for a --size past MAX_SIDE or MAX_PIXELS; a side of many digits shown by its count."""
    shown = "x".join(d if len(d) <= 12 else f"{d[:6]}...({len(d)} digits)" for d in (width, height))
    return UserError(
        f"--size {shown} is larger than a chart is drawn (at most {MAX_SIDE:,} pixels a side and "
        f"{MAX_PIXELS // 10**6} million in all)"
    )


def parse_size(text: str) -> tuple[int, int]:
    """'1000x600' -> (1000, 600); UserError otherwise."""
    m = re.fullmatch(r"([0-9]+)[xX]([0-9]+)", text.strip())
    if not m:
        raise UserError(f"--size {text[:40]}: expected WIDTHxHEIGHT in pixels, e.g. 1000x600")
    if any(len(side.lstrip("0")) > 12 for side in m.groups()):  # never drawn; and int() refuses 4,300 digits
        raise _too_large(*m.groups())
    return int(m.group(1)), int(m.group(2))
