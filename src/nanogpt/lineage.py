"""A run's lineage: how its weights came to be, one entry per start (a new run, `--init-from`, each resume),
kept in every checkpoint's config.json and shown in the exported model card as the commands that made it.

An entry: {"start": "new" | "init-from" | "resume", "at_step", "from" (the checkpoint resumed or the weights
started from), "preset" (a new run's), "changed" (the settings typed that differ from what the preset, or the
checkpoint resumed, gives: field name -> value), "date"}. Pure data; no torch, no argparse.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from .config import ModelConfig, TrainConfig, field_flag

_FIELDS = {f.name: f for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls)}
# typed but not part of what made the weights: where they were written
_NOT_LINEAGE = ("out_dir",)


def changed_from(overrides: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """The settings typed (`overrides`) whose value differs from `before` (a preset over the defaults, or a
    resumed checkpoint's settings)."""
    return {
        k: v for k, v in sorted(overrides.items())
        if k in _FIELDS and k not in _NOT_LINEAGE and v != before.get(k, _FIELDS[k].default)
    }


def entry(start: str, *, at_step: int, source: str | None, preset: str | None, changed: dict[str, Any]) -> dict:
    return {
        "start": start, "at_step": at_step, "from": source, "preset": preset, "changed": changed,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def flags(changed: dict[str, Any]) -> list[str]:
    """`changed` as command-line words: ['--layer-count', '2', '--no-compile', ...]."""
    words: list[str] = []
    for name, value in changed.items():
        f = _FIELDS.get(name)
        if f is None or f.metadata.get("cli") is False:
            continue
        flag = field_flag(f)
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag.removeprefix("--"))
        elif value is not None:
            text = str(value)
            words += [flag, text if text and all(c.isalnum() or c in "-_./:" for c in text) else repr(text)]
    return words


def command(e: dict[str, Any]) -> str:
    """The `nanogpt train` command of lineage entry `e`."""
    words = ["nanogpt", "train"]
    if e.get("start") == "resume":
        words += ["--resume-training", str(e.get("from"))]
    elif e.get("preset"):
        words += ["--preset", str(e["preset"])]
    return " ".join(words + flags(e.get("changed") or {}))


def summary(preset: str | None, changed: dict[str, Any]) -> str:
    """'preset cpu-small; changed: --layer-count 2 --steps 400' (the line a new run starts with)."""
    typed = " ".join(flags({k: v for k, v in changed.items() if k not in ("data_dir",)}))
    return f"preset {preset or 'none (nanoGPT defaults)'}; " + (f"changed: {typed}" if typed else "nothing changed")


def read(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The lineage of a checkpoint's config.json (empty for one saved before lineage was kept)."""
    lineage = meta.get("lineage")
    return [e for e in lineage if isinstance(e, dict)] if isinstance(lineage, list) else []
