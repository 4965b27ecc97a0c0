"""The learning rate at a given step: linear warm-up, then cosine decay (or constant). Pure functions."""

from __future__ import annotations

import math


def learning_rate(step: int, *, peak: float, minimum: float, warmup: int, total: int, kind: str = "cosine") -> float:
    """Learning rate for optimizer step `step` (0-based) of a `total`-step run.

    Warm-up rises linearly to `peak` over `warmup` steps (as nanoGPT: (step+1)/(warmup+1));
    `cosine` then decays to `minimum` at `total`; `constant` stays at `peak`.
    """
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if kind == "constant":
        return peak
    if step >= total:
        return minimum
    ratio = (step - warmup) / max(1, total - warmup)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return minimum + coeff * (peak - minimum)
