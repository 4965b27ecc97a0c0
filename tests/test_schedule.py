"""schedule.py: nanoGPT's warm-up + cosine, and WSD (warm-up, constant, linear decay over the last part)."""

from __future__ import annotations

import math

import pytest

from nanogpt.schedule import decay_start, learning_rate

PEAK, MIN = 1e-3, 1e-4


def lr(step: int, total: int, kind: str, warmup: int = 10, decay_fraction: float = 0.5) -> float:
    return learning_rate(step, peak=PEAK, minimum=MIN, warmup=warmup, total=total, kind=kind,
                         decay_fraction=decay_fraction)


def test_cosine_is_nanogpts_formula() -> None:
    # nanoGPT's get_lr: warm-up (it+1)/(warmup+1), then min + 0.5*(1+cos(pi*ratio))*(peak-min)
    assert lr(0, 100, "cosine") == pytest.approx(PEAK / 11)
    assert lr(10, 100, "cosine") == pytest.approx(PEAK)
    assert lr(55, 100, "cosine") == pytest.approx(MIN + 0.5 * (1 + math.cos(math.pi * 0.5)) * (PEAK - MIN))
    assert lr(100, 100, "cosine") == lr(500, 100, "cosine") == MIN


def test_wsd_warms_up_holds_then_decays_linearly_to_the_minimum_at_the_last_step() -> None:
    total = 100
    assert decay_start(total, 0.5) == 50 and decay_start(total, 0.2) == 80
    assert [lr(s, total, "wsd") for s in range(10)] == [lr(s, total, "cosine") for s in range(10)]
    assert all(lr(s, total, "wsd") == PEAK for s in range(10, 50))
    decay = [lr(s, total, "wsd") for s in range(50, 100)]
    steps = [b - a for a, b in zip(decay, decay[1:])]
    assert steps == pytest.approx([(MIN - PEAK) / 50] * 49)  # a straight line down
    assert decay[-1] == pytest.approx(MIN) and decay[0] == pytest.approx(PEAK + (MIN - PEAK) / 50)
    assert lr(10, total, "wsd", decay_fraction=0.0) == lr(99, total, "wsd", decay_fraction=0.0) == PEAK


def test_wsd_extends_cleanly_where_cosine_jumps() -> None:
    # a 400-step run stopped at step 150 and resumed with --steps 800 goes on from the same rate
    assert lr(149, 400, "wsd") == lr(150, 800, "wsd") == PEAK
    assert lr(150, 800, "cosine") > 1.2 * lr(149, 400, "cosine")  # the cosine climbs back up
