"""The learning rate at a given step: linear warm-up, then cosine decay, constant, or WSD. Pure functions."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "constant", "wsd")


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
