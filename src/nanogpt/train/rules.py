"""The rules of `train --time`'s plan (plan.py measures each candidate's step and applies them): how large a model
for the tokens the time buys, how many passes over the text, and what depth, batch and context, each fitted on the
bench's sweep (bench/time_budget.py; BENCHMARKS.md, "The best model in the time you give") of 2-core CPU runs,
scored on the whole validation split since its seventh session (the depth and batch on new text were fitted there).

- **Tokens per parameter:** at a budget of D tokens (no more than --max-passes passes over the text), the
  largest candidate whose non-embedding parameters N satisfy D >= TOKENS_PER_PARAM x N. Chinchilla's optimum is
  ~20 at 10^8+ parameters; at the sizes a CPU trains in minutes the sweep's frontier lies at 0.3-4 tokens a
  parameter, and 0.5 lands within 2% of its best at every point measured, where 2 picked a model too small for
  a small text.
- **Passes over the text:** at most --max-passes passes (8 unless typed; 0 fills the time). Past about four,
  repeated tokens are worth less than new ones (Muennighoff et al. 2023) and a small model overfits a small
  text; so a small text gets a short run that decays on its last pass, and the plan says so rather than burning
  the budget on overfitting. A model large for its text gets half as many unless they are typed (passes_for):
  the larger the model, the sooner its extra passes overfit. The loop's re-estimate never moves the end past that
  bound.
- **Depth and batch for a run on new text** (on_new_text): planned again with NEW_TEXT_BATCH times the batch, on
  the ladder's widths at NEW_TEXT_LAYERS layers, the widest that gets NEW_TEXT_TOKENS_PER_PARAM tokens a block
  parameter: nothing bounds it but compute; a shallow, wide model makes more steps of it and a larger batch more
  tokens a second. Where the text repeats, depth and more updates pay.
- **Dropout where the text repeats and time is left** (with_dropout): a run whose passes bound would end it before
  half its time trains with dropout and four times the passes, so more time still buys a better model.
- **Context for a short run on a text it repeats** (short_context): contexts half its preset's, twice as many a
  step: a small model going over a small text again learns mostly local statistics, and more sequences a step
  steady its gradient. On new text the context lost costs more than that gained.
"""

from __future__ import annotations

import dataclasses

from .. import config

# (layers, embedding width) from small to large; heads of 64 dimensions (32 below 128 wide)
RUNGS = ((2, 64), (3, 96), (4, 128), (4, 192), (6, 256), (6, 384), (8, 512), (12, 768))
# A run on new text, fewer than NEW_TEXT_TOKENS tokens seeing its text fewer than NEW_TEXT_PASSES times, is planned
# again with NEW_TEXT_BATCH times the preset's sequences a step (unless --batch-size is typed), on the ladder's widths
# at NEW_TEXT_LAYERS layers (unless --layer-count is typed), the widest that gets NEW_TEXT_TOKENS_PER_PARAM tokens a
# block parameter: every token is new and nothing bounds the run but compute. On a CPU a shallow, wide model makes
# more steps of it, and a step of twice the sequences trains ~20% more tokens a second (its update costs the same).
# Measured on a 2-core CPU on ~10 M characters of code and on Vim's help files (9.5 M), whole-split bits per byte
# (BENCHMARKS.md): code at 1 minute 2 x 192 1.7353 against the ladder's 4 x 192 1.8234, at 3 minutes 2 x 256 1.5988
# against 4 x 192 1.6218; batch 48 against 24 (code, then Vim's help): 1.7137, 1.1305 against 1.7353, 1.1266 at 1
# minute and 1.5823, 1.0173 against 1.5988, 1.0286 at 3 (-1.2%, +0.3%, -1.0%, -1.1%). Where the text repeats depth
# paid (Tiny Shakespeare) and a doubled batch lost 1% (4 x 128, block 32). Longer runs than were measured keep the
# ladder's depth and the preset's batch.
NEW_TEXT_LAYERS = 2
NEW_TEXT_RUNGS = tuple((NEW_TEXT_LAYERS, n_embd) for _, n_embd in RUNGS)
NEW_TEXT_TOKENS_PER_PARAM = 1.0
NEW_TEXT_PASSES = 2
NEW_TEXT_TOKENS = 4_000_000
NEW_TEXT_BATCH = 2
TOKENS_PER_PARAM = 0.5
# A model of more block parameters than LARGE_FOR_TEXT a training token gets half the --max-passes, unless typed
# or unless the halved run would be shorter than DATA_STEPS steps (on a tiny text a short run is starved of steps
# more than a long one overfits). Fitted on Tiny Shakespeare and the Alice text (BENCHMARKS.md): 4 x 128 paid
# best at 8 passes, the larger shapes at 4; at 4 passes (150 steps) the Alice text's small shapes lost 8%.
LARGE_FOR_TEXT = 3
DATA_STEPS = 500
# A run of fewer than SHORT_RUN_TOKENS tokens, not on new text, trains on contexts half its preset's, twice as many
# a step (the same tokens a step), unless --block-size or --batch-size is typed: in a short run a small model
# learns mostly local statistics, and more, shorter sequences give a steadier gradient for less attention.
# Measured on 2-core CPU runs (BENCHMARKS.md), whole-split bits per byte: block 32 x batch 48 against 64 x 24 in a
# minute, 4 x 128: the Alice text 2.1473 against 2.1954 (-2.2%), Tiny Shakespeare 2.1817-2.1882 against
# 2.1857-2.1983 (-0.3%); on new text it lost: Vim's help files 1.1575 against 1.1321 (+2.2%), code 1.7433
# against 1.7418 (2 x 192). Runs of 2.8-3.3 M tokens lost 0.5-1.3% with it (by their own evaluations).
SHORT_RUN_TOKENS = 2_500_000
SHORTEST_CONTEXT = 32  # tokens: a context is not halved below this (16 lost 0.9% to 32 on Shakespeare in a minute)
# A run on a text it repeats whose passes bound would end it before SPARE_SHARE of its time trains with dropout
# REPEAT_DROPOUT and up to DROPOUT_PASSES times --max-passes passes, not halved for a large model (unless --dropout or
# --max-passes is typed, or the preset has dropout): dropout is what keeps more passes from overfitting, so the time
# the user gave buys a better model instead of ending early. Measured on 2-core CPU runs (BENCHMARKS.md, eighth
# session), whole-split bits per byte, the plan's shape with dropout 0.1 filling the time against the plan: Tiny
# Shakespeare 4 x 192 at 3 minutes 2.1346 (8 passes) against 2.1520 (4 passes, 1 minute of training), at 10 minutes
# 2.1269 (28 passes) against 2.1456; the Alice text 4 x 128 at 1 minute 2.1265 (30 passes) against 2.1472 (8). Past
# that it overfits again: 95 passes of the Alice text (3 minutes) were best at 19 and ended at 2.60. Where the bound
# does not end the run early it is not applied: dropout 0.1 at 1 minute on Tiny Shakespeare, which fills its time
# at 3.6 passes, lost 5.7% (its steps cost ~25% more, the same model learns less from each).
REPEAT_DROPOUT = 0.1
DROPOUT_PASSES = 4
SPARE_SHARE = 0.5


def heads_for(n_embd: int) -> int:
    return max(2, n_embd // 64) if n_embd >= 128 else max(2, n_embd // 32)


def non_embedding_params(cfg: config.ModelConfig) -> int:
    """The blocks' parameters (Kaplan's N): what the tokens-per-parameter rule counts."""
    return cfg.n_layer * (12 * cfg.n_embd**2 + 13 * cfg.n_embd)


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
    NEW_TEXT_PASSES passes over the text. It is planned again on NEW_TEXT_RUNGS (unless --layer-count is typed) with
    NEW_TEXT_BATCH times the batch (unless --batch-size is typed), and keeps its preset's context."""
    return run_tokens < min(NEW_TEXT_TOKENS, NEW_TEXT_PASSES * train_tokens)


def with_dropout(cfg: config.ModelConfig, train_cfg: config.TrainConfig, planned_s: float, budget_s: float,
                 typed: frozenset[str] | set[str]) -> tuple[config.ModelConfig, config.TrainConfig] | None:
    """The plan's shape with REPEAT_DROPOUT and DROPOUT_PASSES times --max-passes, for a plan whose training takes
    `planned_s` of `budget_s` seconds: under SPARE_SHARE of it, the passes bound ends it early; None where it does
    not, or where dropout or --max-passes is typed, the preset has dropout or the passes are unbounded."""
    if {"dropout", "max_passes"} & set(typed) or cfg.dropout > 0 or not train_cfg.max_passes:
        return None
    if planned_s >= SPARE_SHARE * budget_s:
        return None
    return (dataclasses.replace(cfg, dropout=REPEAT_DROPOUT),
            dataclasses.replace(train_cfg, max_passes=train_cfg.max_passes * DROPOUT_PASSES))
