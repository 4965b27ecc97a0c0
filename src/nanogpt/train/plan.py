"""`train --time`: the best run this machine can make from this text in the time given, planned before it starts.

The plan is a rule applied to measurements, never a search during the user's run:
- **Measured:** the step time of each candidate shape on this machine, on this run's hardware (device,
  precision, CPU shards), by a short probe through the real `Stepper` (probe.py), cached per machine and shape.
  The precision `--dtype auto` chose for the preset's step is measured again for the plan's (gate.py).
- **Tokens per parameter:** at a budget of D tokens (no more than --max-passes passes over the text), the
  largest candidate whose non-embedding parameters N satisfy D >= TOKENS_PER_PARAM x N. Chinchilla's optimum is
  ~20 at 10^8+ parameters; at the sizes a CPU trains in minutes the sweep's frontier lies at 0.3-4 tokens a
  parameter, and 0.5 lands within 2% of its best at every point measured, where 2 picked a model too small for
  a small text (BENCHMARKS.md, "The best model in the time you give", bench/time_budget.py).
- **Passes over the text:** at most --max-passes passes (8 unless typed; 0 fills the time). Past about four,
  repeated tokens are worth less than new ones (Muennighoff et al. 2023) and a small model overfits a small
  text; so a small text gets a short run that decays on its last pass, and the plan says so rather than burning
  the budget on overfitting. A model large for its text gets half as many unless they are typed (passes_for):
  the larger the model, the sooner its extra passes overfit. The loop's re-estimate never moves the end past that
  bound.
- **Depth for a run on new text:** a run of fewer than NEW_TEXT_TOKENS tokens that sees its text fewer than
  NEW_TEXT_PASSES times is planned again on the ladder's widths at NEW_TEXT_LAYERS layers, the widest that gets
  NEW_TEXT_TOKENS_PER_PARAM tokens a block parameter: nothing bounds it but compute, and on a CPU a shallow, wide
  model makes more steps of it. Where the text repeats, depth pays.
- **Context for a short run on a text it repeats:** a run of fewer than SHORT_RUN_TOKENS tokens that is not on new
  text trains on contexts half its preset's, twice as many a step (short_context): a small model going over a
  small text again learns mostly local statistics, and more sequences a step steady its gradient. On new text the
  context lost cost more than that gained (Vim's help files). Its step time is measured again, and its steps
  planned from it.
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

# (layers, embedding width) from small to large; heads of 64 dimensions (32 below 128 wide)
RUNGS = ((2, 64), (3, 96), (4, 128), (4, 192), (6, 256), (6, 384), (8, 512), (12, 768))
# A run on new text, fewer than NEW_TEXT_TOKENS tokens seeing its text fewer than NEW_TEXT_PASSES times, is planned
# again on the ladder's widths at NEW_TEXT_LAYERS layers (unless --layer-count is typed), the widest that gets
# NEW_TEXT_TOKENS_PER_PARAM tokens a block parameter: every token is new, nothing bounds the run but compute, and on
# a CPU a shallow, wide model makes more steps of it. Measured on a 2-core CPU (BENCHMARKS.md), on ~10 M characters
# of code and on Vim's help files (9.5 M): at 1 minute (0.5 passes) 2 x 192 1.7717 and 1.0686-1.0735 against the
# ladder's 4 x 192 1.8094 (block 32) and 1.1176, and 2 x 256 (0.8 tokens a parameter) 1.7838 and 1.0810; at 3
# minutes (1-1.5 passes) 2 x 256 (2.5 tokens a parameter) 1.6325-1.6445 and 0.9642-0.9686 against 4 x 192 1.6560
# and 0.9856, 3 x 256 1.6312-1.6412 and 0.9856. Where the text repeats depth paid (Tiny Shakespeare at 1 minute,
# 2.8-3.5 passes: 4 x 192 2.1557 against 2 x 256 2.1611 and 2 x 192 2.1742). Runs of more tokens than were
# measured keep the ladder's depth.
NEW_TEXT_LAYERS = 2
NEW_TEXT_RUNGS = tuple((NEW_TEXT_LAYERS, n_embd) for _, n_embd in RUNGS)
NEW_TEXT_TOKENS_PER_PARAM = 1.0
NEW_TEXT_PASSES = 2
NEW_TEXT_TOKENS = 4_000_000
TOKENS_PER_PARAM = 0.5
SHAPE_FIELDS = {"n_layer", "n_embd", "n_head", "block_size"}  # what --init-from's weights fix (as if typed)
EVALUATIONS = 10  # validation losses over a timed run (and one at the end), so the best checkpoint is found
MIN_STEPS = 100  # a candidate too slow for this many steps in the budget is not a plan
EVAL_ITERS = 10  # batches per evaluation in a timed run, unless typed
# A model of more block parameters than LARGE_FOR_TEXT a training token gets half the --max-passes, unless typed
# or unless the halved run would be shorter than DATA_STEPS steps (on a tiny text a short run is starved of steps
# more than a long one overfits). Fitted on Tiny Shakespeare and the Alice text (BENCHMARKS.md): 4 x 128 paid
# best at 8 passes, the larger shapes at 4; at 4 passes (150 steps) the Alice text's small shapes lost 8%.
LARGE_FOR_TEXT = 3
DATA_STEPS = 500
# A run of fewer than SHORT_RUN_TOKENS tokens, not on new text, trains on contexts half its preset's, twice as many
# a step (the same tokens a step), unless --block-size or --batch-size is typed: in a short run a small model
# learns mostly local statistics, and more, shorter sequences give a steadier gradient for less attention.
# Measured on 2-core CPU runs of 0.46-3.3 M tokens (BENCHMARKS.md): block 32 x batch 48 beat 64 x 24 by 0.8-2.3%
# on the Alice text, Tiny Shakespeare (BPE) and code at 0.5-2.5 M tokens, equalled it on Shakespeare by
# characters, and lost 0.5% at 3.3 M (Shakespeare, 4 x 128) and 0.9-1.3% at 2.8 M (code, 3 x 256). On new text
# it is not applied: on Vim's help files (~9 M characters, half a pass in a minute) it lost 3.6-5.8% (2 x 192:
# 1.1307 against 1.0686 at 64 x 24), and on code it was mixed (-0.8% to +0.7%).
SHORT_RUN_TOKENS = 2_500_000
SHORTEST_CONTEXT = 32  # tokens: a context is not halved below this (16 lost 0.9% to 32 on Shakespeare in a minute)
EVAL_SHARE = 0.2  # of the budget the evaluations take at most, unless --eval-iters is typed (fewer batches each)
REESTIMATE_AFTER = 10  # steps before the loop first measures the step time again (warm-up and compiling over)
OVERRUN = 0.08  # the loop stops (saving) past the budget by this share: a guard the re-estimate should never meet


class Plan(NamedTuple):
    model_cfg: config.ModelConfig
    train_cfg: config.TrainConfig
    line: str  # said before training


def heads_for(n_embd: int) -> int:
    return max(2, n_embd // 64) if n_embd >= 128 else max(2, n_embd // 32)


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


def non_embedding_params(cfg: config.ModelConfig) -> int:
    """The blocks' parameters (Kaplan's N): what the tokens-per-parameter rule counts."""
    return cfg.n_layer * (12 * cfg.n_embd**2 + 13 * cfg.n_embd)


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


def passes_for(cfg: config.ModelConfig, train_cfg: config.TrainConfig, train_tokens: int, world_size: int,
               typed: frozenset[str] | set[str]) -> float:
    """The passes over the text `cfg` may make: --max-passes, or half of it for a model large for its text
    (LARGE_FOR_TEXT) whose halved run still has DATA_STEPS steps. A typed --max-passes is kept; 0 is no bound."""
    passes = train_cfg.max_passes
    if not passes or "max_passes" in typed or non_embedding_params(cfg) <= LARGE_FOR_TEXT * train_tokens:
        return passes
    half_steps = passes / 2 * train_tokens / config.tokens_per_step(cfg, train_cfg, world_size)
    return passes / 2 if half_steps >= DATA_STEPS else passes


def short_context(cfg: config.ModelConfig, train_cfg: config.TrainConfig, run_tokens: int,
                  typed: frozenset[str] | set[str]) -> tuple[config.ModelConfig, config.TrainConfig] | None:
    """The plan's shape on contexts half as long, twice as many a step, for a run of fewer than SHORT_RUN_TOKENS
    tokens; None when the run is longer, the context is too short to halve, or the user typed either."""
    if {"block_size", "batch_size"} & set(typed):
        return None
    if run_tokens >= SHORT_RUN_TOKENS or cfg.block_size < 2 * SHORTEST_CONTEXT:
        return None
    return (dataclasses.replace(cfg, block_size=cfg.block_size // 2),
            dataclasses.replace(train_cfg, batch_size=train_cfg.batch_size * 2))


def on_new_text(run_tokens: int, train_tokens: int) -> bool:
    """Whether a plan of `run_tokens` is a run on new text: fewer than NEW_TEXT_TOKENS tokens, fewer than
    NEW_TEXT_PASSES passes over the text. It is planned again on NEW_TEXT_RUNGS (unless --layer-count is typed) and
    keeps its preset's context."""
    return run_tokens < min(NEW_TEXT_TOKENS, NEW_TEXT_PASSES * train_tokens)


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
) -> Plan:
    """The plan for `budget_s` seconds: the ladder's shapes timed (_ladder) and the rule (choose); then, for a run
    on new text, the same on the shallow ladder, or short_context for a short run on a text it repeats."""
    # the evaluations a timed run makes (EVAL_ITERS batches each, unless typed) are part of its time
    train_cfg = dataclasses.replace(train_cfg, eval_iters=train_cfg.eval_iters if "eval_iters" in typed else EVAL_ITERS)
    shapes, times = _ladder(budget_s, candidates(model_cfg, typed), train_cfg, hardware, tokens, typed)
    train_tokens = len(tokens.train)
    i, steps, passes, why = choose(budget_s, shapes, times, train_cfg, train_tokens, hardware.world_size, typed)
    new_text = on_new_text(steps * config.tokens_per_step(shapes[i], train_cfg, hardware.world_size), train_tokens)
    if new_text and "n_layer" not in typed:  # the shallow ladder, at the preset's context
        shapes, times = _ladder(budget_s, candidates(model_cfg, typed, NEW_TEXT_RUNGS), train_cfg, hardware, tokens,
                                typed, NEW_TEXT_TOKENS_PER_PARAM)
        i, steps, passes, why = choose(budget_s, shapes, times, train_cfg, train_tokens, hardware.world_size, typed,
                                       NEW_TEXT_TOKENS_PER_PARAM)
        why += f"; {NEW_TEXT_LAYERS} layers for a run on new text"
    cfg, step_s = shapes[i], times[i]
    # or, where the text repeats, the rule for a short run: a variant of the shape with its own step time and steps
    shorter = None if new_text else short_context(
        cfg, train_cfg, steps * config.tokens_per_step(cfg, train_cfg, hardware.world_size), typed)
    if shorter is not None and (planned := _plan_alone(budget_s, *shorter, hardware, tokens, typed)):
        (cfg, train_cfg), (step_s, steps, passes, why) = shorter, planned
        why += f"; contexts of {cfg.block_size} tokens for a short run (half the preset's, batch doubled)"
    # the passes bound goes into the run's settings: the loop's re-estimate and a resume keep to it
    timed = timed_settings(with_eval_iters(budget_s, step_s, dataclasses.replace(train_cfg, max_passes=passes),
                                           typed), steps, step_s, typed)
    per_step = config.tokens_per_step(cfg, timed, hardware.world_size)
    line = describe(train_cfg.time or "", cfg, timed, cfg.parameter_count(), step_s * 1000, steps * per_step,
                    train_tokens, why)
    return Plan(cfg, timed, line)


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

    def new_total(self, step: int, cfg: config.TrainConfig, step_s: float) -> int | None:
        """The total that ends on the budget at `step_s`, the step time measured now, or None when the planned one
        stays (within 2%). Asked REESTIMATE_AFTER steps in (compiling and warming up are over by then), and again
        each evaluation interval until WSD's decay begins: moving the end is free in the stable phase, so a
        machine that slows down or speeds up still gets its whole decay, landing on the budget."""
        since = self.start_step if self.last_estimate is None else self.last_estimate
        wait = REESTIMATE_AFTER if self.last_estimate is None else max(REESTIMATE_AFTER, cfg.validation_interval)
        if self.t0 is None or step - since < wait:
            return None
        stable = cfg.lr_schedule != "wsd" or step < decay_start(cfg.steps, cfg.decay_fraction)
        if not stable or not (step_s > 0 and math.isfinite(step_s)) or cfg.steps <= step:
            return None
        self.last_estimate = step
        left = self.seconds - (time.perf_counter() - self.t0)
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
        """After step `step`: the settings with the end moved (new_total, at the median of the last steps' times)
        and the event that says so, or None."""
        recent = [e["duration_ms"] for e in log[-REESTIMATE_AFTER:] if "duration_ms" in e]
        step_ms = statistics.median(recent) if recent else 0.0
        new = self.new_total(step, cfg, step_ms / 1000) if recent else None
        if new is None:
            return None
        return self.settings(cfg, new), Replanned(step=step, total_steps=new, step_ms=step_ms)

    def over(self) -> bool:
        return self.t0 is not None and time.perf_counter() - self.t0 > self.seconds * (1 + OVERRUN)
