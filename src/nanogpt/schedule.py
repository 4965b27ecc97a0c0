"""The learning rate at a given step: linear warm-up, then cosine decay, constant, or WSD. Pure functions."""

from __future__ import annotations

import math
import re

SCHEDULES = ("cosine", "constant", "wsd")
MAX_DURATION_S = 366 * 24 * 3600  # a year: past it a typo, not a plan


def parse_duration(text: str) -> float:
    """Seconds in a duration as a user types it: `90s`, `10m`, `1h30m`, `2h`, `1.5h`, or a bare number of seconds;
    ValueError with what is wrong."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or parts is None or not any(parts.groups()):
        raise ValueError(f"must be a duration such as 90s, 10m or 1h30m, got {text[:40]!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not 1 <= total <= MAX_DURATION_S:
        raise ValueError(f"must be from 1 second to a year, got {text[:40]!r}")
    return total


def decay_start(total: int, decay_fraction: float) -> int:
    """First (0-based) step of a `wsd` run's decay: the last `decay_fraction` of its `total` steps decay."""
    return total - int(round(decay_fraction * total))


def learning_rate(
    step: int,
    *,
    peak: float,
    minimum: float,
    warmup: int,
    total: int,
    kind: str = "cosine",
    decay_fraction: float = 0.5,
) -> float:
    """Learning rate for optimizer step `step` (0-based) of a `total`-step run.

    Warm-up rises linearly to `peak` over `warmup` steps (as nanoGPT: (step+1)/(warmup+1));
    `cosine` then decays to `minimum` at `total`; `constant` stays at `peak`; `wsd` (warm-up, stable,
    decay) stays at `peak` and falls linearly to `minimum` over the last `decay_fraction` of the steps,
    reaching it at the last step. Only wsd's decay depends on `total`, so a resume that raises `--steps`
    before the decay has begun goes on as if the longer run had been planned from the start.
    """
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if kind == "constant":
        return peak
    if kind == "wsd":
        start = decay_start(total, decay_fraction)
        if step < start:
            return peak
        ratio = min(1.0, (step - start + 1) / max(1, total - start))  # (0, 1]: the last step is at minimum
        return peak + ratio * (minimum - peak)
    if step >= total:
        return minimum
    ratio = (step - warmup) / max(1, total - warmup)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return minimum + coeff * (peak - minimum)
