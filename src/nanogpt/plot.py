"""`nanogpt plot RUN_OR_STEM... -o FILE.png|.svg`: the loss curves of several runs on one chart (matplotlib).

Each run is a checkpoint stem (or one of its files), or a folder of checkpoints (its latest is read: the
training log of a checkpoint holds the whole run up to it). Every run gets one colour: training loss as a
thin line, validation loss as a thick one with dots, and for a mixology dataset each source's validation
loss dashed. The legend names each run by its folder and the settings that differ between the runs, so
the chart says what was compared. matplotlib is an optional extra (`pip install 'nanogpt[plot]'`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checkpoint, runs
from .atomic import atomic_write
from .errors import UserError
from .summary import split_log

FORMATS = {".png": "png", ".svg": "svg"}
DPI = 100  # --size is in pixels: figure inches x DPI
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


def plot(paths: list[str], output: str | Path, width: int = 1000, height: int = 600) -> Path:
    """Draw the runs at `paths` into image `output` (.png or .svg) of `width` x `height` pixels; returns it."""
    output = Path(output)
    fmt = FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise UserError(f"-o {output}: the image must end in .png or .svg")
    if width < 100 or height < 100:
        raise UserError(f"--size {width}x{height} is too small to read (at least 100x100 pixels)")
    if not output.parent.is_dir():
        raise UserError(f"-o {output}: folder {output.parent} does not exist")
    runs = [read_run(p) for p in paths]
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
            color = f"C{i % 10}"
            name = label(run, keys) if len(runs) > 1 else run.name
            trained, evals = split_log(run.log)
            ax.plot([e["step"] for e in trained], [e["loss"] for e in trained], color=color, alpha=0.45,
                    linewidth=0.8, label=f"{name} train")
            if evals:
                ax.plot([e["step"] for e in evals], [e["validation_loss"] for e in evals], color=color,
                        marker="o", markersize=3, linewidth=2, label=f"{name} validation")
            sources = dict.fromkeys(s for e in evals for s in e.get("source_validation_losses", {}))
            for source, style in zip(sources, ["--", ":", "-.", (0, (5, 1, 1, 1))] * 4):
                points = [(e["step"], e["source_validation_losses"][source])
                          for e in evals if source in e.get("source_validation_losses", {})]
                ax.plot(*zip(*points), color=color, linestyle=style, linewidth=1.4, label=f"{name} val {source}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        ax.set_title("loss" if len(runs) == 1 else f"loss of {len(runs)} runs")
        fig.tight_layout()
        atomic_write(output, lambda tmp: fig.savefig(tmp, format=fmt, dpi=DPI))
    finally:
        plt.close(fig)
    return output


def parse_size(text: str) -> tuple[int, int]:
    """'1000x600' -> (1000, 600); UserError otherwise."""
    m = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not m:
        raise UserError(f"--size {text}: expected WIDTHxHEIGHT in pixels, e.g. 1000x600")
    return int(m.group(1)), int(m.group(2))
