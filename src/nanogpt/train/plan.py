"""`train --time`: the best run this machine can make from this text in the time given, planned before it starts.

The plan is a rule applied to measurements, never a search during the user's run:
- **Measured:** the step time of each candidate shape on this machine, on this run's hardware (device,
  precision, CPU shards), by a short probe through the real `Stepper` (probe.py), cached per machine and shape.
  The precision `--dtype auto` chose for the preset's step is measured again for the plan's (gate.py).
- **The rules** (rules.py): the largest shape that gets TOKENS_PER_PARAM tokens a block parameter in the time,
  at most --max-passes passes over the text, shallow with a larger batch on new text, shorter contexts for a short
  run on a text it repeats, and dropout with more passes where that bound would end a run early.
- **The schedule fills the time:** steps from the measured step time, less the evaluations' share; the loop
  measures again once the first steps have run and moves the end (Budget), so WSD's decay lands on the end.

Flags the user typed win: a typed shape keeps its values and the plan sizes the rest around it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import NamedTuple

from .. import config, data
from ..errors import UserError
from ..events import Replanned
from ..runtime import fit as memory_fit
from ..runtime import machine
from ..schedule import decay_start, parse_duration
from .rules import (NEW_TEXT_BATCH, NEW_TEXT_LAYERS, NEW_TEXT_RUNGS, NEW_TEXT_TOKENS_PER_PARAM, RUNGS, TOKENS_PER_PARAM,
                    heads_for, non_embedding_params, on_new_text, passes_for, short_context, with_dropout)

SHAPE_FIELDS = {"n_layer", "n_embd", "n_head", "block_size"}  # what --init-from's weights fix (as if typed)
EVALUATIONS = 10  # validation losses over a timed run (and one at the end), so the best checkpoint is found
MIN_STEPS = 100  # a candidate too slow for this many steps in the budget is not a plan
EVAL_ITERS = 10  # batches per evaluation in a timed run, unless typed
EVAL_SHARE = 0.2  # of the budget the evaluations take at most, unless --eval-iters is typed (fewer batches each)
REESTIMATE_AFTER = 10  # steps before the loop first measures the step time again (warm-up and compiling over)
OVERRUN = 0.08  # the loop stops (saving) past the budget by this share: a guard the re-estimate should never meet


class Plan(NamedTuple):
    model_cfg: config.ModelConfig
    train_cfg: config.TrainConfig
    line: str  # said before training
    hardware: machine.Hardware  # what it trains on: the one given, or one shard for dropout (machine.for_dropout)


def candidates(model_cfg: config.ModelConfig, typed: set[str], rungs: tuple[tuple[int, int], ...] = RUNGS
               ) -> list[config.ModelConfig]:
    """The shapes to consider: the rungs, with every size the user typed kept as typed (once each)."""
    found: dict[tuple[int, int, int], config.ModelConfig] = {}
    for n_layer, n_embd in rungs:
        shape = {"n_layer": n_layer, "n_embd": n_embd, "n_head": heads_for(n_embd)}
        shape = {k: (getattr(model_cfg, k) if k in typed else v) for k, v in shape.items()}
        if shape["n_embd"] % shape["n_head"]:
            continue
        cfg = dataclasses.replace(model_cfg, **shape)
        found.setdefault((cfg.n_layer, cfg.n_embd, cfg.n_head), cfg)
    return list(found.values())


def _eval_batch_s(step_s: float, train_cfg: config.TrainConfig) -> float:
    """Seconds of one evaluation batch: a forward pass is about a third of a training step's forward, backward and
    update (over grad_accum micro-batches), scaled by the evaluation's batch size."""
    return step_s / 3 / max(1, train_cfg.grad_accum) * train_cfg.eval_batch_size / train_cfg.batch_size


def steps_in(seconds: float, step_s: float, train_cfg: config.TrainConfig, evaluations: int = EVALUATIONS + 1) -> int:
    """Steps that fit `seconds` with `evaluations` evaluations of eval_iters batches."""
    eval_s = evaluations * train_cfg.eval_iters * _eval_batch_s(step_s, train_cfg)
    return max(1, int((seconds - eval_s) / step_s))


def with_eval_iters(budget_s: float, step_s: float, train_cfg: config.TrainConfig, typed: set[str]
                    ) -> config.TrainConfig:
    """`train_cfg` with the batches per evaluation of a timed run at this step time: EVAL_ITERS, fewer (at least 1)
    where the evaluations would take more than EVAL_SHARE of the budget. A large model on a CPU had its plan's
    evaluations take the whole budget: one step of training, then evaluations. A typed --eval-iters is kept."""
    if "eval_iters" in typed:
        return train_cfg
    fit_in = EVAL_SHARE * budget_s / ((EVALUATIONS + 1) * _eval_batch_s(step_s, train_cfg))
    return dataclasses.replace(train_cfg, eval_iters=max(1, min(EVAL_ITERS, int(fit_in))))


def gets_its_tokens(budget_s: float, cfg: config.ModelConfig, step_s: float, train_cfg: config.TrainConfig,
                    train_tokens: int, world_size: int, typed: frozenset[str] | set[str] = frozenset(),
                    tokens_per_param: float = TOKENS_PER_PARAM) -> bool:
    """Whether `cfg` at `step_s` a step makes MIN_STEPS steps and gets `tokens_per_param` tokens a block parameter
    in the budget, counting no more than its passes over the text: the test the rule's pick is the largest to pass."""
    steps = steps_in(budget_s, step_s, with_eval_iters(budget_s, step_s, train_cfg, typed))
    passes = passes_for(cfg, train_cfg, train_tokens, world_size, typed)
    tokens = min(steps * config.tokens_per_step(cfg, train_cfg, world_size), (passes or math.inf) * train_tokens)
    return steps >= MIN_STEPS and tokens >= tokens_per_param * non_embedding_params(cfg)


def choose(
    budget_s: float,
    shapes: list[config.ModelConfig],
    step_s: list[float],
    train_cfg: config.TrainConfig,
    train_tokens: int,
    world_size: int,
    typed: frozenset[str] | set[str] = frozenset(),
    tokens_per_param: float = TOKENS_PER_PARAM,
) -> tuple[int, int, float, str]:
    """The rule: (index of the chosen shape, its steps, its passes bound, why), from each shape's measured step
    time: the largest shape that gets its tokens, else the smallest."""
    best = max((i for i, (cfg, t) in enumerate(zip(shapes, step_s))
                if gets_its_tokens(budget_s, cfg, t, train_cfg, train_tokens, world_size, typed, tokens_per_param)),
               default=0)
    cfg, seconds = shapes[best], step_s[best]
    passes = passes_for(cfg, train_cfg, train_tokens, world_size, typed)
    per_step = config.tokens_per_step(cfg, train_cfg, world_size)
    steps = steps_in(budget_s, seconds, with_eval_iters(budget_s, seconds, train_cfg, typed))
    passes_cap = passes_steps(dataclasses.replace(train_cfg, max_passes=passes), cfg, train_tokens, world_size)
    if passes_cap is not None and passes_cap < steps:
        halved = " (half of --max-passes, for a model this large for its text)" \
            if passes < train_cfg.max_passes else " (--max-passes)"
        why = f"capped at {passes:g} passes over the text{halved}: more would overfit it; ends early"
        steps = passes_cap
    else:
        why = f"{steps * per_step / max(1, non_embedding_params(cfg)):.1f} tokens per block parameter"
    return best, steps, passes, why


def _plan_alone(budget_s: float, cfg: config.ModelConfig, train_cfg: config.TrainConfig, hardware: machine.Hardware,
                tokens: data.TokenData, typed: set[str]) -> tuple[float, int, float, str] | None:
    """(step seconds, steps, passes bound, why) of one more shape, probed and planned alone; None when its step is
    too slow to be a plan."""
    from . import probe

    seconds = probe.step_seconds(cfg, train_cfg, hardware, tokens, limit_s=budget_s / MIN_STEPS)
    if seconds is None:
        return None
    _, steps, passes, why = choose(budget_s, [cfg], [seconds], train_cfg, len(tokens.train), hardware.world_size,
                                   typed)
    return seconds, steps, passes, why


def describe(budget: str, cfg: config.ModelConfig, t: config.TrainConfig, params: int, step_ms: float,
             tokens: int, train_tokens: int, why: str) -> str:
    return (
        f"--time {budget} on this machine: {cfg.n_layer} layers x {cfg.n_embd} ({params / 1e6:.2f} M parameters, "
        f"{cfg.n_head} heads), block {cfg.block_size}, batch {t.batch_size * t.grad_accum}, {t.optimizer}, "
        f"{t.steps:,} steps at {step_ms:.0f} ms (~{tokens / 1e6:.1f} M tokens, {tokens / max(1, train_tokens):.1f} "
        f"passes over the text); {why}"
    )


def timed_settings(train_cfg: config.TrainConfig, steps: int, step_s: float, typed: set[str]) -> config.TrainConfig:
    """The training settings of the plan: its steps, a WSD schedule ending on them, evaluations spread over it."""
    values: dict[str, object] = {"steps": steps, "plan_step_ms": round(step_s * 1000, 3)}
    defaults = {"validation_interval": max(1, steps // EVALUATIONS), "eval_iters": train_cfg.eval_iters,
                "lr_schedule": "wsd", "warmup_steps": min(train_cfg.warmup_steps, max(1, steps // 20)),
                "save_interval": 0}
    values.update({k: v for k, v in defaults.items() if k not in typed})
    return dataclasses.replace(train_cfg, **values)


def passes_steps(train_cfg: config.TrainConfig, model_cfg: config.ModelConfig, train_tokens: int,
                 world_size: int) -> int | None:
    """The steps --max-passes allows a timed run (None: no bound)."""
    if not train_cfg.max_passes:
        return None
    return max(1, int(train_cfg.max_passes * train_tokens / config.tokens_per_step(model_cfg, train_cfg, world_size)))


def check_flags(train_cfg: config.TrainConfig, typed: set[str], resumed: bool) -> float | None:
    """The budget in seconds (None without --time); a --time with --steps is refused: the plan sets the steps."""
    if train_cfg.time is None or (resumed and "time" not in typed):
        return None
    if "steps" in typed:
        raise UserError("--time plans the steps: give --time or --steps, not both")
    return parse_duration(train_cfg.time)


def _ladder(budget_s: float, shapes: list[config.ModelConfig], train_cfg: config.TrainConfig,
            hardware: machine.Hardware, tokens: data.TokenData, typed: set[str],
            tokens_per_param: float = TOKENS_PER_PARAM) -> tuple[list[config.ModelConfig], list[float]]:
    """The shapes that fit in memory and their measured step times (probe.py, cached), smallest first, up to the
    first that does not get its tokens (gets_its_tokens); refused when not even the first is fast enough."""
    from . import probe  # builds models: imported when a run is planned, not to check flags

    timed, times = [], []
    for cfg in shapes:
        try:
            memory_fit.check_fits(cfg, train_cfg, hardware.device)  # unsharded: probe.py times an unsharded step
        except UserError:
            break
        # the smallest shape is a plan with as few as MIN_STEPS / 10 steps; a larger one must manage MIN_STEPS
        limit = budget_s / (MIN_STEPS if timed else MIN_STEPS / 10)
        seconds = probe.step_seconds(cfg, train_cfg, hardware, tokens, limit_s=limit)
        if seconds is None:
            break
        timed.append(cfg)
        times.append(seconds)
        # a larger shape is slower and wants more tokens: once one does not get them, none after it will
        if not gets_its_tokens(budget_s, cfg, seconds, train_cfg, len(tokens.train), hardware.world_size, typed,
                               tokens_per_param):
            break
    if not timed:
        raise UserError(f"--time {train_cfg.time}: not even the smallest model does {MIN_STEPS // 10} steps in that "
                        "time here; give more time")
    return timed, times


def fit(
    budget_s: float,
    model_cfg: config.ModelConfig,
    train_cfg: config.TrainConfig,
    tokens: data.TokenData,
    hardware: machine.Hardware,
    typed: set[str],
    reprobe: bool = False,
) -> Plan:
    """The plan for `budget_s` seconds: the ladder's shapes timed (_ladder) and the rule (choose); then, for a run
    on new text, the same on the shallow ladder, or, on a text it repeats, short_context for a short run and
    with_dropout where the passes bound would end it early."""
    # the evaluations a timed run makes (EVAL_ITERS batches each, unless typed) are part of its time
    train_cfg = dataclasses.replace(train_cfg, eval_iters=train_cfg.eval_iters if "eval_iters" in typed else EVAL_ITERS)
    shapes, times = _ladder(budget_s, candidates(model_cfg, typed), train_cfg, hardware, tokens, typed)
    train_tokens = len(tokens.train)
    i, steps, passes, why = choose(budget_s, shapes, times, train_cfg, train_tokens, hardware.world_size, typed)
    new_text = on_new_text(steps * config.tokens_per_step(shapes[i], train_cfg, hardware.world_size), train_tokens)
    if new_text and not {"n_layer", "batch_size"} <= typed:  # the shallow ladder, a larger batch, the same context
        shallow, larger = "n_layer" not in typed, "batch_size" not in typed
        if larger:
            train_cfg = dataclasses.replace(train_cfg, batch_size=train_cfg.batch_size * NEW_TEXT_BATCH)
        per_param = NEW_TEXT_TOKENS_PER_PARAM if shallow else TOKENS_PER_PARAM
        shapes, times = _ladder(budget_s, candidates(model_cfg, typed, NEW_TEXT_RUNGS if shallow else RUNGS),
                                train_cfg, hardware, tokens, typed, per_param)
        i, steps, passes, why = choose(budget_s, shapes, times, train_cfg, train_tokens, hardware.world_size, typed,
                                       per_param)
        changes = [f"{NEW_TEXT_LAYERS} layers"] * shallow + [f"{NEW_TEXT_BATCH}x the batch"] * larger
        why += f"; {' and '.join(changes)} for a run on new text"
    cfg, step_s = shapes[i], times[i]
    # or, where the text repeats, the rule for a short run: a variant of the shape with its own step time and steps
    shorter = None if new_text else short_context(
        cfg, train_cfg, steps * config.tokens_per_step(cfg, train_cfg, hardware.world_size), typed)
    context = ""
    if shorter is not None and (planned := _plan_alone(budget_s, *shorter, hardware, tokens, typed)):
        (cfg, train_cfg), (step_s, steps, passes, why) = shorter, planned
        context = f"; contexts of {cfg.block_size} tokens for a short run (half the preset's, batch doubled)"
        why += context
    # where the passes bound ends a run on a text it repeats early: dropout, and more passes (on one shard, as
    # dropout trains: machine.for_dropout); the passes are as given, not halved for a large model
    regular = None if new_text else with_dropout(cfg, train_cfg, steps * step_s, budget_s, typed)
    dropped = hardware if regular is None else machine.for_dropout(hardware, *regular, reprobe)
    if regular is not None and (planned := _plan_alone(budget_s, *regular, dropped, tokens, typed | {"max_passes"})):
        (cfg, train_cfg), (step_s, steps, passes, why), hardware = regular, planned, dropped
        # the passes bound ends it early when it allows fewer steps than the time would
        full = steps_in(budget_s, step_s, with_eval_iters(budget_s, step_s, train_cfg, typed))
        ends = "; ends early" if steps < full else ""
        why = f"dropout {cfg.dropout:g} for more passes over a text it repeats (at most {passes:g}){ends}{context}"
    # the passes bound goes into the run's settings: the loop's re-estimate and a resume keep to it
    timed = timed_settings(with_eval_iters(budget_s, step_s, dataclasses.replace(train_cfg, max_passes=passes),
                                           typed), steps, step_s, typed)
    per_step = config.tokens_per_step(cfg, timed, hardware.world_size)
    line = describe(train_cfg.time or "", cfg, timed, cfg.parameter_count(), step_s * 1000, steps * per_step,
                    train_tokens, why)
    return Plan(cfg, timed, line, hardware)


class Budget:
    """The loop's side of a timed run: the clock from its first step, the end moved once after the first steps
    were measured, and a guard past the budget."""

    def __init__(self, seconds: float, start_step: int, spread_evaluations: bool, most_steps: int | None = None):
        self.seconds, self.start_step = seconds, start_step
        # --max-passes: the end never moves past this many steps from the start (None: no bound); the plan's
        # bound on overfitting a small text holds whatever the re-estimate finds time for
        self.last_allowed = None if most_steps is None else start_step + most_steps
        self.spread_evaluations = spread_evaluations  # the plan set --validation-interval: it follows the end
        self.t0: float | None = None
        self.last_estimate: int | None = None  # the step the end was last measured at
        self.estimated_at = 0.0  # and the clock then

    def settings(self, cfg: config.TrainConfig, steps: int) -> config.TrainConfig:
        """`cfg` ending at `steps` instead, its evaluations spread over the new length when the plan set them."""
        interval = max(1, steps // EVALUATIONS) if self.spread_evaluations else cfg.validation_interval
        return dataclasses.replace(cfg, steps=steps, validation_interval=interval)

    def keeps(self, step: int, cfg: config.TrainConfig) -> bool:
        """Whether `step` is saved for itself: the last step before WSD's decay, the stable checkpoint from which
        `--resume-training RUN --time 5m` extends the run with a new decay."""
        return cfg.lr_schedule == "wsd" and step == decay_start(cfg.steps, cfg.decay_fraction) and step < cfg.steps

    def started(self) -> None:
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def new_total(self, step: int, cfg: config.TrainConfig, step_s: float, evaluations: int | None = None
                  ) -> int | None:
        """The total that ends on the budget at `step_s`, the step time measured now, or None when the planned one
        stays (within 2%). Asked REESTIMATE_AFTER steps in (compiling and warming up are over by then), and again
        each evaluation interval until WSD's decay begins: moving the end is free in the stable phase, so a
        machine that slows down or speeds up still gets its whole decay, landing on the budget. `evaluations`:
        those still to come that `step_s` leaves out (None: as the plan spreads them)."""
        since = self.start_step if self.last_estimate is None else self.last_estimate
        wait = REESTIMATE_AFTER if self.last_estimate is None else max(REESTIMATE_AFTER, cfg.validation_interval)
        if self.t0 is None or step - since < wait:
            return None
        stable = cfg.lr_schedule != "wsd" or step < decay_start(cfg.steps, cfg.decay_fraction)
        if not stable or not (step_s > 0 and math.isfinite(step_s)) or cfg.steps <= step:
            return None
        self.last_estimate, self.estimated_at = step, time.perf_counter()
        left = self.seconds - (self.estimated_at - self.t0)
        if evaluations is None:
            evaluations = math.ceil((EVALUATIONS + 1) * (cfg.steps - step) / cfg.steps)
        new = step + max(1, min(steps_in(left, step_s, cfg, evaluations), 4 * (cfg.steps - step)))
        if self.last_allowed is not None:
            new = max(step + 1, min(new, self.last_allowed))
        if cfg.lr_schedule == "wsd" and cfg.decay_fraction < 1:  # the decay may not start before now
            new = max(new, math.ceil(step / (1 - cfg.decay_fraction)) + 1)
        return new if abs(new - cfg.steps) > max(1, cfg.steps // 50) else None

    def follow(
        self, step: int, cfg: config.TrainConfig, log: list[dict]
    ) -> tuple[config.TrainConfig, Replanned] | None:
        """After step `step`: the settings with the end moved (new_total) and the event that says so, or None.
        The first estimate reads the median of the last steps' times (warm-up's slow steps left out). Later ones
        read the clock since the one before, per step: evaluations, their samples and saves are in it as they
        took, and a slow spell weighs as long as it lasted. A median of step times alone, which leaves all of that
        out, ran a noisy 2-core machine into the overrun guard mid-decay (BENCHMARKS.md, ninth session)."""
        if self.last_estimate is None:
            recent = [e["duration_ms"] for e in log[-REESTIMATE_AFTER:] if "duration_ms" in e]
            step_ms, evaluations = (statistics.median(recent) if recent else 0.0), None
        else:
            done = step - self.last_estimate
            step_ms = 1000 * (time.perf_counter() - self.estimated_at) / done if done > 0 else 0.0
            evaluations = 1  # the last one, at the end: the rest are in the rate
        new = self.new_total(step, cfg, step_ms / 1000, evaluations) if step_ms > 0 else None
        if new is None:
            return None
        return self.settings(cfg, new), Replanned(step=step, total_steps=new, step_ms=step_ms)

    def over(self) -> bool:
        return self.t0 is not None and time.perf_counter() - self.t0 > self.seconds * (1 + OVERRUN)
